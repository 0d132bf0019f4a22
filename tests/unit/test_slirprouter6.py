"""
Tests for the IPv6 side of the slirp router (L{vtwisted.slirp.router6})
and the ICMPv6 codec (L{vtwisted.wire.icmpv6}), on a real L{SlirpRouter}
with fake engines.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slirpfakes import Recorder, noFailuresLogged, recordingRouter
from twisted.internet.task import Clock

from vtwisted.slirp.packets import udpDatagram as udpDatagram6
from vtwisted.slirp.router import SlirpRouter
from vtwisted.slirp.router6 import Ipv6Router, macFor6
from vtwisted.wire import icmpv6, ipv6, vnet
from vtwisted.wire.checksum import checksumValid, internetChecksum, pseudoHeaderSumV6


def addr(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


PREFIX = ipaddress.IPv6Network("fec0::/64")
GATEWAY = addr("fec0::2")
DNS = addr("fec0::3")
ROUTER_LL = addr("fe80::2")
ROUTER_MAC = bytes.fromhex("525600000002")
DNS_MAC = bytes.fromhex("525600000003")
GUEST_MAC = bytes.fromhex("020000000015")
GUEST = addr("fec0::15")
GUEST_LL = addr("fe80::15")
ALL_NODES = addr("ff02::1")


def makeRouter(options: str = "", clock: Clock | None = None,
               start: bool = True) -> tuple[SlirpRouter, Recorder]:
    """
    A router with an IPv6 side on fec0::/64 whose first advertisement is
    out (and cleared from the record) if C{start}.
    """
    clock = clock or Clock()
    router, seen, _ = recordingRouter(options, clock)
    router.v6 = Ipv6Router(router, PREFIX, GATEWAY, DNS)
    router.gateway6, router.nameserver6 = GATEWAY, DNS
    if start:
        clock.advance(0)
        seen.frames.clear()
    return router, seen


def frame6(src: bytes, dst: bytes, nextHeader: int, payload: bytes, hopLimit: int = 64,
           dstMac: bytes = ROUTER_MAC, srcMac: bytes = GUEST_MAC) -> bytes:
    header = ipv6.IPv6Header(0, 0, len(payload), nextHeader, hopLimit, src, dst).pack()
    return dstMac + srcMac + b"\x86\xdd" + header + payload


def icmpFrame(src: bytes, dst: bytes, kind: int, body: bytes, hopLimit: int = 255,
              dstMac: bytes = ROUTER_MAC) -> bytes:
    message = icmpv6.ICMPv6Message(kind, 0, 0, body).pack(src, dst)
    return frame6(src, dst, ipv6.NH_ICMPV6, message, hopLimit, dstMac)


def echo(src: bytes = GUEST, dst: bytes = GATEWAY, dstMac: bytes = ROUTER_MAC) -> bytes:
    return icmpFrame(src, dst, icmpv6.ECHO_REQUEST, b"\x12\x34\x00\x01ping!", 64, dstMac)


def slla(mac: bytes = GUEST_MAC, kind: int = icmpv6.SOURCE_LL) -> bytes:
    return bytes((kind, 1)) + mac


def solicitation(target: bytes, src: bytes = GUEST_LL, withMac: bool = True) -> bytes:
    group = icmpv6.solicitedNodeAddress(target)
    return icmpFrame(src, group, icmpv6.NEIGHBOR_SOLICITATION,
                     bytes(4) + target + (slla() if withMac else b""),
                     dstMac=icmpv6.multicastMac(group))


def tcpSegment(src: bytes, dst: bytes, payload: bytes = b"", good: bool = True) -> bytes:
    header = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x18, 65535, 0, 0)
    value = internetChecksum(header + payload, pseudoHeaderSumV6(src, dst, 6, 20 + len(payload)))
    if not good:
        value ^= 0x0101
    return header[:16] + value.to_bytes(2, "big") + header[18:] + payload


def parsed(frame: bytes) -> tuple[ipv6.IPv6Header, icmpv6.ICMPv6Message]:
    header = ipv6.IPv6Header.parse(frame, 14)
    assert icmpv6.checksumOk(header.src, header.dst, frame[54:])
    return header, icmpv6.ICMPv6Message.parse(frame, 54)


def test_routerTakesItsMacsOnTheSwitch() -> None:
    """The router answers to 52:56 plus the last 4 bytes of each of its addresses."""
    router, _ = makeRouter()
    assert {ROUTER_MAC, DNS_MAC} <= router.ownMacs
    assert macFor6(addr("fec0::a:b0c")) == bytes.fromhex("5256000a0b0c")


def test_routerSolicitationGetsAFullAdvertisement() -> None:
    """
    An RS gets an RA to ff02::1 from fe80::2 with the M and O flags (DHCPv6
    addresses) and prefix, MAC, MTU and RDNSS options.
    """
    router, seen = makeRouter()
    router.frameReceived(icmpFrame(GUEST_LL, addr("ff02::2"), icmpv6.ROUTER_SOLICITATION,
                                   bytes(4) + slla(), dstMac=bytes.fromhex("333300000002")))
    [frame] = seen.frames
    assert frame[:14] == bytes.fromhex("333300000001") + ROUTER_MAC + b"\x86\xdd"
    header, ra = parsed(frame)
    assert (header.src, header.dst, header.hopLimit) == (ROUTER_LL, ALL_NODES, 255)
    assert (ra.type, ra.code) == (icmpv6.ROUTER_ADVERTISEMENT, 0)
    assert ra.body[:12] == bytes([64, 0xC0]) + (1800).to_bytes(2, "big") + bytes(8)
    options = dict(icmpv6.iterOptions(ra.body, 12))
    assert options[icmpv6.SOURCE_LL] == ROUTER_MAC
    assert options[icmpv6.PREFIX_INFO] == (bytes([64, 0xC0]) + struct.pack("!III", 86400, 14400, 0)
                                          + addr("fec0::"))
    assert options[icmpv6.MTU] == bytes(2) + (1500).to_bytes(4, "big")
    assert options[icmpv6.RDNSS] == bytes(2) + (1800).to_bytes(4, "big") + DNS
    assert router.v6.neighbours[GUEST_LL] == GUEST_MAC


def test_withoutDhcpv6AddressesTheAdvertisementHasNeitherFlag() -> None:
    """With dhcpv6=off the RA's M and O flags are clear, as libslirp's are."""
    router, seen = makeRouter(":dhcpv6=off")
    router.v6.advertise()
    _, ra = parsed(seen.frames[0])
    assert ra.body[1] == 0


def test_restrictedRouterAdvertisesNoDefaultRouteNorDns() -> None:
    """With restrict=on the RA has router lifetime 0 and no RDNSS, as DHCP has no router."""
    router, seen = makeRouter(":restrict=on")
    router.v6.advertise()
    _, ra = parsed(seen.frames[0])
    assert ra.body[2:4] == bytes(2)
    assert icmpv6.RDNSS not in dict(icmpv6.iterOptions(ra.body, 12))


def test_advertisementsGoOutAtStartThenEvery200To600Seconds() -> None:
    """One RA at start, then one unsolicited RA per random 200-600 s, with one timer."""
    clock = Clock()
    router, seen = makeRouter(clock=clock, start=False)
    clock.advance(0)
    assert len(seen.frames) == 1
    for _ in range(5):
        [call] = clock.getDelayedCalls()
        assert 200 <= call.getTime() - clock.seconds() <= 600
        clock.advance(600)
    assert len(seen.frames) == 6
    router.v6.close()
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("target, mac", [(ROUTER_LL, ROUTER_MAC), (GATEWAY, ROUTER_MAC),
                                         (DNS, DNS_MAC)])
def test_solicitationsForRouterAddressesGetSolicitedAdvertisements(target: bytes,
                                                                   mac: bytes) -> None:
    """NS for fe80::2, the gateway or the DNS proxy get an NA (R, S, O) from the target's MAC."""
    router, seen = makeRouter()
    router.frameReceived(solicitation(target))
    [frame] = seen.frames
    assert frame[:12] == GUEST_MAC + mac
    header, na = parsed(frame)
    assert (header.src, header.dst, header.hopLimit) == (target, GUEST_LL, 255)
    assert na.type == icmpv6.NEIGHBOR_ADVERTISEMENT and na.body[0] == 0xE0
    assert icmpv6.targetAddress(na) == target
    assert icmpv6.linkLayerAddress(na.body, 20, icmpv6.TARGET_LL) == mac


