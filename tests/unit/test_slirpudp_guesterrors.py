"""
A guest answering a UDP host forward's datagram with an ICMP or ICMPv6
error (port unreachable: nothing listens, or a firewall's reject), through
a real slirp router and UDP engine: the error is counted on the forward and
logged once until the guest answers again, and believed only if it quotes
a datagram of a live forward session (L{vtwisted.slirp.guesterrors},
L{vtwisted.slirp.udpforward}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import router6fakes
from slirpfakes import noFailuresLogged
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from vtwisted.slirp.commands import forwardLines
from vtwisted.slirp.udp import UdpNat
from vtwisted.wire import icmp, icmpv6, vnet

GUEST6, GATEWAY6 = router6fakes.GUEST, router6fakes.GATEWAY
GUEST_PORT, CLIENT_PORT = 5000, 40000


class ForwardTransport:
    """
    The host socket of a UDP forward on loopback port 7000: what it writes.
    """

    def __init__(self, v6: bool) -> None:
        self.v6 = v6
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))

    def getHost(self) -> Any:
        if self.v6:
            return IPv6Address("UDP", "::1", 7000)
        return IPv4Address("UDP", "127.0.0.1", 7000)


class UdpForward:
    """
    A router and UDP engine with a guest (IPv4 or IPv6) on the LAN, a UDP
    forward to its port 5000, and one datagram from a host client through it.
    """

    def __init__(self, v6: bool) -> None:
        self.v6 = v6
        clock = Clock()
        router, self.seen, self.guest, self.gateway = router6fakes.routerWithGuest(v6, clock)
        self.client = ("::1" if v6 else "127.0.0.1", CLIENT_PORT)
        self.router = router
        self.engine = router.udp = UdpNat(router, clock)
        self.socket = self.engine.forwardSocket(self.guest, GUEST_PORT)
        self.transport = ForwardTransport(v6)
        self.socket.transport = self.transport  # type: ignore[assignment]
        self.datagram = self.fromClient(b"hello")

    def fromClient(self, data: bytes, client: tuple[str, int] | None = None) -> bytes:
        """
        A host client sends C{data} to the forward: the IP packet the guest
        gets.
        """
        self.socket.datagramReceived(data, client or self.client)
        if self.v6:
            return self.seen.frames[-1][14:]
        return self.seen.packets[-1][vnet.HEADER_LENGTH + 14:]

    def error(self, quoted: bytes, kind: int | None = None, code: int | None = None,
              to: bytes | None = None) -> None:
        """
        The guest sends C{to} (by default the datagram's source) an error
        (port unreachable unless C{kind} and C{code}) quoting C{quoted}.
        """
        if self.v6:
            unreachable, port = icmpv6.DEST_UNREACHABLE, icmpv6.PORT_UNREACHABLE
        else:
            unreachable, port = icmp.DEST_UNREACHABLE, icmp.PORT
        with noFailuresLogged():
            router6fakes.sendGuestError(
                self.router, self.v6, unreachable if kind is None else kind,
                port if code is None else code, quoted, to or self.gateway)

    def answer(self, data: bytes) -> None:
        """
        The guest's program answers the client through the forward.
        """
        self.engine.datagramReceived(self.guest, GUEST_PORT, self.gateway, CLIENT_PORT,
                                     data, b"")


def loggedLines(events: Sequence[Any]) -> list[str]:
    return [formatEvent(e) for e in events if "UDP forward" in formatEvent(e)]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_portUnreachableIsCountedAndLoggedOnTheForward(v6: bool) -> None:
    """
    A guest with nothing on the forward's port answers its datagram with
    port unreachable: the forward counts it and logs, once, which forward,
    guest port, host client and error; the client gets nothing.
    """
    forward = UdpForward(v6)
    with capturedLogs() as events:
        forward.error(forward.datagram)
        forward.error(forward.fromClient(b"again"))
    assert forward.socket.errors == 2 and forward.engine.errorsIgnored == 0
    (line,) = loggedLines(events)
    family, guest = ("ICMPv6", "[fec0::15]:5000") if v6 else ("ICMP", "10.0.2.15:5000")
    client, host = ("[::1]:40000", "[::1]:7000") if v6 else ("127.0.0.1:40000",
                                                              "127.0.0.1:7000")
    assert f"UDP forward from {host} to {guest}: the guest answered a datagram from " \
           f"{client} with {family} port unreachable" in line, line
    assert forward.socket.lastError == f"{family} port unreachable from {guest}"
    assert forward.transport.written == []


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_anAnswerMakesTheNextErrorLoggedAgain(v6: bool) -> None:
    """
    Once the guest answers a client through the forward (its program
    started), its next error is logged again: one line per failing spell.
    """
    forward = UdpForward(v6)
    with capturedLogs() as events:
        forward.error(forward.datagram)
        forward.answer(b"up now")
        forward.error(forward.fromClient(b"and down"))
    assert len(loggedLines(events)) == 2 and forward.socket.errors == 2
    assert forward.transport.written == [(b"up now", forward.client)]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_timeExceededAboutADatagramIsCountedToo(v6: bool) -> None:
    """
    A time exceeded about a forward's datagram (a guest routing it on)
    is counted on the forward and named in its last error.
    """
    forward = UdpForward(v6)
    forward.error(forward.datagram, kind=icmpv6.TIME_EXCEEDED if v6 else icmp.TIME_EXCEEDED,
                  code=0)
    assert forward.socket.errors == 1
    assert "time exceeded" in forward.socket.lastError


def withWord(packet: bytes, offset: int, change: Callable[[int], int], size: int = 2) -> bytes:
    value = int.from_bytes(packet[offset:offset + size], "big")
    return packet[:offset] + (change(value) & (1 << 8 * size) - 1).to_bytes(size, "big") + \
        packet[offset + size:]


#: Ways to make the quoted datagram one the forward did not send, by offset
#: of the UDP header: another client port, guest port, source or protocol.
MANGLES: dict[str, Callable[[bytes, int], bytes]] = {
    "client port": lambda p, udp: withWord(p, udp, lambda v: v + 1),
    "guest port": lambda p, udp: withWord(p, udp + 2, lambda v: v + 1),
    "source": lambda p, udp: withWord(p, 23 if udp == 40 else 15, lambda v: v + 7, 1),
    "too short": lambda p, udp: p[:udp + 6],
}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("mangle", sorted(MANGLES))
def test_anErrorQuotingNoForwardDatagramIsIgnored(v6: bool, mangle: str) -> None:
    """
    An error quoting a datagram no forward session sent (another port,
    another source, too short to tell) is counted as ignored, not on the
    forward, and logs nothing (RFC 5927).
    """
    forward = UdpForward(v6)
    with capturedLogs() as events:
        forward.error(MANGLES[mangle](forward.datagram, 40 if v6 else 20))
    assert forward.socket.errors == 0 and loggedLines(events) == []
    expected = 0 if mangle == "too short" else 1  # the TCP engine, a fake here, gets those
    assert forward.engine.errorsIgnored == expected


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_anErrorSentElsewhereOrAboutARemovedForwardIsIgnored(v6: bool) -> None:
    """
    An error sent to another address than the quoted datagram's source,
    or about a forward since removed (its socket closed), is ignored.
    """
    forward = UdpForward(v6)
    forward.error(forward.datagram, to=router6fakes.DNS if v6 else bytes([10, 0, 2, 3]))
    forward.socket.transport = None
    forward.error(forward.datagram)
    assert forward.socket.errors == 0 and forward.engine.errorsIgnored == 2


def test_slirpPrintShowsTheForwardsErrors() -> None:
    """
    C{slirp/print} shows a UDP forward's ICMP errors from the guest and the
    last one; a forward without any, none.
    """
    forward = UdpForward(False)
    forward.error(forward.datagram)
    svc: Any = type("Service", (), {})()
    svc.forwards = {"udp::7000-10.0.2.15:5000": type("Port", (), {"protocol": forward.socket}),
                    "tcp::2222-:22": object()}
    assert forwardLines(svc) == [
        " forward udp::7000-10.0.2.15:5000: 1 ICMP errors from the guest, last ICMP port "
        "unreachable from 10.0.2.15:5000",
        " forward tcp::2222-:22"]
