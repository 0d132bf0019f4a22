"""
The TAP port type without a kernel (L{tapfakes}): reads and writes, super-
frames and coalescing, busy polling, and what happens when the device
fails.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from tapfakes import BROADCAST, Rig, errorsLogged, rigged, tunnelOf
from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from vnetpackets import MAC_A, MAC_B, UDP, checkSegments, kernelPacket, randomPayload

from vtwisted.ports import tap
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import udpgro, vnet


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from rigged()


# -- reading and writing -----------------------------------------------------------------------


def test_plainFramesAreWrittenBehindAnEmptyHeader(rig: Rig) -> None:
    """A frame from a VDE-like port reaches an offload TAP behind ten zero bytes."""
    service = rig.tap()
    other = rig.link()
    f = frame(BROADCAST, mac(1))
    other.receive(f)
    assert tunnelOf(service).written() == [vnet.PLAIN_HEADER + f]


def test_everyWaitingPacketIsReadInOneWakeUp(rig: Rig) -> None:
    """Five frames waiting are all handed over by one doRead."""
    service = rig.tap()
    assert service.link is not None
    other = rig.link()
    frames = [frame(BROADCAST, mac(1), bytes([n]) * 46) for n in range(5)]
    for f in frames:
        tunnelOf(service).inject(vnet.PLAIN_HEADER + f)
    service.link.doRead()
    assert other.sent == frames


def test_floodOfSuperFramesIsReadInBoundedBatches(rig: Rig) -> None:
    """A backlog of 64 KB super-frames is drained in batches, so other ports get their turn."""
    a, b = rig.tap("tapa"), rig.tap("tapb")
    assert a.link is not None
    built = kernelPacket(randomPayload(64000, 1), 1448, macs=(MAC_B, MAC_A))
    for _ in range(60):
        tunnelOf(a).inject(built.packet)
    a.link.doRead()
    first = len(tunnelOf(b).written())
    assert 0 < first < 60
    for _ in range(60):
        a.link.doRead()
    assert first + len(tunnelOf(b).written()) == 60


def test_superFramesPassWholeBetweenOffloadTapsAndAreCutForOthers(rig: Rig) -> None:
    """A super-frame read from one offload TAP is written whole to another, segmented elsewhere."""
    a, b, off = rig.tap("tapa"), rig.tap("tapb"), rig.tap("tapc", offload=False)
    assert a.link is not None
    other = rig.link()
    built = kernelPacket(randomPayload(30000, 2), 1448, macs=(MAC_B, MAC_A))
    tunnelOf(a).inject(built.packet)
    a.link.doRead()
    assert tunnelOf(b).written() == [built.packet]
    checkSegments(built, tunnelOf(off).written())
    checkSegments(built, other.sent)
    assert tunnelOf(a).written() == []


def _udpRun(count: int, dst: bytes = MAC_B) -> list[bytes]:
    return [
        kernelPacket(randomPayload(80, n), proto=UDP, gso=False, ident=n,
                     macs=(dst, MAC_A)).packet
        for n in range(count)
    ]


def test_udpDatagramsReadTogetherReachOffloadTapsAsOneUsoPacket(rig: Rig) -> None:
    """
    Ten datagrams of one flow read in one wake-up are written to another
    offload TAP as one USO packet; other ports get the ten frames.
    """
    a, b, off = rig.tap("tapa"), rig.tap("tapb"), rig.tap("tapc", offload=False)
    assert a.link is not None
    other = rig.link()
    run = _udpRun(10)
    arp = vnet.PLAIN_HEADER + frame(BROADCAST, MAC_A, bytes(46), 0x0806)
    for packet in [*run, arp]:
        tunnelOf(a).inject(packet)
    a.link.doRead()
    written = tunnelOf(b).written()
    assert len(written) == 2 and written[0][1] == vnet.GSO_UDP_L4 and written[1] == arp
    expected = [f for p in run for f in vnet.toFrames(p)]
    assert vnet.toFrames(written[0]) == expected
    assert other.sent == [*expected, arp[vnet.HEADER_LENGTH:]]
    assert tunnelOf(off).written() == other.sent
    assert a.link.description.endswith("coalesced 10 datagrams into 1")
    assert a.link.port.counters.inFrames == 2


def test_datagramsForALearnedPortWithoutTheHeaderAreNotMerged(rig: Rig) -> None:
    """
    Datagrams to an address learned on a VDE-like port pass one by one (the
    switch would only cut them again), and coalescing then rests for a while
    (a flood to VDE clients is not looked at datagram by datagram); to a
    TAP, they are merged again after that.
    """
    a, b = rig.tap("tapa"), rig.tap("tapb")
    assert a.link is not None and b.link is not None
    other = rig.link()
    other.receive(frame(BROADCAST, MAC_B))
    tunnelOf(b).written()
    run = _udpRun(10)
    for packet in run:
        tunnelOf(a).inject(packet)
    a.link.doRead()
    assert other.sent == [vnet.toFrame(p) for p in run]
    assert tunnelOf(b).written() == [] and "coalesced 0 datagrams" in a.link.description
    tunnelOf(b).inject(vnet.PLAIN_HEADER + frame(BROADCAST, mac(9)))
    b.link.doRead()
    run = _udpRun(10, mac(9))
    for packet in run:
        tunnelOf(a).inject(packet)
    a.link.doRead()
    assert tunnelOf(b).written() == run  # resting: one by one, as read
    for _ in range(udpgro._REST - 1):
        a.link.doRead()
    for packet in run:
        tunnelOf(a).inject(packet)
    a.link.doRead()
    [merged] = tunnelOf(b).written()
    assert vnet.toFrames(merged) == [vnet.toFrame(p) for p in run]


def test_aTapRestsFromCoalescingAfterABatchOfManyFlows(rig: Rig) -> None:
    """After a batch of 100 flows' single datagrams, the next batch is not coalesced."""
    a, b = rig.tap("tapa"), rig.tap("tapb")
    assert a.link is not None
    for port in range(100):
        tunnelOf(a).inject(kernelPacket(b"x", proto=UDP, gso=False, ports=(port, 7),
                                        macs=(MAC_B, MAC_A)).packet)
    a.link.doRead()
    assert len(tunnelOf(b).written()) == 100
    run = _udpRun(10)
    for packet in run:
        tunnelOf(a).inject(packet)
    a.link.doRead()
    assert tunnelOf(b).written() == run