def test_solicitationsForOtherAddressesAreNotAnswered() -> None:
    """The router does not answer for guests, nor for unused prefix addresses."""
    router, seen = makeRouter()
    router.frameReceived(solicitation(addr("fec0::4")))
    assert seen.frames == [] and seen.drops == []
    assert router.v6.neighbours[GUEST_LL] == GUEST_MAC


def test_duplicateAddressProbeForARouterAddressIsDefended() -> None:
    """A DAD probe (from ::) for the gateway gets an unsolicited NA to all nodes."""
    router, seen = makeRouter()
    router.frameReceived(solicitation(GATEWAY, src=bytes(16), withMac=False))
    header, na = parsed(seen.frames[0])
    assert header.dst == ALL_NODES and na.body[0] == 0xA0
    assert bytes(16) not in router.v6.neighbours


def test_neighbourDiscoveryWithAHopLimitBelow255IsMalformed() -> None:
    """NDP that crossed a router (hop limit < 255) is dropped, as RFC 4861 says."""
    router, seen = makeRouter()
    frame = bytearray(solicitation(GATEWAY))
    frame[21] = 64
    router.frameReceived(bytes(frame))
    assert seen.frames == [] and seen.drops[0][0] == "malformed"
    assert "hop limit 64" in seen.drops[0][1]


