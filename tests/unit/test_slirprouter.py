"""
Tests for the slirp router (L{vtwisted.slirp.router}): what it answers (ARP,
ping, DHCP), what it checks and drops, reassembly and fragmentation, and
how TCP segments and UDP datagrams leave for the guest.  Its address plan is
tested in test_slirpconfig.py, the UDP engine behind it in
test_slirpudp.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slirpfakes import (
    DNS,
    GATEWAY,
    GUEST,
    GUEST_MAC,
    GW_MAC,
    FakeEngine,
    echoRequest,
    ipFrame,
    makeRouter,
    noFailuresLogged,
)
from twisted.internet.task import Clock

from vtwisted.slirp.config import readConfig
from vtwisted.slirp.packets import udpDatagram
from vtwisted.slirp.router import macFor
from vtwisted.spec import PortSpec
from vtwisted.wire import arp, dhcp, icmp, ipv4, vnet
from vtwisted.wire.checksum import checksumValid, pseudoHeaderSumV4
from vtwisted.wire.udp import UDPHeader


def test_answersArpForGatewayAndDnsOnly() -> None:
    """ARP requests for .2 and .3 get 52:55 answers; other addresses get none."""
    router, seen = makeRouter()
    for target in (GATEWAY, DNS, bytes([10, 0, 2, 4])):
        request = arp.ARPPacket(arp.OP_REQUEST, GUEST_MAC, GUEST, bytes(6), target).pack()
        router.frameReceived(b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + request)
    assert len(seen.frames) == 2
    for frame, target in zip(seen.frames, (GATEWAY, DNS)):
        reply = arp.ARPPacket.parse(frame, 14)
        assert frame[:6] == GUEST_MAC and len(frame) == 60
        assert reply.op == arp.OP_REPLY and reply.senderMac == macFor(target)
        assert reply.senderIp == target and reply.targetIp == GUEST
    assert router.neighbours[GUEST] == GUEST_MAC


def test_pingToGatewayAndDnsIsAnswered() -> None:
    """Echo requests to the gateway and the DNS proxy come back with TTL 255."""
    router, seen = makeRouter()
    for dst, mac in ((GATEWAY, GW_MAC), (DNS, macFor(DNS))):
        router.frameReceived(ipFrame(dst, ipv4.PROTO_ICMP, echoRequest(), dstMac=mac))
    assert len(seen.frames) == 2
    for frame, dst in zip(seen.frames, (GATEWAY, DNS)):
        header = ipv4.IPv4Header.parse(frame, 14)
        assert (header.src, header.dst, header.ttl) == (dst, GUEST, 255)
        assert frame[:12] == GUEST_MAC + GW_MAC
        reply = icmp.ICMPMessage.parse(frame, 34)
        assert reply.type == icmp.ECHO_REPLY and reply.payload == b"ping!"
        assert icmp.checksumOk(frame[34:])


def test_framesForOtherStationsAreIgnoredSilently() -> None:
    """A unicast frame to another guest's MAC is not the router's business."""
    router, seen = makeRouter()
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest(),
                                 dstMac=bytes.fromhex("020000000099")))
    assert seen.frames == [] and seen.drops == []


@pytest.mark.parametrize("mangle, problem", [
    (lambda f: f[:24] + b"\0\0" + f[26:], "bad header checksum"),
    (lambda f: f[:40], "truncated"),
    (lambda f: f[:14] + b"\x35" + f[15:], "IPv4"),
])
def test_malformedIpv4IsCountedAndDropped(mangle: Any, problem: str) -> None:
    """Broken IPv4 headers are counted as malformed, with what was wrong."""
    router, seen = makeRouter()
    router.frameReceived(mangle(ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest(b"x" * 40))))
    assert seen.frames == []
    assert seen.drops and seen.drops[0][0] == "malformed" and problem in seen.drops[0][1]


def test_badTcpChecksumNeverReachesTheEngine() -> None:
    """A TCP segment with a wrong checksum is dropped; a good one is handed on."""
    router, seen = makeRouter()
    segment = bytearray(20)
    segment[12] = 0x50
    good = bytes(segment)
    from vtwisted.wire.checksum import internetChecksum

    value = internetChecksum(good, pseudoHeaderSumV4(GUEST, GATEWAY, 6, 20))
    good = good[:16] + value.to_bytes(2, "big") + good[18:]
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_TCP, bytes(segment[:16]) + b"\1\1" +
                                 bytes(segment[18:])))
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_TCP, good))
    assert [d[0] for d in seen.drops] == ["malformed"]
    assert len(router.tcp.calls) == 1
    src, dst, body, packet = router.tcp.calls[0]
    assert (src, dst, bytes(body)) == (GUEST, GATEWAY, good)


def test_kernelVouchedChecksumsAreNotChecked() -> None:
    """A packet from an offload TAP with NEEDS_CSUM reaches the engine without a check."""
    router, seen = makeRouter()
    segment = bytes([0] * 12 + [0x50] + [0] * 7)
    header = vnet.VnetHeader(vnet.NEEDS_CSUM, 0, 54, 0, 34, 16).pack()
    router.vnetPacketReceived(header + ipFrame(GATEWAY, ipv4.PROTO_TCP, segment))
    assert seen.drops == [] and len(router.tcp.calls) == 1


def fragmentsOf(payload: bytes, size: int, ident: int = 77) -> list[bytes]:
    """
    Frames carrying C{payload} (an ICMP message to the gateway) in IPv4
    fragments of C{size} bytes (a multiple of 8).
    """
    frames = []
    for offset in range(0, len(payload), size):
        piece = payload[offset:offset + size]
        more = ipv4.FLAG_MF if offset + size < len(payload) else 0
        header = ipv4.IPv4Header(0, 20 + len(piece), ident, more, offset // 8, 64,
                                 ipv4.PROTO_ICMP, 0, GUEST, GATEWAY).pack()
        frames.append(GW_MAC + GUEST_MAC + b"\x08\x00" + header + piece)
    return frames


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40).map(lambda n: n * 8), st.randoms(use_true_random=False))
def test_fragmentedPingIsReassembledInAnyOrder(size: int, rnd: Any) -> None:
    """A 3000-byte ping cut into fragments, sent in any order, is answered whole."""
    router, seen = makeRouter()
    router.learn(GUEST, GUEST_MAC)
    request = echoRequest(bytes(range(256)) * 12)
    frames = fragmentsOf(request, size)
    rnd.shuffle(frames)
    for frame in frames:
        router.frameReceived(frame)
    assert seen.drops == []
    pieces = {}
    for frame in seen.frames:
        header = ipv4.IPv4Header.parse(frame, 14)
        pieces[header.fragmentOffset * 8] = frame[34:14 + header.totalLength]
    reply = b"".join(pieces[k] for k in sorted(pieces))
    assert icmp.ICMPMessage.parse(reply).payload == bytes(range(256)) * 12


def test_overlappingFragmentsAreRefused() -> None:
    """Pieces that overlap drop the datagram as malformed; nothing is answered."""
    router, seen = makeRouter()
    request = echoRequest(b"x" * 100)
    first, second = fragmentsOf(request, 64)
    header = ipv4.IPv4Header.parse(second, 14)._replace(fragmentOffset=4, checksum=0).pack()
    router.frameReceived(first)
    router.frameReceived(second[:14] + header + second[34:])
    assert seen.frames == [] and seen.drops[0][0] == "malformed"
    assert "overlap" in seen.drops[0][1]


def test_fragmentsPastSixtyFourKilobytesWithOptionsAreMalformed() -> None:
    """
    Pieces that stay within 65515 bytes of payload but follow a first piece
    with 40 bytes of IP options would make a packet over 65535 bytes: the
    datagram is dropped as malformed, without a failure.
    """
    router, seen = makeRouter()
    size = 65512
    frames = []
    for offset in range(0, size, 1480):
        piece = bytes(min(1480, size - offset))
        more = ipv4.FLAG_MF if offset + 1480 < size else 0
        options = b"\x01" * 40 if offset == 0 else b""
        header = ipv4.IPv4Header(0, 20 + len(options) + len(piece), 9, more, offset // 8, 64,
                                 ipv4.PROTO_ICMP, 0, GUEST, GATEWAY, options).pack()
        frames.append(GW_MAC + GUEST_MAC + b"\x08\x00" + header + piece)
    with noFailuresLogged():
        for frame in frames:
            router.frameReceived(frame)
    assert seen.frames == [] and router.fragments.pending == {}
    assert seen.drops == [("malformed", "fragments from 10.0.2.15: the datagram would "
                                        "exceed 64 KB")]


def test_datagramInEightByteFragmentsIsReassembledInLinearTime() -> None:
    """
    A 65504-byte datagram cut into 8188 pieces of 8 bytes (the first and
    last sent first) is reassembled, each piece placed without walking the
    others: a guest's flood of tiny fragments must not hold the switch's
    one thread for seconds per datagram (it took 2 s for 8000 pieces).

    The work is measured in this thread's CPU time, not on the wall clock:
    a loaded machine (two cores, a QEMU test loop) left the process waiting
    for a CPU for more than the bound while the reassembly itself took
    0.05 to 0.09 s of CPU, and the test failed.
    """
    import time

    router, seen = makeRouter()
    router.learn(GUEST, GUEST_MAC)
    payload = bytes(range(256)) * 255 + bytes(216)
    request = echoRequest(payload)
    frames = fragmentsOf(request, 8)
    assert len(frames) == 8188
    started = time.thread_time()
    with noFailuresLogged():
        for frame in [frames[0], frames[-1], *frames[1:-1]]:
            router.frameReceived(frame)
    assert time.thread_time() - started < 0.5
    assert seen.drops == [] and router.fragments.completed == 1 and seen.frames


def test_pieceBeyondTheLastIsMalformed() -> None:
    """A piece that lies past the end the last piece set drops the datagram."""
    router, seen = makeRouter()
    first, last = fragmentsOf(echoRequest(b"x" * 100), 64)
    router.frameReceived(last)
    header = ipv4.IPv4Header.parse(first, 14)._replace(fragmentOffset=40, checksum=0).pack()
    router.frameReceived(first[:14] + header + first[34:])
    assert seen.frames == [] and router.fragments.pending == {}
    assert seen.drops == [("malformed", "fragments from 10.0.2.15: a piece lies past the "
                                        "last one")]


def test_incompleteDatagramIsDroppedAfterThirtySeconds() -> None:
    """A datagram missing a piece is given up after 30 s, and counted."""
    clock = Clock()
    router, seen = makeRouter(clock=clock)
    router.frameReceived(fragmentsOf(echoRequest(b"x" * 100), 64)[0])
    assert len(router.fragments.pending) == 1
    clock.advance(31)
    assert router.fragments.pending == {}
    assert seen.drops[0][0] == "peer" and "did not arrive whole" in seen.drops[0][1]


def discoverFrame() -> bytes:
    """A guest's DHCP DISCOVER, broadcast from 0.0.0.0:68."""
    discover = dhcp.DHCPMessage(
        1, 1, 6, 0, 0x1234, 0, 0, bytes(4), bytes(4), bytes(4), bytes(4),
        GUEST_MAC + bytes(10), bytes(64), bytes(128), ((dhcp.OPT_MESSAGE_TYPE, b"\x01"),),
    ).pack()
    return ipFrame(b"\xff" * 4, ipv4.PROTO_UDP, udpDatagram(
        bytes(4), b"\xff" * 4, 68, 67, discover), src=bytes(4), dstMac=b"\xff" * 6)


