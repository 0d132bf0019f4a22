"""
Tests for the segmentation of L{vtwisted.wire.vnet}: TCP (TSO) and UDP (USO)
super-frames cut into correct frames, and inconsistent GSO packets refused
with a reason.

Every segment is checked from scratch with a word-by-word checksum
(L{vnetpackets.checkSegments}).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_checksum import referenceSum
from vnetpackets import (
    FAST,
    GOOD,
    GOOD6,
    IP_OPTIONS,
    TCP_OPTIONS,
    UDP,
    Built,
    _patched,
    checkSegments,
    kernelPacket,
    randomPayload,
    tcpSuperFrames,
    udpSuperFrames,
)

from vtwisted.wire import tcp, vnet, vnetcheck
from vtwisted.wire.vnet import VnetError, VnetHeader

# -- TCP segmentation ------------------------------------------------------------------


@FAST
@given(tcpSuperFrames())
@example(kernelPacket(randomPayload(65000, 0), 1448, tcpOptions=TCP_OPTIONS[3],
                      ipOptions=IP_OPTIONS[2], vid=4094, ident=0xFFF0, seq=2**32 - 1))
@example(kernelPacket(randomPayload(65000, 1), 1428, v6=True, hopByHop=bytes(6), vid=1,
                      tcpFlags=tcp.ACK | tcp.FIN | tcp.CWR | tcp.PSH))
def test_superFramesAreCutIntoCorrectSegments(built: Built) -> None:
    """
    Every segment has correct lengths, ids, sequence numbers, flags and checksums.
    """
    assert vnetcheck.validate(built.packet) is None
    checkSegments(built, vnet.toFrames(built.packet))


def test_segmentsCarryConsecutiveSequenceNumbers() -> None:
    """
    Each segment starts where the previous one's payload ended.
    """
    built = kernelPacket(bytes(5000), 1448, seq=2**32 - 2000)
    frames = vnet.toFrames(built.packet)
    seqs = [int.from_bytes(frame[38:42], "big") for frame in frames]
    assert seqs == [2**32 - 2000, 2**32 - 552, 896, 2344]
    assert [len(frame) - 54 for frame in frames] == [1448, 1448, 1448, 656]


def test_finAndPshOnlyOnTheLastSegmentCwrOnlyOnTheFirst() -> None:
    """
    A closing super-frame ends with FIN on its last segment only.
    """
    flags = tcp.ACK | tcp.PSH | tcp.FIN | tcp.CWR | tcp.ECE
    built = kernelPacket(bytes(3000), 1000, tcpFlags=flags)
    assert built.packet[1] == vnet.GSO_TCPV4 | vnet.GSO_ECN
    got = [frame[47] for frame in vnet.toFrames(built.packet)]
    ack, ece = tcp.ACK, tcp.ECE
    assert got == [ack | ece | tcp.CWR, ack | ece, ack | ece | tcp.PSH | tcp.FIN]


def test_ipv4IdsIncrementPerSegmentAndWrap() -> None:
    """
    Segments get the super-frame's IPv4 id plus their index, modulo 2**16.
    """
    frames = vnet.toFrames(kernelPacket(bytes(4000), 1000, ident=0xFFFE).packet)
    assert [int.from_bytes(frame[18:20], "big") for frame in frames] == [0xFFFE, 0xFFFF, 0, 1]


def test_smallGsoPacketBecomesOneSegment() -> None:
    """
    A GSO packet whose payload fits one segment keeps all its flags.
    """
    flags = tcp.ACK | tcp.PSH | tcp.FIN | tcp.CWR
    built = kernelPacket(b"x" * 100, 1448, tcpFlags=flags)
    frames = vnet.toFrames(built.packet)
    assert len(frames) == 1 and frames[0][47] == flags
    checkSegments(built, frames)


def test_oddSegmentSizesAreSummedCorrectly() -> None:
    """
    Odd gso_size and odd tails still give correct checksums.
    """
    for size, gso in ((5001, 1001), (5000, 1001), (4999, 1000), (1, 999)):
        for v6 in (False, True):
            built = kernelPacket(randomPayload(size, size), gso, v6=v6)
            checkSegments(built, vnet.toFrames(built.packet))


def test_whatPeersChooseKeepsNoUnboundedState() -> None:
    """
    Segment sizes and header layouts come from the packets, so a peer
    sending every gso_size and every option length does not make the
    switch keep a fold or a packer for each: the caches stay bounded, and
    every packet is still cut correctly.
    """
    from vtwisted.wire import gsocut

    for gso in range(100, 100 + 3 * gsocut.CACHE_LIMIT):
        options = IP_OPTIONS[gso % len(IP_OPTIONS)]
        built = kernelPacket(randomPayload(2 * gso + 1, gso), gso, ipOptions=options)
        checkSegments(built, vnet.toFrames(built.packet))
        assert len(gsocut._folds) <= gsocut.CACHE_LIMIT
        assert len(gsocut._packers) <= gsocut.CACHE_LIMIT


def test_headerOnlyGsoPacketBecomesOneEmptySegment() -> None:
    """
    A GSO packet without payload comes out as one bare TCP segment.
    """
    built = kernelPacket(b"", 1448)
    frames = vnet.toFrames(built.packet)
    assert len(frames) == 1
    checkSegments(built, frames)


def test_paddingAfterTheIpPacketIsDropped() -> None:
    """
    Bytes after the IP total length are not sent as payload.
    """
    built = kernelPacket(randomPayload(3000, 1), 1448)
    frames = vnet.toFrames(built.packet + bytes(6))
    checkSegments(built, frames)


def test_bigTcpTotalLengthZeroUsesTheFrameLength() -> None:
    """
    An IPv4 total length of 0 (Linux BIG TCP) means "up to the end of the frame".
    """
    built = kernelPacket(randomPayload(3000, 2), 1448)
    packet = bytearray(built.packet)
    packet[26:28] = b"\x00\x00"
    frames = vnet.toFrames(bytes(packet))
    assert b"".join(frame[54:] for frame in frames) == built.payload
    assert all(referenceSum(frame[14:34]) == 0xFFFF for frame in frames)


def test_hdrLenIsOnlyAHint() -> None:
    """
    A wrong hdr_len does not change the segments.
    """
    built = kernelPacket(randomPayload(4000, 3), 1448, tcpOptions=TCP_OPTIONS[1])
    packet = bytearray(built.packet)
    packet[2:4] = (14).to_bytes(2, "little")
    assert vnet.toFrames(bytes(packet)) == vnet.toFrames(built.packet)


# -- USO ---------------------------------------------------------------------------------


@FAST
@given(udpSuperFrames())
def test_usoSuperFramesAreCutIntoDatagrams(built: Built) -> None:
    """
    Every UDP datagram has its own length, checksum and IP header.
    """
    assert vnetcheck.validate(built.packet) is None
    checkSegments(built, vnet.toFrames(built.packet))


def test_ufoIsRefused() -> None:
    """
    Legacy UFO packets are an error, never silently passed on.
    """
    built = kernelPacket(bytes(3000), 1000, proto=UDP)
    packet = VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_UDP, 42, 1000, 34, 6).pack() + built.packet[10:]
    with pytest.raises(VnetError, match="UFO"):
        vnet.toFrames(packet)
    assert "UFO" in (vnetcheck.validate(packet) or "")


# -- inconsistent GSO packets ---------------------------------------------------------------


BROKEN = {
    "gso_size is 0": _patched(GOOD, 4, b"\x00\x00"),
    "unknown gso_type": _patched(GOOD, 1, b"\x02"),
    "on a frame of EtherType 0x0806": _patched(GOOD, 22, b"\x08\x06"),
    "gso_type 0x04 on a frame of EtherType 0x0800": _patched(GOOD, 1, b"\x04"),
    "gso_type 0x01 on a frame of EtherType 0x86dd": _patched(GOOD6, 1, b"\x01"),
    "IPv4 fragment": _patched(GOOD, 30, b"\x20"),
    "IP protocol 17": _patched(GOOD, 33, b"\x11"),
    "csum_start 30 does not point": _patched(GOOD, 6, b"\x1e\x00"),
    "csum_offset 6 is not 16": _patched(GOOD, 8, b"\x06\x00"),
    "IP length says": GOOD[:-1],
    "IPv4 header truncated": GOOD[:40],
    "TCP header truncated": _patched(GOOD[:60], 26, (36).to_bytes(2, "big")),
    "IP version 5": _patched(GOOD, 24, b"\x55"),
    "IPv6 header truncated": GOOD6[:60],
    "the ECN bit is set on UDP GSO": _patched(
        kernelPacket(bytes(3000), 1000, proto=UDP).packet, 1, b"\x85"
    ),
}


@pytest.mark.parametrize("message", sorted(BROKEN))
def test_inconsistentGsoPacketsAreRefusedWithAReason(message: str) -> None:
    """
    Each kind of inconsistency raises VnetError saying what is wrong.
    """
    with pytest.raises(VnetError, match=message):
        vnet.toFrames(BROKEN[message])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbageRaisesOnlyVnetError(data: bytes) -> None:
    """
    Random bytes never crash the switch with anything but VnetError.
    """
    _survives(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcpSuperFrames(maxPayload=3000) | udpSuperFrames(maxPayload=3000), st.data())
def test_corruptedPacketsRaiseOnlyVnetError(built: Built, data: st.DataObject) -> None:
    """
    Valid packets with random bytes changed or cut off raise only VnetError.
    """
    packet = bytearray(built.packet)
    for _ in range(data.draw(st.integers(1, 6))):
        packet[data.draw(st.integers(0, min(len(packet), 110) - 1))] = data.draw(
            st.integers(0, 255)
        )
    cut = data.draw(st.none() | st.integers(0, len(packet)))
    _survives(bytes(packet[:cut]))


def _survives(packet: bytes) -> None:
    """
    Every entry point either works or raises VnetError, and validate never raises.
    """
    for call in (vnet.toFrames, vnet.removeTag, lambda p: vnet.insertTag(p, 5)):
        try:
            result = call(packet)
        except VnetError as e:
            assert str(e)
        else:
            assert isinstance(result, (bytes, list))
    verdict = vnetcheck.validate(packet)
    assert verdict is None or isinstance(verdict, str)