def test_zeroLengthOptionMakesTheMessageMalformed() -> None:
    """An NDP option of length 0 drops the message, naming the source."""
    router, seen = makeRouter()
    router.frameReceived(icmpFrame(GUEST_LL, GATEWAY, icmpv6.NEIGHBOR_SOLICITATION,
                                   bytes(4) + GATEWAY + b"\x01\x00" + bytes(6)))
    assert seen.frames == []
    assert seen.drops[0][0] == "malformed" and "fe80::15" in seen.drops[0][1]


@pytest.mark.parametrize("dst", [ROUTER_LL, GATEWAY, DNS])
def test_pingsToRouterAddressesAreAnsweredWithHopLimit255(dst: bytes) -> None:
    """Echo requests to fe80::2, the gateway and the DNS proxy come back, hop limit 255."""
    router, seen = makeRouter()
    router.frameReceived(echo(GUEST, dst, macFor6(dst)))
    [frame] = seen.frames
    assert frame[:12] == GUEST_MAC + ROUTER_MAC
    header, reply = parsed(frame)
    assert (header.src, header.dst, header.hopLimit) == (dst, GUEST, 255)
    assert reply.type == icmpv6.ECHO_REPLY and reply.body == b"\x12\x34\x00\x01ping!"


def test_pingsBeyondTheGatewayGoToTheIcmpv6Engine() -> None:
    """Echo requests to outside addresses are handed on (unlike libslirp); multicast ones not."""
    router, seen = makeRouter()
    sent: list[tuple[object, ...]] = []

    class Engine:
        def echoRequest(self, *args: object) -> None:
            sent.append(args)

    router.icmp6 = Engine()
    router.frameReceived(echo(GUEST, addr("2001:db8::1")))
    router.frameReceived(echo(GUEST, ALL_NODES, bytes.fromhex("333300000001")))
    assert seen.frames == [] and seen.drops == []
    [(src, dst, ident, sequence, data)] = sent
    assert (src, dst) == (GUEST, addr("2001:db8::1"))


def test_badIcmpChecksumIsMalformed() -> None:
    """A ping with a wrong checksum is dropped, not answered."""
    router, seen = makeRouter()
    frame = bytearray(echo())
    frame[57] ^= 1
    router.frameReceived(bytes(frame))
    assert seen.frames == [] and seen.drops == [("malformed", "ICMPv6 from fec0::15: "
                                                              "bad checksum")]


