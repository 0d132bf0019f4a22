"""
Virtio-net packets (TCP super-frames from offload TAPs) crossing access
ports and trunks of 802.1Q VLANs in the forwarding core.
"""

from __future__ import annotations

import pytest
from vlanports import BROADCAST, port, tagged
from vnetpackets import MAC_A, MAC_B, checkSegments, kernelPacket, randomPayload

from vtwisted.switch import Switch
from vtwisted.testing import frame, mac
from vtwisted.wire import vnet, vnetcheck
from vtwisted.wire.vnet import VnetHeader

# -- virtio-net packets through the core -------------------------------------------------------


def superFrame(dst: bytes = MAC_B, src: bytes = MAC_A, size: int = 60000, vid: int | None = None):
    """
    A TCP super-frame as Linux hands it to the reader of an offload TAP.
    """
    return kernelPacket(randomPayload(size, size), 1448, vid=vid, macs=(dst, src))


def test_superFramePassesWholeBetweenOffloadPorts() -> None:
    """A 60 KB super-frame between two offload TAPs is one packet, unchanged."""
    switch = Switch()
    a, b = port(switch, vnetHeader=True), port(switch, vnetHeader=True)
    b.receivePacket(vnet.PLAIN_HEADER + frame(BROADCAST, MAC_B))
    built = superFrame()
    a.receivePacket(built.packet)
    assert b.sentPackets == [built.packet] and b.sent == []
    assert b.port.counters.outFrames == 1
    assert b.port.counters.outBytes == len(built.packet) - vnet.HEADER_LENGTH


