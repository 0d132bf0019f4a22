"""
The specs of port types that ride on a stream (C{qemu:}, C{cable:}):
C{PREFIX:[listen:|connect:]ENDPOINT}, where the endpoint is an ordinary
Twisted endpoint description and the port type's own keywords are taken
out of it.

A listening Unix socket is made 0600 unless C{mode=} is given, and its path
is kept so that a stale socket can be replaced before listening; a
listening TCP endpoint (C{ssl:} included) without C{interface=} takes only
loopback connections unless the port type authenticates its peers, since
whoever connects joins the LAN.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from twisted.internet.endpoints import clientFromString, serverFromString

from vtwisted.portoptions import PortOptions
from vtwisted.spec import PortSpec

#: Where a listening TCP endpoint without C{interface=} listens when
#: nothing authenticates the peers (Twisted's C{ssl:} servers ask peers for
#: no certificate: they encrypt, but anyone may connect).
LOOPBACK = {"tcp": "127.0.0.1", "tcp6": "\\:\\:1", "ssl": "127.0.0.1"}


class StreamSpec(NamedTuple):
    """
    A stream spec, read.

    @ivar listen: whether the switch listens (else it connects).
    @ivar options: the common options, for each connection's port.
    @ivar endpoint: the Twisted server or client endpoint.
    @ivar unixPath: the path a listening Unix endpoint binds, if any.
    @ivar skip: how many arguments after the prefix are not the endpoint's
        (0, or 1 for C{listen}/C{connect}).
    @ivar description: the endpoint's description, as Twisted parsed it.
    """

    listen: bool
    options: PortOptions
    endpoint: Any
    unixPath: str | None
    skip: int
    description: str = ""


#: What follows each kind of endpoint, in the hint for one given without.
_ADDRESSES = {"unix": "/path/to/sock", "tcp": "PORT", "tcp6": "PORT",
              "ssl": "PORT:privateKey=KEY.pem"}


def readStreamSpec(
    spec: PortSpec,
    reactor: Any,
    keywords: Iterable[str],
    listenByDefault: bool,
    authenticated: bool = False,
) -> StreamSpec:
    """
    Read C{spec}: its role, its common options and its endpoint, without
    C{keywords} (the port type's own, read by the caller).

    @raise vtwisted.spec.SpecError: naming C{spec}.
    """
    role = spec.args[0] if spec.args and spec.args[0] in ("listen", "connect") else None
    listen = role == "listen" if role else listenByDefault
    skip = 1 if role else 0
    options = PortOptions.fromSpec(spec, numbered=False)
    description = spec.endpoint(skip, keywords)
    kind = spec.args[skip]
    bare = description == kind
    unixPath = None
    if listen and kind == "unix":
        unixPath = spec.args[skip + 1] if len(spec.args) > skip + 1 else spec.kwargs.get("address")
        if "mode" not in spec.kwargs:
            description += ":mode=600"
    if listen and not authenticated and kind in LOOPBACK and "interface" not in spec.kwargs:
        description += f":interface={LOOPBACK[kind]}"
    parse = serverFromString if listen else clientFromString
    try:
        endpoint = parse(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        role = "server" if listen else "client"
        if bare and kind in _ADDRESSES:
            before = ":".join([spec.prefix, *spec.args[:skip + 1]])
            example = _ADDRESSES[kind] if listen or kind == "unix" else "host=HOST:port=PORT"
            raise spec.error(f"the {role} endpoint {kind!r} needs an address, as in "
                             f"{before}:{example}") from None
        raise spec.error(f"{description!r} is not a Twisted {role} endpoint: {e}") from None
    except OSError as e:  # ssl:/tls: read their certificate and key files here
        raise spec.error(f"{description!r}: cannot read {e.filename}: {e.strerror} "
                         f"(errno {e.errno})") from None
    return StreamSpec(listen, options, endpoint, unixPath, skip, description)
