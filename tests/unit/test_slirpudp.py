"""
Tests for the UDP engine of slirp ports (L{vtwisted.slirp.udp}) on real
loopback sockets: replies from the gateway or the DNS proxy, idle mappings,
and runs of datagrams both ways.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

import pytest
import pytest_twisted
from slirpfakes import DNS, GATEWAY, GUEST
from twisted.internet.task import Clock
from zope.interface import implementer

from vtwisted.interfaces import IGuestNetwork
from vtwisted.slirp.packets import udpDatagram
from vtwisted.slirp.udp import UdpNat
from vtwisted.wire.checksum import checksumValid, pseudoHeaderSumV4
from vtwisted.wire.udp import UDPHeader

# The UDP engine, on real loopback sockets


@implementer(IGuestNetwork)
class UdpGuest:
    """
    A router stand-in that records what the UDP engine sends to guests.
    """

    gateway = GATEWAY
    nameserver = DNS
    gateway6 = None
    nameserver6 = None
    restricted = False
    mtu = 1500
    maxSegment = 1460

    def __init__(self, resolver: tuple[str, int]) -> None:
        self.sent: list[tuple[bytes, bytes, bytes]] = []
        self.unreachable: list[tuple[bytes, int]] = []
        self.resolver = resolver

    def hostAddress(self, dst: bytes, port: int, protocol: int) -> tuple[str, int] | None:
        if dst == GATEWAY:
            return ("127.0.0.1", port)
        if dst == DNS:
            return self.resolver if port == 53 else None
        return None

    def guestAddress(self, host: str, v6: bool = False) -> bytes:
        assert not v6 and not host.startswith("::ffff:"), "IPv4 peers come unmapped"
        return GATEWAY if host == "127.0.0.1" else socket.inet_aton(host)

    def sendIP(self, src: bytes, dst: bytes, protocol: int, payload: bytes,
               ttl: int = 64) -> None:
        self.sent.append((src, dst, payload))

    def sendIPv4(self, src: bytes, dst: bytes, protocol: int, payload: bytes,
                 ttl: int = 64) -> None:
        raise AssertionError("the UDP engine sends through sendIP")

    def sendTcp(self, src: bytes, dst: bytes, header: bytes, payload: Any, mss: int) -> None:
        raise AssertionError("the UDP engine sends no TCP")

    def sendIcmpError(self, packet: bytes, kind: int, code: int, mtu: int,
                      reporter: bytes) -> None:
        raise AssertionError("the UDP engine relays no ICMP errors")

    def sendUdp(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                payload: bytes) -> None:
        self.sendIP(src, dst, 17, udpDatagram(src, dst, srcPort, dstPort, payload))

    def sendUdpRun(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                   payloads: list[bytes]) -> None:
        for payload in payloads:
            self.sendUdp(src, dst, srcPort, dstPort, payload)

    def sendUnreachable(self, packet: bytes, code: int) -> None:
        self.unreachable.append((packet, code))

    def dropped(self, reason: str, message: str) -> None:
        pass


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    from reactortools import until

    await until(predicate, timeout)


@pytest_twisted.ensureDeferred
async def test_udpRepliesComeBackFromTheGatewayOrTheDnsProxy() -> None:
    """Datagrams reach loopback servers; answers return from .2:port and from .3:53."""
    from twisted.internet import reactor

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.setblocking(False)
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 0))
    resolver.setblocking(False)
    network = UdpGuest(resolver.getsockname())
    engine = UdpNat(network, reactor)
    try:
        engine.datagramReceived(GUEST, 4000, GATEWAY, echo.getsockname()[1], b"hello", b"")
        engine.datagramReceived(GUEST, 4000, DNS, 53, b"query", b"")
        for server in (echo, resolver):
            await _until(lambda s=server: _readable(s))
            data, peer = server.recvfrom(100)
            server.sendto(data.upper(), peer)
        await _until(lambda: len(network.sent) == 2)
        replies = {}
        for src, dst, payload in network.sent:
            header = UDPHeader.parse(payload)
            assert dst == GUEST and header.dstPort == 4000
            assert checksumValid(payload, pseudoHeaderSumV4(src, dst, 17, len(payload)))
            replies[(src, header.srcPort)] = payload[8:]
        assert replies == {(GATEWAY, echo.getsockname()[1]): b"HELLO", (DNS, 53): b"QUERY"}
        assert len(engine.mappings) == 1, "one host socket per guest source"
        engine.datagramReceived(GUEST, 4000, DNS, 80, b"x", b"packet")
        assert network.unreachable == [(b"packet", 0)]
    finally:
        engine.close()
        echo.close()
        resolver.close()


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def _engineWithFakeSockets() -> tuple[Clock, UdpNat, list[int]]:
    """
    A UDP engine on a L{Clock} whose host sockets are fakes numbered 0, 1, ...
    in the order opened; the list gets the number of each socket closed.
    """
    clock = Clock()
    closed: list[int] = []

    class FakePort:
        def __init__(self, n: int) -> None:
            self.n = n

        def stopListening(self) -> None:
            closed.append(self.n)

        def getHost(self) -> Any:
            return type("A", (), {"port": 40000 + self.n})()

    ports = itertools.count()

    def listenUDP(port: int, protocol: Any, interface: str, maxPacketSize: int) -> FakePort:
        protocol.transport = type("T", (), {"write": lambda self, d, a: None})()
        return FakePort(next(ports))

    clock.listenUDP = listenUDP  # type: ignore[attr-defined]
    return clock, UdpNat(UdpGuest(("127.0.0.1", 53)), clock), closed


def test_idleUdpMappingsClose() -> None:
    """A DNS-only mapping closes after about 10 s idle, another after about 240 s."""
    clock, engine, closed = _engineWithFakeSockets()
    engine.datagramReceived(GUEST, 1, DNS, 53, b"q", b"")
    engine.datagramReceived(GUEST, 2, GATEWAY, 9, b"q", b"")
    clock.advance(5)
    clock.advance(5)
    clock.advance(5)
    assert closed == [0]
    for _ in range(48):
        clock.advance(5)
    assert closed == [0, 1]
    engine.close()


def test_udpEngineSendsEachTurnsDatagramsInRuns() -> None:
    """Datagrams read in one reactor turn leave after it, one run per flow and length."""
    from vtwisted.slirp.udp import RUN_DATAGRAMS, UdpNat

    clock = Clock()
    runs: list[tuple[int, int]] = []

    class Network(UdpGuest):
        def sendUdpRun(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                       payloads: list[bytes]) -> None:
            runs.append((srcPort, len(payloads)))

    engine = UdpNat(Network(("127.0.0.1", 53)), clock)
    for _ in range(RUN_DATAGRAMS + 3):
        engine.queue(GATEWAY, GUEST, 1, 2, b"x" * 100)
    engine.queue(GATEWAY, GUEST, 1, 2, b"short")
    engine.queue(GATEWAY, GUEST, 1, 2, b"x" * 100)
    engine.queue(GATEWAY, GUEST, 7, 2, b"x" * 100)
    assert runs == [], "nothing leaves before the turn ends"
    clock.advance(0)
    assert runs == [(1, RUN_DATAGRAMS), (1, 4), (1, 1), (7, 1)]
    engine.close()


@pytest.mark.parametrize("offload", [True, False])
@pytest_twisted.ensureDeferred
async def test_runOfGuestDatagramsReachesTheHostAsTheSameDatagrams(offload: bool) -> None:
    """A USO run leaves in one UDP_SEGMENT send (or one by one) and arrives datagram by datagram."""
    from twisted.internet import reactor

    from vtwisted.slirp.packets import SegmentRun

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    engine = UdpNat(UdpGuest(("127.0.0.1", 53)), reactor)
    engine.segmentOffload = offload
    datagrams = [bytes([n]) * 1000 for n in range(5)] + [b"tail"]
    try:
        engine.datagramsReceived(GUEST, 4000, GATEWAY, server.getsockname()[1],
                                 SegmentRun(memoryview(b"".join(datagrams)), 1000), b"")
        got: list[bytes] = []

        def drained() -> bool:
            while _readable(server):
                got.append(server.recv(2000))
            return len(got) >= len(datagrams)

        await _until(drained)
        assert got == datagrams
        assert engine.segmentOffload == offload, "the kernel took UDP_SEGMENT"
    finally:
        engine.close()
        server.close()


def test_answeredDnsMappingsMakeRoomInAFullTable() -> None:
    """
    With the table full, a new guest source gets a socket in place of a
    DNS-only mapping whose every query was answered; one still waiting
    for an answer stays open longer than flows never answered.
    """
    clock, engine, closed = _engineWithFakeSockets()
    engine.maxMappings = 4
    for source in (1, 2, 3):
        engine.datagramReceived(GUEST, source, DNS, 53, b"query", b"")
    engine.datagramReceived(GUEST, 4, GATEWAY, 9, b"data", b"")
    engine.datagramReceived(GUEST, 2, DNS, 53, b"AAAA query", b"")
    for source in (1, 2):
        engine.mappings[(GUEST, source)].datagramReceived(b"answer", ("127.0.0.1", 53))
    engine.datagramReceived(GUEST, 5, GATEWAY, 9, b"data", b"")
    assert closed == [0], "only source 1 had all its queries answered"
    assert sorted(port for _, port in engine.mappings) == [2, 3, 4, 5]
    engine.datagramReceived(GUEST, 6, GATEWAY, 9, b"data", b"")
    assert closed == [0, 3], "then the oldest never answered: source 4, not a DNS query"
    assert sorted(port for _, port in engine.mappings) == [2, 3, 5, 6]
    engine.close()


class _Recording:
    """
    A UDP transport that records what is written to it.
    """

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))


def test_forwardClientsKeepTheirSessionsWhileOthersComeAndGo() -> None:
    """
    A UDP forward's client that the guest keeps sending to (a stream it
    asked for once) hears it through the forward's socket however many
    other clients came since; a client idle for minutes is forgotten.
    """
    clock = Clock()
    mappings: list[_Recording] = []

    def listenUDP(port: int, protocol: Any, interface: str, maxPacketSize: int) -> Any:
        protocol.transport = _Recording()
        mappings.append(protocol.transport)
        return type("P", (), {"stopListening": lambda self: None})()

    clock.listenUDP = listenUDP  # type: ignore[attr-defined]
    engine = UdpNat(UdpGuest(("127.0.0.1", 53)), clock)
    forward = engine.forwardSocket(GUEST, 5000)
    recording = _Recording()
    forward.transport = recording  # type: ignore[assignment]
    forward.datagramReceived(b"play", ("127.0.0.1", 40000))
    for sweep in range(60):
        for n in range(30):
            forward.datagramReceived(b"hello", ("127.0.0.1", 1000 + sweep * 30 + n))
        engine.datagramReceived(GUEST, 5000, GATEWAY, 40000, b"frame", b"")
        clock.advance(5)
    sent = recording.written
    assert sent == [(b"frame", ("127.0.0.1", 40000))] * 60
    assert mappings == [], "nothing left through another socket"
    for _ in range(100):
        clock.advance(5)
    engine.datagramReceived(GUEST, 5000, GATEWAY, 40000, b"late", b"")
    assert len(sent) == 60 and len(mappings) == 1, "the idle session was forgotten"
    engine.close()


# A full table makes room (vtwisted.slirp.udptable)


def _answer(engine: UdpNat, source: int, times: int = 1) -> None:
    """
    The host peer of guest source C{source} answers it C{times} times.
    """
    for _ in range(times):
        engine.mappings[(GUEST, source)].datagramReceived(b"answer", ("127.0.0.1", 9))


def test_burstOfOneShotFlowsNeverStopsNewFlows() -> None:
    """
    Thousands of guest source ports, each sending once (a soak's one-shot
    flows), never leave the next flow or DNS query without a socket, and a
    busy stream keeps its own throughout.
    """
    from vtwisted.slirp.udp import MAX_MAPPINGS

    clock, engine, closed = _engineWithFakeSockets()
    drops: list[tuple[str, str]] = []
    engine.network.dropped = lambda reason, message: drops.append((reason, message))  # type: ignore[method-assign]
    engine.datagramReceived(GUEST, 1, GATEWAY, 9, b"stream", b"")
    stream = engine.mappings[(GUEST, 1)]
    for n in range(3 * MAX_MAPPINGS):
        engine.datagramReceived(GUEST, 10000 + n, GATEWAY, 9, b"once", b"")
        if n % 100 == 0:
            engine.datagramReceived(GUEST, 1, GATEWAY, 9, b"stream", b"")
            _answer(engine, 1)
            clock.advance(1)
    engine.datagramReceived(GUEST, 2, DNS, 53, b"query", b"")
    assert (GUEST, 2) in engine.mappings, "the DNS query has its socket"
    assert engine.mappings.get((GUEST, 1)) is stream, "the stream was never evicted"
    assert drops == []
    assert len(engine.mappings) == MAX_MAPPINGS
    assert engine.eviction.evicted == 2 * MAX_MAPPINGS + 2
    assert len(closed) == engine.eviction.evicted
    assert engine.summary().startswith(f"UDP: {MAX_MAPPINGS} of {MAX_MAPPINGS} host sockets "
                                       f"in use, {2 * MAX_MAPPINGS + 2} evicted for new guest "
                                       "sources; 0 ICMP errors")
    engine.close()


def test_busyStreamsOutliveIdleMappings() -> None:
    """
    In a full table of streams, a new source takes the place of the one
    idle longest; streams busy both ways in the last sweep go last.
    """
    clock, engine, closed = _engineWithFakeSockets()
    engine.maxMappings = 4
    for source in (1, 2, 3, 4):
        for _ in range(2):
            engine.datagramReceived(GUEST, source, GATEWAY, 9, b"data", b"")
        _answer(engine, source)
    clock.advance(5)  # every stream was active
    for sweep in range(3):
        for source in (1, 4) if sweep == 2 else (1, 3, 4):
            engine.datagramReceived(GUEST, source, GATEWAY, 9, b"data", b"")
            _answer(engine, source)
        clock.advance(5)  # 2 is idle for three sweeps, 3 for one
    for source in (5, 6, 7):
        engine.datagramReceived(GUEST, source, GATEWAY, 9, b"new", b"")
    assert closed == [1, 2, 0], "idle 2, then idle 3, then the oldest busy one"
    engine.close()


def test_mappingUsedSinceItWasRankedStays() -> None:
    """
    A mapping ranked for eviction that carries a datagram before its turn
    comes is passed over.
    """
    clock, engine, closed = _engineWithFakeSockets()
    engine.maxMappings = 4
    for source in (1, 2, 3, 4):
        engine.datagramReceived(GUEST, source, GATEWAY, 9, b"once", b"")
    engine.datagramReceived(GUEST, 5, GATEWAY, 9, b"once", b"")
    assert closed == [0]
    _answer(engine, 2)
    engine.datagramReceived(GUEST, 6, GATEWAY, 9, b"once", b"")
    assert closed == [0, 2], "source 2 was answered after the ranking: source 3 went"
    engine.close()


def test_fullTableIsRankedOncePerBatchAndLoggedOnce() -> None:
    """
    A burst of new sources at a full table looks at the whole table once
    per L{CANDIDATES} of them, not once each, and the log says once that
    the table is full.
    """
    from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
    from zope.interface import provider

    from vtwisted.slirp.udptable import CANDIDATES, EvictionOrder

    clock, engine, closed = _engineWithFakeSockets()
    engine.maxMappings = 256
    ranks: list[int] = []
    original = EvictionOrder._rank

    def counting(self: EvictionOrder) -> bool:
        ranks.append(len(self.mappings))
        return original(self)

    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        EvictionOrder._rank = counting  # type: ignore[method-assign]
        for source in range(256 + 4 * CANDIDATES):
            engine.datagramReceived(GUEST, 1000 + source, GATEWAY, 9, b"once", b"")
    finally:
        EvictionOrder._rank = original  # type: ignore[method-assign]
        globalLogPublisher.removeObserver(observer)
    assert len(closed) == 4 * CANDIDATES
    assert ranks == [256] * 4
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn
                and "host sockets are in use" in e.get("log_format", "")]
    assert len(warnings) == 1 and warnings[0]["cap"] == 256
    engine.close()
