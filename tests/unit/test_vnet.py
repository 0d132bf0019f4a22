"""
Tests for L{vtwisted.wire.vnet}: the virtio-net header, segmentation of
super-frames, checksum completion, VLAN tags and validation.

Packets are built the way Linux 6.18 hands them to a reader of a TAP with
offloads (measured, see the module docstring of L{vtwisted.wire.vnet}), and
every segment is checked from scratch with a word-by-word checksum.  The
integration test at the end checks both the builder and the segmenter
against the kernel itself.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

import pytest
from helpers import unavailable
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_checksum import referenceSum

from vtwisted.wire import tcp, vlan, vnet, vnetcheck
from vtwisted.wire.ipv4 import IPv4Header
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.tcp import TCPHeader
from vtwisted.wire.udp import UDPHeader
from vtwisted.wire.vnet import VnetError, VnetHeader

MAC_A = bytes.fromhex("020000007701")
MAC_B = bytes.fromhex("020000007702")
SRC4, DST4 = bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2])
SRC6 = bytes.fromhex("fd770000000000000000000000000001")
DST6 = bytes.fromhex("fd770000000000000000000000000002")
TCP, UDP = 6, 17


# -- an independent reference (referenceSum: RFC 1071 done the textbook way) ---


def referenceChecksum(data: bytes) -> int:
    """
    The checksum of C{data} (field zeroed), 0 written as 0xFFFF.
    """
    return (~referenceSum(data) & 0xFFFF) or 0xFFFF


def pseudoHeader(v6: bool, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """
    The pseudo-header bytes of RFC 793 (IPv4) or RFC 8200 (IPv6).
    """
    if v6:
        return src + dst + length.to_bytes(4, "big") + bytes(3) + bytes([proto])
    return src + dst + bytes([0, proto]) + length.to_bytes(2, "big")


# -- building packets the way Linux does ---------------------------------------


class Built(NamedTuple):
    """
    A packet and what it was built from.
    """

    packet: bytes
    payload: bytes
    gsoSize: int
    l3: int
    l4: int
    v6: bool
    proto: int


def ethernet(etherType: int, vid: int | None, dst: bytes = MAC_B, src: bytes = MAC_A) -> bytes:
    """
    An Ethernet header, with an 802.1Q tag if C{vid} is given.
    """
    tag = b"" if vid is None else vlan.TPID + vid.to_bytes(2, "big")
    return dst + src + tag + etherType.to_bytes(2, "big")


def kernelPacket(
    payload: bytes,
    gsoSize: int = 1448,
    *,
    proto: int = TCP,
    v6: bool = False,
    vid: int | None = None,
    gso: bool = True,
    tcpFlags: int = tcp.ACK | tcp.PSH,
    tcpOptions: bytes = b"",
    ipOptions: bytes = b"",
    hopByHop: bytes | None = None,
    seq: int = 1000,
    ack: int = 2000,
    window: int = 502,
    ident: int = 7,
    ipFlags: int = 2,
    tos: int = 0,
    ttl: int = 64,
    flowLabel: int = 0,
    ports: tuple[int, int] = (40000, 5001),
    addresses: tuple[bytes, bytes] | None = None,
    macs: tuple[bytes, bytes] = (MAC_B, MAC_A),
) -> Built:
    """
    A packet as Linux hands it to the reader of a TAP with offloads: IP and
    UDP lengths of the whole packet, a valid IPv4 header checksum, and in the
    TCP or UDP checksum field the folded pseudo-header sum computed with the
    whole transport length; C{NEEDS_CSUM}, and with C{gso} the GSO type (ECN
    when CWR is set), C{hdr_len} of the headers and C{gso_size}.
    """
    src, dst = addresses or ((SRC6, DST6) if v6 else (SRC4, DST4))
    if proto == TCP:
        transport = TCPHeader(*ports, seq, ack, tcpFlags, window, 0, 0, tcpOptions).pack()
    else:
        transport = UDPHeader(*ports, (8 + len(payload)) & 0xFFFF, 0).pack()
    length = len(transport) + len(payload)
    field = referenceSum(pseudoHeader(v6, src, dst, proto, length))
    where = 16 if proto == TCP else 6
    transport = transport[:where] + field.to_bytes(2, "big") + transport[where + 2 :]
    if v6:
        extension = b""
        if hopByHop is not None:
            extension = bytes([proto, (len(hopByHop) + 2) // 8 - 1]) + hopByHop
        network = IPv6Header(
            tos, flowLabel, len(extension) + length, 0 if extension else proto, ttl, src, dst
        ).pack() + extension
    else:
        network = IPv4Header(
            tos, 20 + len(ipOptions) + length, ident, ipFlags, 0, ttl, proto, 0, src, dst,
            ipOptions,
        ).pack()
    link = ethernet(0x86DD if v6 else 0x0800, vid, *macs)
    l4 = len(link) + len(network)
    if not gso:
        header = VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_NONE, 0, 0, l4, where)
    else:
        if proto == UDP:
            gsoType = vnet.GSO_UDP_L4
        else:
            gsoType = vnet.GSO_TCPV6 if v6 else vnet.GSO_TCPV4
            if tcpFlags & tcp.CWR:
                gsoType |= vnet.GSO_ECN
        header = VnetHeader(
            vnet.NEEDS_CSUM, gsoType, l4 + len(transport), gsoSize, l4, where
        )
    packet = header.pack() + link + network + transport + payload
    return Built(packet, payload, gsoSize, len(link), l4, v6, proto)


def expectedFlags(flags: int, index: int, count: int) -> int:
    """
    FIN and PSH only on the last segment, CWR only on the first.
    """
    if count == 1:
        return flags
    if index > 0:
        flags &= ~tcp.CWR
    if index < count - 1:
        flags &= ~(tcp.FIN | tcp.PSH)
    return flags


def checkSegments(built: Built, frames: list[bytes]) -> None:
    """
    Check each segment from scratch against the packet it was cut from.
    """
    original = built.packet[vnet.HEADER_LENGTH :]
    l3, l4 = built.l3, built.l4
    transportLength = (original[l4 + 12] >> 4) * 4 if built.proto == TCP else 8
    start = l4 + transportLength
    chunks = [frame[start:] for frame in frames]
    assert b"".join(chunks) == built.payload
    assert all(len(chunk) == built.gsoSize for chunk in chunks[:-1])
    assert len(chunks[-1]) <= built.gsoSize
    seq0 = int.from_bytes(original[l4 + 4 : l4 + 8], "big")
    ident0 = int.from_bytes(original[l3 + 4 : l3 + 6], "big")
    for index, frame in enumerate(frames):
        assert frame[:l3] == original[:l3]
        segment = frame[l4:]
        if built.v6:
            assert int.from_bytes(frame[l3 + 4 : l3 + 6], "big") == len(frame) - l3 - 40
            assert frame[l3 : l3 + 4] == original[l3 : l3 + 4]
            assert frame[l3 + 6 : l4] == original[l3 + 6 : l4]
            src, dst = frame[l3 + 8 : l3 + 24], frame[l3 + 24 : l3 + 40]
        else:
            network = frame[l3:l4]
            assert referenceSum(network) == 0xFFFF, "IPv4 header checksum"
            assert int.from_bytes(network[2:4], "big") == len(frame) - l3
            assert int.from_bytes(network[4:6], "big") == (ident0 + index) & 0xFFFF
            assert network[:2] + network[6:10] + network[12:] == (
                original[l3 : l3 + 2] + original[l3 + 6 : l3 + 10] + original[l3 + 12 : l4]
            )
            src, dst = network[12:16], network[16:20]
        pseudo = pseudoHeader(built.v6, src, dst, built.proto, len(segment))
        assert referenceSum(pseudo + segment) == 0xFFFF, f"checksum of segment {index}"
        if built.proto == TCP:
            seq = int.from_bytes(segment[4:8], "big")
            assert seq == (seq0 + index * built.gsoSize) % 2**32
            assert segment[13] == expectedFlags(original[l4 + 13], index, len(frames))
            assert segment[:4] + segment[8:13] + segment[14:16] + segment[18:transportLength] == (
                original[l4 : l4 + 4] + original[l4 + 8 : l4 + 13] + original[l4 + 14 : l4 + 16]
                + original[l4 + 18 : start]
            )
        else:
            assert segment[:4] == original[l4 : l4 + 4]
            assert int.from_bytes(segment[4:6], "big") == len(segment)


def randomPayload(size: int, seed: int) -> bytes:
    """
    C{size} reproducible random bytes.
    """
    return random.Random(seed).randbytes(size)


TCP_OPTIONS = [
    b"",
    bytes.fromhex("0101080a5e2a57e8a77d8d3c"),
    bytes.fromhex("020405b40103030a0101080a0000000100000002"),
    b"\x01" * 40,
]
IP_OPTIONS = [b"", b"\x01\x01\x01\x00", bytes.fromhex("94040000")]
FLAG_SETS = st.sets(st.sampled_from([tcp.FIN, tcp.PSH, tcp.CWR, tcp.ECE, tcp.URG])).map(
    lambda flags: sum(flags) | tcp.ACK
)


@st.composite
def tcpSuperFrames(draw: st.DrawFn, maxPayload: int = 65000) -> Built:
    """
    Random IPv4 and IPv6 TCP super-frames, built as Linux builds them.
    """
    v6 = draw(st.booleans())
    size = draw(st.integers(1, maxPayload) | st.integers(maxPayload * 2 // 3, maxPayload))
    return kernelPacket(
        randomPayload(size, draw(st.integers(0, 2**32))),
        draw(st.integers(500, 9000)),
        v6=v6,
        vid=draw(st.none() | st.integers(1, 4094)),
        tcpFlags=draw(FLAG_SETS),
        tcpOptions=draw(st.sampled_from(TCP_OPTIONS)),
        ipOptions=b"" if v6 else draw(st.sampled_from(IP_OPTIONS)),
        hopByHop=draw(st.none() | st.just(bytes(6))) if v6 else None,
        seq=draw(st.integers(0, 2**32 - 1)),
        ident=draw(st.integers(0, 0xFFFF)),
        tos=draw(st.integers(0, 255)),
        flowLabel=draw(st.integers(0, 0xFFFFF)),
    )


@st.composite
def udpSuperFrames(draw: st.DrawFn, maxPayload: int = 60000) -> Built:
    """
    Random IPv4 and IPv6 USO super-frames, built as Linux builds them.
    """
    v6 = draw(st.booleans())
    size = draw(st.integers(1, maxPayload) | st.integers(maxPayload * 2 // 3, maxPayload))
    return kernelPacket(
        randomPayload(size, draw(st.integers(0, 2**32))),
        draw(st.integers(1000, 9000)),
        proto=UDP,
        v6=v6,
        vid=draw(st.none() | st.integers(1, 4094)),
        ident=draw(st.integers(0, 0xFFFF)),
    )


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the header ------------------------------------------------------------------


def test_headerRoundTrips() -> None:
    """
    A header reads back as written, little-endian as on x86.
    """
    header = VnetHeader(1, 0x81, 66, 1448, 34, 16)
    assert header.pack() == bytes.fromhex("0181 4200 a805 2200 1000".replace(" ", ""))
    assert VnetHeader.parse(header.pack() + b"frame") == header
    assert VnetHeader.parse(vnet.PLAIN_HEADER) == VnetHeader()


def test_shortHeaderIsRefused() -> None:
    """
    Fewer than 10 bytes is not a header.
    """
    with pytest.raises(VnetError, match="shorter than the virtio-net header"):
        VnetHeader.parse(bytes(9))


# -- plain frames and checksum completion ---------------------------------------------


def test_plainPacketLosesOnlyItsHeader() -> None:
    """
    A packet without offload work comes out as the frame itself.
    """
    frame = ethernet(0x0806, None) + bytes(28)
    assert vnet.toFrames(vnet.PLAIN_HEADER + frame) == [frame]
    dataValid = VnetHeader(vnet.DATA_VALID).pack()
    assert vnet.toFrames(dataValid + frame) == [frame]


@pytest.mark.parametrize("size", [0, 9, 10, 23])
def test_tooShortPacketsAreRefused(size: int) -> None:
    """
    A packet without room for a header and an Ethernet header is an error.
    """
    with pytest.raises(VnetError, match="too short"):
        vnet.toFrames(bytes(size))


@FAST
@given(
    st.booleans(), st.sampled_from([TCP, UDP]), st.none() | st.integers(1, 4094),
    st.integers(0, 1460) | st.integers(1900, 4000), st.integers(0, 2**32),
)
@example(False, UDP, None, 2048 - 52, 1)
@example(False, UDP, None, 2048 - 51, 1)
def test_partialChecksumIsCompletedAsComputedFromScratch(
    v6: bool, proto: int, vid: int | None, size: int, seed: int
) -> None:
    """
    A small TCP or UDP frame with a partial checksum leaves with the full one.
    """
    built = kernelPacket(randomPayload(size, seed), proto=proto, v6=v6, vid=vid, gso=False)
    [frame] = vnet.toFrames(built.packet)
    original = built.packet[vnet.HEADER_LENGTH :]
    where = built.l4 + (16 if proto == TCP else 6)
    assert frame[:where] == original[:where] and frame[where + 2 :] == original[where + 2 :]
    zeroed = frame[built.l4 : where] + b"\x00\x00" + frame[where + 2 :]
    src, dst = (frame[built.l3 + 8 : built.l3 + 24], frame[built.l3 + 24 : built.l3 + 40]) if v6 \
        else (frame[built.l3 + 12 : built.l3 + 16], frame[built.l3 + 16 : built.l3 + 20])
    pseudo = pseudoHeader(v6, src, dst, proto, len(zeroed))
    assert int.from_bytes(frame[where : where + 2], "big") == referenceChecksum(pseudo + zeroed)


@pytest.mark.parametrize("start, offset", [(60, 0), (40, 19), (0, 59), (58, 1)])
def test_checksumFieldOutsideTheFrameIsRefused(start: int, offset: int) -> None:
    """
    csum_start and csum_offset pointing past the frame are an error.
    """
    packet = VnetHeader(vnet.NEEDS_CSUM, 0, 0, 0, start, offset).pack() + bytes(60)
    with pytest.raises(VnetError, match="does not fit"):
        vnet.toFrames(packet)


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


def _patched(packet: bytes, offset: int, value: bytes) -> bytes:
    return packet[:offset] + value + packet[offset + len(value) :]


GOOD = kernelPacket(randomPayload(4000, 4), 1448).packet
GOOD6 = kernelPacket(randomPayload(4000, 5), 1448, v6=True).packet
ARP = vnet.PLAIN_HEADER + ethernet(0x0806, None) + bytes(28)

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


# -- VLAN tags ------------------------------------------------------------------------------


@FAST
@given(tcpSuperFrames(maxPayload=20000) | udpSuperFrames(maxPayload=20000),
       st.integers(1, 4094))
def test_taggingMovesOffsetsAndCommutesWithSegmentation(built: Built, vid: int) -> None:
    """
    A tagged packet still validates, segments into the tagged segments, and untags back.
    """
    if built.packet[22:24] == vlan.TPID:
        built = built._replace(packet=vnet.removeTag(built.packet))
    tagged = vnet.insertTag(built.packet, vid)
    before, after = VnetHeader.parse(built.packet), VnetHeader.parse(tagged)
    assert after == before._replace(csumStart=before.csumStart + 4, hdrLen=before.hdrLen + 4)
    assert vlan.vidOf(tagged, vnet.HEADER_LENGTH) == vid
    assert vnetcheck.validate(tagged) is None
    assert vnet.toFrames(tagged) == [vlan.insertTag(f, vid) for f in vnet.toFrames(built.packet)]
    assert vnet.removeTag(tagged) == built.packet


def test_taggingAPlainPacketLeavesItsHeaderAlone() -> None:
    """
    Without NEEDS_CSUM or hdr_len, the header stays all zeros.
    """
    tagged = vnet.insertTag(ARP, 42)
    assert tagged[:10] == vnet.PLAIN_HEADER
    assert tagged[10:] == vlan.insertTag(ARP[10:], 42)
    assert vnet.removeTag(tagged) == ARP


def test_removingAMissingTagIsRefused() -> None:
    """
    Untagging an untagged frame is an error, not a corruption.
    """
    with pytest.raises(VnetError, match=r"no 802\.1Q tag"):
        vnet.removeTag(ARP)


def test_removingATagUnderTheChecksumStartIsRefused() -> None:
    """
    A csum_start inside the tagged Ethernet header cannot move back by 4.
    """
    packet = VnetHeader(vnet.NEEDS_CSUM, 0, 0, 0, 16, 0).pack() + ethernet(0x0800, 5) + bytes(40)
    with pytest.raises(VnetError, match="csum_start 16"):
        vnet.removeTag(packet)


# -- validation ------------------------------------------------------------------------------


@FAST
@given(tcpSuperFrames(maxPayload=20000) | udpSuperFrames(maxPayload=20000))
def test_validateAcceptsWhatTheKernelBuildsAndWhatToFramesMakes(built: Built) -> None:
    """
    Kernel-style packets, and the plain segments cut from them, are safe to write.
    """
    assert vnetcheck.validate(built.packet) is None
    for frame in vnet.toFrames(built.packet):
        assert vnetcheck.validate(vnet.PLAIN_HEADER + frame) is None


def test_validateAcceptsPartialAndPlainFrames() -> None:
    """
    Small frames with a partial checksum or none at all are safe to write.
    """
    assert vnetcheck.validate(ARP) is None
    assert vnetcheck.validate(kernelPacket(b"abc", gso=False, proto=UDP).packet) is None
    assert vnetcheck.validate(kernelPacket(b"abc", gso=False, v6=True, vid=3).packet) is None


UDP_GOOD = kernelPacket(bytes(3000), 1000, proto=UDP).packet
UNSAFE = {
    "shorter than the virtio-net header": bytes(9),
    "shorter than an Ethernet header": vnet.PLAIN_HEADER + bytes(13),
    "unknown flags 0x04": _patched(ARP, 0, b"\x04"),
    "hdr_len 5000 is larger": _patched(GOOD, 2, (5000).to_bytes(2, "little")),
    "runs past the": _patched(ARP, 0, b"\x01\x00\x00\x00\x00\x00\x28\x00\x04\x00"),
    "legacy UFO": _patched(UDP_GOOD, 1, b"\x03"),
    "unknown gso_type 0x02": _patched(GOOD, 1, b"\x02"),
    "ECN bit is set on UDP": _patched(UDP_GOOD, 1, b"\x85"),
    "gso_size 0 is not": _patched(GOOD, 4, b"\x00\x00"),
    "gso_size 65535 is not": _patched(GOOD, 4, b"\xff\xff"),
    "without NEEDS_CSUM": _patched(GOOD, 0, b"\x00"),
    "csum_offset 6 is not 16": _patched(GOOD, 8, b"\x06\x00"),
    "csum_offset 16 is not 6": _patched(UDP_GOOD, 8, b"\x10\x00"),
    "on a frame of EtherType 0x0806": _patched(GOOD, 22, b"\x08\x06"),
    "gso_type 0x04 on a frame of EtherType 0x0800": _patched(GOOD, 1, b"\x04"),
    "points inside the IP header": _patched(GOOD, 6, b"\x20\x00"),
    "more than 64 UDP segments": _patched(UDP_GOOD, 4, (40).to_bytes(2, "little")),
}


@pytest.mark.parametrize("message", sorted(UNSAFE))
def test_validateRejectsEachKindOfCorruption(message: str) -> None:
    """
    Each header the kernel would reject (or the switch never writes) is named.
    """
    verdict = vnetcheck.validate(UNSAFE[message])
    assert verdict is not None and message in verdict


def test_validateRejectsATruncatedTransportHeader() -> None:
    """
    A GSO packet whose TCP header is cut off is not safe to write.
    """
    verdict = vnetcheck.validate(_patched(GOOD[:63], 2, b"\x00\x00"))
    assert verdict is not None and "runs past the frame" in verdict


@FAST
@given(
    st.binary(min_size=vnet.HEADER_LENGTH, max_size=vnet.HEADER_LENGTH),
    st.integers(0, 200),
    st.integers(0, 200),
)
def test_rememberedHeadersAgreeWithValidate(header: bytes, first: int, second: int) -> None:
    """
    A header without GSO that L{vnetcheck.validate} accepted once is remembered with the
    shortest packet it fits, and that memo never calls a packet safe that validate
    would refuse.
    """
    header = header[:1] + b"\x00" + header[2:]
    vnetcheck.knownPlainHeaders.clear()
    if vnetcheck.validate(header + bytes(first)) is None:
        assert header in vnetcheck.knownPlainHeaders
    packet = header + bytes(second)
    shortest = vnetcheck.knownPlainHeaders.get(header)
    if shortest is not None and len(packet) >= shortest:
        assert vnetcheck.validate(packet) is None


_GSO_HEADERS = st.builds(
    struct.pack,
    st.just("<BBHHHH"),
    st.sampled_from([0, 1, 2, 3]),
    st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84, 0x85]),
    st.integers(0, 120),
    st.sampled_from([0, 1, 8, 1448, 0xFFFF]),
    st.integers(0, 90),
    st.sampled_from([0, 6, 16]),
)
_ETHER_TYPES = st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x08\x06"])


@FAST
@given(_GSO_HEADERS, _ETHER_TYPES, _ETHER_TYPES, _ETHER_TYPES, st.integers(0, 700),
       st.integers(0, 700))
@example(GOOD[:10], b"\x08\x00", b"\x08\x00", b"\x08\x06", 60, 60)
@example(struct.pack("<BBHHHH", 1, 1, 0, 1448, 34, 16), b"\x08\x00", b"\x08\x00",
         b"\x08\x00", 200, 35)
def test_rememberedGsoHeadersAgreeWithTheFullCheck(
    header: bytes, firstType: bytes, secondType: bytes, innerType: bytes, first: int,
    second: int,
) -> None:
    """
    Whatever packet primed the memo of GSO headers, L{vnetcheck.validate} gives the
    same verdict as the full check on the next packet with the same header.
    """
    vnetcheck.knownGsoHeaders.clear()

    def packet(etherType: bytes, length: int) -> bytes:
        body = bytes(12) + etherType + bytes(2) + innerType + bytes(length)
        return header + body

    vnetcheck.validate(packet(firstType, first))
    candidate = packet(secondType, second)
    assert (vnetcheck.validate(candidate) is None) == (vnetcheck._problem(candidate) is None)


def test_gsoHeadersAreRemembered() -> None:
    """
    An untagged GSO header found valid is remembered with its EtherType; a
    frame of another EtherType, or too short, is still refused with the
    reason.
    """
    vnetcheck.knownGsoHeaders.clear()
    assert vnetcheck.validate(GOOD) is None
    assert GOOD[:vnet.HEADER_LENGTH] in vnetcheck.knownGsoHeaders
    assert vnetcheck.validate(GOOD) is None
    verdict = vnetcheck.validate(_patched(GOOD, 22, b"\x08\x06"))
    assert verdict is not None and "EtherType 0x0806" in verdict
    verdict = vnetcheck.validate(GOOD[:60])
    assert verdict is not None and "is larger than the 50-byte frame" in verdict


def test_rememberedUdpGsoHeadersKeepTheSegmentLimit() -> None:
    """
    A USO header remembered from a short packet still refuses a packet of more
    than L{vnet.USO_MAX_SEGMENTS} datagrams.
    """
    vnetcheck.knownGsoHeaders.clear()
    assert vnetcheck.validate(UDP_GOOD) is None
    huge = UDP_GOOD + bytes(1000 * vnet.USO_MAX_SEGMENTS)
    verdict = vnetcheck.validate(huge)
    assert verdict is not None and "more than 64 UDP segments" in verdict


def test_taggedGsoHeadersAreNotRemembered() -> None:
    """
    A tagged frame's validity also depends on its inner EtherType, so its
    header is checked in full every time.
    """
    vnetcheck.knownGsoHeaders.clear()
    tagged = kernelPacket(bytes(3000), 1000, vid=5).packet
    assert vnetcheck.validate(tagged) is None
    assert tagged[:vnet.HEADER_LENGTH] not in vnetcheck.knownGsoHeaders


# -- against the Linux kernel ---------------------------------------------------------------


TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_ALL = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40
CLONE_NEWNET = 0x40000000
SOL_UDP, UDP_SEGMENT = 17, 103
T = TypeVar("T")


def needKernel() -> None:
    """
    Skip a kernel test that cannot run here (root, /dev/net/tun, iproute2),
    or fail it when peers are required (C{VTWISTED_REQUIRE_PEERS=1}).
    """
    if os.geteuid() != 0:
        unavailable("needs root")
    if not os.path.exists("/dev/net/tun") or shutil.which("ip") is None:
        unavailable("needs /dev/net/tun and iproute2")


def _inNamespace(name: str, call: Callable[[], T]) -> T:
    """
    Run C{call} in a thread that has entered network namespace C{name}, so
    the devices and sockets it creates live there; this thread stays put.
    """

    def run() -> T:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        return call()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def _openTap(name: str) -> int:
    """
    A TAP with the virtio-net header and every offload this kernel has.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR)
    mode = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), mode))
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_ALL)
    except OSError:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_ALL & 0x0F)
    return fd


