"""
The TCP engine of slirp (L{vtwisted.slirp.tcp}) for IPv6 guests, against a
memory reactor and against real sockets on C{::1}, and the IPv6 half of
L{FakeGuestNetwork}.  The UDP engine for IPv6 guests is tested in
test_slirpudp6.py.  Nothing leaves the loopback addresses; the real-socket
tests skip on a host without C{::1} (and fail there with
C{VTWISTED_REQUIRE_PEERS=1}).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from ipv6loopback import DNS6, GATEWAY6, GUEST6, NEIGHBOUR6, REMOTE6, needIpv6Loopback
from slirptcpharness import GATEWAY, GUEST, GUEST_ISN, GUEST_PORT, Harness, mssOption
from test_slirptcp_sockets import ScriptedGuest, exchangeMegabytes
from twisted.internet.address import IPv6Address
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from vtwisted.slirp.addresses import guestEndpoint, hostEndpoint, unmapped
from vtwisted.slirp.tcp import TcpNat
from vtwisted.testing import FakeGuestNetwork
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.tcp import ACK, RST, SYN, TCPHeader


@pytest.fixture
def h6() -> Harness:
    return Harness(guest=GUEST6, dst=GATEWAY6)


# TCP against a memory reactor.


def test_synToTheIpv6GatewayConnectsToIpv6Loopback(h6: Harness) -> None:
    """
    An IPv6 guest's SYN to the gateway connects to C{::1}; the SYN-ACK
    comes from the gateway, offers the MTU less 60 bytes and sizes segments
    the same.
    """
    h6.syn(mssOption(9000))
    [(host, port, _, timeout, _)] = h6.clock.tcpClients
    assert (host, port) == ("::1", 80)
    assert h6.network.tcp == []
    h6.connectHost()
    [(src, dst, synAck, payload, mss)] = h6.network.takeTcp()
    assert (src, dst) == (GATEWAY6, GUEST6)
    assert synAck.flags == SYN | ACK and synAck.ack == GUEST_ISN + 1
    assert synAck.options[:4] == mssOption(1500 - 60)
    assert mss == 1440 and payload == b""


def test_ipv6MssFollowsTheMtuAndDefaultsTo1220() -> None:
    """
    Without an MSS option an IPv6 guest takes 1220-byte segments, an IPv4
    one 536; our MSS is the MTU less 60 (IPv6) or 40 (IPv4) bytes.
    """
    for guest, dst, default, ours in ((GUEST6, GATEWAY6, 1220, 8940), (GUEST, GATEWAY, 536, 8960)):
        h = Harness(guest=guest, dst=dst, mtu=9000)
        h.syn()
        h.connectHost()
        [(_, _, synAck, _, _)] = h.network.takeTcp()
        assert synAck.options[:4] == mssOption(ours)
        [connection] = h.nat.connections.values()
        assert connection.mss == default


def test_ipv6HostDataIsSegmentedAtTheCappedMss() -> None:
    """
    A guest offering more than the MTU allows is held to the MTU less 60.
    """
    h = Harness(guest=GUEST6, dst=GATEWAY6, mtu=1280)
    transport = h.open(options=mssOption(65000))
    h.host(transport).dataReceived(b"y" * 3000)
    segments = h.network.takeTcp()
    assert [len(payload) for *_, payload, _ in segments] == [1220, 1220, 560]
    assert {(src, dst, mss) for src, dst, _, _, mss in segments} == {(GATEWAY6, GUEST6, 1220)}


def test_describeWritesIpv6EndpointsInBrackets(h6: Harness) -> None:
    """
    A console line names IPv6 ends as C{[address]:port}.
    """
    h6.open()
    [line] = h6.nat.describe()
    assert line.startswith(f"[fec0::15]:{GUEST_PORT} -> [::1]:80 established")


def test_strayIpv6SegmentGetsAnIpv6Rst(h6: Harness) -> None:
    """
    A segment for no connection is answered with a RST between the same
    IPv6 addresses.
    """
    h6.send(ACK, seq=5000, ack=777)
    [(src, dst, rst, _, mss)] = h6.network.takeTcp()
    assert (src, dst) == (GATEWAY6, GUEST6)
    assert rst.flags == RST and rst.seq == 777
    assert mss == 1440 and h6.nat.strays == 1


def test_refusedIpv6ConnectAnswersRstAndFailureIcmpv6(h6: Harness) -> None:
    """
    A refused host connect is a RST to the IPv6 guest; another failure an
    unreachable about the guest's IPv6 packet.
    """
    h6.syn()
    factory = h6.clock.tcpClients[-1][2]
    factory.clientConnectionFailed(h6.clock.connectors[-1], Failure(ConnectionRefusedError()))
    [(src, dst, rst, _, _)] = h6.network.takeTcp()
    assert (src, dst, rst.flags) == (GATEWAY6, GUEST6, RST | ACK)
    packet = h6.syn(dport=81)
    h6.clock.tcpClients[-1][2].clientConnectionFailed(h6.clock.connectors[-1],
                                                      Failure(TimeoutError()))
    [(quoted, code)] = h6.network.unreachable
    assert quoted == packet and quoted[0] >> 4 == 6 and code == 1


def test_ipv6LanAndUnknownDestinations(h6: Harness) -> None:
    """
    A SYN to another address of the IPv6 LAN is unreachable; one to a
    global IPv6 address connects there.
    """
    packet = h6.syn(dst=NEIGHBOUR6)
    assert h6.network.unreachable == [(packet, 0)] and h6.clock.tcpClients == []
    h6.syn(dst=REMOTE6, dport=443)
    assert h6.clock.tcpClients[-1][:2] == ("2001:db8::7", 443)
    [connection] = h6.nat.connections.values()
    assert connection.hostLabel == "[2001:db8::7]:443"


def test_forwardFromAnIpv6ClientShowsTheIpv4Gateway() -> None:
    """
    A forward's client on an IPv6 host address reaches the IPv4 guest from
    the IPv4 gateway; the label names the client in brackets.
    """
    nat = TcpNat(FakeGuestNetwork(), MemoryReactorClock())
    factory = nat.forwardFactory(GUEST, 22)
    protocol = factory.buildProtocol(None)
    assert protocol is not None

    class Transport:
        paused = False

        def getPeer(self) -> IPv6Address:
            return IPv6Address("TCP", "::1", 50000)

        def pauseProducing(self) -> None:
            self.paused = True

    transport = Transport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    [(key, connection)] = nat.connections.items()
    assert key == (GUEST, 22, GATEWAY, 50000)
    assert connection.hostLabel == "[::1]:50000 (forward)" and transport.paused
    [(src, dst, syn, _, _)] = nat.network.takeTcp()  # type: ignore[attr-defined]
    assert (src, dst, syn.flags) == (GATEWAY, GUEST, SYN)
    assert syn.options[:4] == mssOption(1460)


# TCP against real sockets on ::1.


@pytest_twisted.ensureDeferred
async def test_megabytesCrossIpv6LoopbackBothWays() -> None:
    """
    An IPv6 guest's megabyte reaches a server on C{::1} intact (sha256), and
    the server's megabyte comes back intact, then its FIN; every segment
    goes between the IPv6 gateway and the guest.
    """
    needIpv6Loopback()

    def established(guest: ScriptedGuest) -> None:
        [connection] = guest.nat.connections.values()
        assert connection.mss == 1440
        assert connection.transport.getPeer().host == "::1"

    await exchangeMegabytes(ScriptedGuest(GUEST6, GATEWAY6), "::1", established)


# Addresses and the fake network.


def test_endpointsAreWrittenByFamily() -> None:
    """
    IPv4 ends read C{a.b.c.d:port}, IPv6 ends C{[address]:port}.
    """
    assert guestEndpoint(GUEST, 40000) == "10.0.2.15:40000"
    assert guestEndpoint(GUEST6, 40000) == "[fec0::15]:40000"
    assert hostEndpoint("127.0.0.1", 80) == "127.0.0.1:80"
    assert hostEndpoint("::1", 80) == "[::1]:80"
    assert unmapped("::ffff:127.0.0.1") == "127.0.0.1"
    assert unmapped("::ffff:7f00:1") == "::ffff:7f00:1"
    assert unmapped("::1") == "::1"


def test_fakeNetworkFollowsTheAddressPlanOfBothFamilies() -> None:
    """
    L{FakeGuestNetwork} maps guest-side IPv6 addresses as the interface
    says, and has no IPv6 when built without.
    """
    network = FakeGuestNetwork(hostNameserver="192.0.2.53")
    assert (network.gateway6, network.nameserver6) == (GATEWAY6, DNS6)
    assert network.hostAddress(GATEWAY6, 22, 6) == ("::1", 22)
    assert network.hostAddress(DNS6, 53, 17) == ("192.0.2.53", 53)
    assert network.hostAddress(DNS6, 54, 17) is None
    assert network.hostAddress(NEIGHBOUR6, 22, 6) is None
    assert network.hostAddress(REMOTE6, 22, 6) == ("2001:db8::7", 22)
    assert network.guestAddress("::1", v6=True) == GATEWAY6
    assert network.guestAddress("127.0.0.1", v6=True) == GATEWAY6
    assert network.guestAddress("::ffff:127.0.0.1") == GATEWAY
    assert network.guestAddress("::ffff:192.0.2.9") == bytes([192, 0, 2, 9])
    assert network.guestAddress("2001:db8::7", v6=True) == REMOTE6
    assert network.guestAddress("2001:db8::7") == GATEWAY
    network.sendIP(GATEWAY6, GUEST6, 17, b"x")
    network.sendIPv4(GATEWAY, GUEST, 17, b"y")
    assert [entry[:2] for entry in network.ip] == [(GATEWAY6, GUEST6), (GATEWAY, GUEST)]
    off = FakeGuestNetwork(ipv6=False)
    assert off.gateway6 is None and off.nameserver6 is None
    assert off.hostAddress(GATEWAY6, 22, 6) is None
    assert off.guestAddress("::1", v6=True) == GATEWAY


def test_ipv6PacketHelperBuildsIpv6() -> None:
    """
    The test harness's packets follow the guest's family.
    """
    from slirptcpharness import ipPacket

    segment = TCPHeader(1, 2, 3, 0, SYN, 100, 0, 0).pack()
    header = IPv6Header.parse(ipPacket(GUEST6, GATEWAY6, segment))
    assert (header.src, header.dst, header.payloadLength) == (GUEST6, GATEWAY6, 20)
