"""
FSTP and the VLANs that VLAN-transparent (C{vlan=all}) ports create from
traffic: they follow the common tree unless a peer speaks FSTP in them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from vtwisted import fstp
from vtwisted.fstptree import HELLO
from vtwisted.switch import Switch
from vtwisted.switchport import SwitchPort
from vtwisted.testing import FakeCable, FakeLink, frame, mac, plug, pumpCables
from vtwisted.wire import bpdu
from vtwisted.wire.vlan import insertTag

BROADCAST = b"\xff" * 6


def fstpSwitch(n: int) -> Switch:
    switch = Switch(mac=bytes([2, 0, 0, 0, 0, n]))
    switch.spanningTree.setEnabled(True)
    return switch


def transparent(switch: Switch, link: FakeLink) -> SwitchPort:
    port = plug(switch, link)
    switch.vlans.setTransparent(port, True)
    return port


def tagged(vid: int, source: int = 1, payload: bytes = b"x" * 46) -> bytes:
    return insertTag(frame(BROADCAST, mac(source), payload=payload), vid)


def vidOf(sent: bytes) -> int:
    return (sent[14] << 8 | sent[15]) & 0xFFF if sent[12:14] == b"\x81\x00" else 0


def ticks(switches: list[Switch], seconds: int, cables: Sequence[FakeCable] = ()) -> None:
    start = switches[0].now
    for now in range(start + 1, start + seconds + 1):
        for switch in switches:
            switch.tick(now)
        assert pumpCables(cables) < 10000, "a broadcast storm"


def peerBpdu(vid: int, peer: int = 9) -> bytes:
    """A BPDU tagged C{vid} from a switch with a worse id than ours."""
    bridge = b"\x80\x00" + mac(peer)
    message = bpdu.Bpdu(0x3C, bridge, 0, bridge, bpdu.portId(1))
    return bpdu.pack(mac(peer), message, vid)


def test_manyImplicitVlansCostNoBpdusAndLittleTime() -> None:
    """
    A client sending frames tagged with every VID makes 4094 VLANs, quickly,
    and the switch sends no more BPDUs than before: only the untagged
    VLAN's, once a hello on each port.
    """
    switch = fstpSwitch(1)
    links = [FakeLink(f"all {n}") for n in range(3)]
    for link in links:
        transparent(switch, link)
    started = time.process_time()
    for vid in range(1, 4095):
        links[0].receive(tagged(vid))
    assert time.process_time() - started < 3
    assert len(switch.vlans.vlans) == 4095
    for link in links:
        link.takeSent()
    ticks([switch], 4 * HELLO)
    assert [len(link.sent) for link in links] == [4, 4, 4]
    assert {vidOf(f) for link in links for f in link.sent} == {0}


def test_loopOfTransparentCablesIsBrokenInImplicitVlans() -> None:
    """
    Two switches joined twice by VLAN-transparent cables: a frame tagged for
    a VLAN neither switch configured crosses once, the common (untagged)
    tree blocking the redundant cable for it too.
    """
    switches = [fstpSwitch(1), fstpSwitch(2)]
    cables = [FakeCable(switches[0], switches[1], "a"), FakeCable(switches[0], switches[1], "b")]
    for cable in cables:
        for switch, port in zip(switches, cable.ports):
            switch.vlans.setTransparent(port, True)
    hosts = [FakeLink("host A"), FakeLink("host B")]
    for switch, host in zip(switches, hosts):
        transparent(switch, host)
    ticks(switches, 3 * HELLO, cables)
    for vid in (100, 200):
        hosts[1].takeSent()
        hosts[0].receive(tagged(vid, payload=b"once" + bytes(42)))
        assert pumpCables(cables, limit=1000) == 1
        assert sum(b"once" in f for f in hosts[1].sent) == 1
    assert all(100 not in s.spanningTree.trees for s in switches)


def test_commonTreeChangesReachImplicitVlans() -> None:
    """
    A transparent port that the common tree blocks discards in the implicit
    VLANs too, and forwards in them again when the tree lets it.
    """
    switches = [fstpSwitch(1), fstpSwitch(2)]
    cables = [FakeCable(switches[0], switches[1], "a"), FakeCable(switches[0], switches[1], "b")]
    for cable in cables:
        for switch, port in zip(switches, cable.ports):
            switch.vlans.setTransparent(port, True)
    host = FakeLink("host")
    transparent(switches[1], host)
    host.receive(tagged(300))
    pumpCables(cables, limit=1000)
    ticks(switches, 3 * HELLO, cables)
    owner = next(s for s in switches if s.vlans[0].discarding)
    blocked = next(iter(owner.vlans[0].discarding))
    assert owner.vlans[300].discarding == owner.vlans[0].discarding
    assert blocked not in owner.vlans[300].active
    owner.spanningTree.setEnabled(False)
    assert owner.vlans[300].discarding == set()
    assert blocked in owner.vlans[300].active


def test_implicitVlanWherePeerSpeaksFstpRunsItsOwnTree() -> None:
    """
    BPDUs tagged for an implicit VLAN (a vde_switch trunk carrying it) give
    it a tree of its own, which answers in that VLAN; when they stop, the
    VLAN follows the common tree again.
    """
    switch = fstpSwitch(1)
    peer, other = FakeLink("trunk peer"), FakeLink("other")
    transparent(switch, peer)
    transparent(switch, other)
    peer.receive(peerBpdu(42))
    assert 42 in switch.spanningTree.trees
    other.takeSent()
    ticks([switch], HELLO)
    assert {vidOf(f) for f in other.sent} == {0, 42}
    ticks([switch], 10 * HELLO)
    assert 42 not in switch.spanningTree.trees
    other.takeSent()
    ticks([switch], HELLO)
    assert {vidOf(f) for f in other.sent} == {0}


def test_implicitTreesAreLimited() -> None:
    """
    BPDUs tagged with ever new VIDs make at most IMPLICIT_TREES trees; the
    rest are counted as dropped.
    """
    switch = fstpSwitch(1)
    peer = FakeLink("peer")
    port = transparent(switch, peer)
    for vid in range(1, 1001):
        peer.receive(peerBpdu(vid))
    trees = [vid for vid in switch.spanningTree.trees if vid]
    assert len(trees) == fstp.IMPLICIT_TREES
    assert port.counters.drops["unsupported"] == 1000 - fstp.IMPLICIT_TREES


def test_implicitVlanMadeExplicitGetsItsTree() -> None:
    """C{vlan/create} on a VLAN that traffic created gives it a tree."""
    switch = fstpSwitch(1)
    link = FakeLink("all")
    transparent(switch, link)
    link.receive(tagged(77))
    assert 77 not in switch.spanningTree.trees
    switch.vlans.create(77)
    assert 77 in switch.spanningTree.trees
