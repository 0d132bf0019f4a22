"""
802.1Q VLANs in the forwarding core: tagging and untagging, membership,
per-VLAN learning, VLAN-transparent ports, and virtio-net packets (TCP
super-frames from offload TAPs) crossing access ports and trunks.

The property test at the end checks random configurations and traffic
against a small reference model of the VLAN rules of the spec (section 4.2
and 4.3 of vde-wire.md, plus C{vlan=all}).
"""

from __future__ import annotations

import errno
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vnetpackets import MAC_A, MAC_B, checkSegments, kernelPacket, randomPayload

from vtwisted.errors import SwitchError
from vtwisted.portoptions import PortOptions
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.vlans import NOVLAN
from vtwisted.wire import vlan as vlanwire
from vtwisted.wire import vnet, vnetcheck
from vtwisted.wire.vnet import VnetHeader

BROADCAST = b"\xff" * 6


def port(switch: Switch, untagged: int | None = 0, tagged: tuple[int, ...] = (),
         transparent: bool = False, vnetHeader: bool = False, name: str = "") -> FakeLink:
    """
    A fake link on a new port: untagged member of C{untagged} (None: no
    untagged VLAN), tagged member of C{tagged}, VLANs created as needed.
    """
    link = FakeLink(name or f"link{len(switch.ports)}", vnetHeader=vnetHeader)
    p = plug(switch, link)
    for vid in (untagged, *tagged):
        if vid not in (None, 0) and vid not in switch.vlans:
            switch.vlans.create(vid)
    switch.vlans.join(p, NOVLAN if untagged is None else untagged)
    for vid in tagged:
        switch.vlans.addTagged(p, vid)
    if transparent:
        switch.vlans.setTransparent(p, True)
    return link


def tagged(f: bytes, vid: int) -> bytes:
    """
    C{f} with a tag for C{vid} (priority 0) after the source address.
    """
    return vlanwire.insertTag(f, vid)


def untagged(f: bytes) -> bytes:
    """
    C{f} without its tag.
    """
    return vlanwire.removeTag(f)


# -- tagging and untagging ---------------------------------------------------------------------


def test_accessToTrunkInsertsTheTagAfterTheSourceAddress() -> None:
    """An untagged frame from a VLAN-10 access port reaches the trunk tagged 81 00 00 0a."""
    switch = Switch()
    access, trunk = port(switch, 10), port(switch, None, (10,))
    f = frame(BROADCAST, mac(1), b"payload".ljust(46, b"."))
    access.receive(f)
    assert trunk.sent == [f[:12] + b"\x81\x00\x00\x0a" + f[12:]]
    assert trunk.port.counters.outBytes == len(f) + 4


def test_trunkToAccessRemovesTheTagAndItsPriority() -> None:
    """A frame tagged 10 with priority 5 from the trunk reaches the access port untagged."""
    switch = Switch()
    access, trunk = port(switch, 10), port(switch, None, (10,))
    f = frame(BROADCAST, mac(1), vid=10, pcp=5)
    trunk.receive(f)
    assert access.sent == [frame(BROADCAST, mac(1))]


def test_trunkToTrunkIsByteForByteWithPriority() -> None:
    """Between two trunks a tagged frame keeps its tag, priority bits included."""
    switch = Switch()
    a, b = port(switch, None, (10, 20)), port(switch, 0, (10,))
    f = frame(BROADCAST, mac(1), b"x" * 50, vid=10, pcp=7)
    a.receive(f)
    assert b.sent == [f]


def test_priorityTagOnVlanZeroPortIsAccepted() -> None:
    """A priority-tagged frame (VID 0) from a VLAN-0 port reaches VLAN 0 untagged."""
    switch = Switch()
    a, b = port(switch, 0), port(switch, 0)
    other = port(switch, 10)
    f = frame(BROADCAST, mac(1), vid=0, pcp=6)
    a.receive(f)
    assert b.sent == [untagged(f)]
    assert other.sent == []
    assert a.port.counters.drops["vlan"] == 0


def test_frameTaggedForForeignVlanIsDroppedAndCounted() -> None:
    """A frame tagged for a VLAN the port is not in goes nowhere and counts as a VLAN drop."""
    switch = Switch()
    trunk = port(switch, 0, (10,))
    in20, in10 = port(switch, 20), port(switch, 10)
    trunk.receive(frame(BROADCAST, mac(1), vid=20))
    trunk.receive(frame(BROADCAST, mac(1), vid=30))
    assert in20.sent == [] and in10.sent == []
    assert trunk.port.counters.drops["vlan"] == 2
    trunk.receive(frame(BROADCAST, mac(1), vid=10))
    assert in10.sent == [frame(BROADCAST, mac(1))], "its own VLANs still work"


