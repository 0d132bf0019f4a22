"""
Tests for L{vtwisted.wire.vnetcheck}: validation of virtio-net packets
before they reach a TAP, and the GSO headers it remembers as safe.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from vnetpackets import (
    ARP,
    FAST,
    GOOD,
    UDP,
    Built,
    _patched,
    kernelPacket,
    tcpSuperFrames,
    udpSuperFrames,
)

from vtwisted.wire import vnet, vnetcheck

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
