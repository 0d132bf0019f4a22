"""
Tests for the C{vhostuser:} port (L{vtwisted.ports.vhostuser}, its rings
and L{vtwisted.ports.virtqueue}) against a fake QEMU and guest driver that
share real memory and eventfds with it (L{vhostfakes}).  Tests taking
C{anyDriver} (or C{layout}) run once with split rings and once with packed
ones (L{packedfakes}); what only packed rings do is in C{test_vhostpacked}.
QEMU itself is in C{tests/integration/test_vhostuser.py}.
"""

from __future__ import annotations

import os
import struct
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packedfakes import PackedDriver
from test_vnet import UDP, kernelPacket
from twisted.logger import ILogObserver, globalLogPublisher
from vhostfakes import (
    DESC,
    LAYOUTS,
    QUEUE_SIZE,
    RINGS,
    SPLIT,
    FakeDriver,
    kickClosesOnlyThatGuest,
    makeDriver,
)

from vtwisted.ports import packedring, vhostuser, virtqueue
from vtwisted.ports.packedring import EVENT_DISABLE, EVENT_ENABLE
from vtwisted.ports.vhostuser import OFFERED
from vtwisted.ports.vhostuserlink import SUPER_FRAMES
from vtwisted.spec import PortSpec, SpecError
from vtwisted.testing import FakeLink, frame, mac, plug, tcpSuperFrame
from vtwisted.wire import vhostuser as vu
from vtwisted.wire import vnet

PLAIN_ONLY = SPLIT & ~SUPER_FRAMES


@pytest.fixture
def driver():
    fake = FakeDriver()
    yield fake
    fake.close()


@pytest.fixture(params=LAYOUTS)
def anyDriver(request):
    """A fake QEMU and guest driver with split rings, then with packed ones."""
    fake = makeDriver(request.param)
    yield fake
    fake.close()


def test_featuresAreOfferedAndTheAcknowledgedOnesDecideTheHeader(driver) -> None:
    """
    GET_FEATURES offers TSO both ways, mergeable buffers and VIRTIO 1.0; a
    guest taking them all gets super-frames and the 12-byte header.
    """
    answer = driver.send(vu.GET_FEATURES)
    assert vu.Header.parse(answer) == vu.Header(vu.GET_FEATURES, vu.VERSION | vu.FLAG_REPLY, 8)
    assert vu.number(1, answer[12:]) == OFFERED
    driver.negotiate()
    assert driver.link.vnetHeader and driver.port.vnet
    assert driver.link.headerLength == 12 and driver.link.mergeable


def test_aGuestWithoutReceiveOffloadsGetsPlainFrames(anyDriver) -> None:
    """Without GUEST_TSO the port takes plain frames: super-frames reach it cut."""
    anyDriver.negotiate(anyDriver.offered & ~SUPER_FRAMES)
    assert not anyDriver.link.vnetHeader and not anyDriver.port.vnet
    anyDriver.postReceiveBuffers(QUEUE_SIZE)
    tap = FakeLink(vnetHeader=True)
    plug(anyDriver.switch, tap)
    tap.receivePacket(tcpSuperFrame(b"\xff" * 6, mac(1), os.urandom(6000)))
    got = anyDriver.received()
    assert len(got) == 5 and all(len(f) <= 1514 for _, f in got)
    assert all(h == bytes(10) + b"\x01\x00" for h, _ in got)


@pytest.mark.parametrize("pieces, indirect", [(1, False), (3, False), (4, True)])
def test_guestFramesReachTheSwitch(anyDriver, pieces: int, indirect: bool) -> None:
    """
    A frame the guest transmits (in one or several descriptors, directly or
    through an indirect table) reaches another port without num_buffers;
    the chain comes back used (head or buffer id 0, nothing written) and
    the guest is interrupted.
    """
    anyDriver.negotiate()
    other = FakeLink()
    plug(anyDriver.switch, other)
    sent = frame(b"\xff" * 6, mac(1), payload=bytes(range(200)))
    anyDriver.transmit(bytes(12), sent, pieces, indirect)
    assert other.takeSent() == [sent]
    assert anyDriver.used(1) == [(0, 0)]
    assert anyDriver.interrupted(1)