def test_dhcpDiscoverGetsABroadcastOffer() -> None:
    """A DISCOVER to 255.255.255.255 gets an OFFER of 10.0.2.15, broadcast from .2:67."""
    router, seen = makeRouter()
    router.frameReceived(discoverFrame())
    [frame] = seen.frames
    assert frame[:12] == b"\xff" * 6 + GW_MAC
    ip = ipv4.IPv4Header.parse(frame, 14)
    assert (ip.src, ip.dst, ip.tos, ip.totalLength) == (GATEWAY, b"\xff" * 4, 0x10, 576)
    udp = UDPHeader.parse(frame, 34)
    assert (udp.srcPort, udp.dstPort) == (67, 68)
    assert checksumValid(frame[34:], pseudoHeaderSumV4(GATEWAY, b"\xff" * 4, 17, udp.length))
    offer = dhcp.DHCPMessage.parse(frame[42:])
    assert offer.messageType == dhcp.OFFER and offer.yiaddr == GUEST and offer.xid == 0x1234


def test_onlyAnAckTeachesTheRouterTheClientsMac() -> None:
    """
    An OFFER of 10.0.2.15 leaves the router's ARP cache alone (the client may
    decline it, or take another server's): a station using 10.0.2.15 next
    gets the answers to its pings.  An ACK teaches the router the client's
    MAC at once.
    """
    router, seen = makeRouter()
    router.frameReceived(discoverFrame())
    other = bytes.fromhex("020000000099")
    ping = ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest())
    router.frameReceived(ping[:6] + other + ping[12:])
    assert seen.frames[-1][:6] == other, "the echo reply goes to the station using the address"
    ack = dhcp.DHCPMessage.parse(discoverFrame()[42:])
    request = ack._replace(options=((dhcp.OPT_MESSAGE_TYPE, bytes([dhcp.REQUEST])),
                                    (dhcp.OPT_REQUESTED_ADDRESS, bytes([10, 0, 2, 16])))).pack()
    router.frameReceived(ipFrame(b"\xff" * 4, ipv4.PROTO_UDP, udpDatagram(
        bytes(4), b"\xff" * 4, 68, 67, request), src=bytes(4), dstMac=b"\xff" * 6))
    answer = dhcp.DHCPMessage.parse(seen.frames[-1][42:])
    assert answer.messageType == dhcp.ACK and answer.yiaddr == bytes([10, 0, 2, 16])
    assert router.neighbours[bytes([10, 0, 2, 16])] == GUEST_MAC