def test_packetForUnknownGuestWaitsForItsAdvertisement() -> None:
    """A packet to an unknown guest waits for the answer to an NS to its solicited-node group."""
    router, seen = makeRouter()
    router.sendIP(GATEWAY, GUEST, ipv6.NH_UDP, udpDatagram6(GATEWAY, GUEST, 53, 5353, b"hi"))
    [frame] = seen.frames
    group = addr("ff02::1:ff00:15")
    assert frame[:12] == icmpv6.multicastMac(group) + ROUTER_MAC
    header, ns = parsed(frame)
    assert (header.src, header.dst, header.hopLimit) == (ROUTER_LL, group, 255)
    assert ns.type == icmpv6.NEIGHBOR_SOLICITATION and icmpv6.targetAddress(ns) == GUEST
    assert icmpv6.linkLayerAddress(ns.body, 20, icmpv6.SOURCE_LL) == ROUTER_MAC
    answer = bytes([0x60, 0, 0, 0]) + GUEST + slla(kind=icmpv6.TARGET_LL)
    router.frameReceived(icmpFrame(GUEST, GATEWAY, icmpv6.NEIGHBOR_ADVERTISEMENT, answer,
                                   dstMac=bytes.fromhex("020000000099")))
    router.frameReceived(icmpFrame(GUEST, ROUTER_LL, icmpv6.NEIGHBOR_ADVERTISEMENT, answer))
    assert seen.frames[1][:12] == GUEST_MAC + ROUTER_MAC and seen.frames[1].endswith(b"hi")
    assert router.v6.neighbours[GUEST] == GUEST_MAC and seen.drops == []


def test_heldTcpPacketsLeaveAsVnetPacketsOnceResolved() -> None:
    """A TCP segment for an unknown guest is held too, and leaves to the learned MAC."""
    router, seen = makeRouter()
    router.sendTcp(GATEWAY, GUEST, tcpSegment(GATEWAY, GUEST)[:20], b"data", 1440)
    assert seen.packets == []
    router.frameReceived(echo(GUEST))
    [packet] = seen.packets
    assert packet[10:22] == GUEST_MAC + ROUTER_MAC


def test_unansweredSolicitationDropsThePacketAfterASecond() -> None:
    """If the guest never answers, its packets are dropped and counted after 1 s."""
    clock = Clock()
    router, seen = makeRouter(clock=clock)
    router.sendIP(GATEWAY, GUEST, ipv6.NH_UDP, udpDatagram6(GATEWAY, GUEST, 1, 2, b"hi"))
    clock.advance(1.1)
    router.frameReceived(echo(GUEST))
    assert [f[54] for f in seen.frames] == [icmpv6.NEIGHBOR_SOLICITATION, icmpv6.ECHO_REPLY]
    assert seen.drops[0][0] == "peer" and "did not answer neighbour solicitation" in \
        seen.drops[0][1]


def test_lookupQueueIsBounded() -> None:
    """Past 64 packets for one unanswered guest, more are dropped as busy."""
    router, seen = makeRouter()
    for _ in range(70):
        router.sendIP(GATEWAY, GUEST, ipv6.NH_UDP, udpDatagram6(GATEWAY, GUEST, 1, 2, b"x"))
    assert len(seen.frames) == 1 and [d[0] for d in seen.drops] == ["busy"] * 6


def test_closeCancelsTheLookupsAndTheAdvertisements() -> None:
    """After close no timer is left and nothing is sent."""
    clock = Clock()
    router, seen = makeRouter(clock=clock)
    router.sendIP(GATEWAY, GUEST, ipv6.NH_UDP, udpDatagram6(GATEWAY, GUEST, 1, 2, b"x"))
    router.v6.close()
    assert clock.getDelayedCalls() == []


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


def test_extensionHeadersAreWalkedAndFragmentsUnsupported() -> None:
    """TCP behind a destination options header is found; a fragment is counted."""
    router, seen = makeRouter()
    segment = tcpSegment(GUEST, GATEWAY)
    router.frameReceived(frame6(GUEST, GATEWAY, ipv6.NH_DEST_OPTS,
                                bytes([6, 0, 1, 4, 0, 0, 0, 0]) + segment))
    router.frameReceived(frame6(GUEST, GATEWAY, ipv6.NH_FRAGMENT, bytes([6, 0, 0, 1]) +
                                bytes(4) + segment))
    assert len(router.tcp.calls) == 1 and bytes(router.tcp.calls[0][2]) == segment
    assert seen.drops[0][0] == "unsupported" and "fragment" in seen.drops[0][1]


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


