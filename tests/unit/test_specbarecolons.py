"""
Values written with bare colons: an IPv6 address (C{host=::1}) or QEMU's
C{hostfwd=tcp::2222-:22}, which the endpoint grammar cuts at each colon.
Twisted's client parsers take the pieces for something else without a
word (C{tcp:host=::1:port=5555} is a connection to port 1 of this host),
so such specs are refused, saying which value to escape and how.  Also the
server endpoints' positional C{interface} and C{mode}, to which the switch
used to add its own keyword default and fail.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import MemoryReactor, MemoryReactorClock

from vtwisted.manhole import ManholeService, loopbackByDefault
from vtwisted.ports import cable, qemu
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch


def makeQemu(text: str) -> Any:
    return qemu.makeService(Switch(), PortSpec(text), MemoryReactorClock())


@pytest.mark.parametrize(
    "text, hint",
    [
        ("qemu:connect:tcp:host=::1:port=5555", r"escape its colons: host=\:\:1)"),
        ("qemu:tcp:0:interface=::1", r"escape its colons: interface=\:\:1)"),
        ("qemu:connect:tcp:host=fd00::15:port=22", r"host=fd00\:\:15)"),
        ("qemu:connect:tcp:port=22:host=fe80::1%eth0", r"host=fe80\:\:1%eth0)"),
    ],
)
def test_anIpv6AddressWithBareColonsIsRefused(text: str, hint: str) -> None:
    """
    The spec is refused at once, naming the option and the escaped value,
    where Twisted would have built an endpoint to the wrong address.
    """
    with pytest.raises(SpecError) as info:
        makeQemu(text)
    message = str(info.value)
    assert text in message and "an empty argument in the endpoint" in message
    assert message.endswith(hint), message


def test_theEscapedAddressIsTheOneDialled() -> None:
    """With its colons escaped, the address reaches Twisted's endpoint whole."""
    service = makeQemu(r"qemu:connect:tcp:host=\:\:1:port=5555")
    endpoint = service.endpoint
    assert isinstance(endpoint, TCP4ClientEndpoint)
    assert (endpoint._host, endpoint._port) == ("::1", 5555)


def test_aCableWithABareAddressIsRefusedToo() -> None:
    """cable: reads its endpoint the same way."""
    with pytest.raises(SpecError, match=r"escape its colons: host=\\:\\:1\)"):
        cable.makeService(Switch(), PortSpec("cable:tcp:host=::1:port=5000:tls=off"),
                          MemoryReactorClock())


@pytest.mark.parametrize(
    "text, problem",
    [
        ("qemu:unix:", "the server endpoint 'unix' needs an address, as in "
                       "qemu:unix:/path/to/sock"),
        ("qemu:connect:tcp:", "the client endpoint 'tcp' needs an address, as in "
                              "qemu:connect:tcp:host=HOST:port=PORT"),
        ("qemu:connect:tcp::host=localhost:port=5555", "an empty argument in the endpoint"),
    ],
)
def test_aTrailingColonIsAMissingAddress(text: str, problem: str) -> None:
    """C{unix:} with nothing after it is told as C{unix} is; an empty argument is not."""
    with pytest.raises(SpecError) as info:
        makeQemu(text)
    assert str(info.value) == f"port spec '{text}': {problem}"


@pytest.mark.parametrize(
    "text, extra",
    [
        ("qemu:connect:tcp:localhost:5555:7", "'7'"),
        ("qemu:connect:tcp:host=localhost:5555:7", "'7'"),
        ("qemu:connect:tcp:host=localhost:port=5555:7", "'7'"),
        ("qemu:connect:unix:/tmp/a.sock:b", "'b'"),
    ],
)
def test_moreArgumentsThanAClientTakesAreRefused(text: str, extra: str) -> None:
    """Twisted's tcp: and unix: client parsers would drop these silently."""
    with pytest.raises(SpecError, match=f"unexpected argument {extra}$"):
        makeQemu(text)


def test_theClientArgumentsItTakesStillWork() -> None:
    """HOST:PORT, and PORT after host=, as Twisted reads them."""
    for text in ("qemu:connect:tcp:127.0.0.1:6000", "qemu:connect:tcp:host=127.0.0.1:6000"):
        endpoint = makeQemu(text).endpoint
        assert isinstance(endpoint, TCP4ClientEndpoint)
        assert (endpoint._host, endpoint._port) == ("127.0.0.1", 6000)


def test_aPositionalInterfaceOrModeIsKept(tmp_path) -> None:
    """
    tcp:PORT:INTERFACE and unix:PATH:MODE are Twisted's positional forms;
    the switch's defaults (loopback, 0600) no longer clash with them.
    """
    wildcard = makeQemu("qemu:tcp:0:0.0.0.0")
    assert wildcard.endpoint._interface == "0.0.0.0"
    shared = makeQemu(f"qemu:unix:{tmp_path}/vm.sock:660")
    assert shared.endpoint._mode == 0o660
    assert makeQemu("qemu:tcp:0").endpoint._interface == "127.0.0.1"
    # tcp6:PORT:BACKLOG:INTERFACE: a backlog alone is no interface
    backlog = makeQemu("qemu:tcp6:0:50").endpoint
    assert (backlog._backlog, backlog._interface) == (50, "::1")
    given = makeQemu("qemu:tcp6:0:50:\\:\\:").endpoint
    assert given._interface == "::"