def test_withIpv4OffTheRouterIgnoresArpDhcpAndIpv4() -> None:
    """
    ipv4=off: ARP for the gateway, a DHCP discover and a ping get nothing
    back, and no engine hears of them.
    """
    router, seen = makeRouter(":ipv4=off")
    request = arp.ARPPacket(arp.OP_REQUEST, GUEST_MAC, GUEST, bytes(6), GATEWAY).pack()
    router.frameReceived(b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + request)
    router.frameReceived(discoverFrame())
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest()))
    assert seen.frames == [] and GUEST not in router.neighbours
    assert readConfig(PortSpec("slirp:ipv4=off")).describe() == "NAT IPv6 fec0::/64 only"


def test_packetForUnknownGuestWaitsForArp() -> None:
    """A packet to an unknown guest waits for its ARP reply, then leaves to its MAC."""
    clock = Clock()
    router, seen = makeRouter(clock=clock)
    router.sendIPv4(GATEWAY, GUEST, ipv4.PROTO_UDP, udpDatagram(GATEWAY, GUEST, 1, 2, b"hi"))
    [request] = seen.frames
    asked = arp.ARPPacket.parse(request, 14)
    assert request[:6] == b"\xff" * 6 and asked.targetIp == GUEST and asked.senderIp == GATEWAY
    reply = arp.ARPPacket(arp.OP_REPLY, GUEST_MAC, GUEST, GW_MAC, GATEWAY).pack()
    router.frameReceived(GW_MAC + GUEST_MAC + b"\x08\x06" + reply)
    assert seen.frames[1][:12] == GUEST_MAC + GW_MAC
    assert seen.frames[1].endswith(b"hi")