class Side(NamedTuple):
    """
    One namespace of L{twoNamespaces} and its TAP.
    """

    namespace: str
    tap: int
    mac: bytes
    ipv4: str
    ipv6: str


@contextmanager
def twoNamespaces() -> Iterator[tuple[Side, Side]]:
    """
    Two fresh namespaces, each with a TAP (virtio-net header, all offloads)
    addressed 10.77.0.1 / fd77::1 and 10.77.0.2 / fd77::2; deleted afterwards.
    """
    sides: list[Side] = []
    names = [f"vnettest-{os.getpid()}-{n}" for n in (1, 2)]
    try:
        for n, (name, mac) in enumerate(zip(names, (MAC_A, MAC_B)), 1):
            subprocess.run(["ip", "netns", "add", name], check=True)
            tap = _inNamespace(name, lambda: _openTap("vnt0"))
            sides.append(Side(name, tap, mac, f"10.77.0.{n}", f"fd77::{n}"))
            for command in (
                ["link", "set", "lo", "up"],
                ["link", "set", "vnt0", "address", mac.hex(":")],
                ["addr", "add", f"10.77.0.{n}/24", "dev", "vnt0"],
                ["addr", "add", f"fd77::{n}/64", "dev", "vnt0", "nodad"],
                ["link", "set", "vnt0", "up"],
            ):
                subprocess.run(["ip", "-n", name, *command], check=True)
        yield sides[0], sides[1]
    finally:
        for side in sides:
            os.close(side.tap)
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, stderr=subprocess.DEVNULL)


