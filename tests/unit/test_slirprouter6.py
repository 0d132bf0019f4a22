"""
Tests for the IPv6 side of the slirp router (L{vtwisted.slirp.router6}):
router advertisements, neighbour discovery and the packets it holds for
it, pings, and DHCPv6.  The TCP, UDP and ICMPv6 packets it checks, hands on
and sends are tested in test_slirp6packets.py.
"""

from __future__ import annotations

import struct

import pytest
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
    icmpFrame,
    makeRouter,
    parsed,
    slla,
    solicitation,
    tcpSegment,
)
from twisted.internet.task import Clock

from vtwisted.slirp.packets import udpDatagram as udpDatagram6
from vtwisted.slirp.router6 import macFor6
from vtwisted.wire import icmpv6, ipv6
from vtwisted.wire.checksum import checksumValid, pseudoHeaderSumV6


def test_routerTakesItsMacsOnTheSwitch() -> None:
    """The router answers to 52:56 plus the last 4 bytes of each of its addresses."""
    router, _ = makeRouter()
    assert {ROUTER_MAC, DNS_MAC} <= router.ownMacs
    assert macFor6(addr("fec0::a:b0c")) == bytes.fromhex("5256000a0b0c")


def test_routerSolicitationGetsAFullAdvertisement() -> None:
    """
    An RS gets an RA to ff02::1 from fe80::2 with the M and O flags (DHCPv6
    addresses) and prefix, MAC and RDNSS options; no MTU option, as
    libslirp's (the LAN's hosts keep their own link MTU).
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
    assert icmpv6.MTU not in options
    assert options[icmpv6.RDNSS] == bytes(2) + (1800).to_bytes(4, "big") + DNS
    assert router.v6.neighbours[GUEST_LL] == GUEST_MAC


@pytest.mark.parametrize("mtu", [1500, 9000])
def test_anMtuGivenIsAdvertised(mtu: int) -> None:
    """
    With C{mtu=} the advertisements carry it: only then, since a jumbo
    LAN's hosts would otherwise have their IPv6 MTU capped at the NAT's.
    """
    router, seen = makeRouter(f":mtu={mtu}")
    router.v6.advertise()
    _, ra = parsed(seen.frames[0])
    options = dict(icmpv6.iterOptions(ra.body, 12))
    assert options[icmpv6.MTU] == bytes(2) + mtu.to_bytes(4, "big")


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


@pytest.mark.parametrize("options, size, mtu", [
    (":mtu=1500", 4000, 1500), (":mtu=576", 1400, 1280), (":mtu=576", 1200, None),
    ("", 8000, None)])
def test_packetsPastAGivenMtuGetPacketTooBig(options: str, size: int, mtu: int | None) -> None:
    """
    With C{mtu=}, a ping to the gateway larger than it (never than IPv6's
    1280) is answered with a Packet Too Big naming the MTU, as libslirp
    does, and counted; smaller ones, and any without C{mtu=} (the port
    takes jumbo frames), are answered with an echo.  The router's own
    packets are never cut below 1280 bytes.
    """
    router, seen = makeRouter(options)
    router.v6.learn(GUEST, GUEST_MAC)
    router.frameReceived(icmpFrame(GUEST, GATEWAY, icmpv6.ECHO_REQUEST, bytes(size), 64))
    if mtu is None:  # the echo reply, in fragments past the router's 1500
        header = ipv6.IPv6Header.parse(seen.frames[0], 14)
        assert seen.drops == [] and header.src == GATEWAY
        assert header.nextHeader == (ipv6.NH_FRAGMENT if size > 1452 else ipv6.NH_ICMPV6)
        return
    header, message = parsed(seen.frames[0])
    assert (header.src, header.dst) == (GATEWAY, GUEST)
    assert (message.type, message.code) == (icmpv6.PACKET_TOO_BIG, 0)
    assert message.body[:4] == mtu.to_bytes(4, "big")
    assert len(seen.frames[0]) == 14 + 1280, "as much of the packet as fits in 1280 bytes"
    [(reason, text)] = seen.drops
    assert reason == "mtu" and f"{size + 44}-byte packet" in text