@pytest.mark.parametrize("option", ["coalesce", "uso"])
def test_coalescingIsOffWithCoalesceOffOrWithoutUso(rig: Rig, option: str) -> None:
    """C{coalesce=off}, or a TAP without USO, hands every datagram on as it came."""
    a = rig.tap("tapa", **{option: False})  # type: ignore[arg-type]
    assert a.link is not None
    b = rig.tap("tapb")
    run = _udpRun(10)
    for packet in run:
        tunnelOf(a).inject(packet)
    a.link.doRead()
    assert tunnelOf(b).written() == run
    assert "coalesced" not in a.link.description


def test_malformedHeaderFromTheKernelIsNeverWritten(rig: Rig) -> None:
    """A packet with a bad header is dropped as malformed; the next good one passes."""
    a, b = rig.tap("tapa"), rig.tap("tapb")
    assert a.link is not None
    built = kernelPacket(randomPayload(3000, 3), 1000, macs=(MAC_B, MAC_A))
    tunnelOf(a).inject(built.packet[:1] + b"\x03" + built.packet[2:])
    tunnelOf(a).inject(built.packet)
    a.link.doRead()
    assert tunnelOf(b).written() == [built.packet]
    assert a.link.port.counters.drops["malformed"] == 1


def test_aKnownHeaderOnAFrameTooShortForItIsStillDropped(rig: Rig) -> None:
    """
    A header seen valid before (remembered so small packets skip the full check) is
    refused on a frame too short for its checksum field, and never written.
    """
    a, b = rig.tap("tapa"), rig.tap("tapb")
    assert a.link is not None
    good = kernelPacket(b"abc", gso=False, proto=UDP, macs=(MAC_B, MAC_A)).packet
    short = good[:good[6] + vnet.HEADER_LENGTH + 2]
    tunnelOf(a).inject(good)
    tunnelOf(a).inject(short)
    tunnelOf(a).inject(good)
    a.link.doRead()
    assert tunnelOf(b).written() == [good, good]
    assert a.link.port.counters.drops["malformed"] == 1


@pytest.mark.parametrize("code, reason", [(errno.EAGAIN, "busy"), (errno.ENOBUFS, "busy"),
                                          (errno.EIO, "down")])
