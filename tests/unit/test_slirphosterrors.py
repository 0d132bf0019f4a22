"""
ICMP errors about guests' datagrams, from the host's UDP sockets back to the
guests (L{vtwisted.slirp.hosterrors}): decoding, translation between the
families, and against the real kernel on loopback (closed ports answer with
port unreachable, and the socket keeps working afterwards).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from ipv6loopback import GATEWAY6, GUEST6, _answer, _readable, _server, needIpv6Loopback
from reactortools import until
from slirptcpharness import GATEWAY, GUEST
from twisted.internet import reactor

from vtwisted.slirp import hosterrors
from vtwisted.slirp.hosterrors import HostError, forGuest, parseError
from vtwisted.slirp.udp import UdpNat
from vtwisted.testing import FakeGuestNetwork
from vtwisted.wire import ipv4
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.udp import UDPHeader


def closedPort(family: socket.AddressFamily, host: str) -> int:
    """A UDP port nothing listens on (bound, then closed)."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def guestPacket(src: bytes, dst: bytes, ttl: int = 64) -> bytes:
    """The IP header of a guest's datagram, as the router hands it on."""
    if len(src) == 16:
        return struct.pack("!IHBB", 0x60000000, 13, 17, ttl) + src + dst + bytes(13)
    return ipv4.packPlainHeader(7, src, dst, 17, 33, ttl, 0) + bytes(13)


def extendedError(origin: int, kind: int, code: int, info: int = 0,
                  reporter: bytes = b"") -> bytes:
    return struct.pack("=IBBBBII", 111, origin, kind, code, 0, info, 0) + reporter


def test_errorQueueRecordDecodes() -> None:
    """A sock_extended_err with an offender address decodes to a HostError."""
    offender = struct.pack("=HH4s8x", socket.AF_INET, 0, bytes([192, 0, 2, 1]))
    record = extendedError(hosterrors.ORIGIN_ICMP, 11, 0, reporter=offender)
    error = parseError(b"probe", [(socket.IPPROTO_IP, hosterrors.IP_RECVERR, record)],
                       ("::ffff:198.51.100.7", 33434, 0, 0))
    assert error == HostError(("198.51.100.7", 33434), b"probe", 4, 11, 0, 0, "192.0.2.1")


def test_localErrorsAreNotRelayed() -> None:
    """Errors of the host's own making (origin local, e.g. EMSGSIZE) are ignored."""
    record = extendedError(1, 0, 0, info=1500)
    assert parseError(b"x", [(socket.IPPROTO_IP, hosterrors.IP_RECVERR, record)],
                      ("127.0.0.1", 9)) is None


def test_errorsTranslateBetweenFamilies() -> None:
    """Port unreachable and too-big errors cross families as RFC 7915 has them."""
    unreachable6 = HostError(("::1", 53), b"", 6, 1, 4, 0, None)
    assert forGuest(unreachable6, v6=False) == (3, 3, 0)
    assert forGuest(unreachable6, v6=True) == (1, 4, 0)
    tooBig4 = HostError(("10.1.1.1", 53), b"", 4, 3, 4, 1400, None)
    assert forGuest(tooBig4, v6=True) == (2, 0, 1420)
    tooBig6 = HostError(("2001:db8::1", 53), b"", 6, 2, 0, 1280, None)
    assert forGuest(tooBig6, v6=False) == (3, 4, 1260)
    assert forGuest(HostError(("::1", 1), b"", 6, 4, 0, 0, None), v6=False) is None


@given(st.integers(0, 255), st.integers(0, 255), st.sampled_from([4, 6]), st.booleans())
def test_translationNeverFails(kind: int, code: int, family: int, v6: bool) -> None:
    """Any type and code either translates or is left out; same family passes through."""
    result = forGuest(HostError(("::1", 1), b"", family, kind, code, 1500, None), v6)
    if (family == 6) == v6:
        assert result == (kind, code, 1500)


@pytest_twisted.ensureDeferred
async def test_closedLoopbackPortAnswersTheGuestWithPortUnreachable() -> None:
    """
    A guest's datagram to a closed port of the host's loopback comes back as
    ICMP port unreachable from the gateway, quoting the guest's own
    datagram; the host socket keeps working for the next datagram.
    """
    network = FakeGuestNetwork()
    engine = UdpNat(network, reactor)
    echo = _server(socket.AF_INET, "127.0.0.1")
    try:
        port = closedPort(socket.AF_INET, "127.0.0.1")
        engine.datagramReceived(GUEST, 5000, GATEWAY, port, b"anyone?", guestPacket(GUEST,
                                                                                   GATEWAY))
        await until(lambda: network.icmpErrors, what="the ICMP error")
        [(original, kind, code, _, reporter)] = network.icmpErrors
        assert (kind, code, reporter) == (3, 3, GATEWAY)
        header = ipv4.IPv4Header.parse(original)
        udp = UDPHeader.parse(original[20:])
        assert (header.src, header.dst, udp.srcPort, udp.dstPort) == (GUEST, GATEWAY, 5000, port)
        assert original[28:] == b"anyone?"
        engine.datagramReceived(GUEST, 5000, GATEWAY, echo.getsockname()[1], b"still there",
                                guestPacket(GUEST, GATEWAY))
        data, _ = await _answer(echo)
        assert data == b"still there"
        await until(lambda: network.ip, what="the echo")
        assert engine.mappings[(GUEST, 5000)].errors == 1
    finally:
        engine.close()
        echo.close()


