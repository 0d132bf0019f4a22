"""
The forwarding core: learning, flooding, aging, hub mode, counters, limits.
"""

from __future__ import annotations

import pytest
from twisted.logger import capturedLogs, formatEvent
from vnetpackets import kernelPacket

from vtwisted.errors import SwitchError
from vtwisted.fdb import MacTable
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import vnet

BROADCAST = b"\xff" * 6


def makeSwitch(ports: int = 3, **kwargs: object) -> tuple[Switch, list[FakeLink]]:
    switch = Switch(**kwargs)  # type: ignore[arg-type]
    links = [FakeLink(f"link{i}") for i in range(ports)]
    for link in links:
        plug(switch, link)
    return switch, links


def test_broadcastReachesEveryOtherPort() -> None:
    """A broadcast goes to every other port and never back to its sender."""
    switch, (a, b, c) = makeSwitch()
    f = frame(BROADCAST, mac(1))
    a.receive(f)
    assert a.sent == []
    assert b.sent == [f]
    assert c.sent == [f]


def test_unknownUnicastIsFlooded() -> None:
    """A frame to an address nobody has sent from yet reaches every other port."""
    switch, (a, b, c) = makeSwitch()
    f = frame(mac(9), mac(1))
    a.receive(f)
    assert (a.sent, b.sent, c.sent) == ([], [f], [f])


def test_learnedUnicastGoesOnlyToItsPort() -> None:
    """Once B has spoken, frames to B reach only B's port."""
    switch, (a, b, c) = makeSwitch()
    b.receive(frame(BROADCAST, mac(2)))
    a.takeSent(), c.takeSent()
    f = frame(mac(2), mac(1))
    a.receive(f)
    assert (a.sent, b.sent, c.sent) == ([], [f], [])


def test_frameToItsOwnPortIsNotEchoed() -> None:
    """A frame whose destination lives on the sender's port is not sent anywhere."""
    switch, (a, b, c) = makeSwitch()
    a.receive(frame(BROADCAST, mac(1)))
    b.takeSent(), c.takeSent()
    a.receive(frame(mac(1), mac(5)))
    assert (a.sent, b.sent, c.sent) == ([], [], [])


def test_multicastSourceIsNeverLearned() -> None:
    """A frame from a group address does not teach the switch that address."""
    switch, (a, b, c) = makeSwitch()
    group = b"\x01\x00\x5e\x00\x00\x01"
    a.receive(frame(BROADCAST, group))
    assert switch.fdb.size == 0
    f = frame(group, mac(2))
    b.receive(f)
    assert a.sent[-1] == f and c.sent[-1] == f


def test_addressesAgeOut() -> None:
    """An address silent for longer than the TTL is forgotten and flooded to again."""
    switch, (a, b, c) = makeSwitch(macTable=MacTable(expiry=100))
    switch.tick(1000)
    b.receive(frame(BROADCAST, mac(2)))
    switch.tick(1050)
    assert switch.fdb.lookup(0, mac(2)) is not None
    switch.tick(1101)
    assert switch.fdb.lookup(0, mac(2)) is None
    c.takeSent()
    a.receive(frame(mac(2), mac(1)))
    assert c.sent, "unknown again, so flooded"


def test_trafficKeepsAddressesAlive() -> None:
    """An address that keeps sending is not aged out."""
    switch, (a, b, c) = makeSwitch(macTable=MacTable(expiry=100))
    for now in range(1000, 1400, 50):
        switch.tick(now)
        b.receive(frame(BROADCAST, mac(2)))
    entry = switch.fdb.lookup(0, mac(2))
    assert entry is not None and entry.port is b.port


def test_addressMovesOnlyAfterMinimumPersistence() -> None:
    """An address seen on a second port moves there only if it was quiet for 3 s."""
    switch, (a, b, c) = makeSwitch()
    switch.tick(100)
    a.receive(frame(BROADCAST, mac(7)))
    b.receive(frame(BROADCAST, mac(7)))
    entry = switch.fdb.lookup(0, mac(7))
    assert entry is not None and entry.port is a.port
    switch.tick(104)
    b.receive(frame(BROADCAST, mac(7)))
    entry = switch.fdb.lookup(0, mac(7))
    assert entry is not None and entry.port is b.port