def test_unansweredArpDropsThePacketAfterASecond() -> None:
    """If the guest never answers ARP, its packets are dropped and counted after 1 s."""
    clock = Clock()
    router, seen = makeRouter(clock=clock)
    router.sendIPv4(GATEWAY, GUEST, ipv4.PROTO_UDP, udpDatagram(GATEWAY, GUEST, 1, 2, b"hi"))
    clock.advance(1.1)
    reply = arp.ARPPacket(arp.OP_REPLY, GUEST_MAC, GUEST, GW_MAC, GATEWAY).pack()
    router.frameReceived(GW_MAC + GUEST_MAC + b"\x08\x06" + reply)
    assert len(seen.frames) == 1
    assert seen.drops[0][0] == "peer" and "did not answer ARP" in seen.drops[0][1]


def test_bigDatagramsAreFragmentedToTheMtu() -> None:
    """A 4000-byte datagram leaves in fragments that reassemble to it."""
    router, seen = makeRouter()
    router.learn(GUEST, GUEST_MAC)
    datagram = udpDatagram(GATEWAY, GUEST, 1, 2, bytes(range(256)) * 16)
    router.sendIPv4(GATEWAY, GUEST, ipv4.PROTO_UDP, datagram)
    assert len(seen.frames) == 3
    pieces = {}
    for frame in seen.frames:
        header = ipv4.IPv4Header.parse(frame, 14)
        assert header.totalLength <= 1500 and ipv4.headerChecksumValid(frame, 14)
        pieces[header.fragmentOffset * 8] = frame[34:14 + header.totalLength]
    assert b"".join(pieces[k] for k in sorted(pieces)) == datagram