@pytest_twisted.ensureDeferred
async def test_closedIpv6LoopbackPortAnswersWithIcmpv6() -> None:
    """An IPv6 guest gets ICMPv6 port unreachable from fec0::2 for a closed port of ::1."""
    needIpv6Loopback()
    network = FakeGuestNetwork()
    engine = UdpNat(network, reactor)
    try:
        port = closedPort(socket.AF_INET6, "::1")
        engine.datagramReceived(GUEST6, 5000, GATEWAY6, port, b"six?",
                                guestPacket(GUEST6, GATEWAY6))
        await until(lambda: network.icmpErrors, what="the ICMPv6 error")
        [(original, kind, code, _, reporter)] = network.icmpErrors
        assert (kind, code, reporter) == (1, 4, GATEWAY6)
        header = IPv6Header.parse(original)
        assert (header.src, header.dst) == (GUEST6, GATEWAY6)
        assert UDPHeader.parse(original[40:]).dstPort == port
    finally:
        engine.close()


@pytest_twisted.ensureDeferred
async def test_smallGuestTtlIsCarriedToTheHostDatagram() -> None:
    """A guest datagram with TTL 5 (a traceroute probe) leaves the host with TTL 4."""
    network = FakeGuestNetwork()
    engine = UdpNat(network, reactor)
    sink = _server(socket.AF_INET, "127.0.0.1")
    sink.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
    try:
        target = sink.getsockname()[1]
        for ttl in (5, 64):
            engine.datagramReceived(GUEST, 5001, GATEWAY, target, b"ttl",
                                    guestPacket(GUEST, GATEWAY, ttl))
        seen = []
        for _ in range(2):
            await until(lambda: _readable(sink), what="a datagram")
            _, ancillary, _, _ = sink.recvmsg(100, 64)
            seen += [struct.unpack("i", data)[0] for level, kind, data in ancillary
                     if kind == socket.IP_TTL]
        assert seen == [4, 64]
    finally:
        engine.close()
        sink.close()


def test_addressesAreTheGuestSidesOnes() -> None:
    """The quoted destination of a DNS error is the proxy, port 53."""
    network = FakeGuestNetwork()
    engine = UdpNat(network, reactor)
    try:
        mapping = engine._listen((GUEST, 5353))
        mapping.addDnsPeer(("127.0.0.53", 53))
        mapping.hostErrorReceived(HostError(("127.0.0.53", 53), b"q", 4, 3, 3, 0, None))
        [(original, _, _, _, reporter)] = network.icmpErrors
        assert reporter == network.nameserver
        assert ipv4.IPv4Header.parse(original).dst == network.nameserver
        assert UDPHeader.parse(original[20:]).dstPort == 53
        assert ipaddress.ip_address(reporter) == ipaddress.ip_address("10.0.2.3")
    finally:
        engine.close()


@pytest_twisted.ensureDeferred
async def test_hostSocketsOpenAndCloseWithoutLogLines() -> None:
    """
    A guest source's host socket (one per DNS lookup from a fresh port)
    opens and closes without Twisted's "starting on" and "Closed" lines,
    and still carries datagrams both ways.
    """
    from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
    from zope.interface import provider

    lines: list[str] = []

    @provider(ILogObserver)
    def observer(event: dict[str, object]) -> None:
        lines.append(formatEvent(event))

    network = FakeGuestNetwork()
    engine = UdpNat(network, reactor)
    echo = _server(socket.AF_INET, "127.0.0.1")
    globalLogPublisher.addObserver(observer)
    try:
        for source in (5001, 5002):
            engine.datagramReceived(GUEST, source, GATEWAY, echo.getsockname()[1], b"hi",
                                    guestPacket(GUEST, GATEWAY))
            data, peer = await _answer(echo)
            assert data == b"hi"
        await until(lambda: len(network.ip) == 2, what="the echoes")
        mappings = list(engine.mappings.values())
        engine.close()
        await until(lambda: all(m.transport is None for m in mappings), what="the sockets closed")
    finally:
        globalLogPublisher.removeObserver(observer)
        engine.close()
        echo.close()
    assert not [line for line in lines if "starting on" in line or "Closed" in line], lines