def test_accessPortMayTagItsOwnVlanOnly() -> None:
    """A VLAN-10 access port may send frames tagged 10 (its own VID) but not tagged 20."""
    switch = Switch()
    a, b, in20 = port(switch, 10), port(switch, 10), port(switch, 20)
    a.receive(frame(BROADCAST, mac(1), vid=10))
    a.receive(frame(BROADCAST, mac(1), vid=20))
    assert b.sent == [frame(BROADCAST, mac(1))] and in20.sent == []
    assert a.port.counters.drops["vlan"] == 1


def test_portWithoutUntaggedVlanDropsUntaggedFrames() -> None:
    """A tagged-only port (untagged VLAN 4095) drops untagged frames but carries tagged ones."""
    switch = Switch()
    trunk = port(switch, None, (10,))
    plainPort, access = port(switch, 0), port(switch, 10)
    assert trunk.port.untaggedVlan is None
    trunk.receive(frame(BROADCAST, mac(1)))
    assert plainPort.sent == [] and access.sent == []
    assert trunk.port.counters.drops["vlan"] == 1
    access.receive(frame(BROADCAST, mac(2)))
    assert trunk.sent == [tagged(frame(BROADCAST, mac(2)), 10)]
    assert plainPort.sent == []


def test_noUntaggedVlanOptionMakesATaggedOnlyPort() -> None:
    """The spec option vlan=4095 leaves a port with no untagged VLAN."""
    switch = Switch()
    link = FakeLink()
    p = plug(switch, link)
    PortOptions.fromSpec(PortSpec("x:y:vlan=4095:trunk=10")).apply(switch, p)
    assert p.untaggedVlan is None and p.taggedVids == {10}
    other = port(switch, 0)
    link.receive(frame(BROADCAST, mac(1)))
    assert other.sent == [] and p.counters.drops["vlan"] == 1


def test_untaggedFrameToKnownTrunkStationIsTagged() -> None:
    """Known unicast from an access port to a station behind the trunk is tagged too."""
    switch = Switch()
    access, trunk, other = port(switch, 10), port(switch, None, (10,)), port(switch, 10)
    trunk.receive(frame(BROADCAST, mac(2), vid=10))
    access.takeSent(), other.takeSent()
    f = frame(mac(2), mac(1))
    access.receive(f)
    assert trunk.sent == [tagged(f, 10)] and other.sent == []


# -- learning per VLAN -------------------------------------------------------------------------


def test_sameAddressInTwoVlansIsLearnedTwice() -> None:
    """One MAC seen in VLAN 10 on one port and in VLAN 20 on another is two table entries."""
    switch = Switch()
    in10, in20, trunk = port(switch, 10), port(switch, 20), port(switch, None, (10, 20))
    station = mac(1)
    in10.receive(frame(BROADCAST, station))
    in20.receive(frame(BROADCAST, station))
    entry = switch.fdb.lookup(10, station)
    assert entry is not None and entry.port is in10.port
    entry = switch.fdb.lookup(20, station)
    assert entry is not None and entry.port is in20.port
    assert switch.fdb.lookup(0, station) is None
    for link in (in10, in20, trunk):
        link.takeSent()
    trunk.receive(frame(station, mac(9), vid=10))
    assert in10.sent == [frame(station, mac(9))] and in20.sent == []
    trunk.receive(frame(station, mac(9), vid=20))
    assert in20.sent == [frame(station, mac(9))] and len(in10.sent) == 1


def test_addressLearnedInOneVlanIsUnknownInAnother() -> None:
    """A destination known only in VLAN 10 is flooded (not unicast) in VLAN 20."""
    switch = Switch()
    a10, a20, b20, trunk = port(switch, 10), port(switch, 20), port(switch, 20), \
        port(switch, None, (10, 20))
    a10.receive(frame(BROADCAST, mac(1)))
    for link in (a20, b20, trunk):
        link.takeSent()
    f = frame(mac(1), mac(2))
    a20.receive(f)
    assert b20.sent == [f] and trunk.sent == [tagged(f, 20)] and a10.sent == []


