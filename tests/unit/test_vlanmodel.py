"""
A property test of 802.1Q VLANs in the forwarding core: random
configurations and traffic checked against a small reference model of the
VLAN rules of the spec (section 4.2 and 4.3 of vde-wire.md, plus
C{vlan=all}).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vlanports import BROADCAST, port, tagged

from vtwisted.errors import SwitchError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import vlan as vlanwire
from vtwisted.wire import vnet

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
            elif s.vid == 0 and self.configs[i].transparent:
                out[i] = wire  # a priority tag leaves a vlan=all port as it came
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
                keepsPriority = s.vid == 0 and c.transparent
                assert vlanwire.isTagged(g) == (c.untagged != vid or keepsPriority), \
                    "tagged iff tagged member, or a priority tag on a vlan=all port"
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
