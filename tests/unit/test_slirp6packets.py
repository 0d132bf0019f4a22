"""
The packets through the IPv6 side of the slirp router
(L{vtwisted.slirp.router6}) and the ICMPv6 codec (L{vtwisted.wire.icmpv6}):
TCP and UDP checked and handed to the engines, packets leaving for guests,
unreachables, the address plan, and malformed input counted, never fatal.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from router6fakes import (
    ALL_NODES,
    DNS,
    DNS_MAC,
    GATEWAY,
    GUEST,
    GUEST_LL,
    GUEST_MAC,
    ROUTER_LL,
    ROUTER_MAC,
    addr,
    echo,
    frame6,
    makeRouter,
    parsed,
    tcpSegment,
)
from slirpfakes import noFailuresLogged

from vtwisted.slirp.packets import udpDatagram as udpDatagram6
from vtwisted.wire import icmpv6, ipv6, vnet
from vtwisted.wire.checksum import checksumValid, pseudoHeaderSumV6


def test_tcpSegmentsAreCheckedThenHandedOn() -> None:
    """A TCP segment with a wrong checksum is dropped; a good one reaches the engine."""
    router, seen = makeRouter()
    router.frameReceived(frame6(GUEST, GATEWAY, 6, tcpSegment(GUEST, GATEWAY, b"x", False)))
    good = tcpSegment(GUEST, GATEWAY, b"hello")
    router.frameReceived(frame6(GUEST, GATEWAY, 6, good))
    assert [d[0] for d in seen.drops] == ["malformed"] and "bad checksum" in seen.drops[0][1]
    [(src, dst, segment, packet)] = router.tcp.calls
    assert (src, dst, bytes(segment)) == (GUEST, GATEWAY, good)
    assert bytes(packet) == frame6(GUEST, GATEWAY, 6, good)[14:]


def test_tcpSuperFrameFromAnOffloadTapIsHandedOnWhole() -> None:
    """A 30000-byte TSO super-frame with NEEDS_CSUM reaches the engine in one piece, unchecked."""
    router, seen = makeRouter()
    segment = tcpSegment(GUEST, GATEWAY, b"z" * 30000, good=False)
    header = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_TCPV6, 74, 1440, 54, 16).pack()
    router.vnetPacketReceived(header + frame6(GUEST, GATEWAY, 6, segment))
    assert seen.drops == []
    [(_, _, body, packet)] = router.tcp.calls
    assert len(body) == 30020 and len(packet) == 30060


def test_extensionHeadersAreWalked() -> None:
    """TCP behind a destination options header is found (fragments: test_slirpfragments6)."""
    router, seen = makeRouter()
    segment = tcpSegment(GUEST, GATEWAY)
    router.frameReceived(frame6(GUEST, GATEWAY, ipv6.NH_DEST_OPTS,
                                bytes([6, 0, 1, 4, 0, 0, 0, 0]) + segment))
    assert len(router.tcp.calls) == 1 and bytes(router.tcp.calls[0][2]) == segment
    assert seen.drops == []


def test_udpIsCheckedAndHandedOnWithoutChecksumZero() -> None:
    """UDP with checksum 0 (invalid in IPv6) is malformed; a good datagram reaches the engine."""
    router, seen = makeRouter()
    good = udpDatagram6(GUEST, DNS, 5353, 53, b"query")
    router.frameReceived(frame6(GUEST, DNS, ipv6.NH_UDP, good[:6] + b"\0\0" + good[8:],
                                dstMac=DNS_MAC))
    router.frameReceived(frame6(GUEST, DNS, ipv6.NH_UDP, good, dstMac=DNS_MAC))
    assert seen.drops == [("malformed", "UDP from fec0::15: no checksum")]
    [(src, srcPort, dst, dstPort, payload, packet)] = router.udp.calls
    assert (src, srcPort, dst, dstPort, payload) == (GUEST, 5353, DNS, 53, b"query")
    assert bytes(packet[40:]) == good


def test_multicastTcpAndUdpAreIgnored() -> None:
    """Datagrams to multicast groups (mDNS, LLMNR) never reach the engines."""
    router, seen = makeRouter()
    group = addr("ff02::fb")
    router.frameReceived(frame6(GUEST_LL, group, ipv6.NH_UDP,
                                udpDatagram6(GUEST_LL, group, 5353, 5353, b"mdns"),
                                dstMac=icmpv6.multicastMac(group)))
    router.frameReceived(frame6(GUEST_LL, group, 6, tcpSegment(GUEST_LL, group),
                                dstMac=icmpv6.multicastMac(group)))
    assert router.udp.calls == router.tcp.calls == [] and seen.drops == []


def test_tcpLeavesAsPartialChecksumPacketsAndSuperFrames() -> None:
    """Segments carry NEEDS_CSUM at offset 54+16; past the MSS they are GSO_TCPV6 super-frames."""
    router, seen = makeRouter()
    router.v6.learn(GUEST, GUEST_MAC)
    header = tcpSegment(GATEWAY, GUEST)[:16] + bytes(4)
    router.sendTcp(GATEWAY, GUEST, header, b"a" * 100, 1440)
    router.sendTcp(GATEWAY, GUEST, header, b"b" * 10000, 1440)
    small, big = (vnet.VnetHeader.parse(p) for p in seen.packets)
    assert (small.flags, small.gsoType, small.csumStart, small.csumOffset) == \
        (vnet.NEEDS_CSUM, vnet.GSO_NONE, 54, 16)
    assert seen.packets[0][10 + 54 + 16:10 + 54 + 18] == \
        pseudoHeaderSumV6(GATEWAY, GUEST, 6, 120).to_bytes(2, "big")
    assert (big.gsoType, big.gsoSize) == (vnet.GSO_TCPV6, 1440)
    frames = vnet.toFrames(seen.packets[1])
    assert len(frames) == 7
    for frame in frames:
        assert checksumValid(frame[54:], pseudoHeaderSumV6(GATEWAY, GUEST, 6, len(frame) - 54))
    assert b"".join(f[74:] for f in frames) == b"b" * 10000


def test_bigDatagramsLeaveInFragments() -> None:
    """A 4000-byte datagram leaves in fragment-header pieces within the MTU that rejoin."""
    router, seen = makeRouter()
    router.v6.learn(GUEST, GUEST_MAC)
    datagram = udpDatagram6(GATEWAY, GUEST, 1, 2, bytes(range(256)) * 16)
    router.v6.sendIP(GATEWAY, GUEST, ipv6.NH_UDP, datagram)
    assert len(seen.frames) == 3
    pieces = {}
    for frame in seen.frames:
        header = ipv6.IPv6Header.parse(frame, 14)
        assert header.nextHeader == ipv6.NH_FRAGMENT and 40 + header.payloadLength <= 1500
        nextHeader, _, field, ident = struct.unpack("!BBHI", frame[54:62])
        assert nextHeader == ipv6.NH_UDP and ident == 1
        pieces[field & ~7] = frame[62:]
    assert b"".join(pieces[k] for k in sorted(pieces)) == datagram


@pytest.mark.parametrize("code4, code6", [(0, 0), (1, 3), (3, 4), (13, 1)])
def test_unreachableMapsIcmpv4Codes(code4: int, code6: int) -> None:
    """ICMPv4 codes become ICMPv6 ones; the error quotes the packet, from the gateway."""
    router, seen = makeRouter()
    router.v6.learn(GUEST, GUEST_MAC)
    packet = frame6(GUEST, addr("2001:db8::1"), ipv6.NH_UDP, b"u" * 2000)[14:]
    router.sendUnreachable(memoryview(packet), code4)
    header, error = parsed(seen.frames[0])
    assert (header.src, header.dst) == (GATEWAY, GUEST) and 40 + header.payloadLength == 1280
    assert (error.type, error.code) == (icmpv6.DEST_UNREACHABLE, code6)
    assert error.body[4:] == packet[:1232]


@pytest.mark.parametrize("src, payload", [
    (bytes(16), b"x" * 8),
    (addr("ff02::1"), b"x" * 8),
    (GUEST, bytes([icmpv6.DEST_UNREACHABLE, 0, 0, 0, 0, 0, 0, 0])),
])
def test_unreachableIsNeverSentAboutErrorsOrToGroups(src: bytes, payload: bytes) -> None:
    """No error goes to ::, to a multicast source, or about an ICMPv6 error."""
    router, seen = makeRouter()
    router.v6.learn(GUEST, GUEST_MAC)
    nextHeader = ipv6.NH_ICMPV6 if payload[0] == icmpv6.DEST_UNREACHABLE else ipv6.NH_UDP
    router.sendUnreachable(frame6(src, GATEWAY, nextHeader, payload)[14:], 3)
    assert seen.frames == []


@pytest.mark.parametrize("hopLimit", [0, 1])
def test_lastHopBeyondTheRouterGetsTimeExceeded(hopLimit: int) -> None:
    """
    A UDP probe beyond the router with hop limit 1 or 0 (traceroute6's first)
    is answered with time exceeded from the gateway quoting it, and goes no
    further; with hop limit 2 it goes on.
    """
    router, seen = makeRouter()
    router.v6.learn(GUEST, GUEST_MAC)
    beyond = addr("2001:db8::1")
    probe = frame6(GUEST, beyond, ipv6.NH_UDP, udpDatagram6(GUEST, beyond, 40000, 33434, b"p"),
                   hopLimit)
    router.frameReceived(probe)
    header, error = parsed(seen.frames[0])
    assert (header.src, header.dst) == (GATEWAY, GUEST)
    assert (error.type, error.code) == (icmpv6.TIME_EXCEEDED, 0)
    assert error.body == bytes(4) + probe[14:]
    assert router.udp.calls == [] and seen.drops == []
    router.frameReceived(probe[:21] + b"\x02" + probe[22:])
    assert len(router.udp.calls) == 1 and len(seen.frames) == 1


def test_lastHopOfALinkLocalSourceIsReportedFromTheRouterLinkLocal() -> None:
    """A probe from fe80::15 beyond the router gets its time exceeded from fe80::2."""
    router, seen = makeRouter()
    beyond = addr("2001:db8::1")
    router.frameReceived(frame6(GUEST_LL, beyond, 6, tcpSegment(GUEST_LL, beyond), 1))
    header, error = parsed(seen.frames[0])
    assert (header.src, header.dst, error.type) == (ROUTER_LL, GUEST_LL, icmpv6.TIME_EXCEEDED)
    assert router.tcp.calls == []


@pytest.mark.parametrize("dst, dstMac", [
    (GATEWAY, ROUTER_MAC),
    (DNS, DNS_MAC),
    (addr("ff02::fb"), icmpv6.multicastMac(addr("ff02::fb"))),
    (addr("fe80::99"), ROUTER_MAC),
])
def test_hopLimitOneToTheRouterOrAGroupIsNoError(dst: bytes, dstMac: bytes) -> None:
    """
    The router's own addresses take hop limit 1; a group or a link-local
    address (never forwarded) gets no time exceeded either.
    """
    router, seen = makeRouter()
    router.v6.learn(GUEST, GUEST_MAC)
    router.frameReceived(frame6(GUEST, dst, ipv6.NH_UDP, udpDatagram6(GUEST, dst, 1, 53, b"q"),
                                1, dstMac=dstMac))
    assert seen.frames == [] and seen.drops == []
    assert len(router.udp.calls) == (0 if dst[0] == 0xFF else 1)  # the engine's to judge


def test_hopLimitOneOnAnIcmpv6ErrorIsNoError() -> None:
    """No time exceeded about an ICMPv6 error; a ping with hop limit 1 gets one."""
    router, seen = makeRouter()
    router.v6.learn(GUEST, GUEST_MAC)
    beyond = addr("2001:db8::1")
    unreachable = icmpv6.ICMPv6Message(icmpv6.DEST_UNREACHABLE, 4, 0, bytes(52)).pack(GUEST,
                                                                                      beyond)
    router.frameReceived(frame6(GUEST, beyond, ipv6.NH_ICMPV6, unreachable, 1))
    assert seen.frames == []
    router.frameReceived(echo(dst=beyond)[:21] + b"\x01" + echo(dst=beyond)[22:])
    assert parsed(seen.frames[0])[1].type == icmpv6.TIME_EXCEEDED
    assert router.icmp6 is None or router.icmp6.calls == []


def test_hostAddressesFollowTheAddressPlan() -> None:
    """The gateway is ::1, the DNS proxy port 53 the resolver, global addresses themselves."""
    router, _ = makeRouter(":resolver=127.0.0.53:resolverport=5300")
    v6 = router.v6
    assert v6.hostAddress(GATEWAY, 80, 6) == ("::1", 80)
    assert v6.hostAddress(DNS, 53, 17) == ("127.0.0.53", 5300)
    assert v6.hostAddress(DNS, 80, 6) is None
    for other in ("fec0::9", "fe80::1", "ff02::1", "::", "::1", "::ffff:1.2.3.4"):
        assert v6.hostAddress(addr(other), 80, 6) is None, other
    assert router.hostAddress(addr("2001:db8::1"), 443, 6) == ("2001:db8::1", 443)
    restricted, _ = makeRouter(":restrict=on")
    assert restricted.v6.hostAddress(GATEWAY, 80, 6) is None


def test_describeNamesThePrefixTheRouterAndTheGuests() -> None:
    """The console sees the plan and each guest with its MAC."""
    router, _ = makeRouter()
    router.frameReceived(echo(GUEST))
    lines = router.v6.describe()
    assert "fec0::/64" in lines[0] and "52:56:00:00:00:02" in lines[0]
    assert lines[1:] == ["NDP: 1 guests known, 0 forgotten after 5 minutes silent",
                         "guest fec0::15 at 02:00:00:00:00:15"]


def test_malformedPacketsAreCountedNamingTheSource() -> None:
    """A truncated packet and a multicast source are malformed, with the address."""
    router, seen = makeRouter()
    router.frameReceived(echo()[:-3])
    router.frameReceived(echo(src=ALL_NODES))
    assert [d[0] for d in seen.drops] == ["malformed"] * 2
    assert "truncated" in seen.drops[0][1] and "multicast source" in seen.drops[1][1]
    assert "ff02::1" in seen.drops[1][1]


# Fuzzing


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 40))
def test_icmpv6ParsersRaiseOnlyICMPv6Error(data: bytes, offset: int) -> None:
    """On any bytes, the codec's parsers return or raise ICMPv6Error, nothing else."""
    for parse in (lambda: icmpv6.ICMPv6Message.parse(data, offset),
                  lambda: list(icmpv6.iterOptions(data, offset)),
                  lambda: icmpv6.linkLayerAddress(data, offset, icmpv6.SOURCE_LL),
                  lambda: icmpv6.targetAddress(icmpv6.ICMPv6Message.parse(data))):
        try:
            parse()
        except icmpv6.ICMPv6Error:
            pass


_ADDRESSES = st.sampled_from([GUEST, GUEST_LL, GATEWAY, DNS, ROUTER_LL, ALL_NODES, bytes(16),
                              addr("ff02::1:2"), addr("ff02::1:ff00:2"), addr("2001:db8::1")])


@st.composite
def ipv6Frames(draw: Any) -> bytes:
    """Frames with a plausible IPv6 header and anything behind it."""
    nextHeader = draw(st.sampled_from([0, 6, 17, 43, 44, 58, 59, 60, draw(st.integers(0, 255))]))
    src, dst = draw(_ADDRESSES), draw(_ADDRESSES)
    body = draw(st.binary(max_size=160))
    if nextHeader == 58 and body and draw(st.booleans()):
        body = icmpv6.ICMPv6Message(draw(st.sampled_from([128, 133, 134, 135, 136])), 0, 0,
                                    body).pack(src, dst)
    if nextHeader == 17 and draw(st.booleans()):
        body = udpDatagram6(src, dst, 546, draw(st.sampled_from([53, 547])), body)
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFF)))
    header = ipv6.IPv6Header(0, 0, length, nextHeader, draw(st.sampled_from([1, 64, 255])),
                             src, dst).pack()
    return ROUTER_MAC + GUEST_MAC + b"\x86\xdd" + header + body


