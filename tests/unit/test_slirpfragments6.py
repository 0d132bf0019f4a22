"""
Tests for the reassembly of guests' IPv6 fragments by the slirp router
(L{vtwisted.slirp.fragments6}, through L{vtwisted.slirp.router6}): whole
datagrams reach the engines, with the same limits and defences as IPv4's.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from router6fakes import GATEWAY, GUEST, GUEST_MAC, addr, echo, frame6, makeRouter, parsed
from slirpfakes import noFailuresLogged
from twisted.internet.task import Clock

from vtwisted.slirp.packets import udpDatagram
from vtwisted.wire import icmpv6, ipv6

BEYOND = addr("2001:db8::1")
#: A hop-by-hop header (a PadN option) naming a fragment header next.
HOP_BY_HOP = bytes([ipv6.NH_FRAGMENT, 0, 1, 4, 0, 0, 0, 0])


def fragments(payload: bytes, size: int, ident: int = 7, nextHeader: int = ipv6.NH_UDP,
              before: bytes = b"", src: bytes = GUEST, dst: bytes = BEYOND,
              hopLimit: int = 64) -> list[bytes]:
    """
    Frames carrying C{payload} (what follows the fragment header once
    whole) in IPv6 fragments of C{size} bytes, behind C{before} (a
    hop-by-hop header naming the fragment header) if given.
    """
    frames = []
    first = ipv6.NH_HOP_BY_HOP if before else ipv6.NH_FRAGMENT
    for offset in range(0, len(payload), size):
        piece = payload[offset:offset + size]
        more = 1 if offset + size < len(payload) else 0
        header = struct.pack("!BBHI", nextHeader, 0, offset | more, ident)
        frames.append(frame6(src, dst, first, before + header + piece, hopLimit))
    return frames


def bigDatagram(size: int = 4000, dst: bytes = BEYOND) -> bytes:
    return udpDatagram(GUEST, dst, 40000, 9, bytes(range(256)) * (size // 256) +
                       bytes(size % 256))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 180).map(lambda n: n * 8), st.randoms(use_true_random=False))
def test_fragmentedUdpReachesTheEngineWholeInAnyOrder(size: int, rnd: Any) -> None:
    """A 4000-byte datagram cut into fragments, sent in any order, reaches the UDP engine whole."""
    router, seen = makeRouter()
    datagram = bigDatagram()
    frames = fragments(datagram, size)
    rnd.shuffle(frames)
    with noFailuresLogged():
        for frame in frames:
            router.frameReceived(frame)
    assert seen.drops == [] and router.v6.fragments.pending == {}
    [(src, srcPort, dst, dstPort, payload, packet)] = router.udp.calls
    assert (src, srcPort, dst, dstPort, payload) == (GUEST, 40000, BEYOND, 9, datagram[8:])
    header = ipv6.IPv6Header.parse(packet)
    assert (header.nextHeader, header.payloadLength) == (ipv6.NH_UDP, len(datagram))
    assert bytes(packet[40:]) == datagram


def test_headersBeforeTheFragmentHeaderAreKept() -> None:
    """
    A hop-by-hop header before the fragment header stays in the whole
    packet, naming UDP now; the payload length counts it.
    """
    router, seen = makeRouter()
    datagram = bigDatagram(3000)
    for frame in fragments(datagram, 1448, before=HOP_BY_HOP):
        router.frameReceived(frame)
    assert seen.drops == []
    [call] = router.udp.calls
    packet = bytes(call[5])
    assert ipv6.IPv6Header.parse(packet).payloadLength == 8 + len(datagram)
    assert packet[40:48] == bytes([ipv6.NH_UDP]) + HOP_BY_HOP[1:]
    assert ipv6.transportOffset(packet) == (ipv6.NH_UDP, 48) and packet[48:] == datagram


def test_fragmentedPingToTheGatewayIsAnswered() -> None:
    """A 3000-byte ping to the gateway in fragments gets its (fragmented) reply."""
    router, seen = makeRouter()
    router.v6.learn(GUEST, GUEST_MAC)
    body = b"\x12\x34\x00\x01" + b"p" * 3000
    request = icmpv6.ICMPv6Message(icmpv6.ECHO_REQUEST, 0, 0, body).pack(GUEST, GATEWAY)
    for frame in fragments(request, 1448, nextHeader=ipv6.NH_ICMPV6, dst=GATEWAY):
        router.frameReceived(frame)
    assert seen.drops == [] and len(seen.frames) == 3
    pieces = {}
    for frame in seen.frames:
        field = struct.unpack_from("!H", frame, 56)[0]
        pieces[field & ~7] = frame[62:]
    reply = icmpv6.ICMPv6Message.parse(b"".join(pieces[k] for k in sorted(pieces)))
    assert reply.type == icmpv6.ECHO_REPLY and reply.body == body


def test_atomicFragmentIsHandledAtOnce() -> None:
    """A fragment header on a whole datagram (offset 0, M clear) is taken out at once."""
    router, seen = makeRouter()
    datagram = bigDatagram(100)
    [frame] = fragments(datagram, 200)
    router.frameReceived(frame)
    assert seen.drops == [] and router.v6.fragments.pending == {}
    assert router.udp.calls[0][4] == datagram[8:]


def test_reassembledChecksumIsChecked() -> None:
    """A whole datagram with a wrong UDP checksum is dropped as malformed."""
    router, seen = makeRouter()
    datagram = bytearray(bigDatagram())
    datagram[100] ^= 1
    for frame in fragments(bytes(datagram), 1448):
        router.frameReceived(frame)
    assert router.udp.calls == []
    assert seen.drops == [("malformed", "UDP from fec0::15: bad checksum")]


def test_overlappingFragmentsAreRefused() -> None:
    """Pieces that overlap drop the datagram as malformed (RFC 5722)."""
    router, seen = makeRouter()
    first, second, _ = fragments(bigDatagram(), 1448)
    router.frameReceived(first)
    overlapping = second[:56] + struct.pack("!H", 1440 | 1) + second[58:]
    router.frameReceived(overlapping)
    assert router.udp.calls == [] and router.v6.fragments.pending == {}
    assert seen.drops == [("malformed", "fragments from fec0::15: pieces overlap")]


def test_pieceBeforeTheLastMustBeAMultipleOfEightBytes() -> None:
    """A first piece of 1001 bytes with M set drops the datagram as malformed."""
    router, seen = makeRouter()
    router.frameReceived(fragments(bigDatagram(), 1001)[0])
    assert router.v6.fragments.pending == {}
    assert seen.drops == [("malformed", "fragments from fec0::15: a piece before the last is "
                                        "not a multiple of 8 bytes")]


def test_datagramPastSixtyFourKilobytesIsMalformed() -> None:
    """A last piece ending past 65535 bytes drops the datagram, without a failure."""
    router, seen = makeRouter()
    last = struct.pack("!BBHI", ipv6.NH_UDP, 0, 65528, 7) + bytes(16)
    with noFailuresLogged():
        router.frameReceived(fragments(bigDatagram(), 1448)[0])
        router.frameReceived(frame6(GUEST, BEYOND, ipv6.NH_FRAGMENT, last))
    assert router.udp.calls == [] and router.v6.fragments.pending == {}
    assert seen.drops == [("malformed", "fragments from fec0::15: the datagram would "
                                        "exceed 64 KB")]


def test_fragmentWithinAFragmentIsRefused() -> None:
    """A whole datagram holding one more fragment header is malformed: reassembly does not nest."""
    router, seen = makeRouter()
    inner = struct.pack("!BBHI", ipv6.NH_UDP, 0, 0, 8) + bigDatagram(100)
    with noFailuresLogged():
        for frame in fragments(inner, 64, nextHeader=ipv6.NH_FRAGMENT):
            router.frameReceived(frame)
    assert router.udp.calls == []
    assert seen.drops == [("malformed", "fragments from fec0::15: a fragment header within "
                                        "a fragmented datagram")]


def test_incompleteDatagramIsDroppedAfterThirtySeconds() -> None:
    """A datagram missing a piece is given up after 30 s, and counted."""
    clock = Clock()
    router, seen = makeRouter(clock=clock)
    router.frameReceived(fragments(bigDatagram(), 1448)[0])
    assert len(router.v6.fragments.pending) == 1
    clock.advance(29)
    assert len(router.v6.fragments.pending) == 1
    clock.advance(2)
    assert router.v6.fragments.pending == {}
    assert seen.drops == [("peer", "fragments from fec0::15: the datagram did not arrive "
                                   "whole within 30 s")]


def test_atMostSixtyFourDatagramsArePending() -> None:
    """The 65th incomplete datagram is dropped as busy; the others stay."""
    router, seen = makeRouter()
    for ident in range(65):
        router.frameReceived(fragments(bigDatagram(), 1448, ident=ident)[0])
    assert len(router.v6.fragments.pending) == 64
    assert seen.drops == [("busy", "64 fragmented datagrams pending")]


def test_closingDropsPendingFragmentsAndTheirTimers() -> None:
    """Closing the IPv6 side drops what waits and cancels its timers."""
    clock = Clock()
    router, _ = makeRouter(clock=clock)
    router.frameReceived(fragments(bigDatagram(), 1448)[0])
    router.v6.close()
    assert router.v6.fragments.pending == {} and clock.getDelayedCalls() == []


def test_truncatedFragmentHeaderIsMalformed() -> None:
    """A fragment header cut short is counted, and the router still answers pings."""
    router, seen = makeRouter()
    with noFailuresLogged():
        router.frameReceived(frame6(GUEST, BEYOND, ipv6.NH_FRAGMENT, bytes(4)))
    assert seen.drops == [("malformed", "IPv6 from fec0::15: IPv6 fragment header truncated")]
    router.frameReceived(echo())
    assert parsed(seen.frames[-1])[1].type == icmpv6.ECHO_REPLY