def _checksumErrors(namespace: str) -> int:
    """
    TCP and UDP checksum errors counted in a namespace.
    """
    text = subprocess.run(
        ["ip", "netns", "exec", namespace, "cat", "/proc/net/snmp", "/proc/net/snmp6"],
        check=True, capture_output=True, text=True,
    ).stdout
    lines = text.splitlines()
    errors = 0
    for names, values in itertools.pairwise(line.split() for line in lines):
        if names[0] in ("Tcp:", "Udp:") and values[0] == names[0] and "InCsumErrors" in names:
            errors += int(values[names.index("InCsumErrors")])
    for line in lines:
        if line.startswith(("Udp6InCsumErrors", "UdpLite6InCsumErrors")):
            errors += int(line.split()[1])
    return errors


class Hub:
    """
    Forwards between two TAPs the way a switch forwards to ports without the
    header: through L{vnet.toFrames}, each frame written with a plain header.
    """

    def __init__(self, a: int, b: int) -> None:
        self.fds = {a: b, b: a}
        self.seen: dict[int, int] = {}
        self.kept: list[bytes] = []
        self.unsafe: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while self.running:
            ready, _, _ = select.select(list(self.fds), [], [], 0.05)
            for fd in ready:
                packet = os.read(fd, 65536 + vnet.HEADER_LENGTH + 4)
                verdict = vnetcheck.validate(packet)
                if verdict is not None:
                    self.unsafe.append(verdict)
                kind = packet[1] & ~vnet.GSO_ECN
                self.seen[kind] = self.seen.get(kind, 0) + 1
                if kind != vnet.GSO_NONE and len(self.kept) < 40:
                    self.kept.append(packet)
                try:
                    frames = vnet.toFrames(packet)
                except VnetError as e:
                    self.unsafe.append(str(e))
                    continue
                for frame in frames:
                    os.write(self.fds[fd], vnet.PLAIN_HEADER + frame)

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def _rebuild(packet: bytes) -> bytes:
    """
    Rebuild a super-frame the kernel sent with L{kernelPacket} from its fields.
    """
    header = VnetHeader.parse(packet)
    frame = packet[vnet.HEADER_LENGTH :]
    v6 = frame[12:14] == b"\x86\xdd"
    if v6:
        ip6 = IPv6Header.parse(frame, 14)
        fields: dict[str, object] = {
            "tos": ip6.trafficClass, "flowLabel": ip6.flowLabel, "ttl": ip6.hopLimit,
            "addresses": (ip6.src, ip6.dst), "proto": ip6.nextHeader,
        }
        l4 = 54
    else:
        ip4 = IPv4Header.parse(frame, 14)
        fields = {
            "tos": ip4.tos, "ident": ip4.ident, "ipFlags": ip4.flags, "ttl": ip4.ttl,
            "addresses": (ip4.src, ip4.dst), "ipOptions": ip4.options, "proto": ip4.protocol,
        }
        l4 = 14 + ip4.headerLength
    if fields["proto"] == TCP:
        th = TCPHeader.parse(frame, l4)
        fields.update(tcpFlags=th.flags, tcpOptions=th.options, seq=th.seq, ack=th.ack,
                      window=th.window, ports=(th.srcPort, th.dstPort))
        start = l4 + th.headerLength
    else:
        uh = UDPHeader.parse(frame, l4)
        fields.update(ports=(uh.srcPort, uh.dstPort))
        start = l4 + 8
    built = kernelPacket(frame[start:], header.gsoSize, v6=v6, macs=(frame[:6], frame[6:12]),
                         **fields)  # type: ignore[arg-type]
    return built.packet