@pytest.mark.parametrize("form", ["plain", "virtio-net", "tagged"])
def test_anAnnouncementMovesAnAddressAtOnce(form: str) -> None:
    """
    A RARP (what QEMU announces a migrated guest with) moves its source
    address at once, however recently the address spoke on its old port:
    the guest's traffic follows it (untagged, behind a virtio-net header,
    or tagged in a VLAN); any other frame still waits out the 3 s.
    """
    from vlanports import port, tagged

    from vtwisted.wire.arp import rarpAnnouncement

    switch = Switch()
    vlan, vnetHeader = (10, False) if form == "tagged" else (0, form == "virtio-net")
    untaggedIn, trunk = (None, (vlan,)) if form == "tagged" else (0, ())
    old, new, other = (port(switch, untaggedIn, trunk, vnetHeader=vnetHeader) for _ in range(3))

    def send(link: FakeLink, f: bytes) -> None:
        if form == "tagged":
            link.receive(tagged(f, vlan))
        elif vnetHeader:
            link.receivePacket(vnet.PLAIN_HEADER + f)
        else:
            link.receive(f)

    switch.tick(100)
    send(old, frame(BROADCAST, mac(7)))
    send(new, frame(BROADCAST, mac(7), payload=b"not an announcement"))
    assert switch.fdb.lookup(vlan, mac(7)).port is old.port  # type: ignore[union-attr]
    send(new, rarpAnnouncement(mac(7)))
    assert switch.fdb.lookup(vlan, mac(7)).port is new.port  # type: ignore[union-attr]
    for link in (new, old):
        link.sent, link.sentPackets = [], []
    send(other, frame(mac(7), mac(8)))
    assert new.sent + new.sentPackets and not old.sent + old.sentPackets


def test_macTableIsBounded() -> None:
    """A flood of random source addresses cannot grow the table past its capacity."""
    switch, (a, b, c) = makeSwitch(macTable=MacTable(capacity=100))
    b.receive(frame(BROADCAST, mac(60000)))
    for n in range(1000):
        a.receive(frame(BROADCAST, mac(n)))
    assert switch.fdb.size == 100
    assert sum(len(t) for t in switch.fdb.tables.values()) == 100
    assert switch.fdb.evictions == 901
    # the newest addresses are the ones kept
    assert switch.fdb.lookup(0, mac(999)) is not None


def test_hubFloodsEvenKnownUnicast() -> None:
    """In hub mode every frame goes to every other port, learned or not."""
    switch, (a, b, c) = makeSwitch(hub=True)
    b.receive(frame(BROADCAST, mac(2)))
    a.takeSent(), c.takeSent()
    f = frame(mac(2), mac(1))
    a.receive(f)
    assert (a.sent, b.sent, c.sent) == ([], [f], [f])


def test_hubNeverSendsToPortZero() -> None:
    """Port 0 receives nothing in hub mode, as in vde_switch."""
    switch = Switch(hub=True)
    zero, one, two = FakeLink(), FakeLink(), FakeLink()
    plug(switch, zero, 0)
    plug(switch, one)
    plug(switch, two)
    one.receive(frame(BROADCAST, mac(1)))
    assert zero.sent == [] and two.sent != []


def test_anonymousClientsGetLowestFreePortFromOne() -> None:
    """Ports are handed out from 1 up; port 0 only to whoever asks for it."""
    switch = Switch(numPorts=4)
    numbers = [plug(switch, FakeLink()).number for _ in range(3)]
    assert numbers == [1, 2, 3]
    with pytest.raises(SwitchError) as e:
        plug(switch, FakeLink())
    assert e.value.errno == 28
    assert plug(switch, FakeLink(), 0).number == 0


def test_anonymousClientGetsThePortReservedForItsUser() -> None:
    """
    An inactive port with port/setuser goes to that user's anonymous client
    (and root's), as in vde_switch; other users and the switch's own links
    get the next free port instead of being refused.
    """
    switch = Switch(numPorts=4)
    reserved = switch.allocatePort(1)
    reserved.user = 1000
    assert switch.allocatePort(None, 1001).number == 2
    assert switch.allocatePort(None, None).number == 2
    assert switch.allocatePort(None, 1000) is reserved
    assert switch.allocatePort(None, 0) is reserved