def test_tcpSegmentsLeaveAsPartialChecksumPacketsAndSuperFrames() -> None:
    """Small segments carry NEEDS_CSUM; longer than the MSS, they are TSO super-frames."""
    router, seen = makeRouter()
    router.learn(GUEST, GUEST_MAC)
    header = bytes([0, 80, 0x9C, 0x40] + [0] * 8 + [0x50, 0x18] + [0] * 6)
    router.sendTcp(GATEWAY, GUEST, header, b"a" * 100, 1460)
    router.sendTcp(GATEWAY, GUEST, header, b"b" * 10000, 1460)
    small, big = (vnet.VnetHeader.parse(p) for p in seen.packets)
    assert small.flags == vnet.NEEDS_CSUM and small.gsoType == vnet.GSO_NONE
    assert big.gsoType == vnet.GSO_TCPV4 and big.gsoSize == 1460
    frames = vnet.toFrames(seen.packets[1])
    assert len(frames) == 7
    for frame in frames:
        length = len(frame) - 34
        assert checksumValid(frame[34:], pseudoHeaderSumV4(GATEWAY, GUEST, 6, length))
    assert b"".join(f[54:] for f in frames) == b"b" * 10000


routerFrames = st.tuples(
    st.binary(min_size=6, max_size=6),
    st.sampled_from([b"\x08\x00\x45", b"\x08\x00", b"\x08\x06", b"\x86\xdd", b"\x88\xf8"]),
    st.binary(max_size=200),
).map(lambda parts: GW_MAC + b"".join(parts))


@settings(max_examples=400, deadline=None)
@given(routerFrames, st.booleans())
def test_anyFrameIsCountedNeverFatal(frame: bytes, asVnet: bool) -> None:
    """Whatever arrives, the router neither fails nor stops answering pings."""
    router, seen = makeRouter()
    router.udp = router.tcp = router.icmp = FakeEngine()
    with noFailuresLogged():
        if asVnet:
            router.vnetPacketReceived(bytes(10) + GW_MAC + frame[6:])
        else:
            router.frameReceived(GW_MAC + frame[6:])
    seen.frames.clear()
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest()))
    assert icmp.ICMPMessage.parse(seen.frames[-1], 34).type == icmp.ECHO_REPLY


def test_pingsBeyondTheGatewayGoToTheIcmpEngine() -> None:
    """A ping to an outside host is handed on; restricted or to the LAN, it is not."""
    outside = bytes([192, 0, 2, 7])
    router, seen = makeRouter()
    router.frameReceived(ipFrame(outside, ipv4.PROTO_ICMP, echoRequest()))
    router.frameReceived(ipFrame(bytes([10, 0, 2, 9]), ipv4.PROTO_ICMP, echoRequest()))
    [(src, dst, ident, sequence, data)] = router.icmp.calls
    assert (src, dst, ident, sequence, data) == (GUEST, outside, 0x1234, 1, b"ping!")
    restricted, _ = makeRouter(":restrict=on")
    restricted.frameReceived(ipFrame(outside, ipv4.PROTO_ICMP, echoRequest()))
    assert restricted.icmp.calls == []


