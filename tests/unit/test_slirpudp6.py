"""
The UDP engine of slirp (L{vtwisted.slirp.udp}) for IPv6 guests, through
its dual-stack host sockets to loopback servers of both families.  Nothing
leaves the loopback addresses; the tests skip on a host without C{::1} (and
fail there with C{VTWISTED_REQUIRE_PEERS=1}).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest_twisted
from ipv6loopback import DNS6, GATEWAY6, GUEST6, _answer, _server, needIpv6Loopback
from reactortools import until
from slirptcpharness import GATEWAY, GUEST
from twisted.internet import reactor
from twisted.internet.address import IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock

from vtwisted.slirp.udp import UdpNat, _v6only
from vtwisted.testing import FakeGuestNetwork
from vtwisted.wire.checksum import checksumValid, pseudoHeaderSumV4, pseudoHeaderSumV6
from vtwisted.wire.udp import UDPHeader


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
