"""
The management operations the console and the manhole share: vde_switch's
errors for the same mistakes, plain records out, port specs at run time.
"""

from __future__ import annotations

import errno

import pytest
from consolefakes import makeOperations
from twisted.internet.task import Clock

from vtwisted.errors import SwitchError
from vtwisted.status import PortStatus
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.vlans import NOVLAN


def code(call, *args) -> int:
    with pytest.raises(SwitchError) as info:
        call(*args)
    return info.value.errno


@pytest.fixture
def ops():
    return makeOperations()[0]


def test_portRecordsAreSnapshots(ops) -> None:
    """ports() returns frozen records with counters and endpoints, newest first."""
    a, b = FakeLink("first", linkId=3, uid=0), FakeLink("second", linkId=4, uid=0)
    port = plug(ops.switch, a, 5)
    plug(ops.switch, b, 5)
    a.receive(frame(b"\xff" * 6, mac(1)))
    (status,) = ops.ports(5)
    assert isinstance(status, PortStatus)
    assert (status.number, status.active, status.inFrames, status.inBytes) == (5, True, 1, 60)
    assert [link.description for link in status.links] == ["second", "first"]
    assert status.currentUser == 0 and status.untaggedVid == 0
    port.counters.inFrames = 99
    assert status.inFrames == 1


def test_printRangesAndMissingPortsAsVdeSwitch(ops) -> None:
    """Out of range is EINVAL; a missing or inactive port asked for is ENXIO."""
    ops.createPort(9)
    assert code(ops.ports, 32) == errno.EINVAL
    assert code(ops.ports, -1) == errno.EINVAL
    assert code(ops.ports, 3) == errno.ENXIO
    assert code(ops.ports, 9) == errno.ENXIO
    assert [p.number for p in ops.ports(9, inactive=True)] == [9]
    assert ops.ports() == []


def test_createAndRemovePortErrors(ops) -> None:
    """port/create and port/remove answer EINVAL, EEXIST, ENXIO, EADDRINUSE."""
    ops.createPort(4)
    assert code(ops.createPort, 4) == errno.EEXIST
    assert code(ops.createPort, 40) == errno.EINVAL
    assert code(ops.removePort, 6) == errno.ENXIO
    plug(ops.switch, FakeLink(), 6)
    assert code(ops.removePort, 6) == errno.EADDRINUSE
    ops.removePort(4)
    assert 4 not in ops.switch.ports


def test_createAnyPortTakesLowestFreeAndLocksIt(ops) -> None:
    """port/createauto picks the lowest missing or idle allocatable port from 1."""
    plug(ops.switch, FakeLink(), 1)
    assert ops.createAnyPort() == 2
    assert ops.switch.ports[2].allocatable is False
    assert ops.createAnyPort() == 3
    full = makeOperations(numPorts=2)[0]
    full.createAnyPort()
    assert code(full.createAnyPort) == errno.ENOSPC


def test_setVlanChecksAsVdeSwitch(ops) -> None:
    """setVlan: 0..4095 else EINVAL, unknown VLAN or port ENXIO; 4095 means none."""
    ops.createPort(3)
    assert code(ops.setVlan, 3, 4096) == errno.EINVAL
    assert code(ops.setVlan, 33, 0) == errno.EINVAL
    assert code(ops.setVlan, 3, 10) == errno.ENXIO
    assert code(ops.setVlan, 4, 0) == errno.ENXIO
    ops.createVlan(10)
    ops.setVlan(3, 10)
    assert ops.ports(3, inactive=True)[0].untaggedVid == 10
    ops.setVlan(3, NOVLAN)
    assert ops.ports(3, inactive=True)[0].untaggedVid == NOVLAN


def test_setVlanForgetsThePortsAddresses(ops) -> None:
    """Moving a port to another VLAN flushes what was learned on it."""
    link = FakeLink()
    plug(ops.switch, link, 2)
    link.receive(frame(b"\xff" * 6, mac(1)))
    assert len(ops.macEntries()) == 1
    ops.createVlan(10)
    ops.setVlan(2, 10)
    assert ops.macEntries() == []