@pytest.mark.integration
def test_kernelAcceptsEverySegmentAndBuildsSuperFramesLikeTheTestBuilder() -> None:
    """
    TCP (v4, v6) and UDP GSO streams through a segmenting hub arrive intact.
    """
    # The kernel on each side verifies every segment's checksums; the super-
    # frames it sends are byte for byte what kernelPacket builds from the
    # same fields, and every packet it sends passes vnetcheck.validate.
    needKernel()
    with twoNamespaces() as (a, b):
        hub = Hub(a.tap, b.tap)
        try:
            for family, address in ((socket.AF_INET, b.ipv4), (socket.AF_INET6, b.ipv6)):
                _tcpTransfer(a, b, family, address)
            _udpTransfer(a, b)
        finally:
            hub.stop()
        assert _checksumErrors(a.namespace) == _checksumErrors(b.namespace) == 0
    assert hub.unsafe == []
    assert {vnet.GSO_TCPV4, vnet.GSO_TCPV6, vnet.GSO_UDP_L4} <= set(hub.seen), hub.seen
    for packet in hub.kept:
        rebuilt = _rebuild(packet)
        assert rebuilt[:2] + rebuilt[4:] == packet[:2] + packet[4:]


def _tcpTransfer(a: Side, b: Side, family: int, address: str) -> None:
    """
    Send 400 KB over TCP from C{a} to C{b} and check it arrives intact.
    """
    data = randomPayload(400_000, family)
    server = _inNamespace(b.namespace, lambda: socket.socket(family, socket.SOCK_STREAM))
    client = _inNamespace(a.namespace, lambda: socket.socket(family, socket.SOCK_STREAM))
    received = bytearray()
    with server, client:
        server.bind((address, 5001))
        server.listen(1)
        server.settimeout(10)
        client.settimeout(10)
        client.connect((address, 5001))
        connection, _ = server.accept()
        with connection:
            connection.settimeout(10)

            def send() -> None:
                client.sendall(data)
                client.close()

            sender = threading.Thread(target=send)
            sender.start()
            while chunk := connection.recv(1 << 20):
                received += chunk
            sender.join()
    assert received == data


