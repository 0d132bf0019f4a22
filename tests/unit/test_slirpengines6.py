"""
The slirp engines for IPv6 guests: TCP (L{vtwisted.slirp.tcp}) against a
memory reactor and against real sockets on C{::1}, UDP (L{vtwisted.slirp.udp})
through its dual-stack host sockets to loopback servers of both families,
and the IPv6 half of L{FakeGuestNetwork}.  Nothing leaves the loopback
addresses; the real-socket tests skip on a host without C{::1} (and fail
there with C{VTWISTED_REQUIRE_PEERS=1}).
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
from typing import Any

import pytest
import pytest_twisted
from helpers import unavailable
from reactortools import until
from slirptcpharness import GATEWAY, GUEST, GUEST_ISN, GUEST_PORT, Harness, mssOption
from test_slirptcp_sockets import ScriptedGuest, exchangeMegabytes
from twisted.internet import reactor
from twisted.internet.address import IPv6Address
from twisted.internet.error import CannotListenError, ConnectionRefusedError, TimeoutError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from vtwisted.slirp.addresses import guestEndpoint, hostEndpoint, unmapped
from vtwisted.slirp.tcp import TcpNat
from vtwisted.slirp.udp import UdpNat, _v6only
from vtwisted.testing import FakeGuestNetwork
from vtwisted.wire.checksum import checksumValid, pseudoHeaderSumV4, pseudoHeaderSumV6
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.tcp import ACK, RST, SYN, TCPHeader
from vtwisted.wire.udp import UDPHeader

GUEST6 = ipaddress.IPv6Address("fec0::15").packed
GATEWAY6 = ipaddress.IPv6Address("fec0::2").packed
DNS6 = ipaddress.IPv6Address("fec0::3").packed
NEIGHBOUR6 = ipaddress.IPv6Address("fec0::9").packed
REMOTE6 = ipaddress.IPv6Address("2001:db8::7").packed


def needIpv6Loopback() -> None:
    """
    Make sure this host can bind C{::1}; skip (or fail, when peers are
    required) if not.
    """
    if not socket.has_ipv6:
        unavailable("Python was built without IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        unavailable(f"no IPv6 loopback: {e}")


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


# UDP through the dual-stack host sockets.


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _server(family: socket.AddressFamily, host: str) -> socket.socket:
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.setblocking(False)
    return server


async def _answer(server: socket.socket) -> tuple[bytes, Any]:
    """
    Wait for one datagram on C{server} and send it back in capitals.
    """
    await until(lambda: _readable(server), what="a datagram")
    data, peer = server.recvfrom(2000)
    server.sendto(data.upper(), peer)
    return data, peer


def _validUdp(src: bytes, dst: bytes, datagram: bytes) -> bool:
    pseudo = pseudoHeaderSumV6 if len(src) == 16 else pseudoHeaderSumV4
    return checksumValid(datagram, pseudo(src, dst, 17, len(datagram)))


@pytest_twisted.ensureDeferred
async def test_ipv6DatagramToTheGatewayReachesIpv6LoopbackAndComesBack() -> None:
    """
    An IPv6 guest's datagram to the gateway reaches an echo server on
    C{::1}; the answer comes to the guest from the IPv6 gateway and the
    server's port, with a valid IPv6 UDP checksum.
    """
    needIpv6Loopback()
    echo = _server(socket.AF_INET6, "::1")
    network = FakeGuestNetwork()
    engine = UdpNat(network, reactor)
    try:
        port = echo.getsockname()[1]
        engine.datagramReceived(GUEST6, 5000, GATEWAY6, port, b"hello six", b"")
        data, peer = await _answer(echo)
        assert data == b"hello six" and peer[0] == "::1"
        await until(lambda: network.ip, what="the answer")
        [(src, dst, protocol, datagram, _)] = network.ip
        header = UDPHeader.parse(datagram)
        assert (src, dst, protocol) == (GATEWAY6, GUEST6, 17)
        assert (header.srcPort, header.dstPort, datagram[8:]) == (port, 5000, b"HELLO SIX")
        assert header.checksum and _validUdp(src, dst, datagram)
        assert engine.dualStack and engine.mappings[(GUEST6, 5000)].mapped
        assert network.drops == []
    finally:
        engine.close()
        echo.close()


@pytest_twisted.ensureDeferred
async def test_ipv6DnsQueryReachesAnIpv4ResolverAndAnswersFromTheIpv6Proxy() -> None:
    """
    An IPv6 guest's query to the IPv6 DNS proxy reaches the host's resolver
    on 127.0.0.1, and the answer comes back from the IPv6 proxy's port 53.
    """
    needIpv6Loopback()
    resolver = _server(socket.AF_INET, "127.0.0.1")
    network = FakeGuestNetwork(hostNameserver="127.0.0.1",
                               resolverPort=resolver.getsockname()[1])
    engine = UdpNat(network, reactor)
    try:
        engine.datagramReceived(GUEST6, 5353, DNS6, 53, b"query", b"")
        data, peer = await _answer(resolver)
        assert data == b"query" and peer[0] == "127.0.0.1"
        await until(lambda: network.ip, what="the answer")
        [(src, dst, _, datagram, _)] = network.ip
        header = UDPHeader.parse(datagram)
        assert (src, dst, header.srcPort, header.dstPort) == (DNS6, GUEST6, 53, 5353)
        assert datagram[8:] == b"QUERY" and _validUdp(src, dst, datagram)
    finally:
        engine.close()
        resolver.close()


@pytest_twisted.ensureDeferred
async def test_ipv4GuestWorksThroughTheDualStackSocket() -> None:
    """
    An IPv4 guest's datagram leaves a dual-stack socket for 127.0.0.1 and
    the answer comes back from the IPv4 gateway; its DNS answer from the
    IPv4 proxy, though the resolver is the same.
    """
    needIpv6Loopback()
    echo = _server(socket.AF_INET, "127.0.0.1")
    network = FakeGuestNetwork(hostNameserver="127.0.0.1", resolverPort=echo.getsockname()[1])
    engine = UdpNat(network, reactor)
    try:
        port = echo.getsockname()[1]
        engine.datagramReceived(GUEST, 4000, GATEWAY, port, b"four", b"")
        await _answer(echo)
        engine.datagramReceived(GUEST, 4001, network.nameserver, 53, b"dns", b"")
        await _answer(echo)
        await until(lambda: len(network.ip) == 2, what="the answers")
        answers = {}
        for src, dst, _, datagram, _ in network.ip:
            header = UDPHeader.parse(datagram)
            assert dst == GUEST and _validUdp(src, dst, datagram)
            answers[(src, header.srcPort, header.dstPort)] = datagram[8:]
        assert answers == {(GATEWAY, port, 4000): b"FOUR", (network.nameserver, 53, 4001): b"DNS"}
        assert all(mapping.mapped for mapping in engine.mappings.values())
    finally:
        engine.close()
        echo.close()


class RefusingReactor(Clock):
    """
    A reactor whose host has no IPv6: binding C{::} fails.
    """

    def __init__(self) -> None:
        super().__init__()
        self.interfaces: list[str] = []
        self.writes: list[tuple[bytes, tuple[str, int]]] = []

    def listenUDP(self, port: int, protocol: Any, interface: str, maxPacketSize: int) -> Any:
        self.interfaces.append(interface)
        if interface == "::":
            raise CannotListenError(interface, port, OSError(errno.EAFNOSUPPORT, "no IPv6"))
        writes = self.writes

        class Transport:
            def write(self, data: bytes, addr: tuple[str, int]) -> None:
                writes.append((data, addr))

            def stopListening(self) -> None:
                pass

        protocol.transport = Transport()
        return protocol.transport


def test_withoutIpv6HostSocketsAreIpv4AndIpv6DestinationsUnsupported() -> None:
    """
    When C{::} cannot be bound the engine falls back to IPv4 sockets for
    good: IPv4 destinations are written plainly, IPv6 ones are dropped as
    unsupported and answered with an unreachable.
    """
    clock = RefusingReactor()
    network = FakeGuestNetwork()
    engine = UdpNat(network, clock)
    engine.datagramReceived(GUEST, 4000, GATEWAY, 7, b"a", b"")
    engine.datagramReceived(GUEST, 4001, GATEWAY, 7, b"b", b"")
    engine.datagramReceived(GUEST6, 5000, GATEWAY6, 7, b"c", b"six")
    assert clock.interfaces == ["::", "", "", ""]
    assert clock.writes == [(b"a", ("127.0.0.1", 7)), (b"b", ("127.0.0.1", 7))]
    assert engine.dualStack is False
    assert [reason for reason, _ in network.drops] == ["unsupported"]
    assert "[::1]:7" in network.drops[0][1]
    assert network.unreachable == [(b"six", 0)]
    engine.close()


def test_v6onlyHostFallsBackToIpv4Sockets() -> None:
    """
    On a host with C{bindv6only=1} the first C{::} socket is closed and the
    engine uses IPv4 sockets from then on, with a fresh protocol.
    """
    needIpv6Loopback()
    clock = RefusingReactor()
    stopped: list[Any] = []
    v6only = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    v6only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)

    class Port:
        socket = v6only

        def __init__(self, protocol: Any) -> None:
            self.protocol = protocol

        def stopListening(self) -> None:
            stopped.append(self.protocol)

    refusing = clock.listenUDP

    def listenUDP(port: int, protocol: Any, interface: str, maxPacketSize: int) -> Any:
        if interface == "::":
            clock.interfaces.append(interface)
            return Port(protocol)
        return refusing(port, protocol, interface, maxPacketSize)

    clock.listenUDP = listenUDP  # type: ignore[method-assign]
    network = FakeGuestNetwork()
    engine = UdpNat(network, clock)
    try:
        engine.datagramReceived(GUEST, 4000, GATEWAY, 7, b"a", b"")
        engine.datagramReceived(GUEST, 4001, GATEWAY, 7, b"b", b"")
        assert clock.interfaces == ["::", "", ""] and engine.dualStack is False
        [first] = stopped
        assert first is not engine.mappings[(GUEST, 4000)]
        assert not engine.mappings[(GUEST, 4000)].mapped
        assert clock.writes == [(b"a", ("127.0.0.1", 7)), (b"b", ("127.0.0.1", 7))]
    finally:
        engine.close()
        v6only.close()


def test_otherListenFailuresDoNotGiveUpIpv6() -> None:
    """
    A failure to bind C{::} for another reason (no file descriptors) drops
    the datagram as busy and keeps trying dual-stack sockets.
    """
    clock = Clock()

    def listenUDP(port: int, protocol: Any, interface: str, maxPacketSize: int) -> Any:
        raise CannotListenError(interface, port, OSError(errno.EMFILE, "too many"))

    clock.listenUDP = listenUDP  # type: ignore[attr-defined]
    network = FakeGuestNetwork()
    engine = UdpNat(network, clock)
    engine.datagramReceived(GUEST, 4000, GATEWAY, 7, b"a", b"")
    assert engine.dualStack is None and engine.mappings == {}
    assert [reason for reason, _ in network.drops] == ["busy"]
    engine.close()


def test_v6onlySocketsAreNoticed() -> None:
    """
    A socket that refuses IPv4 (C{bindv6only=1}) is told from a dual-stack one.
    """
    needIpv6Loopback()

    class Port:
        def __init__(self, v6only: int) -> None:
            self.socket = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)

    ports = [Port(1), Port(0)]
    try:
        assert [_v6only(port) for port in ports] == [True, False]
        assert not _v6only(object())
    finally:
        for port in ports:
            port.socket.close()


def test_ipv6MappingIsDescribedInBrackets() -> None:
    """
    The console line of an IPv6 guest's mapping names it in brackets.
    """
    clock = Clock()

    class Port:
        def getHost(self) -> Any:
            return IPv6Address("UDP", "::", 33333)

        def stopListening(self) -> None:
            pass

    def listenUDP(port: int, protocol: Any, interface: str, maxPacketSize: int) -> Any:
        protocol.transport = type("T", (), {"write": lambda self, d, a: None})()
        return Port()

    clock.listenUDP = listenUDP  # type: ignore[attr-defined]
    engine = UdpNat(FakeGuestNetwork(), clock)
    engine.datagramReceived(GUEST6, 5000, GATEWAY6, 7, b"a", b"")
    assert engine.describe() == [
        "UDP [fec0::15]:5000 via host port 33333: 1 sent, 0 received, 0 ICMP errors"]
    engine.close()


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