def test_vlanCreateRemoveErrors(ops) -> None:
    """vlan/create 1..4093; vlan/remove ENXIO unknown, EADDRINUSE with members."""
    for vid in (0, 4094, 4095, -1):
        assert code(ops.createVlan, vid) == errno.EINVAL
    ops.createVlan(4093)
    assert code(ops.createVlan, 4093) == errno.EEXIST
    assert code(ops.removeVlan, 12) == errno.ENXIO
    assert code(ops.removeVlan, 4095) == errno.EINVAL
    ops.createPort(1)
    assert code(ops.removeVlan, 0) == errno.EADDRINUSE
    ops.createVlan(20)
    ops.addTagged(20, 1)
    assert code(ops.removeVlan, 20) == errno.EADDRINUSE
    ops.removeTagged(20, 1)
    ops.removeVlan(20)


def test_addAndRemoveTaggedAreIdempotentLikeVdeSwitch(ops) -> None:
    """Adding a member twice succeeds; removing the untagged VLAN is EADDRINUSE."""
    ops.createPort(1)
    ops.createVlan(10)
    ops.addTagged(10, 1)
    ops.addTagged(10, 1)
    ops.addTagged(0, 1)
    assert code(ops.removeTagged, 0, 1) == errno.EADDRINUSE
    ops.removeTagged(10, 1)
    ops.removeTagged(10, 1)
    assert code(ops.addTagged, 11, 1) == errno.ENXIO
    assert code(ops.addTagged, 10, 2) == errno.ENXIO
    assert code(ops.addTagged, 4094, 1) == errno.EINVAL


def test_vlanListingShowsMembersInPortOrder(ops) -> None:
    """vlans() lists active members, or all of them, with tagged flags."""
    ops.createVlan(10)
    plug(ops.switch, FakeLink(), 3)
    ops.createPort(2)
    ops.addTagged(10, 3)
    ops.addTagged(10, 2)
    (vlan10,) = ops.vlans(10, inactive=True)
    assert [(m.port, m.tagged, m.active) for m in vlan10.members] == [
        (2, True, False),
        (3, True, True),
    ]
    assert [m.port for m in ops.vlans(10)[0].members] == [3]
    assert code(ops.vlans, 4094) == errno.EINVAL
    assert code(ops.vlans, 12) == errno.ENXIO


def test_macTableShowsVdeBuckets(ops) -> None:
    """Entries carry vde_switch's bucket, port and age; findMac misses with ENODEV."""
    link = FakeLink()
    plug(ops.switch, link, 1)
    link.receive(frame(b"\xff" * 6, bytes.fromhex("02000000000a")))
    ops.switch.tick(ops.switch.now + 1)
    (entry,) = ops.macEntries()
    assert (entry.bucket, entry.port, entry.vid, entry.age) == (9, 1, 0, 1)
    assert ops.findMac(bytes.fromhex("02000000000a"), 0) == entry
    assert code(ops.findMac, bytes.fromhex("02000000000a"), 10) == errno.ENODEV


def test_macSettings(ops) -> None:
    """hash/setsize rounds to a power of two and flushes; negative times are EINVAL."""
    ops.setMacBuckets(100)
    assert ops.macTableInfo().buckets == 128
    assert code(ops.setMacBuckets, 0) == errno.EINVAL
    ops.setMacExpiry(50)
    ops.setMinPersistence(0)
    info = ops.macTableInfo()
    assert (info.expiry, info.minPersistence, info.gcInterval) == (50, 0, 2)
    assert code(ops.setMacExpiry, -5) == errno.EINVAL


def test_accessControlAndEndpoints(ops) -> None:
    """setPortUser/Group/allocatable need a port; closeEndpoint finds the link by id."""
    link = FakeLink(linkId=6)
    plug(ops.switch, link, 4)
    ops.setPortUser(4, 1000)
    ops.setPortGroup(4, None)
    ops.setAllocatable(4, False)
    status = ops.ports(4)[0]
    assert (status.user, status.group, status.allocatable) == (1000, None, False)
    assert code(ops.setPortUser, 5, 0) == errno.ENXIO
    assert code(ops.closeEndpoint, 4, 99) == errno.ENXIO
    assert code(ops.closeEndpoint, 99, 6) == errno.EINVAL
    ops.closeEndpoint(4, 6)
    assert link.closed and not ops.switch.ports[4].links