@pytest.mark.parametrize(
    "text, hint",
    [
        ("slirp:hostfwd=tcp::2222-:22", r"escape its colons: hostfwd=tcp\:\:2222-\:22)"),
        ("slirp:hostfwd=tcp:127.0.0.1:8080-:80",
         r"escape its colons: hostfwd=tcp\:127.0.0.1\:8080-\:80)"),
        ("vxlan:remote=fd00::1", r"escape its colons: remote=fd00\:\:1)"),
        ("mcast:ff02::1:5000", r"escape the colons of an IPv6 address, as in fd00\:\:1)"),
    ],
)
def test_unexpectedArgumentsSayWhichValueToEscape(text: str, hint: str) -> None:
    """The hint follows the unexpected argument, for any port type."""
    spec = PortSpec(text)
    with pytest.raises(SpecError) as info:
        spec.positional(["GROUP", "PORT"] if text.startswith("mcast") else [], 0)
    message = str(info.value)
    assert "unexpected argument" in message and message.endswith(hint), message


def test_noHintWhereNothingPointsToAColon() -> None:
    """An argument too many after other arguments is just that."""
    with pytest.raises(SpecError) as info:
        PortSpec("dgram:udp:127.0.0.1:6000:127.0.0.1:6001:9").positional(
            ["KIND", "LHOST", "LPORT", "RHOST", "RPORT"], 5)
    assert str(info.value).endswith("unexpected argument '9'")


def test_theManholeSaysWhichValueToEscape(tmp_path) -> None:
    """--manhole tcp:2222:interface=::1 is refused with the escaped value."""
    keysFile = tmp_path / "keys"
    keysFile.write_text("")
    with pytest.raises(ValueError, match=r"--manhole tcp:2222:interface=::1: an empty "
                                         r"argument \(if that belongs to interface=, escape "
                                         r"its colons: interface=\\:\\:1\)"):
        ManholeService({}, MemoryReactor(), "tcp:2222:interface=::1", str(keysFile))


def test_theManholeRefusesAnyBadEndpointWithAValueError(tmp_path) -> None:
    """An ssl: method that does not exist is a ValueError naming it, not a traceback."""
    keysFile = tmp_path / "keys"
    keysFile.write_text("")
    with pytest.raises(ValueError, match=r"^--manhole ssl:2222:k\.pem:c\.pem:NOSUCH: .*'NOSUCH'"):
        ManholeService({}, MemoryReactor(), "ssl:2222:k.pem:c.pem:NOSUCH", str(keysFile))


def test_theManholeKeepsAPositionalInterface() -> None:
    """tcp:PORT:INTERFACE gets no second interface= (Twisted refused the pair)."""
    assert loopbackByDefault("tcp:2222:0.0.0.0") == "tcp:2222:0.0.0.0"
    assert loopbackByDefault("tcp6:2222:50") == "tcp6:2222:50:interface=\\:\\:1"
    assert loopbackByDefault("tcp6:2222:50:\\:\\:") == "tcp6:2222:50:\\:\\:"
    assert loopbackByDefault("tcp:2222") == "tcp:2222:interface=127.0.0.1"


def test_aSpecIsShownAsWritten() -> None:
    """
    An error shows the spec with its escapes as the user typed them, not
    doubled as Python's repr would (C{'ff02\\\\:\\\\:1'}).
    """
    text = "mcast:ff02\\:\\:1:1234"
    with pytest.raises(SpecError) as info:
        PortSpec(text).positional(["GROUP"], 1)
    assert str(info.value).startswith("port spec 'mcast:ff02\\:\\:1:1234': ")
    assert str(SpecError("a'b", "x")) == "port spec \"a'b\": x"
    assert str(SpecError("a\nb", "x")) == "port spec 'a\\nb': x"


@given(st.text(alphabet=":=\\ab1-%", max_size=24), st.integers(0, 6), st.integers(0, 8))
def test_anySpecGetsASpecErrorNeverACrash(rest: str, required: int, names: int) -> None:
    """
    Whatever the colons, escapes and equals signs, reading a spec's
    arguments refuses it with a L{SpecError} or returns them; the hints
    never fail on their own.
    """
    try:
        spec = PortSpec("x:" + rest)
        spec.positional([f"A{n}" for n in range(max(names, required))], required)
    except SpecError:
        pass
    else:
        for first in range(len(spec.args) + 2):
            assert isinstance(spec.colonHint(first), str)


@example("", "ssl:", "1:1:1:1")  # ssl:'s fourth argument, its method, was an AttributeError
@given(st.sampled_from(["", "connect:", "listen:"]),
       st.sampled_from(["tcp:", "unix:", "tcp6:", "ssl:", ""]),
       st.text(alphabet=":=\\ab1%", max_size=16))
def test_anyStreamSpecGetsASpecErrorNeverACrash(role: str, kind: str, rest: str) -> None:
    """Building a qemu: port from any endpoint text refuses it with a SpecError or works."""
    try:
        makeQemu(f"qemu:{role}{kind}{rest}")
    except SpecError:
        pass
