"""
802.1Q VLANs in the forwarding core: tagging and untagging, membership,
per-VLAN learning, VLAN-transparent ports and malformed tags.  Virtio-net
packets crossing VLANs are tested in test_vlanoffload.py, random
configurations against a reference model in test_vlanmodel.py.
"""

from __future__ import annotations

import errno

import pytest
from twisted.logger import capturedLogs, formatEvent
from vlanports import BROADCAST, port, tagged, untagged

from vtwisted.errors import SwitchError
from vtwisted.portoptions import PortOptions
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import vnet

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


def test_badTagsAreLoggedOnceSayingWhatWasWrong() -> None:
    """Frames tagged for foreign VLANs, 4095 or cut short: counted each, one line per kind."""
    switch = Switch()
    trunk = port(switch, 0, (10,))
    port(switch, 10)
    with capturedLogs() as events:
        for vid in (20, 30, 4095):
            trunk.receive(frame(BROADCAST, mac(1), vid=vid))
        for _ in range(2):
            trunk.receive(frame(BROADCAST, mac(1), vid=10)[:16])
    lines = [formatEvent(e) for e in events]
    assert trunk.port.counters.drops["vlan"] == 3 and trunk.port.counters.drops["runt"] == 2
    assert len(lines) == 2, lines
    assert "port 1" in lines[0] and "VLAN 20, which this port is not in" in lines[0], lines
    assert "too short for an 802.1Q tag" in lines[1], lines


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


def test_vlanOptionNoVlanCanHaveIsRefusedNamingTheSpec() -> None:
    """
    vlan=4094 passed the spec's range (0 to 4095) and then failed at start-up
    as "vswitch: VLAN 4094 is out of range", naming no spec: it is refused
    with the spec, as trunk=4094 is.
    """
    with pytest.raises(SpecError) as e:
        PortOptions.fromSpec(PortSpec("tap:t0:vlan=4094"))
    assert "'tap:t0:vlan=4094'" in str(e.value) and "vlan=4094" in str(e.value)
    for good in ("0", "4093", "4095", "all"):
        PortOptions.fromSpec(PortSpec(f"tap:t0:vlan={good}"))


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


def test_transparentPortsKeepPriorityTags() -> None:
    """A priority tag (VID 0, PCP 6) crosses between vlan=all ports byte for byte; the
    ordinary VLAN-0 port gets the frame untagged, as from vde_switch."""
    switch, x, y, plainPort, trunk = transparentSwitch()
    f = frame(BROADCAST, mac(6), b"voice".ljust(46, b"."), vid=0, pcp=6)
    x.receive(f)
    assert y.sent == [f]
    assert plainPort.sent == [untagged(f)] and trunk.sent == [untagged(f)]
    plainPort.receive(frame(mac(6), mac(7)))
    reply = frame(mac(7), mac(6), vid=0, pcp=5)
    x.receive(reply)
    assert plainPort.sent[-1] == untagged(reply), "known destination: one port, untagged"
    y.receive(frame(mac(6), mac(8), vid=0, pcp=4))
    assert x.sent[-1] == frame(mac(6), mac(8), vid=0, pcp=4), "and to a learned vlan=all port"


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