def test_resetCounters(ops) -> None:
    """resetCounters zeroes one port or all, drops included; a missing port is fine."""
    link = FakeLink()
    plug(ops.switch, link, 1)
    link.receive(b"short")
    assert ops.ports(1)[0].drops["runt"] == 1
    ops.resetCounters(9)
    ops.resetCounters(1)
    status = ops.ports(1)[0]
    assert (status.inFrames, status.drops["runt"]) == (0, 0)
    assert code(ops.resetCounters, 32) == errno.EINVAL


def test_infoAndShutdown() -> None:
    """info() has pid, MAC, uptime and consoles; shutdown stops once."""
    ops, service, stopped = makeOperations()
    ops.registerConsole("/tmp/x", 0o600)
    assert isinstance(service.clock, Clock)
    service.clock.advance(7)
    info = ops.info()
    assert (info.mac, info.uptime, info.consoles) == (bytes.fromhex("00ff01020304"), 7,
                                                     (("/tmp/x", 0o600),))
    ops.shutdown()
    ops.shutdown()
    assert stopped == [1]


def test_addPortReportsItsPortsAndRejectsDuplicates(ops) -> None:
    """addPort starts the spec and says which ports it brought; twice is EEXIST."""
    assert ops.addPort("single:a") == [1]
    assert ops.addPort("listen:b") == []
    assert code(ops.addPort, "single:a") == errno.EEXIST
    assert code(ops.addPort, "nosuchtype:x") == errno.EINVAL
    specs = {s.text: s for s in ops.specs()}
    assert specs["single:a"].ports == (1,) and specs["single:a"].runtime
    assert specs["listen:b"].listening
    assert ops.ports(1)[0].spec == "single:a"


def test_addPortThatFailsLeavesNothing(ops) -> None:
    """A spec whose start fails gives its errno and is not kept."""
    assert code(ops.addPort, "broken:x") == errno.EBUSY
    assert "broken:x" not in ops.service.specs
    assert ops.addPort("single:a") == [1]


def test_deletePortRemovesADedicatedSpec(ops) -> None:
    """Deleting a TAP-like spec's port removes the spec and the port."""
    ops.addPort("single:a")
    assert ops.deletePort(1) == "single:a"
    assert "single:a" not in ops.service.specs and 1 not in ops.switch.ports


def test_deletePortKeepsAListeningSpec(ops) -> None:
    """Deleting a VDE-like client's port kicks it; the directory keeps listening."""
    ops.addPort("listen:b")
    client = ops.service.specs["listen:b"].connect()
    number = client.port.number
    assert ops.deletePort(number) is None
    assert client.closed and number not in ops.switch.ports
    assert "listen:b" in ops.service.specs
    ops.removeSpec("listen:b")
    assert "listen:b" not in ops.service.specs
    assert code(ops.removeSpec, "listen:b") == errno.ENOENT


def test_deletePlainPortAndErrors(ops) -> None:
    """A port without a spec is closed and removed; missing ports are ENXIO."""
    link = FakeLink()
    plug(ops.switch, link, 3)
    assert ops.deletePort(3) is None
    assert link.closed and 3 not in ops.switch.ports
    assert code(ops.deletePort, 3) == errno.ENXIO
    assert code(ops.deletePort, 300) == errno.EINVAL


def test_aRootTreesAgeIsTheSwitchsUptime() -> None:
    """
    A tree whose root is this switch is as old as the switch, as
    vde_switch's C{fstp/print} says (C{qtime()} less a root timestamp of 0).
    """
    ops, service, _ = makeOperations()
    assert isinstance(service.clock, Clock)
    service.clock.advance(7)
    (tree,) = ops.fstpTrees(0)
    assert (tree.isRoot, tree.rootPort, tree.age) == (True, 0, 7)
