"""
Tests for L{vtwisted.wire.vnet}: the virtio-net header, plain frames and
checksum completion, and VLAN tags on virtio-net packets.

Segmentation is tested in C{test_vnetsegment}, validation in
C{test_vnetcheck}, and both against the kernel in C{test_vnetkernel}; the
packets are built by L{vnetpackets}.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from vnetpackets import (
    ARP,
    FAST,
    TCP,
    UDP,
    Built,
    ethernet,
    kernelPacket,
    pseudoHeader,
    randomPayload,
    referenceChecksum,
    tcpSuperFrames,
    udpSuperFrames,
)

from vtwisted.wire import vlan, vnet, vnetcheck
from vtwisted.wire.vnet import VnetError, VnetHeader

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


@FAST
@given(
    st.booleans(), st.sampled_from([TCP, UDP]), st.none() | st.integers(1, 4094),
    st.lists(st.integers(0, 1460) | st.integers(1900, 4000), min_size=1, max_size=4),
    st.integers(0, 2**32),
)
@example(False, UDP, None, [2048 - 52, 2048 - 51, 18], 1)
def test_aRoutesConverterMakesTheFramesToFrameMakes(
    v6: bool, proto: int, vid: int | None, sizes: list[int], seed: int
) -> None:
    """
    The converter a route makes from one packet's header (read once) turns
    every packet with that header, of any length, into the frame
    L{vnet.toFrame} makes: checksums completed, short and long frames alike.
    """
    packets = [kernelPacket(randomPayload(size, seed + n), proto=proto, v6=v6, vid=vid,
                            gso=False).packet for n, size in enumerate(sizes)]
    assert len({p[:vnet.HEADER_LENGTH] for p in packets}) == 1
    sent: list[bytes] = []
    convert = vnet.converter(packets[0], sent.append)
    for packet in packets:
        convert(packet)
    assert sent == [vnet.toFrame(packet) for packet in packets]


def test_aConverterForAPlainHeaderOnlyStripsIt() -> None:
    """Without NEEDS_CSUM the frame leaves as it came; a GSO header has no converter."""
    sent: list[bytes] = []
    vnet.converter(vnet.PLAIN_HEADER, sent.append)(vnet.PLAIN_HEADER + ARP[vnet.HEADER_LENGTH:])
    assert sent == [ARP[vnet.HEADER_LENGTH:]]
    with pytest.raises(ValueError):
        vnet.converter(kernelPacket(randomPayload(5000, 1)).packet, sent.append)


@pytest.mark.parametrize("start, offset", [(60, 0), (40, 19), (0, 59), (58, 1)])
def test_checksumFieldOutsideTheFrameIsRefused(start: int, offset: int) -> None:
    """
    csum_start and csum_offset pointing past the frame are an error.
    """
    packet = VnetHeader(vnet.NEEDS_CSUM, 0, 0, 0, start, offset).pack() + bytes(60)
    with pytest.raises(VnetError, match="does not fit"):
        vnet.toFrames(packet)


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
