"""
Trunks written as ranges (C{trunk=10,20-29}), and what a wide one costs:
configuring a port's VLANs tells the switch (and its spanning tree, which
goes over every VLAN) once, not once per VLAN joined.
"""

from __future__ import annotations

import pytest
from vlanports import BROADCAST

from vtwisted.portoptions import PortOptions, reset
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac
from vtwisted.vlans import MAX_USER_VID


def trunkOf(text: str) -> list[int]:
    return PortOptions.fromSpec(PortSpec(text)).trunk


def test_rangesAndNumbersMixInOrderEachOnce() -> None:
    """Ranges are inclusive; a VLAN listed twice is a member once."""
    assert trunkOf("vde:/x:trunk=10,20-23,21,5") == [10, 20, 21, 22, 23, 5]
    assert trunkOf("vde:/x:trunk=7-7") == [7]
    assert trunkOf(f"vde:/x:trunk=1-{MAX_USER_VID}") == list(range(1, MAX_USER_VID + 1))


@pytest.mark.parametrize(
    "text, problem",
    [
        ("vde:/x:trunk=20-10", "trunk: '20-10' is not a range (write the lower end first)"),
        ("vde:/x:trunk=1-5000", "trunk: 5000 is out of range (1 to 4093)"),
        ("vde:/x:trunk=0-3", "trunk: 0 is out of range (1 to 4093)"),
        ("vde:/x:trunk=10-", "trunk: '10-' is not a whole number or a range like 10-19"),
        ("vde:/x:trunk=-5", "trunk: '-5' is not a whole number or a range like 10-19"),
        ("vde:/x:trunk=ten", "trunk: 'ten' is not a whole number or a range like 10-19"),
    ],
)
def test_badRangesSayWhatIsWrong(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        trunkOf(text)
    assert str(info.value) == f"port spec {text!r}: {problem}"


class CountingSwitch(Switch):
    """
    A switch with its spanning tree on, counting the membership changes
    it is told of.
    """

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0
        self.spanningTree.setEnabled(True)

    def _membershipChanged(self) -> None:
        self.changes += 1
        super()._membershipChanged()


def test_aWideTrunkIsOneMembershipChange() -> None:
    """
    A link on C{trunk=1-4093}, FSTP on: the switch hears of it once (it
    used to be once per VLAN, each going over every VLAN's tree: seconds
    of a blocked switch per client), and every VLAN's tree has the port.
    """
    narrow = CountingSwitch()
    PortOptions.fromSpec(PortSpec("vde:/x:trunk=5")).plugIn(narrow, FakeLink("one"), "vde:/x")
    switch = CountingSwitch()
    options = PortOptions.fromSpec(PortSpec(f"vde:/x:trunk=1-{MAX_USER_VID}"))
    port = options.plugIn(switch, FakeLink("wide"), "vde:/x")
    assert switch.changes == narrow.changes <= 3  # the new port, its VLANs, its link
    assert port.taggedVids == set(range(1, MAX_USER_VID + 1))
    trees = switch.spanningTree.trees
    assert all(port in trees[vid].members for vid in range(1, MAX_USER_VID + 1))
    before = switch.changes
    reset(switch, port)
    assert switch.changes - before == 1 and not port.taggedVids


def test_framesCrossAWideTrunkInTheirOwnVlanOnly() -> None:
    """Behind a range, a tagged frame reaches its VLAN's members and no other."""
    switch = Switch()
    wide, narrow, access = FakeLink("wide"), FakeLink("narrow"), FakeLink("access")
    PortOptions.fromSpec(PortSpec("vde:/w:trunk=2-4000")).plugIn(switch, wide, "vde:/w")
    PortOptions.fromSpec(PortSpec("vde:/n:trunk=100-199")).plugIn(switch, narrow, "vde:/n")
    PortOptions.fromSpec(PortSpec("vde:/a:vlan=250")).plugIn(switch, access, "vde:/a")
    for link in (wide, narrow, access):
        link.takeSent()
    inside = frame(BROADCAST, mac(1), b"vlan 150".ljust(46, b"."), vid=150)
    wide.receive(inside)
    assert narrow.takeSent() == [inside] and access.takeSent() == []
    outside = frame(BROADCAST, mac(2), b"vlan 250".ljust(46, b"."), vid=250)
    wide.receive(outside)
    assert narrow.takeSent() == [] and len(access.takeSent()) == 1
