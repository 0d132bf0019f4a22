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

C{abstract=on} on a C{unix:} endpoint (QEMU's own keyword) makes its path a
Linux abstract socket name, with C{tight=off} padded to the whole
C{sun_path} as QEMU's C{tight=off} does: the endpoint is given
C{"\\0NAME"}, which Twisted binds and connects without a file (no mode,
no lock file, nothing to remove), and the spec's description shows it as
C{unix:@NAME}.  Without C{abstract=on} a path is a file, C{@} or not.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

from twisted.internet.endpoints import clientFromString, serverFromString

from vtwisted.impair import ALL_KEYWORDS as IMPAIRMENTS
from vtwisted.portoptions import PortOptions
from vtwisted.sockettools import abstractAddress, unixAddressText
from vtwisted.spec import PortSpec, SpecError, quoted

#: The keywords of a C{unix:} endpoint that name an abstract socket (QEMU's).
ABSTRACT_KEYWORDS = ("abstract", "tight")

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
    @ivar unixPath: the path a listening Unix endpoint binds, if any
        (C{"\\0NAME"} for an abstract name).
    @ivar skip: how many arguments after the prefix are not the endpoint's
        (0, or 1 for C{listen}/C{connect}).
    @ivar description: the endpoint's description, as Twisted parsed it
        (with an abstract name shown as C{@NAME}).
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
    own = tuple(keywords)
    reserved = (*own, *ABSTRACT_KEYWORDS)
    description = spec.endpoint(skip, reserved)
    kind = spec.args[skip]
    bare = description == kind
    shown = description
    unixPath = None
    abstract = _abstractAddress(spec, skip, listen)
    if abstract:
        where, address = abstract
        description = spec.endpoint(skip, reserved, {where: address})
        shown = spec.endpoint(skip, reserved, {where: "\0"}).replace("\0", unixAddressText(address))
        if listen:
            unixPath = address
            description += ":lockfile=0"  # the lock would be a file beside a name
    elif listen and kind == "unix":
        unixPath = spec.args[skip + 1] if len(spec.args) > skip + 1 else spec.kwargs.get("address")
        if not serverOptionGiven(spec, skip, "mode"):
            description += ":mode=600"
    bound = serverOptionGiven(spec, skip, "interface")
    if listen and not authenticated and kind in LOOPBACK and not bound:
        description += f":interface={LOOPBACK[kind]}"
        shown = description
    _checkArguments(spec, skip, listen)
    parse = serverFromString if listen else clientFromString
    try:
        endpoint = parse(reactor, description)
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # ssl:'s method: getattr
        role = "server" if listen else "client"
        if bare and kind in _ADDRESSES:
            raise _needsAddress(spec, skip, listen) from None
        unknown = _UNEXPECTED.search(str(e)) if isinstance(e, TypeError) else None
        if unknown is not None:
            raise spec.error(_unknownOption(spec.prefix, kind, unknown.group(1), own)) from None
        raise spec.error(f"{quoted(shown)} is not a Twisted {role} endpoint: {e}"
                         f"{spec.colonHint(skip + 1)}") from None
    except OSError as e:  # ssl:/tls: read their certificate and key files here
        raise spec.error(f"{quoted(shown)}: cannot read {e.filename}: {e.strerror} "
                         f"(errno {e.errno})") from None
    return StreamSpec(listen, options, endpoint, unixPath, skip, shown)


#: The positional arguments of the client endpoints whose Twisted parsers
#: drop any more without a word (C{tcp:HOST:PORT:EXTRA} connects to
#: C{HOST:PORT}).
_CLIENT_ARGUMENTS = {"tcp": ("host", "port"), "ssl": ("host", "port"),
                     "tls": ("host", "port"), "unix": ("path",)}


def _checkArguments(spec: PortSpec, skip: int, listen: bool) -> None:
    """
    Refuse what Twisted's parsers would take silently for something else:
    an empty argument (C{host=::1} is C{host=} and the arguments C{""} and
    C{"1"}: a connection to port 1 of this host), and more positional
    arguments than a client endpoint takes.

    @raise vtwisted.spec.SpecError: with a hint if a value's colons were
        left bare.
    """
    first = skip + 1  # the endpoint's arguments after its kind
    args = spec.args[first:]
    addressed = any(key in spec.kwargs for key in ("host", "port", "path", "address"))
    if args == [""] and spec.args[skip] in _ADDRESSES and not addressed:  # "unix:" alone
        raise _needsAddress(spec, skip, listen)
    if "" in args:
        raise spec.error(f"an empty argument in the endpoint{spec.colonHint(first)}")
    names = () if listen else _CLIENT_ARGUMENTS.get(spec.args[skip], ())
    taken = len([name for name in names if name not in spec.kwargs])
    if names and len(args) > taken:
        raise spec.unexpected(first + taken)


def _needsAddress(spec: PortSpec, skip: int, listen: bool) -> SpecError:
    """
    The error for an endpoint given without its address (C{qemu:unix}).
    """
    kind = spec.args[skip]
    before = ":".join([spec.prefix, *spec.args[:skip + 1]])
    example = _ADDRESSES[kind] if listen or kind == "unix" else "host=HOST:port=PORT"
    role = "server" if listen else "client"
    return spec.error(f"the {role} endpoint {kind!r} needs an address, as in {before}:{example}")


#: Where Twisted's server parsers take C{mode} and C{interface} among their
#: positional arguments (after the endpoint's kind).
_SERVER_POSITIONS = {("unix", "mode"): 2, ("tcp", "interface"): 2, ("tcp6", "interface"): 3,
                     ("ssl", "interface"): 5}


def serverOptionGiven(spec: PortSpec, skip: int, key: str) -> bool:
    """
    Whether a server endpoint's C{key} is given, as a keyword or in its
    place among the positional arguments (C{tcp:5555:127.0.0.1}).
    """
    position = _SERVER_POSITIONS.get((spec.args[skip], key))
    return key in spec.kwargs or (position is not None and len(spec.args) > skip + position)


#: How Twisted's endpoint parsers refuse a keyword they do not take.
_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']*)'")


def _unknownOption(prefix: str, kind: str, key: str, keywords: Iterable[str]) -> str:
    """
    What a keyword neither the port type nor its endpoint takes is told
    (a typo, as often as not): the port type's own keywords listed, with
    the impairments in one word.
    """
    own = [name for name in keywords if name not in IMPAIRMENTS]
    impairments = any(name in IMPAIRMENTS for name in keywords)
    listed = ", ".join(f"{name}=" for name in own) + (" and the impairments" if impairments else "")
    return (f"unknown option {key}=: neither {prefix}: nor Twisted's {kind}: endpoint takes it "
            f"({prefix}: takes {listed}; the other keywords are the endpoint's)")


def _abstractAddress(spec: PortSpec, skip: int, listen: bool) -> tuple[int | str, str] | None:
    """
    Where the address of a C{unix:} endpoint with C{abstract=on} is written
    (its position among the endpoint's arguments, or its keyword) and the
    abstract address it stands for; None for any other endpoint.

    @raise vtwisted.spec.SpecError: for C{abstract=}/C{tight=} where they
        mean nothing, C{mode=} or C{lockfile=} with an abstract name, or a
        name that is empty or too long.
    """
    given = [key for key in ABSTRACT_KEYWORDS if key in spec.kwargs]
    abstract = spec.boolean("abstract", False)
    tight = spec.boolean("tight", True)
    kind = spec.args[skip]
    if not given:
        return None
    if kind != "unix":
        raise spec.error(f"{given[0]}= is for Linux's abstract Unix socket names: only a "
                         f"unix: endpoint has one, not {kind}:")
    if not abstract:
        if "tight" in spec.kwargs:
            raise spec.error("tight= is for abstract names: give abstract=on too")
        return None
    if not sys.platform.startswith("linux"):
        raise spec.error("abstract=on: abstract Unix socket names are Linux's only")
    for key in ("mode", "lockfile"):
        if key in spec.kwargs:
            raise spec.error(f"{key}= with abstract=on: an abstract name is no file and has no "
                             "permissions; anyone in the switch's network namespace may "
                             "connect to it")
    keyword = "address" if listen else "path"
    where: int | str = 1 if len(spec.args) > skip + 1 else keyword
    name = spec.args[skip + 1] if where == 1 else spec.kwargs.get(keyword, "")
    if not name:
        before = ":".join([spec.prefix, *spec.args[:skip + 1]])
        raise spec.error(f"abstract=on needs a name, as in {before}:NAME:abstract=on")
    try:
        return where, abstractAddress(name, tight)
    except ValueError as e:
        raise spec.error(f"abstract name {name!r}: {e}") from None