def test_udpLeavesWithItsChecksumLeftToComplete() -> None:
    """A datagram within the MTU leaves as NEEDS_CSUM and checks once cut; a big one fragments."""
    router, seen = makeRouter()
    router.learn(GUEST, GUEST_MAC)
    router.sendUdp(GATEWAY, GUEST, 53, 4000, b"answer" * 100)
    [packet] = seen.packets
    assert vnet.VnetHeader.parse(packet).flags == vnet.NEEDS_CSUM
    [frame] = vnet.toFrames(packet)
    assert frame[:12] == GUEST_MAC + GW_MAC and ipv4.headerChecksumValid(frame, 14)
    udp = UDPHeader.parse(frame, 34)
    assert (udp.srcPort, udp.dstPort, udp.length) == (53, 4000, 608)
    assert checksumValid(frame[34:], pseudoHeaderSumV4(GATEWAY, GUEST, 17, 608))
    router.sendUdp(GATEWAY, GUEST, 53, 4000, b"x" * 3000)
    assert len(seen.frames) == 3, "fragments, as plain frames"


def test_usoPacketsReachTheEngineDatagramByDatagram() -> None:
    """A TAP's merged run of datagrams reaches the UDP engine as the datagrams it was."""
    router, seen = makeRouter()
    datagrams = [bytes([n]) * 1000 for n in range(5)] + [b"tail"]
    payload = b"".join(datagrams)
    length = 8 + len(payload)
    udp = UDPHeader(4000, 5000, length, pseudoHeaderSumV4(GUEST, GATEWAY, 17, length)).pack()
    ip = ipv4.IPv4Header(0, 20 + length, 9, 0, 0, 64, 17, 0, GUEST, GATEWAY).pack()
    header = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_UDP_L4, 42, 1000, 34, 6).pack()
    router.vnetPacketReceived(header + GW_MAC + GUEST_MAC + b"\x08\x00" + ip + udp + payload)
    assert seen.drops == []
    got = [(call[0], call[1], call[2], call[3], call[4]) for call in router.udp.calls]
    assert got == [(GUEST, 4000, GATEWAY, 5000, d) for d in datagrams]


@pytest.mark.parametrize("writable, pays", [(True, True), (False, True), (True, False)])
def test_runsOfDatagramsLeaveAsOneUsoPacketWhereTheyPay(writable: bool, pays: bool) -> None:
    """A flow's run is one USO packet cutting back to the same datagrams, or single datagrams."""
    router, seen = makeRouter()
    router.usoWritable, router.usoPays = writable, lambda mac: pays
    router.learn(GUEST, GUEST_MAC)
    payloads = [bytes([n]) * 1200 for n in range(10)] + [b"last"]
    router.sendUdpRun(GATEWAY, GUEST, 5201, 40000, payloads)
    if writable and pays:
        [packet] = seen.packets
        assert vnet.VnetHeader.parse(packet).gsoType == vnet.GSO_UDP_L4
    else:
        assert len(seen.packets) == len(payloads)
    frames = [f for p in seen.packets for f in vnet.toFrames(p)]
    assert [f[42:] for f in frames] == payloads
    for frame in frames:
        header = ipv4.IPv4Header.parse(frame, 14)
        assert ipv4.headerChecksumValid(frame, 14) and frame[:6] == GUEST_MAC
        assert checksumValid(frame[34:], pseudoHeaderSumV4(GATEWAY, GUEST, 17,
                                                           header.totalLength - 20))


