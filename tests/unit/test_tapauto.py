"""
C{offload=auto}, the TAP port's default, without a kernel (L{tapfakes}):
a TAP asks for offloads only while another port of the switch takes
virtio-net packets whole, since otherwise every super-frame it read would be
cut apart in Python.  The real kernel's side is in
tests/integration/test_tap_autooffload.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tapfakes import ALL_OFFLOADS, BROADCAST, Rig, rigged, tunnelOf
from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from vnetpackets import UDP, checkSegments, kernelPacket

from vtwisted.ports import tap
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import vnet

OFF_TEXT = "offload=none (auto: no other port takes super-frames)"
ON_TEXT = "offload=csum,tso4,tso6,ecn,uso4,uso6 (auto)"


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from rigged()


@pytest.mark.parametrize(("text", "header", "auto"), [
    ("", True, True),
    (":offload=auto", True, True),
    (":offload=AUTO", True, True),
    (":offload=on", True, False),
    (":offload=yes", True, False),
    (":offload=off", False, False),
    (":offload=0", False, False),
])
def test_offloadSpecIsAutoOnOrOff(text: str, header: bool, auto: bool) -> None:
    """offload= takes auto (the default), or on/off as any boolean option does."""
    service = tap.makeService(Switch(), PortSpec(f"tap:t1{text}"), None)
    assert (service.offload, service.autoOffload) == (header, auto)


def test_unknownOffloadValueNamesTheChoices() -> None:
    with pytest.raises(SpecError, match="offload='maybe' is not auto, on or off"):
        tap.makeService(Switch(), PortSpec("tap:t1:offload=maybe"), None)


def test_aloneTheTapTurnsItsOffloadsOff(rig: Rig) -> None:
    """With no other port, the TAP keeps the header but asks the kernel for no offloads."""
    service = rig.tap(offload="auto")
    assert service.link is not None
    assert rig.system.offloadCalls == [ALL_OFFLOADS, 0]
    assert tunnelOf(service).offloads == 0
    assert service.link.vnetHeader and service.link.port.vnet
    assert service.link.description == f"tap7 {OFF_TEXT}"


def test_plainPortsLeaveTheOffloadsOff(rig: Rig) -> None:
    """A VDE-like port (no header) would need every super-frame cut: offloads stay off."""
    service = rig.tap(offload="auto")
    rig.link()
    assert tunnelOf(service).offloads == 0
    assert rig.system.offloadCalls == [ALL_OFFLOADS, 0]


def test_offloadsFollowPortsThatTakeSuperFrames(rig: Rig) -> None:
    """A second offload TAP turns both on; when it goes, the first turns off again."""
    first = rig.tap("tapa", offload="auto")
    with capturedLogs() as events:
        second = rig.tap("tapb", offload="auto")
    assert tunnelOf(first).offloads == ALL_OFFLOADS == tunnelOf(second).offloads
    assert first.link is not None and first.link.description.startswith(f"tapa {ON_TEXT}")
    assert any(f"tap:tapa: tapa {ON_TEXT}" in formatEvent(e) for e in events)
    second.stopService()
    assert tunnelOf(first).offloads == 0
    assert first.link.description == f"tapa {OFF_TEXT}"


def test_anyLinkTakingTheHeaderCounts(rig: Rig) -> None:
    """A cable, slirp or vhost-user link with the header turns the offloads on."""
    service = rig.tap(offload="auto")
    port = plug(rig.switch, FakeLink(vnetHeader=True))
    assert tunnelOf(service).offloads == ALL_OFFLOADS
    rig.switch.detach(port, port.links[0])
    assert tunnelOf(service).offloads == 0


def test_linkThatLearnsToTakeTheHeaderLaterCounts(rig: Rig) -> None:
    """A vhost-user link settles on super-frames after it is plugged in (rewire)."""
    service = rig.tap(offload="auto")
    link = FakeLink()
    port = plug(rig.switch, link)
    assert tunnelOf(service).offloads == 0
    link.vnetHeader = True
    port.rewire()
    assert tunnelOf(service).offloads == ALL_OFFLOADS


def test_offloadOnStaysOnAlone(rig: Rig) -> None:
    """offload=on pins the offloads: the switch cuts super-frames for plain ports."""
    service = rig.tap(offload="on")
    rig.link()
    assert rig.system.offloadCalls == [ALL_OFFLOADS]
    assert tunnelOf(service).offloads == ALL_OFFLOADS


def test_failingToChangeOffloadsIsLoggedAndKeepsTheOldOnes(rig: Rig) -> None:
    """If TUNSETOFFLOAD fails later, the port says so and carries on as it was."""
    first = rig.tap("tapa", offload="auto")
    rig.system.refusedOffloads = 0x01
    with capturedLogs() as events:
        second = rig.tap("tapb", offload="auto")
    assert tunnelOf(first).offloads == 0
    text = [formatEvent(e) for e in events]
    assert any("tap:tapa: setting offloads csum,tso4,tso6,ecn,uso4,uso6 on tapa failed: "
               "Invalid argument (errno 22); they stay none" in t for t in text), text
    other = rig.link()
    tunnelOf(first).inject(vnet.PLAIN_HEADER + frame(BROADCAST, mac(1)))
    assert first.link is not None and second.link is not None
    first.link.doRead()
    assert other.sent == [frame(BROADCAST, mac(1))]


def test_coalescingOnlyWhileOffloadsAreOn(rig: Rig) -> None:
    """USO coalescing needs USO: it stops with the offloads and comes back with its counts."""
    first = rig.tap("tapa", offload="auto")
    assert first.link is not None and first.link._gro is None
    second = rig.tap("tapb", offload="auto")
    coalescer = first.link._gro
    assert coalescer is not None
    assert "coalesced 0 datagrams into 0" in first.link.description
    coalescer.datagrams, coalescer.packets = 8, 2
    second.stopService()
    assert first.link._gro is None and "coalesced" not in first.link.description
    rig.tap("tapc", offload="auto")
    assert first.link._gro is coalescer, "its counts are kept"
    assert "coalesced 8 datagrams into 2" in first.link.description


def test_closedTapIsNoLongerTold(rig: Rig) -> None:
    """A TAP that stopped makes no more ioctls when ports come and go."""
    first = rig.tap("tapa", offload="auto")
    first.stopService()
    calls = list(rig.system.offloadCalls)
    second = rig.tap("tapb", offload="auto")
    assert rig.system.offloadCalls == [*calls, ALL_OFFLOADS, 0]  # tapb's own, alone
    assert second.link is not None
    assert list(rig.switch._superFrameWatchers) == [second.link.port]


def test_superFramesAlreadyQueuedAreStillCut(rig: Rig) -> None:
    """Turning offloads off keeps the header: a super-frame read late is still cut."""
    service = rig.tap(offload="auto")
    other = rig.link()
    built = kernelPacket(bytes(range(256)) * 12)
    tunnelOf(service).inject(built.packet)
    assert service.link is not None
    service.link.doRead()
    assert len(other.sent) == 3
    checkSegments(built, other.sent)


def test_switchStoppingLeavesTheOffloadsAlone(rig: Rig) -> None:
    """While the switch stops, its ports leave one by one: the others stay as they were."""
    first = rig.tap("tapa", offload="auto")
    second = rig.tap("tapb", offload="auto")
    first.parent = MultiService()  # not running: it is stopping its children
    calls = list(rig.system.offloadCalls)
    second.stopService()
    assert rig.system.offloadCalls == calls
    assert tunnelOf(first).offloads == ALL_OFFLOADS


class LeavingLink(FakeLink):
    """
    A link taking super-frames that unplugs itself when first sent one, as
    a link whose peer is found gone while the switch writes to it.
    """

    def sendVnetPacket(self, packet: bytes) -> None:
        super().sendVnetPacket(packet)
        if self.port is not None and self in self.port.links:
            self.switch.detach(self.port, self)


def test_datagramsHeldWhenTheOffloadsGoOffInABatchStillArrive(rig: Rig) -> None:
    """
    A read batch in which the only port taking super-frames leaves (so the
    offloads go off) still hands on the datagrams the coalescer held.
    """
    service = rig.tap(offload="auto")
    leaving = LeavingLink(vnetHeader=True)
    plug(rig.switch, leaving)
    plain = rig.link()
    assert service.link is not None and service.link._gro is not None
    tunnel = tunnelOf(service)
    tunnel.inject(vnet.PLAIN_HEADER + frame(BROADCAST, mac(1)))
    datagrams = [kernelPacket(b"d%02d" % n + bytes(40), proto=UDP, gso=False, ident=n,
                              macs=(BROADCAST, mac(1)))
                 for n in range(3)]
    for built in datagrams:
        tunnel.inject(built.packet)
    with capturedLogs() as events:
        service.link.doRead()
    assert service.link._gro is None, "the offloads went off within the batch"
    assert not [e for e in events if e.get("log_failure") is not None]
    sent = [f for f in plain.sent if f[12:14] == b"\x08\x00"]
    assert [f[-43:-40] for f in sent] == [b"d00", b"d01", b"d02"]


def test_aStartingSwitchSettlesOnceOnItsClocksNextTurn(rig: Rig) -> None:
    """
    With a clock (a running switch has one), the ports are counted on its
    next turn: two TAPs plugged in one after the other never flap off.
    """
    clock = rig.switch.clock = Clock()
    first = rig.tap("tapa", offload="auto")
    rig.tap("tapb", offload="auto")
    clock.advance(0)
    assert rig.system.offloadCalls == [ALL_OFFLOADS, ALL_OFFLOADS]
    assert tunnelOf(first).offloads == ALL_OFFLOADS
    rig.link()
    clock.advance(0)
    assert rig.system.offloadCalls == [ALL_OFFLOADS, ALL_OFFLOADS]


def test_aLoneTapGoesOffOnTheClocksNextTurn(rig: Rig) -> None:
    clock = rig.switch.clock = Clock()
    service = rig.tap(offload="auto")
    rig.link()
    assert tunnelOf(service).offloads == ALL_OFFLOADS
    clock.advance(0)
    assert tunnelOf(service).offloads == 0
    assert rig.system.offloadCalls == [ALL_OFFLOADS, 0]


def test_onlyPortsSharingAVlanCount(rig: Rig) -> None:
    """
    A port taking super-frames in another VLAN gets none of the TAP's
    frames: the offloads stay off until it joins the TAP's VLAN, untagged
    or as a trunk, and in hub mode every port counts.
    """
    for vid in (10, 20):
        rig.switch.vlans.create(vid)
    service = rig.tap(offload="auto", options="vlan=10")
    port = plug(rig.switch, FakeLink(vnetHeader=True))
    rig.switch.vlans.join(port, 20)
    assert tunnelOf(service).offloads == 0
    rig.switch.vlans.addTagged(port, 10)
    assert tunnelOf(service).offloads == ALL_OFFLOADS
    rig.switch.vlans.removeTagged(port, 10)
    assert tunnelOf(service).offloads == 0
    rig.switch.setHub(True)
    assert tunnelOf(service).offloads == ALL_OFFLOADS
    rig.switch.setHub(False)
    rig.switch.vlans.join(port, 10)
    assert tunnelOf(service).offloads == ALL_OFFLOADS


def test_aTransparentPortSharesEveryVlan(rig: Rig) -> None:
    """A vlan=all port taking super-frames carries every VLAN, the TAP's too."""
    rig.switch.vlans.create(10)
    service = rig.tap(offload="auto", options="vlan=10")
    port = plug(rig.switch, FakeLink(vnetHeader=True))
    rig.switch.vlans.join(port, 4095)
    assert tunnelOf(service).offloads == 0
    rig.switch.vlans.setTransparent(port, True)
    assert tunnelOf(service).offloads == ALL_OFFLOADS
