"""
The forwarding core fed packets whose virtio-net header fields, VLAN tags
and lengths are drawn at random around what the kernel sends, in runs that
let routes form and then reuse them: it never raises, and it never hands a
port a packet the port's peer would refuse.

The examples per test are few by default; set C{VTWISTED_FUZZ_EXAMPLES}
for a long run.
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from vlanports import port
from vnetpackets import MAC_A, MAC_B, TCP, UDP, kernelPacket

from vtwisted.switch import Switch
from vtwisted.testing import FakeLink
from vtwisted.wire import vnet, vnetcheck

EXAMPLES = int(os.environ.get("VTWISTED_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Ethernet prefixes put between the MAC addresses and the IP packet.
TAGS = [b"", b"\x81\x00\x00\x05", b"\x81\x00\x00\x00", b"\x81\x00\x00\x09",
        b"\x88\xa8\x00\x07\x81\x00\x00\x09", b"\x81\x00\x00\x05\x81\x00\x00\x09",
        b"\x88\xa8\x00\x05", b"\x81\x00\x00\x05\x88\xa8\x00\x07\x81\x00\x00\x09"]
MACS = [MAC_A, MAC_B, b"\x02\0\0\0\0\x0c", b"\xff" * 6, b"\x01\x80\xc2\0\0\0"]


def _base(size: int, v6: bool, proto: int, gso: bool, mss: int) -> bytes:
    packet = kernelPacket(bytes(size), mss, proto=proto, v6=v6, gso=gso).packet
    return packet


BASES = st.builds(_base, st.sampled_from([0, 1, 100, 1500, 3000, 9000]), st.booleans(),
                  st.sampled_from([TCP, UDP]), st.booleans(),
                  st.sampled_from([1, 8, 536, 1448, 1460, 9000]))
FIELDS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 0xFFFF)), max_size=3)


def _packet(base: bytes, tags: bytes, dst: bytes, src: bytes, fields: list[tuple[int, int]],
            cut: int) -> bytes:
    """
    C{base} with C{tags} inserted after its MACs (offsets moved to match),
    addressed from C{src} to C{dst}, some header fields set and perhaps cut.
    """
    header = list(struct.unpack_from("<BBHHHH", base))
    if header[0] & vnet.NEEDS_CSUM:
        header[4] += len(tags)
    if header[2]:
        header[2] += len(tags)
    for index, value in fields:
        header[index] = value & 0xFF if index < 2 else value
    frame = dst + src + tags + base[vnet.HEADER_LENGTH + 12:]
    packet = struct.pack("<BBHHHH", *header) + frame
    return packet[:cut] if cut >= 0 else packet


PACKETS = st.builds(_packet, BASES, st.sampled_from(TAGS), st.sampled_from(MACS),
                    st.sampled_from(MACS[:3]), FIELDS, st.integers(-200, 200) | st.just(-1))


def _ports(switch: Switch) -> list[FakeLink]:
    """
    Offload ports (access and trunk, one with a small MTU) and plain ones.
    """
    links = [
        port(switch, 5, (), False, True),
        port(switch, None, (5, 9), False, True),
        port(switch, 5, (9,), False, True),
        port(switch, 0, (5,), True, True),
        port(switch, 5, (), False, False),
        port(switch, None, (5, 9), False, False),
    ]
    links[2].port.setMtu(1280)
    return links


def _check(links: list[FakeLink]) -> None:
    for link in links:
        limit = link.port.maxFrame
        for packet in link.sentPackets:
            assert vnetcheck.validate(packet) is None, (link, packet[:80].hex())
            assert vnetcheck.largestFrame(packet) <= limit, (link, packet[:80].hex())
        for frame in link.sent:
            assert 14 <= len(frame) <= limit, (link, frame[:40].hex())
        link.sentPackets.clear()
        link.sent.clear()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 5), PACKETS, st.integers(1, 3)), min_size=1,
                max_size=12), st.sampled_from(["switch", "hub", "monitor"]))
@example([(0, _packet(kernelPacket(bytes(3000), 1448).packet,
                      b"\x88\xa8\x00\x07\x81\x00\x00\x09", MAC_B, MAC_A, [], -1), 1)], "switch")
def test_switchWritesOnlyWhatPeersTake(sends: list[tuple[int, bytes, int]], mode: str) -> None:
    """
    Whatever arrives (each packet sent once or a few times over, so routes
    form and are taken), the switch counts it, never raises, writes to
    offload ports only packets the header validation passes and whose
    segments fit the port's MTU, and to plain ports only frames that fit.
    A super-frame with two tags already (QinQ) that must leave tagged once
    more is cut into frames for an offload trunk: tagged again as one packet
    it would carry three tags, deeper than a GSO packet's IP header may be.
    """
    switch = Switch(hub=mode == "hub")
    links = _ports(switch)
    if mode == "monitor":
        switch.setMonitor(links[3].port, True)
    for index, packet, times in sends:
        link = links[index]
        for _ in range(times):
            if link.vnetHeader:
                link.receivePacket(packet)
            else:
                link.receive(packet[vnet.HEADER_LENGTH:])
        _check(links)


def test_qinqSuperFrameTaggedAgainLeavesAsFrames() -> None:
    """
    A TSO super-frame carrying two tags (802.1ad and 802.1Q) that enters
    VLAN 5 untagged and must leave a trunk tagged for 5 would carry three
    tags, too deep for a GSO packet's IP header; the trunk gets its segments,
    each tagged, with plain headers, and the access port's copy stays whole.
    """
    switch = Switch()
    access, trunk, other = (port(switch, 5, (), False, True), port(switch, None, (5,), False, True),
                            port(switch, 5, (), False, True))
    qinq = b"\x88\xa8\x00\x07\x81\x00\x00\x09"
    built = kernelPacket(bytes(3000), 1448)
    access.receivePacket(_packet(built.packet, qinq, b"\xff" * 6, MAC_A, [], -1))
    assert trunk.sentPackets == [] and len(trunk.sent) == 3
    for frame in trunk.sent:
        assert frame[12:24] == b"\x81\x00\x00\x05" + qinq and len(frame) <= 1518
    [whole] = other.sentPackets
    assert vnetcheck.validate(whole) is None and len(whole) > 3000