def _udpTransfer(a: Side, b: Side) -> None:
    """
    Send UDP with C{UDP_SEGMENT} (USO) from C{a} to C{b}; check every datagram.
    """
    server = _inNamespace(b.namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client = _inNamespace(a.namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with server, client:
        server.bind((b.ipv4, 5002))
        server.settimeout(5)
        client.setsockopt(SOL_UDP, UDP_SEGMENT, 1000)
        sent = [randomPayload(9500, n) for n in range(5)]
        for payload in sent:
            client.sendto(payload, (b.ipv4, 5002))
            time.sleep(0.01)
        got = [server.recv(2000) for _ in range(50)]
    assert got == [payload[i : i + 1000] for payload in sent for i in range(0, 9500, 1000)]


@pytest.mark.integration
def test_kernelAcceptsTheBuildersUsoSuperFrameAndItsSegments() -> None:
    """
    A USO super-frame built by the test builder, and its segments, reach a UDP socket.
    """
    needKernel()
    with twoNamespaces() as (_, b):
        server = _inNamespace(b.namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        with server:
            server.bind((b.ipv4, 5003))
            server.settimeout(5)
            payload = randomPayload(7000, 9)
            built = kernelPacket(payload, 1200, proto=UDP, ports=(4000, 5003), macs=(MAC_B, MAC_A))
            os.write(b.tap, built.packet)
            whole = [server.recv(2000) for _ in range(6)]
            for frame in vnet.toFrames(built.packet):
                os.write(b.tap, vnet.PLAIN_HEADER + frame)
            cut = [server.recv(2000) for _ in range(6)]
        assert _checksumErrors(b.namespace) == 0
    expected = [payload[i : i + 1200] for i in range(0, 7000, 1200)]
    assert whole == expected and cut == expected