def test_superFrameReachesPlainPortAsCorrectSegments() -> None:
    """The same super-frame flooded reaches a VDE-like port as MTU-sized, checksummed frames."""
    switch = Switch()
    a, b = port(switch, vnetHeader=True), port(switch, vnetHeader=True)
    plainPort = port(switch)
    built = superFrame()
    a.receivePacket(built.packet)
    assert b.sentPackets == [built.packet]
    assert len(plainPort.sent) == -(-60000 // 1448)
    assert all(len(f) <= 1514 for f in plainPort.sent)
    checkSegments(built, plainPort.sent)
    assert plainPort.port.counters.outFrames == len(plainPort.sent)


def test_partialChecksumIsCompletedForPlainPort() -> None:
    """A small TCP frame with a partial checksum reaches a plain port with the full one."""
    switch = Switch()
    a, plainPort = port(switch, vnetHeader=True), port(switch)
    built = kernelPacket(b"hello", gso=False)
    a.receivePacket(built.packet)
    assert plainPort.sent == vnet.toFrames(built.packet)
    assert plainPort.sent[0] != built.packet[vnet.HEADER_LENGTH:]


def test_superFrameToOffloadTrunkIsTaggedWithOffsetsMoved() -> None:
    """Tagging a super-frame for an offload trunk moves csum_start and hdr_len by 4."""
    switch = Switch()
    access = port(switch, 10, vnetHeader=True)
    trunk = port(switch, None, (10,), vnetHeader=True)
    plainTrunk = port(switch, None, (10,))
    built = superFrame()
    access.receivePacket(built.packet)
    [packet] = trunk.sentPackets
    before, after = VnetHeader.parse(built.packet), VnetHeader.parse(packet)
    assert after == before._replace(csumStart=before.csumStart + 4, hdrLen=before.hdrLen + 4)
    assert packet[10:22] == built.packet[10:22]
    assert packet[22:26] == b"\x81\x00\x00\x0a"
    assert packet[26:] == built.packet[22:]
    assert vnetcheck.validate(packet) is None
    segments = vnet.toFrames(built.packet)
    assert vnet.toFrames(packet) == [tagged(s, 10) for s in segments]
    assert plainTrunk.sent == [tagged(s, 10) for s in segments]


def test_taggedSuperFrameFromTrunkReachesAccessPortUntagged() -> None:
    """A super-frame tagged 10 from an offload trunk reaches VLAN-10 offload ports untagged."""
    switch = Switch()
    access = port(switch, 10, vnetHeader=True)
    trunk = port(switch, None, (10,), vnetHeader=True)
    plainAccess = port(switch, 10)
    built = superFrame()
    trunk.receivePacket(vnet.insertTag(built.packet, 10))
    assert access.sentPackets == [built.packet]
    checkSegments(built, plainAccess.sent)


@pytest.mark.parametrize("vid", [77, 0])
def test_taggedSuperFramePassesWholeBetweenTransparentOffloadPorts(vid: int) -> None:
    """A super-frame tagged 77, or priority-tagged (VID 0), crosses vlan=all offload
    ports as it came; an ordinary offload port in VLAN 0 gets the priority-tagged one
    untagged."""
    switch = Switch()
    x = port(switch, transparent=True, vnetHeader=True)
    y = port(switch, transparent=True, vnetHeader=True)
    ordinary = port(switch, vnetHeader=True)
    built = superFrame(vid=vid)
    x.receivePacket(built.packet)
    assert y.sentPackets == [built.packet]
    assert ordinary.sentPackets == ([superFrame().packet] if vid == 0 else [])


def test_malformedHeaderIsDroppedAndOthersKeepWorking() -> None:
    """A packet with a header the kernel would refuse is counted as malformed and goes nowhere."""
    switch = Switch()
    a, b, plainPort = port(switch, vnetHeader=True), port(switch, vnetHeader=True), port(switch)
    good = superFrame()
    bad = VnetHeader(0x04).pack() + good.packet[vnet.HEADER_LENGTH:]
    ufo = good.packet[:1] + bytes([vnet.GSO_UDP]) + good.packet[2:]
    a.receivePacket(bad)
    a.receivePacket(ufo)
    assert b.sentPackets == [] and plainPort.sent == []
    assert a.port.counters.drops["malformed"] == 2
    a.receivePacket(good.packet)
    assert b.sentPackets == [good.packet] and plainPort.sent
    plainPort.receive(frame(BROADCAST, mac(3)))
    assert a.sent == [frame(BROADCAST, mac(3))]


def test_taggedPacketWithChecksumStartInsideTheTagIsDropped() -> None:
    """A tagged packet whose csum_start points into the Ethernet header is counted, not raised."""
    switch = Switch()
    trunk = port(switch, None, (10,), vnetHeader=True)
    access = port(switch, 10, vnetHeader=True)
    f = frame(BROADCAST, mac(1), bytes(60), vid=10)
    packet = VnetHeader(vnet.NEEDS_CSUM, 0, 0, 0, 4, 2).pack() + f
    assert vnetcheck.validate(packet) is not None, "Linux 6.18 refuses it (EINVAL)"
    trunk.receivePacket(packet)
    assert access.sentPackets == []
    assert trunk.port.counters.drops["malformed"] == 1
    # the kernel takes csum_start 22 in a tagged frame, but not the 18 it becomes untagged
    packet = VnetHeader(vnet.NEEDS_CSUM, 0, 0, 0, 22, 2).pack() + f
    assert vnetcheck.validate(packet) is None
    trunk.receivePacket(packet)
    assert access.sentPackets == []
    assert trunk.port.counters.drops["malformed"] == 2


def _stacked(packet: bytes, outer: bytes) -> bytes:
    """
    C{packet} (a virtio-net packet) with two tags: an inner 802.1Q one for
    VLAN 10 and an outer one for 100 with TPID C{outer} (0x88a8 for 802.1ad).
    """
    both = vnet.insertTag(vnet.insertTag(packet, 10), 100)
    return both[:22] + outer + both[24:]


def test_stackedTagsOnASuperFrameCrossTransparentPortsAndAreCutRight() -> None:
    """
    A host with a QinQ or 802.1ad interface on a TAP sends super-frames under
    two tags (Linux takes them, and segments under both).  Between vlan=all
    ports they pass: whole to an offload port, and to a plain one as
    segments each under both tags, with correct checksums.
    """
    built = superFrame(size=20000)
    segments = vnet.toFrames(built.packet)
    for outer in (b"\x88\xa8", b"\x81\x00"):
        switch = Switch()
        x = port(switch, transparent=True, vnetHeader=True)
        y = port(switch, transparent=True, vnetHeader=True)
        plain = port(switch, transparent=True)
        packet = _stacked(built.packet, outer)
        assert vnetcheck.validate(packet) is None
        x.receivePacket(packet)
        assert y.sentPackets == [packet]
        tags = packet[22:30]
        assert plain.sent == [s[:12] + tags + s[12:] for s in segments]


def test_aServiceTaggedSuperFrameIsCutUnderItsTag() -> None:
    """One 802.1ad tag (not a VLAN tag to the switch) is stepped over the same way."""
    built = superFrame(size=8000)
    tag = b"\x88\xa8\x00\x64"
    single = vnet.insertTag(built.packet, 100)
    single = single[:22] + tag[:2] + single[24:]
    assert vnetcheck.validate(single) is None
    assert vnet.toFrames(single) == [s[:12] + tag + s[12:] for s in vnet.toFrames(built.packet)]


def test_aRouteToAPlainPortCompletesEveryChecksum() -> None:
    """
    Once the destination is learned on a plain port, the frames of a flow
    take a remembered route; there too every partial checksum is completed.
    """
    switch = Switch()
    a, plainPort = port(switch, vnetHeader=True), port(switch)
    plainPort.receive(frame(BROADCAST, MAC_B))
    built = [kernelPacket(randomPayload(size, size), gso=False) for size in (5, 700, 1300)]
    for b in built:
        a.receivePacket(b.packet)
    assert a.port.routes, "the later frames took a route"
    assert plainPort.sent == [vnet.toFrame(b.packet) for b in built]
    assert all(f != b.packet[vnet.HEADER_LENGTH:] for f, b in zip(plainPort.sent, built))