@pytest.mark.parametrize("offload", [True, False])
def test_writeErrorsAreCountedNotRaised(rig: Rig, code: int, reason: str, offload: bool) -> None:
    """A full device queue (EAGAIN) or a device that is down (EIO) drops and counts the frame."""
    service = rig.tap(offload=offload)
    assert service.link is not None
    sender = rig.tap("tapv")
    assert sender.link is not None
    other = rig.link()
    tunnelOf(service).writeError = code
    other.receive(frame(BROADCAST, mac(1)))
    built = kernelPacket(randomPayload(5000, 4), 1448, macs=(BROADCAST, MAC_A))
    tunnelOf(sender).inject(built.packet)
    sender.link.doRead()
    port = service.link.port
    expected = 1 + (1 if offload else len(vnet.toFrames(built.packet)))
    assert port.counters.drops[reason] == expected
    assert tunnelOf(service).written() == []
    assert service.link is not None and port.active, "the port stays up"
    tunnelOf(service).writeError = None
    other.receive(frame(BROADCAST, mac(1)))
    assert len(tunnelOf(service).written()) == 1


def test_readErrorTakesThePortDownOnceAndOthersKeepWorking(rig: Rig) -> None:
    """EBADFD from a read (device deleted) detaches the TAP, logs once; nothing else stops."""
    gone, alive = rig.tap("tapgone"), rig.tap("tapalive")
    assert alive.link is not None
    a, b = rig.link(), rig.link()
    link = gone.link
    assert link is not None
    port = link.port
    tunnel = tunnelOf(gone)
    tunnel.readError = errno.EBADFD
    with capturedLogs() as events:
        link.doRead()
        link.doRead()
    logged = errorsLogged(events)
    assert len(logged) == 1, logged
    assert "tap:tapgone" in logged[0] and "tapgone" in logged[0] and "errno 77" in logged[0]
    assert not port.active and port.links == []
    assert gone.link is None
    assert tunnel not in rig.system.tunnels(), "its descriptor is closed"
    assert not rig.reactor.readers or link not in rig.reactor.readers
    f = frame(BROADCAST, mac(1))
    a.receive(f)
    assert b.sent == [f]
    assert tunnelOf(alive).written() == [vnet.PLAIN_HEADER + f]
    tunnelOf(alive).inject(vnet.PLAIN_HEADER + frame(BROADCAST, mac(2)))
    alive.link.doRead()
    assert b.sent[-1] == frame(BROADCAST, mac(2))
    gone.stopService()


def test_aPacketTheKernelCannotHandOverIsCountedAndThePortStaysUp(rig: Rig) -> None:
    """
    A read failing with EINVAL (Linux's "unexpected GSO type": the kernel
    drops that one packet) is counted and logged once; the port stays up
    and the packets after it are read.
    """
    service = rig.tap("tapinval")
    link = service.link
    assert link is not None
    other = rig.link()
    tunnel = tunnelOf(service)
    first, second = frame(BROADCAST, mac(1)), frame(BROADCAST, mac(2))
    tunnel.inject(vnet.PLAIN_HEADER + first)
    tunnel.injectError(errno.EINVAL)
    tunnel.inject(vnet.PLAIN_HEADER + second)
    tunnel.injectError(errno.EINVAL)
    with capturedLogs() as events:
        for _ in range(3):
            link.doRead()
    assert other.sent == [first, second]
    assert service.link is link and link.port.active
    assert link.port.counters.drops["malformed"] == 2
    warned = [formatEvent(e) for e in events if "errno 22" in formatEvent(e)]
    assert len(warned) == 1 and "tap:tapinval" in warned[0], warned
    assert errorsLogged(events) == []


def test_datagramsReadBeforeTheDeviceWentAreHandedOnBeforeThePortGoesDown(rig: Rig) -> None:
    """
    Datagrams held for coalescing when a read finds the device gone still
    reach the other ports, and their source address is not learned on the
    dead port: a frame to it afterwards is flooded.
    """
    a = rig.tap("tapa")
    assert a.link is not None
    other, witness = rig.link(), rig.link()
    run = _udpRun(5)
    for packet in run:
        tunnelOf(a).inject(packet)
    tunnelOf(a).injectError(errno.EBADFD)
    port = a.link.port
    a.link.doRead()
    assert not port.active
    assert other.sent == witness.sent == [vnet.toFrame(p) for p in run]
    witness.sent.clear()
    toA = frame(MAC_A, mac(5))
    other.receive(toA)
    assert witness.sent == [toA], "flooded: MAC_A is not learned on the dead port"


