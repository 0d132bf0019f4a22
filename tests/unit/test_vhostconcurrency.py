"""
What a guest driver running at the same time as the switch (on another
CPU) sees of the device's writes to the C{vhostuser:} rings:

 - the split ring's used index never goes back (C{struct.pack_into}, which
   zeroes a field before storing it, would show it as 0 for a moment: a
   driver would then consume used entries the device has not written);
 - a mergeable packet's buffers become used all at once, packed rings too;
 - a transmitted frame is copied out before its chain is used.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

import pytest
from vhostfakes import LAYOUTS, RINGS, TX_DATA, makeDriver

from vtwisted.ports import packedring, virtqueue
from vtwisted.ports.virtqueue import GuestMemory, SplitQueue
from vtwisted.testing import FakeLink, frame, mac, plug, tcpSuperFrame
from vtwisted.wire.vhostuser import Region


@pytest.fixture(params=LAYOUTS)
def anyDriver(request):
    fake = makeDriver(request.param)
    yield fake
    fake.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_aDriverReadingTheUsedIndexConcurrentlyNeverSeesItGoBack() -> None:
    """
    The device (this process, a real L{SplitQueue} in shared memory) puts
    and publishes used entries, publishing again now and then with nothing
    new (as C{Ring._drain} does on every kick); a driver (a child process
    on another CPU) consumes them as Linux's C{virtqueue_get_buf} does:
    while its last-used index differs from the used index it reads, it
    takes the entry there.  The used index must never be seen going back,
    and every entry consumed must be one the device wrote.
    """
    size, memorySize = 256, 1 << 20
    descriptors, available, used, shared = 0, 0x10000, 0x20000, 0x40000
    buffer = mmap.mmap(-1, memorySize)
    duration = 2.0
    child = os.fork()
    if child == 0:  # the driver
        try:
            last = consumed = stale = backwards = previous = 0
            deadline = time.monotonic() + duration + 0.5

            def usedIndex() -> int:
                nonlocal previous, backwards
                index: int = struct.unpack_from("<H", buffer, used + 2)[0]
                if (index - previous) & 0xFFFF > 0x8000:
                    backwards += 1
                previous = index
                return index

            while time.monotonic() < deadline and not stale:
                index = usedIndex()
                while last != index:
                    _, length = struct.unpack_from("<II", buffer, used + 4 + 8 * (last % size))
                    if length != consumed + 1:  # the last lap's entry, or none yet
                        stale = consumed + 1
                        break
                    consumed += 1
                    last = (last + 1) & 0xFFFF
                    buffer[shared:shared + 8] = consumed.to_bytes(8, "little")
                    index = usedIndex()
            buffer[shared + 8:shared + 24] = struct.pack("<QQ", stale, backwards)
        finally:
            os._exit(0)
    memory = GuestMemory([(Region(0, memorySize, 0, 0), buffer)])
    queue = SplitQueue(memory, size, descriptors, available, used, 0)
    put = 0
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        for _ in range(1000):
            queue.publish()  # nothing new: as a drain that found nothing does
            if put - int.from_bytes(buffer[shared:shared + 8], "little") < size // 2:
                queue.put(put % size, put + 1)  # as many buffers as the driver posted
                put += 1
                queue.publish()
    os.waitpid(child, 0)
    stale, backwards = struct.unpack_from("<QQ", buffer, shared + 8)
    queue = None  # type: ignore[assignment]
    memory.close()
    assert (backwards, stale) == (0, 0), (
        f"of {put} entries published, the driver saw the used index go back {backwards} "
        f"times; it took entry {stale} before the device wrote it" if stale else "")


def test_aMergeablePacketBecomesUsedAllAtOnce(anyDriver, monkeypatch) -> None:
    """
    VIRTIO 1.1, 5.1.6.4.2: the device uses all the buffers of a received
    packet together, so that the driver sees at least C{num_buffers} used.
    Here a driver looks at the ring after every write the device makes to
    a used entry (split: the index; packed: each used descriptor) and
    counts the buffers it could take then: 0 or all 3 of the packet.
    """
    driver = anyDriver
    driver.negotiate()
    driver.postReceiveBuffers(3)
    seen: list[int] = []
    layout = "packed" if hasattr(driver, "usedSlot") else "split"

    def visible() -> int:
        if layout == "split":
            _, _, usedAt = driver.ringAddresses(RINGS[0])
            index = struct.unpack_from("<H", driver.memory, usedAt + 2)[0]
            return (index - driver.usedSeen[0]) & 0xFFFF
        slot, wrap = driver.usedSlot[0]
        count = 0
        for _ in range(3):
            flags = struct.unpack_from("<H", driver.memory, RINGS[0] + 16 * slot + 14)[0]
            if flags & (packedring.AVAIL | packedring.USED) != \
                    (packedring.AVAIL | packedring.USED if wrap else 0):
                break
            count += 1
            slot += 1
        return count

    for klass, name in ((virtqueue.SplitQueue, "put"), (virtqueue.SplitQueue, "publish"),
                        (packedring.PackedQueue, "put"), (packedring.PackedQueue, "publish")):
        original = getattr(klass, name)

        def spy(self, *args, original=original):
            original(self, *args)
            seen.append(visible())

        monkeypatch.setattr(klass, name, spy)
    tap = FakeLink(vnetHeader=True)
    plug(driver.switch, tap)
    tap.receivePacket(tcpSuperFrame(b"\xff" * 6, mac(1), os.urandom(5000)))
    assert seen[-1] == 3 and set(seen) <= {0, 3}, f"buffers a driver could see used: {seen}"


def test_aTransmittedFrameIsReadBeforeItsChainIsUsed(anyDriver, monkeypatch) -> None:
    """
    Once a chain is used the driver may free and reuse its buffers (VIRTIO
    1.1, 2.6.8 and 2.7.14: the device is done with it).  Here the guest
    overwrites the frame as soon as a driver could see its chain used
    (split: the used index published; packed: the used descriptor's
    flags): the frame the switch forwards must still be the one sent.
    """
    driver = anyDriver
    driver.negotiate()
    other = FakeLink()
    plug(driver.switch, other)

    def scribble() -> None:
        driver.memory[TX_DATA:TX_DATA + 4096] = b"\xee" * 4096

    for klass, name in ((virtqueue.SplitQueue, "publish"), (packedring.PackedQueue, "put")):
        original = getattr(klass, name)

        def reuse(self, *args, original=original):
            original(self, *args)
            scribble()

        monkeypatch.setattr(klass, name, reuse)
    sent = frame(b"\xff" * 6, mac(1), payload=bytes(range(200)))
    driver.transmit(bytes(12), sent)
    assert other.takeSent() == [sent]