def test_setvlanFlushesThePortsAddresses() -> None:
    """Moving a port to another VLAN (port/setvlan) forgets what was learned on it."""
    switch = Switch()
    a, b, c = port(switch), port(switch), port(switch)
    b.receive(frame(BROADCAST, mac(2)))
    c.receive(frame(BROADCAST, mac(3)))
    switch.vlans.create(10)
    switch.vlans.join(b.port, 10)
    assert switch.fdb.lookup(0, mac(2)) is None
    entry = switch.fdb.lookup(0, mac(3))
    assert entry is not None and entry.port is c.port, "other ports keep theirs"
    a.takeSent(), c.takeSent()
    f = frame(mac(2), mac(1))
    a.receive(f)
    assert c.sent == [f], "unknown again, so flooded in VLAN 0"
    assert b.sent[-1:] != [f], "and not to the port that left VLAN 0"


def test_leavingATrunkVlanFlushesThatVlanOnly() -> None:
    """vlan/delport forgets the port's addresses in that VLAN and keeps the others."""
    switch = Switch()
    trunk, a = port(switch, 0, (10,)), port(switch, 10)
    trunk.receive(frame(BROADCAST, mac(5), vid=10))
    trunk.receive(frame(BROADCAST, mac(5)))
    switch.vlans.removeTagged(trunk.port, 10)
    assert switch.fdb.lookup(10, mac(5)) is None
    entry = switch.fdb.lookup(0, mac(5))
    assert entry is not None and entry.port is trunk.port
    a.receive(frame(mac(5), mac(1)))
    assert trunk.sent == []


def test_vlanWithMembersCannotBeRemoved() -> None:
    """vlan/remove refuses (EADDRINUSE) while a port is in the VLAN, untagged or tagged."""
    switch = Switch()
    access, trunk = port(switch, 10), port(switch, 0, (10,))
    with pytest.raises(SwitchError) as e:
        switch.vlans.remove(10)
    assert e.value.errno == errno.EADDRINUSE
    switch.vlans.join(access.port, 0)
    with pytest.raises(SwitchError):
        switch.vlans.remove(10)
    switch.vlans.removeTagged(trunk.port, 10)
    switch.vlans.remove(10)
    assert 10 not in switch.vlans
    trunk.receive(frame(BROADCAST, mac(1), vid=10))
    assert trunk.port.counters.drops["vlan"] == 1
    with pytest.raises(SwitchError) as zero:
        switch.vlans.remove(0)
    assert zero.value.errno == errno.EINVAL


def test_inactiveMemberStillBlocksRemoval() -> None:
    """A port that keeps its VLAN while no client is plugged in still counts as a member."""
    switch = Switch()
    access = port(switch, 10)
    access.close()
    assert not access.port.active
    with pytest.raises(SwitchError):
        switch.vlans.remove(10)


# -- VLAN-transparent ports (vlan=all) ---------------------------------------------------------


def transparentSwitch() -> tuple[Switch, FakeLink, FakeLink, FakeLink, FakeLink]:
    switch = Switch()
    links = []
    for options in ("vlan=all", "vlan=all", "", "trunk=10"):
        link = FakeLink(options or "plain")
        p = plug(switch, link)
        PortOptions.fromSpec(PortSpec(f"x:y:{options}" if options else "x:y")).apply(switch, p)
        links.append(link)
    x, y, plainPort, trunk = links
    return switch, x, y, plainPort, trunk


def test_transparentPortsPassAnyVidUntouched() -> None:
    """A frame tagged 77 (a VLAN nobody created) crosses between vlan=all ports byte for byte."""
    switch, x, y, plainPort, trunk = transparentSwitch()
    assert x.port.transparent and 77 not in switch.vlans
    f = frame(BROADCAST, mac(1), b"seventy-seven".ljust(46, b"."), vid=77, pcp=3)
    x.receive(f)
    assert y.sent == [f]
    assert plainPort.sent == [] and trunk.sent == []
    assert x.port.counters.drops["vlan"] == 0
    back = frame(mac(1), mac(2), vid=77)
    y.receive(back)
    assert x.sent == [back] and plainPort.sent == [] and trunk.sent == []