def test_inactivePortIsReusedWithItsConfiguration() -> None:
    """A port left by its client keeps its VLAN for the next client that gets it."""
    switch = Switch()
    link = FakeLink()
    port = plug(switch, link)
    switch.vlans.create(10)
    switch.vlans.join(port, 10)
    link.close()
    again = plug(switch, FakeLink())
    assert again is port and again.untaggedVlan is switch.vlans[10]


def test_portOutOfRangeIsRefused() -> None:
    """Asking for a port beyond --numports fails with EINVAL."""
    switch = Switch(numPorts=8)
    with pytest.raises(SwitchError) as e:
        plug(switch, FakeLink(), 8)
    assert e.value.errno == 22


def test_sharedPortGivesEveryLinkACopy() -> None:
    """Two clients on one port each receive every frame sent to that port."""
    switch = Switch()
    first, second, other = FakeLink(uid=1000), FakeLink(uid=1000), FakeLink()
    plug(switch, first, 5, uid=1000)
    plug(switch, second, 5, uid=1000)
    plug(switch, other)
    f = frame(BROADCAST, mac(3))
    other.receive(f)
    assert first.sent == [f] and second.sent == [f]
    assert first.port.counters.outFrames == 1


def test_sharedPortRefusesAnotherUser() -> None:
    """A port in use by one user cannot be joined by another."""
    switch = Switch()
    plug(switch, FakeLink(uid=1000), 5, uid=1000)
    with pytest.raises(SwitchError) as e:
        plug(switch, FakeLink(uid=1001), 5, uid=1001)
    assert e.value.errno == 98


def test_countersCountFramesAndBytes() -> None:
    """Per-port counters show frames and bytes in and out."""
    switch, (a, b, c) = makeSwitch()
    f = frame(BROADCAST, mac(1), b"x" * 100)
    a.receive(f)
    a.receive(f)
    assert (a.port.counters.inFrames, a.port.counters.inBytes) == (2, 2 * len(f))
    assert (b.port.counters.outFrames, b.port.counters.outBytes) == (2, 2 * len(f))
    assert b.port.counters.inFrames == 0


@pytest.mark.parametrize("size", [0, 1, 13])
def test_runtsAreDroppedAndCounted(size: int) -> None:
    """
    Frames shorter than an Ethernet header are counted as runts and go
    nowhere; they are not frames received (vde_switch ignores them), so the
    IN counters leave them out.
    """
    switch, (a, b, c) = makeSwitch()
    a.receive(b"\xff" * size)
    assert b.sent == [] and a.port.counters.drops["runt"] == 1
    assert (a.port.counters.inFrames, a.port.counters.inBytes) == (0, 0)
    a.receive(frame(BROADCAST, mac(1)))
    assert b.sent, "the port keeps working"


def test_headerOnlyFrameIsForwarded() -> None:
    """A 14-byte frame is the smallest forwarded, unpadded."""
    switch, (a, b, c) = makeSwitch()
    f = frame(BROADCAST, mac(1), b"")
    a.receive(f)
    assert b.sent == [f] and len(f) == 14


def test_jumboFramesPassWhereVdeSwitchCutsAt1518() -> None:
    """A 9234-byte frame crosses whole; one byte more is dropped as oversize."""
    switch, (a, b, c) = makeSwitch()
    jumbo = frame(BROADCAST, mac(1), b"j" * (9234 - 14))
    a.receive(jumbo)
    assert b.sent == [jumbo]
    a.receive(jumbo + b"!")
    assert len(b.sent) == 1 and a.port.counters.drops["oversize"] == 1


def test_portMtuLimitsEgress() -> None:
    """A port with a lower MTU does not get frames longer than it allows; others do."""
    switch, (a, b, c) = makeSwitch()
    b.port.setMtu(1500)
    big = frame(BROADCAST, mac(1), b"j" * 2000)
    a.receive(big)
    assert b.sent == [] and c.sent == [big]
    assert b.port.counters.drops["mtu"] == 1
    small = frame(BROADCAST, mac(1), b"s" * 1500)
    a.receive(small)
    assert b.sent == [small]