def test_packetsThatWouldLeaveWithTtlOneGetTimeExceeded() -> None:
    """A datagram beyond the gateway with TTL 1 is answered by 10.0.2.2, as a router does."""
    router, seen = makeRouter()
    outside = bytes([192, 0, 2, 7])
    datagram = udpDatagram(GUEST, outside, 33434, 33434, b"probe")
    header = ipv4.IPv4Header(0, 20 + len(datagram), 5, 0, 0, 1, 17, 0, GUEST, outside).pack()
    router.frameReceived(GW_MAC + GUEST_MAC + b"\x08\x00" + header + datagram)
    [frame] = seen.frames
    assert ipv4.IPv4Header.parse(frame, 14).src == GATEWAY
    message = icmp.ICMPMessage.parse(frame, 34)
    assert (message.type, message.code) == (icmp.TIME_EXCEEDED, 0)
    assert message.payload[:20] == header
    assert router.udp.calls == [], "it does not leave"


def test_broadcastsWithTtlOneGetNoError() -> None:
    """A broadcast to the subnet with TTL 1 is not answered with time exceeded (RFC 1122)."""
    router, seen = makeRouter()
    broadcast = bytes([10, 0, 2, 255])
    datagram = udpDatagram(GUEST, broadcast, 137, 137, b"who?")
    header = ipv4.IPv4Header(0, 20 + len(datagram), 5, 0, 0, 1, 17, 0, GUEST, broadcast).pack()
    router.frameReceived(b"\xff" * 6 + GUEST_MAC + b"\x08\x00" + header + datagram)
    assert seen.frames == [] and seen.drops == []


@pytest.mark.parametrize("options, reaches", [("", True), (":hostloopback=off", False),
                                              (":restrict=on", False)])
def test_udpToTheLimitedBroadcastGoesToTheHostsLoopback(options: str, reaches: bool) -> None:
    """
    As in libslirp, a guest's UDP to 255.255.255.255 goes to the host's
    loopback as if sent to the gateway (a guest's LAN discovery finds a
    service on the host); without the host's loopback it goes nowhere,
    silently.
    """
    router, seen = makeRouter(options)
    everyone = b"\xff" * 4
    datagram = udpDatagram(GUEST, everyone, 4000, 9999, b"anyone there?")
    router.frameReceived(ipFrame(everyone, 17, datagram, dstMac=b"\xff" * 6))
    calls = router.udp.calls
    assert [call[:5] for call in calls] == (
        [(GUEST, 4000, everyone, 9999, b"anyone there?")] if reaches else [])
    expected = ("127.0.0.1", 9999) if options == "" else None
    assert router.hostAddress(everyone, 9999, ipv4.PROTO_UDP) == expected
    assert router.hostAddress(everyone, 9999, ipv4.PROTO_TCP) is None
    assert seen.frames == [] and seen.drops == []


@pytest.mark.parametrize("options, answered", [(":mtu=1500", False), ("", True)])
def test_unfragmentablePacketsPastAGivenMtuAreToldTheMtu(options: str, answered: bool) -> None:
    """
    With C{mtu=1500}, a 4028-byte ping to the gateway that may not be
    fragmented gets fragmentation needed with the MTU, not an echo, and the
    drop is counted; one that may be fragmented, and any without C{mtu=}
    (the port takes jumbo frames), is answered.
    """
    router, seen = makeRouter(options)
    router.learn(GUEST, GUEST_MAC)
    big = echoRequest(bytes(4000))
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP, big, flags=ipv4.FLAG_DF))
    header = ipv4.IPv4Header.parse(seen.frames[0], 14)
    message = icmp.ICMPMessage.parse(seen.frames[0], 34)
    if answered:
        assert message.type == icmp.ECHO_REPLY and seen.drops == []
        return
    assert (header.src, header.dst) == (GATEWAY, GUEST)
    assert (message.type, message.code) == (icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED)
    assert message.rest == (1500).to_bytes(4, "big") and icmp.checksumOk(seen.frames[0][34:])
    assert len(seen.frames[0]) < 100, "the error quotes the header and 8 bytes"
    [(reason, text)] = seen.drops
    assert reason == "mtu" and "4028-byte packet" in text and "MTU 1500" in text
    seen.frames.clear()
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP, big))
    reply = icmp.ICMPMessage.parse(b"".join(seen.frames[:1]), 34)
    assert reply.type == icmp.ECHO_REPLY, "a fragmentable one is taken whole, as libslirp does"