def test_transparentPortsStillGetUntaggedVlanZeroTrafficUntagged() -> None:
    """An untagged frame from an ordinary port reaches vlan=all ports untagged."""
    switch, x, y, plainPort, trunk = transparentSwitch()
    f = frame(BROADCAST, mac(3))
    plainPort.receive(f)
    assert x.sent == [f] and y.sent == [f]
    assert trunk.sent == [f], "trunk=10 alone keeps untagged VLAN 0"
    reply = frame(mac(3), mac(4))
    x.receive(reply)
    assert plainPort.sent == [reply] and y.sent == [f]


def test_transparentPortsGetConfiguredVlansTagged() -> None:
    """Traffic of VLAN 10 from a trunk reaches vlan=all ports still tagged, PCP kept."""
    switch, x, y, plainPort, trunk = transparentSwitch()
    f = frame(BROADCAST, mac(5), vid=10, pcp=2)
    trunk.receive(f)
    assert x.sent == [f] and y.sent == [f] and plainPort.sent == []


def test_vidOnlyTransparentPortsKnowIsRefusedElsewhere() -> None:
    """Once VID 77 exists because of a vlan=all port, a trunk may still not send into it."""
    switch, x, y, plainPort, trunk = transparentSwitch()
    x.receive(frame(BROADCAST, mac(1), vid=77))
    y.takeSent()
    trunk.receive(frame(BROADCAST, mac(2), vid=77))
    assert y.sent == [] and trunk.port.counters.drops["vlan"] == 1


def test_reservedVid4095IsDroppedEvenOnTransparentPorts() -> None:
    """VID 4095 is reserved: not even a vlan=all port forwards it."""
    switch, x, y, plainPort, trunk = transparentSwitch()
    x.receive(frame(BROADCAST, mac(1), vid=4095))
    assert y.sent == [] and x.port.counters.drops["vlan"] == 1


# -- malformed VLAN tags -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [14, 15, 16, 17])
@pytest.mark.parametrize("vnetHeader", [False, True])
def test_truncatedTagIsDroppedAsRunt(size: int, vnetHeader: bool) -> None:
    """A frame too short for 81 00, a TCI and an EtherType is dropped and counted."""
    switch = Switch()
    sender = port(switch, None, (10,), vnetHeader=vnetHeader)
    trunk, access = port(switch, None, (10,), vnetHeader=vnetHeader), port(switch, 10)
    f = (BROADCAST + mac(1) + b"\x81\x00\x00\x0a\x08")[:size]
    if vnetHeader:
        sender.receivePacket(vnet.PLAIN_HEADER + f)
    else:
        sender.receive(f)
    counters = sender.port.counters
    assert access.sent == [] and trunk.sent == [] and trunk.sentPackets == []
    assert sum(counters.drops.values()) == 1


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


def test_taggedSuperFramePassesWholeBetweenTransparentOffloadPorts() -> None:
    """A super-frame tagged 77 crosses vlan=all offload ports as it came."""
    switch = Switch()
    x = port(switch, transparent=True, vnetHeader=True)
    y = port(switch, transparent=True, vnetHeader=True)
    built = superFrame(vid=77)
    x.receivePacket(built.packet)
    assert y.sentPackets == [built.packet]


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
    assert vnetcheck.validate(packet) is None, "the kernel accepts it: csum_start only has to fit"
    trunk.receivePacket(packet)
    assert access.sentPackets == []
    assert trunk.port.counters.drops["malformed"] == 1


# -- the property ------------------------------------------------------------------------------

VIDS = (0, 10, 20, 30)
MACS = [mac(n) for n in range(1, 5)]
GROUP = b"\x01\x00\x5e\x00\x00\x07"


class PortConfig(NamedTuple):
    untagged: int | None
    tagged: frozenset[int]
    transparent: bool
    vnetHeader: bool


class Sent(NamedTuple):
    sender: int
    vid: int | None
    pcp: int
    dst: bytes
    src: bytes
    payload: bytes


@st.composite
def portConfigs(draw: st.DrawFn) -> PortConfig:
    untaggedVid = draw(st.sampled_from([0, 0, 10, 20, None]))
    taggedVids = draw(st.frozensets(st.sampled_from(VIDS), max_size=3)) - {untaggedVid}
    return PortConfig(untaggedVid, taggedVids, draw(st.booleans()), draw(st.booleans()))


traffic = st.builds(
    Sent,
    st.integers(0, 5),
    st.sampled_from([None, None, 0, 10, 20, 30, 77, 4095]),
    st.integers(0, 7),
    st.sampled_from([*MACS, BROADCAST, GROUP]),
    st.sampled_from(MACS),
    st.binary(max_size=40),
)