def test_guestSuperFramesPassWholeToOffloadPortsAndCutForOthers(anyDriver) -> None:
    """A TSO super-frame from the guest goes whole to an offload port, cut for a plain one."""
    anyDriver.negotiate()
    offload, plain = FakeLink(vnetHeader=True), FakeLink()
    plug(anyDriver.switch, offload)
    plug(anyDriver.switch, plain)
    packet = tcpSuperFrame(b"\xff" * 6, mac(1), os.urandom(20000))
    anyDriver.transmit(packet[:10] + b"\x00\x00", packet[10:], pieces=2)
    assert offload.sentPackets == [packet]
    assert plain.takeSent() == vnet.toFrames(packet)


@pytest.mark.parametrize("pieces", [1, 2])
def test_framesForTheGuestFillMergeableBuffers(anyDriver, pieces: int) -> None:
    """
    A 64 KB super-frame for the guest spans 2 KB buffers (each one or two
    descriptors); num_buffers says how many, and the frame arrives whole.
    """
    anyDriver.negotiate()
    anyDriver.postReceiveBuffers(QUEUE_SIZE // pieces, pieces=pieces)
    tap = FakeLink(vnetHeader=True)
    plug(anyDriver.switch, tap)
    small = frame(mac(2), mac(1), payload=b"hello")
    tap.receive(small)
    packet = tcpSuperFrame(b"\xff" * 6, mac(1), os.urandom(60000))
    tap.receivePacket(packet)
    [(h1, f1), (h2, f2)] = anyDriver.received()
    assert (h1, f1) == (bytes(10) + b"\x01\x00", small)
    count = int.from_bytes(h2[10:12], "little")
    assert count == -(-(12 + len(packet) - 10) // 2048)
    assert (h2[:10], f2) == (packet[:10], packet[10:])
    assert not anyDriver.interrupted(0), "the interrupt waits for the end of the reactor turn"
    anyDriver.reactor.advance(0)
    assert anyDriver.interrupted(0)
    anyDriver.reactor.advance(0)
    assert not anyDriver.interrupted(0), "one interrupt for the turn's frames"


def test_noReceiveBuffersMeansDroppedAndCounted(anyDriver) -> None:
    """With no buffer posted, a frame for the guest is dropped as busy."""
    anyDriver.negotiate()
    other = FakeLink()
    plug(anyDriver.switch, other)
    other.receive(frame(b"\xff" * 6, mac(1)))
    assert anyDriver.port.counters.drops["busy"] == 1
    assert anyDriver.received() == []


def test_tooFewBuffersDropTheFrameAndTakeNothing(anyDriver) -> None:
    """Two 2 KB buffers cannot take a 9000-byte frame: busy, and both stay available."""
    anyDriver.negotiate()
    anyDriver.postReceiveBuffers(2)
    other = FakeLink()
    plug(anyDriver.switch, other)
    other.receive(frame(b"\xff" * 6, mac(1), payload=bytes(9000)))
    assert anyDriver.port.counters.drops["busy"] == 1 and anyDriver.used(0) == []
    other.receive(frame(b"\xff" * 6, mac(1), payload=bytes(3000)))
    assert [len(f) for _, f in anyDriver.received()] == [3014]


def test_withoutMergeableBuffersATooSmallBufferDropsTheFrame(anyDriver) -> None:
    """One 256-byte buffer cannot take a 1000-byte frame: counted as mtu, buffer untouched."""
    anyDriver.negotiate(anyDriver.offered & ~(1 << vu.F_MRG_RXBUF))
    anyDriver.postReceiveBuffers(4, size=256)
    other = FakeLink()
    plug(anyDriver.switch, other)
    other.receive(frame(b"\xff" * 6, mac(1), payload=bytes(986)))
    assert anyDriver.port.counters.drops["mtu"] == 1
    other.receive(frame(b"\xff" * 6, mac(1), payload=bytes(100)))
    [(header, got)] = anyDriver.received()
    assert header[10:12] == b"\x01\x00" and len(got) == 114


def test_udpGsoIsCutForTheGuest(anyDriver) -> None:
    """The guest does not take UDP GSO: such a packet arrives as datagrams."""
    anyDriver.negotiate()
    anyDriver.postReceiveBuffers(QUEUE_SIZE)
    offload = FakeLink(vnetHeader=True)
    plug(anyDriver.switch, offload)
    uso = kernelPacket(os.urandom(3000), 1000, proto=UDP, macs=(b"\xff" * 6, mac(1))).packet
    offload.receivePacket(uso)
    got = anyDriver.received()
    assert [f for _, f in got] == vnet.toFrames(uso) and len(got) == 3


def test_ringsWaitForTheirEnableMessage(anyDriver) -> None:
    """With the protocol features, frames for the guest are dropped until QEMU enables the ring."""
    anyDriver.negotiate()
    anyDriver.send(vu.SET_VRING_ENABLE, vu.packState(0, 0))
    anyDriver.postReceiveBuffers(4)
    other = FakeLink()
    plug(anyDriver.switch, other)
    other.receive(frame(b"\xff" * 6, mac(1)))
    assert anyDriver.port.counters.drops["down"] == 1
    anyDriver.send(vu.SET_VRING_ENABLE, vu.packState(0, 1))
    other.receive(frame(b"\xff" * 6, mac(1)))
    assert len(anyDriver.received()) == 1


def test_replyAckAnswersWhatAskedForIt(driver) -> None:
    """After REPLY_ACK is agreed, a message with need_reply gets a zero (success) reply."""
    driver.send(vu.SET_PROTOCOL_FEATURES, vu.packNumber(1 << vu.P_REPLY_ACK))
    answer = driver.send(vu.SET_OWNER, flags=vu.VERSION | vu.FLAG_NEED_REPLY)
    assert answer == vu.numberReply(vu.SET_OWNER, 0)


def test_getRingBaseStopsTheRingAndSaysWhereItGot(driver) -> None:
    """GET_VRING_BASE answers the next index to take and frames after it wait."""
    driver.negotiate()
    other = FakeLink()
    plug(driver.switch, other)
    for _ in range(3):
        driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
    answer = driver.send(vu.GET_VRING_BASE, vu.packState(1, 0))
    assert vu.ringState(11, answer[12:]) == (1, 3)
    other.takeSent()
    driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
    assert other.takeSent() == []


def test_disconnectFreesThePort(anyDriver) -> None:
    """When QEMU goes, its port has no link left."""
    anyDriver.negotiate()
    port = anyDriver.port
    assert port.links == [anyDriver.link]
    anyDriver.transport.loseConnection()
    anyDriver.link.connectionLost(None)
    assert port.links == [] and anyDriver.link.memory is None


@pytest.mark.parametrize("damage, problem", [
    ("descriptor", "descriptor 200 past a table of 64"),
    ("loop", "loops"),
    ("address", "outside the shared memory"),
])
def test_aBrokenTransmitRingClosesOnlyThatGuest(driver, damage: str, problem: str) -> None:
    """
    A chain past the table, a looping chain or a buffer outside guest
    memory: logged with the spec, counted, the connection closed; the
    switch keeps forwarding between the other ports.
    """
    driver.negotiate()
    _, avail, _ = FakeDriver.ringAddresses(RINGS[1])
    if damage == "descriptor":
        struct.pack_into("<H", driver.memory, avail + 4, 200)
    elif damage == "loop":
        DESC.pack_into(driver.memory, RINGS[1], 0x200000, 10, 1, 0)
    else:
        DESC.pack_into(driver.memory, RINGS[1], 1 << 40, 100, 0, 0)
    struct.pack_into("<H", driver.memory, avail + 2, 1)
    kickClosesOnlyThatGuest(driver, problem)


@pytest.mark.parametrize("request_, payload, problem", [
    (99, b"", "request 99 is not supported"),
    (vu.SET_FEATURES, vu.packNumber(1 << 40), "never offered"),
    (vu.SET_VRING_NUM, vu.packState(16, 64), "queue 16 does not exist"),
    (vu.SET_MEM_TABLE, vu.packTable([vu.Region(0, 4096, 0, 0)]), "without its file descriptor"),
    (vu.SET_VRING_NUM, b"\x00", "payload of 1 bytes"),
])
def test_badRequestsCloseTheConnectionSayingWhy(driver, request_: int, payload: bytes,
                                                problem: str) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        driver.send(request_, payload)
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    assert any(problem in e.get("problem", "") for e in events), events
    assert driver.transport.disconnecting


def test_aRingOfTheWrongSizeIsRefused(driver) -> None:
    """A queue size that is not a power of two closes the connection."""
    driver.send(vu.SET_FEATURES, vu.packNumber(SPLIT))
    driver.send(vu.SET_MEM_TABLE, vu.packTable([vu.Region(0, 4 << 20, 0x1000_0000, 0)]),
                (driver.memfd,))
    driver.send(vu.SET_VRING_NUM, vu.packState(1, 100))
    driver.send(vu.SET_VRING_ADDR, vu.packAddresses(vu.RingAddresses(1, 0, 0x1000_0000,
                                                                       0x1000_2000,
                                                                       0x1000_1000, 0)))
    driver.send(vu.SET_VRING_KICK, vu.packNumber(1), (driver.kicks[1],))
    assert driver.transport.disconnecting


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_anyBytesFromTheFrontEndAreReadOrRefused(data: bytes) -> None:
    """Garbage on the socket never raises out of the link: it is answered or refused."""
    fake = FakeDriver()
    try:
        fake.link.dataReceived(data)
    finally:
        fake.close()


def test_specsNeedAUnixSocket() -> None:
    with pytest.raises(SpecError, match="needs a Unix socket"):
        vhostuser.makeService(None, PortSpec("vhostuser:tcp:5555"), None)
    service = vhostuser.makeService(None, PortSpec("vhostuser:unix:/tmp/x.sock"), None)
    assert service.unixPath == "/tmp/x.sock"



def test_port_printSaysWhatTheGuestTook(driver) -> None:
    """The link's description names the peer and whether super-frames reach it."""
    driver.negotiate()
    assert driver.link.description.endswith(", super-frames, mergeable buffers")
    driver.send(vu.SET_FEATURES, vu.packNumber(PLAIN_ONLY & ~(1 << vu.F_MRG_RXBUF)))
    assert driver.link.description.endswith(", plain frames")
    assert f" pid {os.getpid()}" in driver.link.description


def test_aRingWithoutKicksIsRefused(driver) -> None:
    """Polling mode (no kick eventfd) is refused, saying so."""
    events: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        driver.send(vu.SET_VRING_KICK, vu.packNumber(1 | vu.NO_FD))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    assert any("polling" in e.get("problem", "") for e in events)
    assert driver.transport.disconnecting


def test_resetOwnerStopsTheRings(anyDriver) -> None:
    """After RESET_OWNER nothing is taken from the transmit ring."""
    anyDriver.negotiate()
    other = FakeLink()
    plug(anyDriver.switch, other)
    anyDriver.send(vu.RESET_OWNER)
    assert all(ring.queue is None for ring in anyDriver.link.rings)
    anyDriver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
    assert other.takeSent() == []


def test_kicksAreAskedForAgainAfterADrain(driver) -> None:
    """Without EVENT_IDX, the used ring's no-notify flag is clear once the ring is drained."""
    driver.negotiate(SPLIT & ~(1 << vu.F_EVENT_IDX))
    plug(driver.switch, FakeLink())
    _, _, used = FakeDriver.ringAddresses(RINGS[1])
    struct.pack_into("<H", driver.memory, used, 1)
    driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
    assert struct.unpack_from("<H", driver.memory, used)[0] == 0


def test_withEventIndexesTheDeviceAsksForTheNextKick(driver) -> None:
    """With EVENT_IDX, avail_event names the next chain after a drain; flags stay clear."""
    driver.negotiate()
    plug(driver.switch, FakeLink())
    _, _, used = FakeDriver.ringAddresses(RINGS[1])
    for _ in range(3):
        driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
    assert struct.unpack_from("<H", driver.memory, used + 4 + 8 * QUEUE_SIZE)[0] == 3
    assert struct.unpack_from("<H", driver.memory, used)[0] == 0


def test_withEventIndexesTheGuestSaysWhenToInterrupt(driver) -> None:
    """
    used_event = 2: no interrupt for the second frame delivered, one for the
    third (the used index passes 2), none for the fourth.  The first after
    the ring starts interrupts anyway: what the guest was told before (by
    another switch, or by this one before a migration) is unknown.
    """
    driver.negotiate()
    driver.postReceiveBuffers(8)
    other = FakeLink()
    plug(driver.switch, other)
    _, avail, _ = FakeDriver.ringAddresses(RINGS[0])
    struct.pack_into("<H", driver.memory, avail + 4 + 2 * QUEUE_SIZE, 2)
    seen = []
    for _ in range(4):
        other.receive(frame(b"\xff" * 6, mac(1)))
        driver.reactor.advance(0)
        seen.append(driver.interrupted(0))
    assert seen == [True, False, True, False]


def test_ringIndexesWrapAround(driver) -> None:
    """Rings started at index 65533 carry frames both ways across the 16-bit wrap."""
    driver.negotiate(base=65533)
    driver.postReceiveBuffers(8)
    other = FakeLink()
    plug(driver.switch, other)
    frames = [frame(b"\xff" * 6, mac(1), payload=bytes([n]) * 60) for n in range(6)]
    for sent in frames:
        driver.transmit(bytes(12), sent)
    assert other.takeSent() == frames
    assert len(driver.used(1)) == 6
    for sent in frames:
        other.receive(sent)
    assert [f for _, f in driver.received()] == frames
    assert driver.availIndex == [(65533 + 8) & 0xFFFF, (65533 + 6) & 0xFFFF]


def test_regionsOfOneFileAtTheirOffsets() -> None:
    """
    Two regions of one memfd (as QEMU splits RAM around the PCI hole):
    guest-physical and front-end addresses each land at their region's
    offset in the file; an address in neither is refused.
    """
    import mmap as mmapModule

    from vtwisted.ports.virtqueue import GuestMemory, VirtqueueError

    fd = os.memfd_create("two-regions", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 2 << 20)
    view = mmapModule.mmap(fd, 2 << 20)
    view[0x1000:0x1004] = b"low!"
    view[(1 << 20) + 0x2000:(1 << 20) + 0x2004] = b"high"
    low = vu.Region(0, 1 << 20, 0x7F00_0000_0000, 0)
    high = vu.Region(0x1_0000_0000, 1 << 20, 0x7F00_4000_0000, 1 << 20)
    memory = GuestMemory.map([low, high], [os.dup(fd), os.dup(fd)])
    try:
        assert bytes(memory.guest(0x1000, 4)) == b"low!"
        assert bytes(memory.guest(0x1_0000_2000, 4)) == b"high"
        assert bytes(memory.user(0x7F00_4000_2000, 4)) == b"high"
        memory.guest(0x1_0000_2000, 2)[:] = b"HI"
        assert view[(1 << 20) + 0x2000:(1 << 20) + 0x2002] == b"HI"
        for address in (0x0_FFFF_FFFE, (1 << 20) - 2, 0x1_0010_0000):
            with pytest.raises(VirtqueueError, match="outside the shared memory"):
                memory.guest(address, 4)
    finally:
        memory.close()
        view.close()
        os.close(fd)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flowsSpreadOverTheGuestsQueuesAndStayOnOne(layout: str) -> None:
    """
    With two queue pairs enabled, frames for the guest go to both receive
    rings, every frame of a flow to the same one; the guest transmits on
    either; GET_QUEUE_NUM offers 8 pairs.
    """
    driver = makeDriver(layout, pairs=2)
    try:
        assert vu.number(17, driver.send(vu.GET_QUEUE_NUM)[12:]) == vhostuser.MAX_QUEUE_PAIRS
        driver.negotiate()
        for ring in (0, 2):
            driver.postReceiveBuffers(QUEUE_SIZE, ring=ring)
        other = FakeLink()
        plug(driver.switch, other)
        flows = [_udpFrame(port) for port in range(1000, 1016)]
        for sent in flows + flows:
            other.receive(sent)
        first, second = driver.received(ring=0), driver.received(ring=2)
        assert first and second and len(first) + len(second) == 32
        for got in (first, second):
            frames = [f for _, f in got]
            assert all(frames.count(f) == 2 for f in frames), "a flow stays on its queue"
        hello = frame(b"\xff" * 6, mac(1))
        driver.transmit(bytes(12), hello, ring=3)
        driver.transmit(bytes(12), hello, ring=1)
        assert other.takeSent() == [hello, hello]
    finally:
        driver.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_onlyEnabledQueuesGetFrames(layout: str) -> None:
    """Of two pairs, with only the first enabled, every frame goes to ring 0."""
    driver = makeDriver(layout, pairs=2)
    try:
        driver.negotiate(enabledPairs=1)
        for ring in (0, 2):
            driver.postReceiveBuffers(QUEUE_SIZE, ring=ring)
        other = FakeLink()
        plug(driver.switch, other)
        for port in range(1000, 1016):
            other.receive(_udpFrame(port))
        assert len(driver.received(ring=0)) == 16 and driver.received(ring=2) == []
    finally:
        driver.close()


def _udpFrame(port: int) -> bytes:
    """
    A plain UDP frame of the flow from C{port} (to 53).
    """
    built = kernelPacket(b"q" * 20, proto=UDP, gso=False, ports=(port, 53), ident=port,
                         macs=(mac(2), mac(1)))
    return vnet.toFrame(built.packet)


def test_aNewMemoryTableKeepsTheRingsGoing(driver) -> None:
    """
    QEMU sends the memory table again while the rings run (memory hotplug):
    the rings restart where they were and frames keep crossing.
    """
    from vhostfakes import MEMORY, USER_BASE

    driver.negotiate()
    other = FakeLink()
    plug(driver.switch, other)
    sent = frame(b"\xff" * 6, mac(1))
    driver.transmit(bytes(12), sent)
    old = driver.link.memory
    region = vu.Region(0, MEMORY, USER_BASE, 0)
    driver.send(vu.SET_MEM_TABLE, vu.packTable([region]), (driver.memfd,))
    assert driver.link.memory is not old and not driver.transport.disconnecting
    driver.transmit(bytes(12), sent)
    assert other.takeSent() == [sent, sent]
    assert driver.link.rings[1].queue.lastAvail == 2


def _kicksRequested(driver: FakeDriver) -> bool:
    """
    Whether the device's side of the transmit ring asks the guest to kick
    for its next chain (no event indexes: the used ring's flag, or the
    packed ring's device event flags).
    """
    _, _, used = FakeDriver.ringAddresses(RINGS[1])
    if isinstance(driver, PackedDriver):
        return driver.deviceEvents(1)[1] == EVENT_ENABLE
    return struct.unpack_from("<H", driver.memory, used)[0] == 0


def _atBarrier(monkeypatch, hook) -> list[int]:
    """
    Run C{hook} at the first full memory barrier the rings pass (in both
    ring layouts' modules); return the list its calls are counted in.
    """
    calls: list[int] = []

    def fence() -> None:
        calls.append(1)
        if len(calls) == 1:
            hook()

    monkeypatch.setattr(virtqueue, "fence", fence)
    monkeypatch.setattr(packedring, "fence", fence)
    return calls


def test_aChainAddedAsKicksComeBackOnIsTaken(anyDriver, monkeypatch) -> None:
    """
    Turning the guest's kicks back on after a drain is a store, and looking
    for chains again a load that may pass it, so a barrier sits between
    them: at that barrier the request for kicks is already written (a guest
    adding a chain after it kicks), and a chain the guest added then without
    a kick (it still saw kicks off) is taken in the same drain.
    """
    driver = anyDriver
    driver.negotiate(driver.offered & ~(1 << vu.F_EVENT_IDX))
    other = FakeLink()
    plug(driver.switch, other)
    late = frame(b"\xff" * 6, mac(1), payload=b"late" * 15)
    seen = []

    def guestAddsAChain() -> None:
        seen.append(_kicksRequested(driver))
        kick, driver.kick = driver.kick, lambda ring=1: None
        driver.transmit(bytes(12), late)
        driver.kick = kick

    _atBarrier(monkeypatch, guestAddsAChain)
    first = frame(b"\xff" * 6, mac(1))
    driver.transmit(bytes(12), first)
    assert seen == [True]
    assert other.takeSent() == [first, late]


def test_anInterruptAskedForAsChainsArePublishedIsSent(anyDriver, monkeypatch) -> None:
    """
    Before reading whether the guest wants an interrupt, the device makes
    sure the used chains it published are visible (a barrier): a guest that
    saw none and so asked for an interrupt just then gets it, and at that
    point the chain is already there for it.
    """
    driver = anyDriver
    driver.negotiate(driver.offered & ~(1 << vu.F_EVENT_IDX))
    driver.postReceiveBuffers(4)
    other = FakeLink()
    plug(driver.switch, other)
    other.receive(frame(b"\xff" * 6, mac(1)))
    driver.reactor.advance(0)
    assert driver.interrupted(0)  # the first after the start, whatever the guest said
    assert len(driver.received()) == 1
    _, avail, _ = FakeDriver.ringAddresses(RINGS[0])
    packed = isinstance(driver, PackedDriver)

    def wantInterrupts(on: bool) -> None:
        if packed:
            driver.setDriverEvents(0, EVENT_ENABLE if on else EVENT_DISABLE)
        else:
            struct.pack_into("<H", driver.memory, avail, 0 if on else 1)

    wantInterrupts(False)
    received = []

    def guestLooksThenAsks() -> None:
        received.extend(driver.received())
        wantInterrupts(True)

    _atBarrier(monkeypatch, guestLooksThenAsks)
    second = frame(b"\xff" * 6, mac(1), payload=b"second" * 10)
    other.receive(second)
    driver.reactor.advance(0)
    assert [f for _, f in received] == [second]
    assert driver.interrupted(0)
