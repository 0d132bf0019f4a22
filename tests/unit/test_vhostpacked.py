"""
Packed virtqueues on the C{vhostuser:} port (L{vtwisted.ports.packedring})
against a fake QEMU and guest driver with packed rings (L{packedfakes}):
what only packed rings do (wrap counters, chains skipped, event
suppression areas, the ring state QEMU saves).  What both layouts do is
tested on both in C{test_vhostrings}.  A real QEMU guest with C{packed=on}
is in C{tests/integration/test_vhostuser.py}.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import pytest
from packedfakes import FRESH, PackedDriver, state
from test_vhostmigration import SharedLog, _startLogging
from twisted.logger import ILogObserver, globalLogPublisher
from vhostfakes import (
    DESC,
    MEMORY,
    QUEUE_SIZE,
    RINGS,
    RX_BUFFERS,
    SPLIT,
    USER_BASE,
    kickClosesOnlyThatGuest,
)

from vtwisted.ports import packedring
from vtwisted.ports.packedring import (
    AVAIL,
    EVENT_DESC,
    EVENT_DISABLE,
    EVENT_ENABLE,
    USED,
    PackedQueue,
)
from vtwisted.ports.vhostuser import OFFERED, PACKED_OFFERED
from vtwisted.ports.virtqueue import INDIRECT, NEXT, GuestMemory, SplitQueue, VirtqueueError
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import vhostuser as vu
from vtwisted.wire.vhostuser import F_EVENT_IDX, F_RING_PACKED

WITHOUT_EVENT_IDX = PACKED_OFFERED & ~(1 << F_EVENT_IDX)


@pytest.fixture
def driver():
    fake = PackedDriver()
    yield fake
    fake.close()


def test_packedRingsAreOfferedAndTakenWhenNegotiated(driver) -> None:
    """
    GET_FEATURES offers RING_PACKED; a guest that takes it gets packed
    queues and port/print says so; one that does not gets split queues.
    """
    assert vu.number(1, driver.send(vu.GET_FEATURES)[12:]) & 1 << F_RING_PACKED
    driver.negotiate()
    assert all(isinstance(ring.queue, PackedQueue) for ring in driver.link.rings[:2])
    assert driver.link.description.endswith(", super-frames, mergeable buffers, packed rings")
    split = PackedDriver()
    try:
        split.negotiate(SPLIT, base=0)
        assert all(isinstance(ring.queue, SplitQueue) for ring in split.link.rings[:2])
        assert "packed" not in split.link.description
    finally:
        split.close()


def test_usedDescriptorsSkipTheRestOfEachChain(driver) -> None:
    """
    Three chains of three descriptors come back as used descriptors in
    slots 0, 3 and 6, with their ids; the rest of each chain is untouched.
    """
    driver.negotiate()
    other = FakeLink()
    plug(driver.switch, other)
    frames = [frame(b"\xff" * 6, mac(1), payload=bytes([n]) * 90) for n in range(3)]
    for sent in frames:
        driver.transmit(bytes(12), sent, pieces=3)
    assert other.takeSent() == frames
    flags = [DESC.unpack_from(driver.memory, RINGS[1] + 16 * at)[3] for at in range(9)]
    assert [at for at in range(9) if flags[at] & USED] == [0, 3, 6]
    assert [DESC.unpack_from(driver.memory, RINGS[1] + 16 * at)[2] for at in (0, 3, 6)] == \
        [0, 1, 2]
    assert driver.used(1) == [(0, 0), (1, 0), (2, 0)]


def test_theRingWrapsAroundBothWays(driver) -> None:
    """
    150 frames each way through rings of 64 slots, chains of three
    crossing the end of the ring: every frame arrives, in order, as the
    wrap counters flip on both sides.
    """
    driver.negotiate()
    other = FakeLink()
    plug(driver.switch, other)
    frames = [frame(b"\xff" * 6, mac(1), payload=n.to_bytes(2, "big") * 40)
              for n in range(150)]
    got = []
    for sent in frames:
        driver.transmit(bytes(12), sent, pieces=3)
        got += other.takeSent()
        assert len(driver.used(1)) == 1
    assert got == frames
    received = []
    for start in range(0, 150, 10):
        driver.postReceiveBuffers(10, pieces=2)
        for sent in frames[start:start + 10]:
            other.receive(sent)
        received += [f for _, f in driver.received()]
    assert received == frames
    assert driver.slot[1] == ((150 * 3) % QUEUE_SIZE, (150 * 3) // QUEUE_SIZE % 2 == 0)


def test_getAndSetRingBaseCarryTheWrapCounters(driver) -> None:
    """
    GET_VRING_BASE answers the next slot with the driver's wrap counter
    (bits 0-15) and the same for the used slot (16-31), as QEMU reads them;
    a ring started again from that state carries on where it was, across
    the wrap.
    """
    driver.negotiate()
    other = FakeLink()
    plug(driver.switch, other)
    for n in range(30):
        driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)), pieces=3)
        assert driver.used(1) == [(n, 0)]
    answer = driver.send(vu.GET_VRING_BASE, vu.packState(1, 0))
    assert vu.ringState(11, answer[12:]) == (1, state(90 - QUEUE_SIZE, False))
    assert driver.link.rings[1].queue is None
    driver.send(vu.SET_VRING_BASE, vu.packState(1, state(90 - QUEUE_SIZE, False)))
    driver.send(vu.SET_VRING_KICK, vu.packNumber(1), (driver.kicks[1],))
    other.takeSent()
    sent = frame(b"\xff" * 6, mac(1), payload=b"after")
    driver.transmit(bytes(12), sent, pieces=3)
    assert other.takeSent() == [sent]
    assert driver.used(1) == [(30, 0)]


def test_aRingStartedMidLapWithTheWrapCounterClear(driver) -> None:
    """
    SET_VRING_BASE at slot 60 with the wrap counters clear (as after an odd
    number of laps): frames cross both ways over the end of the ring.
    """
    driver.negotiate(base=state(60, False))
    other = FakeLink()
    plug(driver.switch, other)
    frames = [frame(b"\xff" * 6, mac(1), payload=bytes([n]) * 60) for n in range(6)]
    for sent in frames:
        driver.transmit(bytes(12), sent)
    assert other.takeSent() == frames and len(driver.used(1)) == 6
    driver.postReceiveBuffers(8)
    for sent in frames:
        other.receive(sent)
    assert [f for _, f in driver.received()] == frames
    assert driver.link.rings[0].queue.lastAvail == state(2, True)


def test_kicksAreSuppressedWhileDrainingAndAskedForAfter(driver) -> None:
    """
    Without event indexes the device's area says "kick me" once the ring is
    drained; with them it names the next slot and wrap counter to kick for.
    """
    driver.negotiate(WITHOUT_EVENT_IDX)
    plug(driver.switch, FakeLink())
    driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
    assert driver.deviceEvents(1)[1] == EVENT_ENABLE
    other = PackedDriver()
    try:
        other.negotiate()
        plug(other.switch, FakeLink())
        for _ in range(QUEUE_SIZE + 3):
            other.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
        assert other.deviceEvents(1) == (3, EVENT_DESC)
    finally:
        other.close()


def test_aKickSuppressedQueueIsDrainedInOneGo(driver) -> None:
    """Frames the guest queued without kicking go at the next kick, in order."""
    driver.negotiate()
    other = FakeLink()
    plug(driver.switch, other)
    frames = [frame(b"\xff" * 6, mac(1), payload=bytes([n]) * 60) for n in range(20)]
    for sent in frames:
        driver.transmit(bytes(12), sent, pieces=2, kick=False)
    assert other.takeSent() == []
    driver.kick()
    assert other.takeSent() == frames


@pytest.mark.parametrize("flags, expected", [
    (EVENT_DISABLE, [False, False, False, False]),
    (EVENT_ENABLE, [True, True, True, True]),
    (EVENT_DESC, [True, False, True, False]),
])
def test_theGuestSaysWhenToInterrupt(driver, flags: int, expected: list[bool]) -> None:
    """
    The driver's area: never, always, or (event indexes) once the used
    descriptor in slot 2 (this lap) is written: the third frame.  The first
    frame after the ring starts interrupts anyway: what the guest was told
    before (by another switch, or by this one before a migration) is unknown.
    """
    driver.negotiate()
    driver.postReceiveBuffers(8)
    driver.setDriverEvents(0, flags, 2 | 0x8000)
    other = FakeLink()
    plug(driver.switch, other)
    seen = []
    for _ in range(4):
        other.receive(frame(b"\xff" * 6, mac(1)))
        driver.reactor.advance(0)
        seen.append(driver.interrupted(0))
    assert seen == expected


def test_aWholeLapUsedAtOnceStillInterrupts(driver) -> None:
    """
    The guest asks to hear when slot 0 of the next lap is used, then queues
    a whole ring of frames with one kick: the device uses all 64 slots in
    one drain and interrupts (the used slot came back to where it was).
    """
    driver.negotiate()
    plug(driver.switch, FakeLink())
    driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
    driver.used(1)
    driver.interrupted(1)
    driver.setDriverEvents(1, EVENT_DESC, 1 | 0x8000)
    for _ in range(QUEUE_SIZE):
        driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)), kick=False)
    driver.kick()
    assert len(driver.used(1)) == QUEUE_SIZE
    assert driver.interrupted(1)


def test_writesAreLoggedWhileTheGuestMigrates(driver) -> None:
    """
    With the dirty log on, a frame for the guest marks its buffer's page,
    the descriptor ring's (where the used descriptor went) and the device
    area's.
    """
    log = SharedLog()
    driver.negotiate()
    _startLogging(driver, log, features=PACKED_OFFERED)
    driver.postReceiveBuffers(4)
    other = FakeLink()
    plug(driver.switch, other)
    other.receive(frame(b"\xff" * 6, mac(1), payload=bytes(100)))
    desc, _, used = driver.ringAddresses(RINGS[0])
    assert log.pages() == {RX_BUFFERS // 4096, desc // 4096, used // 4096}
    assert len(driver.received()) == 1
    driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
    desc, _, used = driver.ringAddresses(RINGS[1])
    assert log.pages() == {desc // 4096, used // 4096}
    log.close()


class MarkedWrites:
    """A dirty log that keeps the writes marked, as (guest address, length)."""

    def __init__(self) -> None:
        self.marked: list[tuple[int, int]] = []

    def mark(self, address: int, length: int) -> None:
        if length > 0:
            self.marked.append((address, length))


def test_onlyTheDescriptorsUsedSinceTheLastLogAreMarked(driver) -> None:
    """
    Each time the used descriptors are logged, the slots used since the
    last time are marked (in two pieces across the end of the ring), not
    the whole descriptor ring, and the device area every time.
    """
    driver.negotiate()
    queue = driver.link.rings[0].queue
    desc = RINGS[0]  # a guest-physical address, as the log takes
    other = FakeLink()
    plug(driver.switch, other)
    log = MarkedWrites()
    driver.postReceiveBuffers(QUEUE_SIZE - 2)
    for _ in range(QUEUE_SIZE - 3):
        other.receive(frame(b"\xff" * 6, mac(1)))
    queue.logUsed(log, 0x5000)
    assert log.marked == [(0x5000, 4), (desc, 16 * (QUEUE_SIZE - 3))]
    other.receive(frame(b"\xff" * 6, mac(1)))
    queue.logUsed(log, 0x5000)
    assert log.marked[2:] == [(0x5000, 4), (desc + 16 * (QUEUE_SIZE - 3), 16)]
    assert len(driver.received()) == QUEUE_SIZE - 2
    driver.postReceiveBuffers(4)
    for _ in range(4):
        other.receive(frame(b"\xff" * 6, mac(1)))
    queue.logUsed(log, 0x5000)
    assert log.marked[4:] == [(0x5000, 4), (desc + 16 * (QUEUE_SIZE - 2), 32), (desc, 32)]
    queue.logUsed(log, 0x5000)
    assert log.marked[7:] == [(0x5000, 4)]


def _damage(driver: PackedDriver, kind: str) -> None:
    """Make one broken chain available on the transmit ring."""
    desc, flags = RINGS[1], AVAIL
    if kind == "loop":
        for at in range(QUEUE_SIZE):
            DESC.pack_into(driver.memory, desc + 16 * at, 0x200000, 10, 0, flags | NEXT)
    elif kind == "address":
        DESC.pack_into(driver.memory, desc, 1 << 40, 100, 0, flags)
    elif kind == "indirect and next":
        DESC.pack_into(driver.memory, desc + 16, 0x200000, 10, 0, flags)
        DESC.pack_into(driver.memory, desc, 0x201000, 16, 0, flags | INDIRECT | NEXT)
    else:
        DESC.pack_into(driver.memory, desc, 0x201000, 24, 0, flags | INDIRECT)


@pytest.mark.parametrize("kind, problem", [
    ("loop", "loops"),
    ("address", "outside the shared memory"),
    ("indirect and next", "bad indirect descriptor"),
    ("indirect size", "bad indirect descriptor (24 bytes"),
])
def test_aBrokenPackedRingClosesOnlyThatGuest(driver, kind: str, problem: str) -> None:
    """
    A chain longer than the ring, a buffer outside guest memory or a bad
    indirect descriptor: logged once with the spec, counted, the connection
    closed; the switch keeps forwarding between the other ports.
    """
    driver.negotiate()
    _damage(driver, kind)
    kickClosesOnlyThatGuest(driver, problem)


@pytest.mark.parametrize("size, base, problem", [
    (40000, FRESH, "not between 1 and 32768"),
    (64, state(64, True), "start index 64 past"),
])
def test_aPackedRingThatCannotBeIsRefused(driver, size: int, base: int, problem: str) -> None:
    """A size over 32768 or a start past the ring closes the connection, saying why."""
    driver.send(vu.SET_FEATURES, vu.packNumber(PACKED_OFFERED))
    region = vu.Region(0, MEMORY, USER_BASE, 0)
    driver.send(vu.SET_MEM_TABLE, vu.packTable([region]), (driver.memfd,))
    driver.send(vu.SET_VRING_NUM, vu.packState(1, size))
    driver.send(vu.SET_VRING_BASE, vu.packState(1, base))
    desc, avail, used = driver.ringAddresses(RINGS[1])
    driver.send(vu.SET_VRING_ADDR, vu.packAddresses(vu.RingAddresses(
        1, 0, USER_BASE + desc, USER_BASE + used, USER_BASE + avail, 0)))
    events: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        driver.send(vu.SET_VRING_KICK, vu.packNumber(1), (driver.kicks[1],))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    assert any(problem in e.get("problem", "") for e in events), events
    assert driver.transport.disconnecting


@contextmanager
def _standaloneQueue(name: str, size: int) -> Iterator[tuple[memoryview, PackedQueue]]:
    """
    A packed queue of C{size} slots on its own 64 KB of guest memory (its
    descriptors at guest address 0), fresh, and a view of that memory.
    """
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 0x10000)
    memory = GuestMemory.map([vu.Region(0, 0x10000, 0x10000, 0)], [os.dup(fd)])
    try:
        yield memory.guest(0, 0x10000), PackedQueue(memory, size, 0x10000, 0x10100, 0x10200,
                                                     0x8000)
    finally:
        memory.close()
        os.close(fd)


def test_aPackedRingNeedNotBeAPowerOfTwo() -> None:
    """
    Packed rings may have any size: a ring of 3 slots takes chains across
    its end and gives them back with the wrap counters flipping.
    """
    with _standaloneQueue("packed-three", 3) as (view, queue):
        wrap = True
        for n in range(7):
            at = n % 3
            if n and at == 0:
                wrap = not wrap
            DESC.pack_into(view, 16 * at, 0x1000, 10, n, AVAIL if wrap else USED)
            assert queue.pending() == 1
            head = queue.take()
            assert head == at and len(queue.chain(head)) == 1
            queue.put(head, 0)
            queue.publish()
            bufferId, flags = struct.unpack_from("<HH", view, 16 * at + 12)
            assert bufferId == n and flags & (AVAIL | USED) == (AVAIL | USED if wrap else 0)
            assert queue.pending() == 0
        assert queue.lastAvail == state(1, True)


def test_aChainLongerThanTheRoomLeftIsRefused() -> None:
    """A chain that runs past what the ring can hold raises VirtqueueError."""
    with _standaloneQueue("packed-room", 4) as (view, queue):
        for at in range(4):
            DESC.pack_into(view, 16 * at, 0x1000, 10, 0, AVAIL | NEXT)
        with pytest.raises(VirtqueueError, match="loops"):
            queue.pending()



def test_packedRingsAreOfferedOnlyWithPackedOn(tmp_path) -> None:
    """
    A port offers packed rings only with C{packed=on}; without, a NIC asking
    for them gets split rings (QEMU masks what the device does not offer).
    """
    from twisted.internet.testing import MemoryReactorClock

    from vtwisted.ports import vhostuser
    from vtwisted.spec import PortSpec, SpecError
    from vtwisted.switch import Switch

    def offered(text: str) -> int:
        service = vhostuser.makeService(Switch(), PortSpec(text), MemoryReactorClock())
        return int(service.offeredFeatures)

    path = tmp_path / "v.sock"
    assert offered(f"vhostuser:unix:{path}") == OFFERED
    assert not OFFERED & 1 << F_RING_PACKED
    assert offered(f"vhostuser:unix:{path}:packed=on") == PACKED_OFFERED
    assert offered(f"vhostuser:connect:unix:{path}:packed=on") == PACKED_OFFERED
    with pytest.raises(SpecError, match="packed='maybe' is not on or off"):
        offered(f"vhostuser:unix:{path}:packed=maybe")


class _FieldByField:
    """
    A C{struct.Struct} whose C{unpack_from} reads its fields one after the
    other, as CPython's does, and calls C{between} with the end offset of
    each field read: a driver writing to shared memory between two loads.
    """

    def __init__(self, real: struct.Struct, between: Callable[[object, int], None]) -> None:
        self.real, self.between = real, between
        self.size = real.size
        fields = real.format.lstrip("<")
        assert set(fields) <= set("BHIQ"), real.format
        self.fields = [struct.Struct("<" + code) for code in fields]

    def pack_into(self, buffer: memoryview, offset: int, *values: int) -> None:
        self.real.pack_into(buffer, offset, *values)

    def unpack_from(self, buffer: memoryview, offset: int = 0) -> tuple[int, ...]:
        values: list[int] = []
        for field in self.fields:
            values.extend(field.unpack_from(buffer, offset))
            offset += field.size
            self.between(buffer, offset)
        return tuple(values)


def test_aDescriptorIsReadOnlyAfterItsFlagsSayItIsAvailable(monkeypatch) -> None:
    """
    The driver writes a descriptor's buffer id before its flags; the queue
    reads the flags first and the id only once they say the descriptor is
    available.  Here the driver makes slot 1 available (id, then flags)
    between the first two loads the queue does of that slot: read in the
    other order, the queue would take the id slot 1 had before (0) with
    the new flags, and give the buffer back under an id the driver never
    made available in it (which Linux's driver reports as "not a head", or
    takes for another buffer of its own).
    """
    with _standaloneQueue("packed-order", 4) as (view, queue):
        DESC.pack_into(view, 0, 0x1000, 10, 7, AVAIL)
        armed = [True]

        def driverWrites(buffer: object, end: int) -> None:
            if armed[0] and 16 < end <= 32 and buffer.obj is view.obj:  # type: ignore[attr-defined]
                armed[0] = False
                struct.pack_into("<QIH", view, 16, 0x2000, 10, 5)
                struct.pack_into("<H", view, 16 + 14, AVAIL)

        for name, value in list(vars(packedring).items()):
            if isinstance(value, struct.Struct):
                monkeypatch.setattr(packedring, name, _FieldByField(value, driverWrites))
        given = 0
        for _ in range(3):
            while queue.pending():
                head = queue.take()
                queue.chain(head)
                queue.put(head, 0)
                queue.publish()
                given += 1
        assert not armed[0] and given == 2
        ids = [struct.unpack_from("<HH", view, 16 * at + 12) for at in range(2)]
        assert ids == [(7, AVAIL | USED), (5, AVAIL | USED)]