class Model:
    """
    What the spec says should happen, written as plainly as possible.
    """

    def __init__(self, configs: list[PortConfig]) -> None:
        self.configs = configs
        self.existing = set(VIDS)
        self.table: dict[tuple[int, bytes], int] = {}

    def members(self, vid: int) -> dict[int, bool]:
        """
        Port index to whether it is a tagged member of C{vid}.
        """
        found = {}
        for i, c in enumerate(self.configs):
            if c.untagged == vid:
                found[i] = False
            elif vid in c.tagged or c.transparent:
                found[i] = True
        return found

    def deliver(self, s: Sent) -> tuple[int | None, dict[int, bytes]]:
        """
        The frame's VLAN (None: dropped) and what each port should receive.
        """
        sender = self.configs[s.sender]
        if s.vid is None:
            vid = sender.untagged
            if vid is None:
                return None, {}
        else:
            vid = s.vid
            if vid not in self.existing:
                if not (sender.transparent and 1 <= vid <= 4094):
                    return None, {}
                self.existing.add(vid)
            if not (sender.untagged == vid or vid in sender.tagged or sender.transparent):
                return None, {}
        members = self.members(vid)
        self.table.setdefault((vid, s.src), s.sender)
        owner = None if s.dst[0] & 1 else self.table.get((vid, s.dst))
        targets = [owner] if owner is not None else list(members)
        plain = frame(s.dst, s.src, s.payload)
        wire = frame(s.dst, s.src, s.payload, vid=s.vid, pcp=s.pcp)
        out = {}
        for i in targets:
            if i == s.sender:
                continue
            if members[i]:
                out[i] = wire if s.vid is not None else tagged(plain, vid)
            else:
                out[i] = plain
        return vid, out


def received(link: FakeLink) -> list[bytes]:
    """
    Everything sent to C{link}, as plain frames, forgetting it.
    """
    got = link.takeSent()
    for packet in link.sentPackets:
        assert packet[: vnet.HEADER_LENGTH] == vnet.PLAIN_HEADER
        got.append(packet[vnet.HEADER_LENGTH :])
    link.sentPackets.clear()
    return got


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(portConfigs(), min_size=2, max_size=6), st.lists(traffic, max_size=40))
def test_framesNeverLeakAcrossVlans(configs: list[PortConfig], frames: list[Sent]) -> None:
    """Random VLAN setups and traffic: each port gets exactly what the VLAN rules allow."""
    switch = Switch()
    links = []
    for c in configs:
        links.append(port(switch, c.untagged, tuple(sorted(c.tagged)), c.transparent,
                          c.vnetHeader))
    model = Model(configs)
    drops = 0
    for s in frames:
        if s.sender >= len(links):
            continue
        f = frame(s.dst, s.src, s.payload, vid=s.vid, pcp=s.pcp)
        sender = links[s.sender]
        if configs[s.sender].vnetHeader:
            sender.receivePacket(vnet.PLAIN_HEADER + f)
        else:
            sender.receive(f)
        vid, expected = model.deliver(s)
        if vid is None:
            drops += 1
        for i, link in enumerate(links):
            got = received(link)
            if i == s.sender:
                assert got == [], "never back to the sender"
                continue
            for g in got:
                c = configs[i]
                member = vid is not None and (c.untagged == vid or vid in c.tagged
                                              or c.transparent)
                assert member, f"port {i} is not in VLAN {vid} but got {g.hex()}"
                assert vlanwire.isTagged(g) == (c.untagged != vid), "tagged iff tagged member"
                inner = g[16:] if vlanwire.isTagged(g) else g[12:]
                assert g[:12] == s.dst + s.src and inner[2:] == s.payload, "payload unchanged"
                if vlanwire.isTagged(g):
                    assert vlanwire.vidOf(g) == vid
            assert got == ([expected[i]] if i in expected else []), f"port {i}"
    assert sum(link.port.counters.drops["vlan"] for link in links) == drops


def test_vlanWithATrunkMemberOnATransparentPortCannotBeRemoved() -> None:
    """An explicit trunk membership counts even on a vlan=all port."""


    switch = Switch()
    port = plug(switch, FakeLink())
    switch.vlans.create(10)
    switch.vlans.addTagged(port, 10)
    switch.vlans.setTransparent(port, True)
    with pytest.raises(SwitchError) as e:
        switch.vlans.remove(10)
    assert e.value.errno == 98