def test_aNewPeerOrResetCountersLogTheFirstDropAgain() -> None:
    """
    A port logs its first drop of each reason once; a new peer on the port
    (a guest or client taking it after another left) and C{port/resetcounter}
    log the next one again, so the drops the new peer causes are not only
    counted.
    """
    from types import SimpleNamespace
    from typing import Any, cast

    from vtwisted.operations import SwitchOperations

    switch, (a, b, c) = makeSwitch()
    b.port.setMtu(1500)
    big = frame(BROADCAST, mac(1), b"j" * 2000)

    def mtuLines() -> int:
        with capturedLogs() as events:
            a.receive(big)
            a.receive(big)
        return sum("dropped a frame (mtu)" in formatEvent(e) for e in events)

    assert mtuLines() == 1
    assert mtuLines() == 0
    port = b.port
    switch.detach(port, b)
    newcomer = FakeLink("newcomer")
    newcomer.switch, newcomer.port = switch, port
    switch.attach(port, newcomer)
    assert mtuLines() == 1
    SwitchOperations(cast(Any, SimpleNamespace(switch=switch))).resetCounters(port.number)
    assert mtuLines() == 1
    assert port.counters.drops["mtu"] == 2


def _vnetSwitch() -> tuple[Switch, list[FakeLink]]:
    switch = Switch()
    links = [FakeLink(f"v{n}", vnetHeader=True) for n in range(3)]
    for link in links:
        plug(switch, link)
    return switch, links


@pytest.mark.parametrize("size", [0, 9, 10, 23])
def test_shortVirtioNetPacketsAreNotCountedAsReceived(size: int) -> None:
    """
    A virtio-net packet without a whole header is malformed, one without a
    whole Ethernet header after it a runt; neither counts as received.
    """
    switch, (a, b, c) = _vnetSwitch()
    a.receivePacket((vnet.PLAIN_HEADER + b"\xff" * 14)[:size])
    reason = "malformed" if size < len(vnet.PLAIN_HEADER) else "runt"
    assert b.sent == [] and a.port.counters.drops[reason] == 1
    assert (a.port.counters.inFrames, a.port.counters.inBytes) == (0, 0)


def test_portMtuLimitsEgressToOffloadPortsByFrameOrSegment() -> None:
    """
    Towards a port with the virtio-net header, C{mtu=} limits a plain
    frame's length and a super-frame's segments: too long, dropped and
    counted; super-frames of shorter segments pass whole.
    """
    switch, (a, b, c) = _vnetSwitch()
    b.port.setMtu(1000)
    big = vnet.PLAIN_HEADER + frame(BROADCAST, mac(1), b"j" * 1400)
    wideSegments = kernelPacket(bytes(5000), 1448, macs=(BROADCAST, mac(1))).packet
    narrowSegments = kernelPacket(bytes(5000), 900, macs=(BROADCAST, mac(1))).packet
    for packet in (big, wideSegments, narrowSegments):
        a.receivePacket(packet)
    assert b.sentPackets == [narrowSegments]
    assert c.sentPackets == [big, wideSegments, narrowSegments]
    assert b.port.counters.drops["mtu"] == 2


def test_portMtuLimitsUnicastToALearnedOffloadPort() -> None:
    """The same holds for frames to an address learned on the port."""
    switch, (a, b, c) = _vnetSwitch()
    b.port.setMtu(1000)
    b.receivePacket(vnet.PLAIN_HEADER + frame(BROADCAST, mac(2)))
    c.sentPackets.clear()
    big = vnet.PLAIN_HEADER + frame(mac(2), mac(1), b"j" * 1400)
    wide = kernelPacket(bytes(5000), 1448, macs=(mac(2), mac(1))).packet
    narrow = kernelPacket(bytes(5000), 900, macs=(mac(2), mac(1))).packet
    for packet in (big, wide, narrow, narrow):
        a.receivePacket(packet)
    assert b.sentPackets == [narrow, narrow] and c.sentPackets == []
    assert b.port.counters.drops["mtu"] == 2


def test_unicastFromAnOffloadPortToAPlainOneIsCompletedOrCut() -> None:
    """
    Frames with the header for an address learned on a plain port arrive
    there as plain frames, checksums completed (the next ones of the flow
    too, by the route), super-frames cut, oversized ones dropped.
    """
    switch = Switch()
    a, plainLink = FakeLink("a", vnetHeader=True), FakeLink("p")
    plug(switch, a)
    plug(switch, plainLink)
    plainLink.port.setMtu(1000)
    plainLink.receive(frame(BROADCAST, mac(2)))
    small = [kernelPacket(bytes([n]) * 40, gso=False, macs=(mac(2), mac(1))).packet
             for n in range(3)]
    big = kernelPacket(bytes(1200), gso=False, macs=(mac(2), mac(1))).packet
    superFrame = kernelPacket(bytes(800), 300, macs=(mac(2), mac(1))).packet
    for packet in [*small, big, superFrame]:
        a.receivePacket(packet)
    expected = [f for p in [*small, superFrame] for f in vnet.toFrames(p)]
    assert plainLink.sent == expected and all(f[0:1] != b"\x01" for f in expected)
    assert plainLink.port.counters.drops["mtu"] == 1
    assert plainLink.port.counters.outFrames == len(expected)