def test_reactorSeeingTheDeviceGoneTakesThePortDown(rig: Rig) -> None:
    """When the reactor finds the device dead (EPOLLERR), the port goes down and says so."""
    gone = rig.tap("tapgone")
    assert gone.link is not None
    link, port = gone.link, gone.link.port
    with capturedLogs() as events:
        # what _PollLikeMixin._doReadOrWrite does for EPOLLERR without EPOLLIN
        rig.reactor.removeReader(link)
        link.connectionLost(Failure(ConnectionDone()))
    assert not port.active and gone.link is None
    logged = errorsLogged(events)
    assert len(logged) == 1 and "tap:tapgone" in logged[0], logged


def test_vanishedDeviceOnWriteTakesThePortDown(rig: Rig) -> None:
    """EBADFD on a write (device deleted) takes the port down too, with one log line."""
    gone = rig.tap("tapgone")
    assert gone.link is not None
    a, b = rig.link(), rig.link()
    tunnelOf(gone).writeError = errno.EBADFD
    port = gone.link.port
    with capturedLogs() as events:
        a.receive(frame(BROADCAST, mac(1)))
        a.receive(frame(BROADCAST, mac(1)))
    assert len(errorsLogged(events)) == 1
    assert not port.active and gone.link is None
    assert len(b.sent) == 2


def test_stopClosesTheDevice(rig: Rig) -> None:
    """Stopping the service unplugs the TAP and closes its descriptor."""
    service = rig.tap()
    assert service.link is not None
    port = service.link.port
    service.stopService()
    assert rig.system.tunnels() == [] and not port.active


def test_optionsApplyToTheTapPort(rig: Rig) -> None:
    """tap:NAME:trunk=10 makes the TAP a trunk: a VLAN-10 frame reaches it tagged."""
    service = rig.tap("tapt", options="vlan=4095:trunk=10")
    access = FakeLink()
    p = plug(rig.switch, access)
    rig.switch.vlans.join(p, 10)
    f = frame(BROADCAST, mac(1))
    access.receive(f)
    assert tunnelOf(service).written() == [vnet.PLAIN_HEADER + f[:12] + b"\x81\x00\x00\x0a"
                                           + f[12:]]


class SteppingClock:
    """A clock that moves forward by C{step} each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_busyPollingStopsSoonAfterTheLastPacket(rig: Rig) -> None:
    """With busypoll on, the switch keeps reading a while after traffic stops, then sleeps."""
    a, b = rig.tap("tapa", busyPoll=50e-6), rig.tap("tapb", busyPoll=50e-6)
    assert a.link is not None and b.link is not None
    poller = a.link.poller
    assert poller.spin == 50e-6
    poller.clock = SteppingClock(10e-6)
    reads = []
    original = b.link.readBatch

    def counting() -> bool:
        reads.append(1)
        return original()

    b.link.readBatch = counting  # type: ignore[method-assign]
    tunnelOf(a).inject(vnet.PLAIN_HEADER + frame(BROADCAST, mac(1)))
    a.link.doRead()
    assert tunnelOf(b).written(), "the frame crossed"
    # polled for about 50 microseconds of the stepping clock, then gave up
    assert 2 <= len(reads) <= 10


def test_busyPollingGivesTheReactorATurnUnderLoad(rig: Rig) -> None:
    """Endless traffic keeps the poller busy at most MAX_SPIN before returning."""
    a, _other = rig.tap("tapa", busyPoll=1.0), rig.tap("tapb", busyPoll=1.0)
    assert a.link is not None
    poller = a.link.poller
    clock = SteppingClock(0.0001)
    poller.clock = clock
    packet = vnet.PLAIN_HEADER + frame(BROADCAST, mac(1))
    refill = a.link.readBatch

    def endless() -> bool:
        tunnelOf(a).inject(packet)
        return refill()

    a.link.readBatch = endless  # type: ignore[method-assign]
    a.link.doRead()
    assert clock.now <= poller.MAX_SPIN + 0.001


def test_busyPollOptionIsMicroseconds() -> None:
    """tap:NAME:busypoll=USEC turns polling on (off by default); out-of-range values are
    refused."""
    switch = Switch()
    service = tap.makeService(switch, PortSpec("tap:t1:busypoll=50"), None)
    assert service.busyPoll == 50e-6
    assert tap.makeService(switch, PortSpec("tap:t1"), None).busyPoll == 0
    with pytest.raises(SpecError):
        tap.makeService(switch, PortSpec("tap:t1:busypoll=-1"), None)