def test_dhcpv6InformationRequestGetsTheDnsProxy() -> None:
    """An Information-Request gets a Reply with its id, client id, a DUID-LL and fec0::3."""
    router, seen = makeRouter()
    clientId = struct.pack("!HH", 3, 1) + GUEST_MAC
    request = bytes([11, 0xAB, 0xCD, 0xEF]) + struct.pack("!HH", 1, len(clientId)) + \
        clientId + struct.pack("!HHH", 8, 2, 0)
    group = addr("ff02::1:2")
    router.frameReceived(frame6(GUEST_LL, group, ipv6.NH_UDP,
                                udpDatagram6(GUEST_LL, group, 546, 547, request),
                                dstMac=icmpv6.multicastMac(group)))
    [frame] = seen.frames
    header = ipv6.IPv6Header.parse(frame, 14)
    assert (header.src, header.dst) == (ROUTER_LL, GUEST_LL)
    assert checksumValid(frame[54:], pseudoHeaderSumV6(ROUTER_LL, GUEST_LL, 17, len(frame) - 54))
    assert frame[54:58] == struct.pack("!HH", 547, 546)
    reply = frame[62:]
    serverId = struct.pack("!HH", 3, 1) + ROUTER_MAC
    assert reply == (bytes([7, 0xAB, 0xCD, 0xEF]) + struct.pack("!HH", 1, 10) + clientId +
                     struct.pack("!HH", 2, 10) + serverId + struct.pack("!HH", 23, 16) + DNS)


def dhcpFrame(payload: bytes, src: bytes = GUEST_LL) -> bytes:
    group = addr("ff02::1:2")
    return frame6(src, group, ipv6.NH_UDP, udpDatagram6(src, group, 546, 547, payload),
                  dstMac=icmpv6.multicastMac(group))


def test_dhcpv6SolicitGetsAnAdvertisementFromTheRouter() -> None:
    """A Solicit gets an Advertise to the client's link-local address naming fec0::15."""
    router, seen = makeRouter()
    clientId = struct.pack("!HH", 3, 1) + GUEST_MAC
    ia = struct.pack("!III", 7, 0, 0)
    solicit = bytes([1, 1, 2, 3]) + struct.pack("!HH", 1, len(clientId)) + clientId + \
        struct.pack("!HH", 3, len(ia)) + ia
    router.frameReceived(dhcpFrame(solicit))
    [frame] = seen.frames
    header = ipv6.IPv6Header.parse(frame, 14)
    assert (header.src, header.dst) == (ROUTER_LL, GUEST_LL)
    assert frame[62] == 2 and frame[63:66] == bytes([1, 2, 3])
    assert GUEST in frame[66:] and seen.drops == []


def test_withoutDhcpv6AddressesSolicitsAreIgnored() -> None:
    """With dhcpv6=off, Solicits (address assignment) get no answer, as in libslirp."""
    router, seen = makeRouter(":dhcpv6=off")
    clientId = struct.pack("!HH", 3, 1) + GUEST_MAC
    router.frameReceived(dhcpFrame(bytes([1, 0, 0, 1]) + struct.pack("!HH", 1, 10) + clientId))
    assert seen.frames == [] and seen.drops == []


def test_malformedDhcpv6IsCounted() -> None:
    """A Solicit whose option runs past its end is dropped as malformed, saying so."""
    router, seen = makeRouter()
    router.frameReceived(dhcpFrame(bytes([1, 0, 0, 1]) + struct.pack("!HH", 1, 50) + b"x"))
    assert seen.frames == []
    assert seen.drops == [("malformed", "DHCPv6 from fe80::15: option 1 of 50 bytes runs "
                           "past the end")]


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
    assert lines[1:] == ["guest fec0::15 at 02:00:00:00:00:15"]


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