def test_coalescingPaysUnlessTheDestinationIsAPlainPort() -> None:
    """Merging pays towards offload ports, unknown addresses, floods and in hub mode."""
    switch = Switch()
    a, v, p = FakeLink("a", vnetHeader=True), FakeLink("v", vnetHeader=True), FakeLink("p")
    for link in (a, v, p):
        plug(switch, link)
    v.receivePacket(vnet.PLAIN_HEADER + frame(BROADCAST, mac(2)))
    p.receive(frame(BROADCAST, mac(3)))

    def pays(dst: bytes) -> bool:
        return switch.coalescingPays(a.port, vnet.PLAIN_HEADER + frame(dst, mac(1)))

    assert pays(mac(2)) and pays(mac(4)) and pays(BROADCAST)
    assert not pays(mac(3))
    assert [switch.vnetBehind(a.port, m) for m in (mac(2), mac(3), mac(4))] == [True, False, True]
    switch.setHub(True)
    assert pays(mac(3))


def test_portMtuLimitsIngressFromOffloadPortsByFrameOrSegment() -> None:
    """An offload port with a lower MTU drops what it reads beyond it, as oversize."""
    switch, (a, b, c) = _vnetSwitch()
    a.port.setMtu(1000)
    a.receivePacket(vnet.PLAIN_HEADER + frame(BROADCAST, mac(1), b"j" * 1400))
    a.receivePacket(kernelPacket(bytes(5000), 1448, macs=(BROADCAST, mac(1))).packet)
    narrow = kernelPacket(bytes(5000), 900, macs=(BROADCAST, mac(1))).packet
    a.receivePacket(narrow)
    assert b.sentPackets == c.sentPackets == [narrow]
    assert a.port.counters.drops["oversize"] == 2


def test_detachFlushesThePortsAddresses() -> None:
    """When a client leaves, frames to its addresses are flooded again."""
    switch, (a, b, c) = makeSwitch()
    b.receive(frame(BROADCAST, mac(2)))
    b.close()
    assert switch.fdb.lookup(0, mac(2)) is None


def test_brokenLinkDoesNotStopOthers() -> None:
    """A link whose peer is gone (send raises nothing, drops) leaves the rest working."""
    switch, (a, b, c) = makeSwitch()

    def gone(frame: bytes) -> None:
        b.port.dropped("peer", "test peer vanished")

    b.port.send = gone
    a.receive(frame(BROADCAST, mac(1)))
    a.receive(frame(BROADCAST, mac(1)))
    assert len(c.sent) == 2
    assert b.port.counters.drops["peer"] == 2


def test_monitorPortSeesEveryFrameOnce() -> None:
    """
    A monitor gets each frame any other port reads, once, even unicast
    between two others after their addresses are learned (no route may skip
    it); without a monitor, those frames would take a remembered route.
    """
    switch, (a, b) = makeSwitch(2)
    monitor = FakeLink("monitor")
    port = plug(switch, monitor)
    switch.vlans.join(port, 4095)
    switch.setMonitor(port, True)
    a.receive(frame(BROADCAST, mac(1)))
    b.receive(frame(mac(1), mac(2)))
    for _ in range(3):
        a.receive(frame(mac(2), mac(1), payload=b"unicast"))
    assert len(monitor.sent) == 5
    assert sum(b"unicast" in f for f in monitor.sent) == 3
    assert not switch.ports[1].routes, "no route while a monitor listens"
    switch.setMonitor(port, False)
    monitor.takeSent()
    for _ in range(3):
        a.receive(frame(mac(2), mac(1), payload=b"after"))
    assert monitor.sent == []
    assert switch.ports[1].routes, "without a monitor the flow takes a route again"
