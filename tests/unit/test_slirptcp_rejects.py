"""
A guest's firewall rejecting a host forward's SYN with an ICMP or ICMPv6
destination unreachable, or the guest answering it with a time exceeded or
parameter problem, through a real slirp router and TCP engine: the forward
fails at once (the host client is reset) when the error quotes the SYN we
sent, and nothing happens for an error quoting anything else or about an
established connection (L{vtwisted.slirp.guesterrors}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import router6fakes
from slirpfakes import GATEWAY, GUEST, ipFrame, noFailuresLogged
from slirptcpharness import HostTransport
from twisted.internet.address import IPv6Address
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from vtwisted.slirp.guesterrors import GuestError
from vtwisted.slirp.router import SlirpRouter
from vtwisted.slirp.tcp import TcpNat
from vtwisted.slirp.tcpsend import FIXED_HEADER
from vtwisted.slirp.tcpstates import ESTABLISHED, SYN_SENT
from vtwisted.wire import icmp, icmpv6, ipv4, ipv6, vnet
from vtwisted.wire.tcp import ACK, SYN

GUEST6, GATEWAY6 = router6fakes.GUEST, router6fakes.GATEWAY
GUEST_PORT, CLIENT_PORT = 22, 5555


class HostTransport6(HostTransport):
    """
    A host client of a forward on C{::1}.
    """

    def getPeer(self) -> IPv6Address:
        return IPv6Address("TCP", "::1", CLIENT_PORT)


class Forward:
    """
    A router and TCP engine with a guest (IPv4 or IPv6) on the LAN, one
    host client of a forward to its port 22, and the SYN sent for it.
    """

    def __init__(self, v6: bool) -> None:
        self.v6 = v6
        clock = Clock()
        router, self.seen, self.guest, self.gateway = router6fakes.routerWithGuest(v6, clock)
        self.router: SlirpRouter = router
        self.nat = router.tcp = TcpNat(router, clock)
        self.transport = HostTransport6() if v6 else HostTransport(("127.0.0.1", CLIENT_PORT))
        protocol = self.nat.forwardFactory(self.guest, GUEST_PORT).buildProtocol(
            self.transport.getPeer())
        assert protocol is not None
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)
        self.syn = self.lastSent()
        (self.connection,) = self.nat.connections.values()

    def lastSent(self) -> bytes:
        """
        The IP packet of the last TCP segment the router sent the guest.
        """
        return self.seen.packets[-1][vnet.HEADER_LENGTH + 14:]

    def unreachable(self, code: int, quoted: bytes, to: bytes | None = None,
                    kind: int | None = None) -> None:
        """
        The guest sends C{to} (by default the SYN's source) a destination
        unreachable (or C{kind}) with C{code} quoting C{quoted}: its IP
        header and the first 8 bytes of TCP over IPv4 (the least RFC 792
        asks; Linux quotes more), all of it over IPv6.
        """
        unreachable = icmpv6.DEST_UNREACHABLE if self.v6 else icmp.DEST_UNREACHABLE
        with noFailuresLogged():
            router6fakes.sendGuestError(self.router, self.v6, kind or unreachable, code,
                                        quoted, to or self.gateway)

    def synAck(self) -> None:
        """
        The guest accepts: its SYN-ACK to our SYN.
        """
        iss = self.connection.iss
        segment = FIXED_HEADER.pack(GUEST_PORT, CLIENT_PORT, 7000, (iss + 1) & 0xFFFFFFFF,
                                    5 << 12 | SYN | ACK, 65535, 0, 0)
        self.nat.segmentReceived(self.guest, self.gateway, segment, b"")

    def stillWaits(self) -> bool:
        """
        Whether the host client is still there, its connection waiting
        for the guest's answer to the SYN.
        """
        return not self.transport.aborted and self.connection.state == SYN_SENT \
            and self.nat.connectionCount == 1


PORT = {False: icmp.PORT, True: icmpv6.PORT_UNREACHABLE}
PROHIBITED = {False: icmp.ADMIN_PROHIBITED, True: icmpv6.ADMIN_PROHIBITED}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("codes, name", [(PORT, "port unreachable"),
                                         (PROHIBITED, "administratively prohibited")])
def test_aRejectedSynResetsTheHostClientAtOnce(v6: bool, codes: dict[bool, int],
                                               name: str) -> None:
    """
    A guest whose firewall answers the forward's SYN with port unreachable
    or administratively prohibited (iptables' and nftables' reject) resets
    the host client at once, counted as refused and logged with the ICMP
    error, as a RST does; not after the SYN's 31 s of retransmissions.
    """
    forward = Forward(v6)
    with capturedLogs() as events:
        forward.unreachable(codes[v6], forward.syn)
    assert forward.transport.aborted and forward.nat.connectionCount == 0
    assert (forward.nat.forwardsRefused, forward.nat.errorsIgnored) == (1, 0)
    (line,) = [formatEvent(e) for e in events if "TCP forward" in formatEvent(e)]
    family = "ICMPv6" if v6 else "ICMP"
    assert f"the guest rejected it ({family} {name})" in line, line


def withWord(packet: bytes, offset: int, change: Callable[[int], int], size: int = 2) -> bytes:
    value = int.from_bytes(packet[offset:offset + size], "big")
    return packet[:offset] + (change(value) & (1 << 8 * size) - 1).to_bytes(size, "big") + \
        packet[offset + size:]


#: Ways to make the quoted SYN one we did not send: by offset of the TCP
#: header's field (seq, source port, destination port) or the IP source.
MANGLES: dict[str, Callable[[bytes, int], bytes]] = {
    "seq": lambda p, tcp: withWord(p, tcp + 4, lambda v: v + 1, 4),
    "seq far off": lambda p, tcp: withWord(p, tcp + 4, lambda v: v + 0x80000000, 4),
    "client port": lambda p, tcp: withWord(p, tcp, lambda v: v + 1),
    "guest port": lambda p, tcp: withWord(p, tcp + 2, lambda v: v + 1),
    "not TCP": lambda p, tcp: withWord(p, 6 if tcp == 40 else 9, lambda v: 132, 1),
    "too short": lambda p, tcp: p[:tcp + 6],
}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("mangle", sorted(MANGLES))
def test_anErrorQuotingAnotherSegmentIsIgnored(v6: bool, mangle: str) -> None:
    """
    An error whose quote is not our SYN (another sequence number, another
    port, not TCP, too short to tell) fails nothing, so that a guest
    cannot reset connections it does not take part in (RFC 5927); it is
    counted, and the SYN-ACK that follows opens the connection.
    """
    forward = Forward(v6)
    forward.unreachable(PORT[v6], MANGLES[mangle](forward.syn, 40 if v6 else 20))
    assert forward.stillWaits()
    assert (forward.nat.forwardsRefused, forward.nat.errorsIgnored) == (0, 1)
    forward.synAck()
    assert forward.connection.state == ESTABLISHED
    assert forward.transport.producerState == "producing"


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_anErrorSentElsewhereIsIgnored(v6: bool) -> None:
    """
    An error sent to another address than the quoted SYN's source (the
    DNS proxy's) is not about our SYN.
    """
    forward = Forward(v6)
    forward.unreachable(PORT[v6], forward.syn,
                        to=router6fakes.DNS if v6 else bytes([10, 0, 2, 3]))
    assert forward.stillWaits() and forward.nat.errorsIgnored == 1


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_tooBigIsNoRejection(v6: bool) -> None:
    """
    Fragmentation needed (IPv4) or packet too big (IPv6) quoting the SYN
    fails nothing: the guest asks for smaller packets, it does not refuse.
    """
    forward = Forward(v6)
    if v6:
        forward.unreachable(0, forward.syn, kind=icmpv6.PACKET_TOO_BIG)
    else:
        forward.unreachable(icmp.FRAGMENTATION_NEEDED, forward.syn)
    assert forward.stillWaits()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_anErrorAboutAnEstablishedConnectionLeavesItOpen(v6: bool) -> None:
    """
    Port unreachable quoting a segment of an established connection is a
    soft error, as Linux takes it: the connection goes on, the host client
    keeps its socket, and the error is counted as ignored.
    """
    forward = Forward(v6)
    forward.synAck()
    ack = forward.lastSent()
    forward.unreachable(PORT[v6], ack)
    forward.unreachable(PORT[v6], forward.syn)
    assert forward.connection.state == ESTABLISHED and not forward.transport.aborted
    assert forward.nat.connectionCount == 1
    assert (forward.nat.forwardsRefused, forward.nat.errorsIgnored) == (0, 2)


#: Time exceeded and parameter problem, by family: (type, code, what the log says).
OTHER_ERRORS = {
    False: [(icmp.TIME_EXCEEDED, 0, "ICMP time exceeded (TTL exceeded in transit)"),
            (icmp.PARAMETER_PROBLEM, 0, "ICMP parameter problem (pointer indicates the "
                                        "error)")],
    True: [(icmpv6.TIME_EXCEEDED, 0, "ICMPv6 time exceeded (hop limit exceeded in "
                                     "transit)"),
           (icmpv6.PARAMETER_PROBLEM, 1, "ICMPv6 parameter problem (unrecognized next "
                                         "header)")],
}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("which", [0, 1], ids=["time-exceeded", "parameter-problem"])
def test_timeExceededOrParameterProblemFailsTheSyn(v6: bool, which: int) -> None:
    """
    A time exceeded or parameter problem quoting the forward's SYN resets
    the host client at once, as Linux's own C{connect} fails on them in
    SYN-SENT; counted as failed (not refused) and logged with the error.
    """
    kind, code, name = OTHER_ERRORS[v6][which]
    forward = Forward(v6)
    with capturedLogs() as events:
        forward.unreachable(code, forward.syn, kind=kind)
    assert forward.transport.aborted and forward.nat.connectionCount == 0
    assert (forward.nat.forwardsFailed, forward.nat.forwardsRefused,
            forward.nat.errorsIgnored) == (1, 0, 0)
    (line,) = [formatEvent(e) for e in events if "TCP forward" in formatEvent(e)]
    assert f"the guest answered it with {name}" in line, line


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("which", [0, 1], ids=["time-exceeded", "parameter-problem"])
def test_timeExceededOrParameterProblemNeedOurSyn(v6: bool, which: int) -> None:
    """
    Those errors are believed as destination unreachable is: one quoting
    another sequence number than our ISN, or a segment of an established
    connection (a soft error), fails nothing and is counted as ignored.
    """
    kind, code, _ = OTHER_ERRORS[v6][which]
    forward = Forward(v6)
    forward.unreachable(code, MANGLES["seq"](forward.syn, 40 if v6 else 20), kind=kind)
    assert forward.stillWaits()
    forward.synAck()
    forward.unreachable(code, forward.lastSent(), kind=kind)
    forward.unreachable(code, forward.syn, kind=kind)
    assert forward.connection.state == ESTABLISHED and not forward.transport.aborted
    assert (forward.nat.forwardsFailed, forward.nat.errorsIgnored) == (0, 3)


def test_routerHandsGuestErrorsToTheEngines() -> None:
    """
    With fake engines: the router hands the TCP engine each destination
    unreachable, time exceeded and parameter problem quoting TCP (or
    nothing it can read), the UDP engine those quoting UDP, with the
    address it went to, the quote and the error (IPv4 and IPv6); and
    neither fragmentation needed nor an error to a multicast group.
    """
    router, _ = router6fakes.makeRouter()
    tcpEngine: Any = router.tcp
    udpEngine: Any = router.udp
    tcp4 = ipv4.IPv4Header(0, 48, 0, 0, 0, 64, ipv4.PROTO_TCP, 0, GATEWAY, GUEST).pack() + \
        bytes(range(28))
    udp4 = ipv4.IPv4Header(0, 36, 0, 0, 0, 64, ipv4.PROTO_UDP, 0, GATEWAY, GUEST).pack() + \
        bytes(range(16))
    for kind, code, quoted in ((icmp.DEST_UNREACHABLE, icmp.PORT, tcp4),
                               (icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED, tcp4),
                               (icmp.TIME_EXCEEDED, 0, tcp4),
                               (icmp.PARAMETER_PROBLEM, 0, udp4),
                               (icmp.DEST_UNREACHABLE, icmp.PORT, bytes(8))):
        router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP,
                                     icmp.errorMessage(kind, code, quoted)))
    tcp6 = ipv6.IPv6Header(0, 0, 20, ipv6.NH_TCP, 64, GATEWAY6, GUEST6).pack() + bytes(20)
    for kind, dst in ((icmpv6.DEST_UNREACHABLE, GATEWAY6),
                      (icmpv6.DEST_UNREACHABLE, router6fakes.ALL_NODES),
                      (icmpv6.TIME_EXCEEDED, GATEWAY6),
                      (icmpv6.PARAMETER_PROBLEM, GATEWAY6)):
        message = icmpv6.errorMessage(kind, 1, tcp6, GUEST6, dst)
        router.frameReceived(router6fakes.frame6(GUEST6, dst, ipv6.NH_ICMPV6, message))
    calls = [(c[1], c[2] and c[2].protocol, c[3]) for c in tcpEngine.calls
             if c[0] == "errorReceived"]
    assert calls == [
        (GATEWAY, 6, GuestError(icmp.DEST_UNREACHABLE, icmp.PORT, False)),
        (GATEWAY, 6, GuestError(icmp.TIME_EXCEEDED, 0, False)),
        (GATEWAY, None, GuestError(icmp.DEST_UNREACHABLE, icmp.PORT, False)),
        (GATEWAY6, 6, GuestError(icmpv6.DEST_UNREACHABLE, 1, True)),
        (GATEWAY6, 6, GuestError(icmpv6.TIME_EXCEEDED, 1, True)),
        (GATEWAY6, 6, GuestError(icmpv6.PARAMETER_PROBLEM, 1, True))]
    (call,) = [c for c in udpEngine.calls if c[0] == "errorReceived"]
    assert call[1] == GATEWAY and call[3] == GuestError(icmp.PARAMETER_PROBLEM, 0, False)
    assert (call[2].src, call[2].dst, call[2].srcPort) == (GATEWAY, GUEST, 0x0001)