@settings(max_examples=500, deadline=None)
@given(st.one_of(ipv6Frames(), st.binary(max_size=200).map(
    lambda b: ROUTER_MAC + GUEST_MAC + b"\x86\xdd" + b)), st.booleans())
def test_anyIpv6FrameIsCountedNeverFatal(frame: bytes, asVnet: bool) -> None:
    """Whatever arrives, the IPv6 side neither raises nor stops answering pings."""
    router, seen = makeRouter()
    with noFailuresLogged():
        if asVnet:
            router.vnetPacketReceived(vnet.VnetHeader(vnet.DATA_VALID).pack() + frame)
        else:
            router.v6.packetReceived(frame, 14, False)
    seen.frames.clear()
    router.v6.packetReceived(echo(), 14, False)
    header, reply = parsed(seen.frames[-1])
    assert reply.type == icmpv6.ECHO_REPLY and header.dst == GUEST


def test_hostLoopbackOffClosesTheIpv6GatewayToo() -> None:
    """With hostloopback=off, fec0::2 leads nowhere; with it on, to ::1."""
    closed, _ = makeRouter(":hostloopback=off")
    assert closed.hostAddress(GATEWAY, 80, 6) is None
    opened, _ = makeRouter()
    assert opened.hostAddress(GATEWAY, 80, 6) == ("::1", 80)
