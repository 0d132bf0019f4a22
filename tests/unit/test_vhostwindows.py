"""
What of a C{vhostuser:} front-end's shared files the switch maps, and which
it refuses (L{vtwisted.ports.sharedmemory}): only the pages a region (or
dirty log) is in, wherever it lies in its file; no empty region; no huge
pages from another user.  A stranger's huge pages against a real switch,
and QEMU's, are in C{tests/integration/test_vhostuser_hugepages.py}.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from helpers import memfdMappings, unavailable
from vhostfakes import MEMORY, QUEUE_SIZE, FakeDriver

from vtwisted.ports.addressspace import AddressSpace
from vtwisted.ports.sharedmemory import HUGETLBFS_MAGIC, Window, fileSystem
from vtwisted.ports.virtqueue import DirtyLog, GuestMemory, VirtqueueError
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire.vhostuser import Region

MB = 1 << 20
#: Where the fake guest's memory starts in its (sparse) memfd.
FAR = 1 << 40


@pytest.fixture
def hugeMemfd() -> Iterator[int]:
    """A 4 MB memfd in huge pages (none allocated: the pool may be empty)."""
    try:
        fd = os.memfd_create("huge-guest", os.MFD_HUGETLB | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 4 * MB)
    except OSError as e:
        unavailable(f"no huge-page memfd: {e}")
    yield fd
    try:
        os.close(fd)
    except OSError:
        pass


def test_aRegionFarIntoItsFileMapsOnlyItsPagesAndFramesFlow() -> None:
    """
    Guest memory 1 TiB into its memfd: the switch maps its 4 MB there (not
    the file from 0), counts 4 MB of its address space, and frames cross
    both ways.
    """
    driver = FakeDriver(offset=FAR)
    space = AddressSpace()
    driver.owner.addressSpace = space  # type: ignore[attr-defined]
    try:
        driver.negotiate()
        assert driver.link.memory is not None and not driver.transport.disconnecting
        assert space.used == MEMORY
        assert memfdMappings("fake-guest") == [(MEMORY, FAR)] * 2  # the fake's and the switch's
        other = FakeLink()
        plug(driver.switch, other)
        sent = frame(b"\xff" * 6, mac(1), payload=bytes(range(200)))
        driver.transmit(bytes(12), sent)
        assert other.takeSent() == [sent]
        driver.postReceiveBuffers(QUEUE_SIZE)
        back = frame(mac(1), mac(2), payload=b"hello")
        other.receive(back)
        assert [f for _, f in driver.received()] == [back]
    finally:
        driver.close()
    assert space.used == 0
    assert memfdMappings("fake-guest") == []


def test_aRegionOffThePageBoundaryIsMappedFromItsPage() -> None:
    """
    An offset that is not a multiple of the page: mapped from the page it
    is in, the region's bytes where the front-end put them.
    """
    fd = os.memfd_create("off-page", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 3 * MB)
    os.pwrite(fd, b"here", MB + 0x345)
    window = Window.plan(fd, MB + 0x345, 0x2000, "a region", False)
    assert window == Window(MB, 0x2345, 0x345, 4096) and window.mapped == 0x3000
    space = AddressSpace()
    memory = GuestMemory.map([Region(0x10000, 0x2000, 0, MB + 0x345)], [fd],
                             reserve=lambda size, what: space.reserve(size, 1000, what))
    try:
        assert bytes(memory.guest(0x10000, 4)) == b"here"
        assert space.used == 0x3000
        assert memfdMappings("off-page") == [(0x3000, MB)]
    finally:
        memory.close()


def test_anEmptyRegionOrLogIsRefused() -> None:
    """
    A region or dirty log of 0 bytes is refused: mapping 0 bytes maps the
    whole file, which was never counted (a sparse file may be terabytes).
    """
    space = AddressSpace(limit=8 * MB, perUser=8 * MB)

    def reserve(size: int, what: str):
        return space.reserve(size, 1000, what)

    fd = os.memfd_create("empty", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 1 << 40)
    with pytest.raises(VirtqueueError, match="is empty"):
        GuestMemory.map([Region(0, 0, 0, 0)], [os.dup(fd)], reserve=reserve)
    with pytest.raises(VirtqueueError, match="is empty"):
        DirtyLog.map(os.dup(fd), 0, 0, reserve=reserve)
    os.close(fd)
    assert space.used == 0
    assert memfdMappings("empty") == []


def test_aStrangersHugePagesAreRefusedBeforeAnythingIsMapped(hugeMemfd: int) -> None:
    """
    Memory in huge pages from another user's front-end is refused (it
    could punch a hole in it when no huge page is free: SIGBUS), saying
    whose and what to do; nothing is counted and the descriptors are
    closed.  A dirty log in huge pages too.
    """
    assert fileSystem(hugeMemfd) == (HUGETLBFS_MAGIC, 2 * MB)
    space = AddressSpace()
    fds = [os.dup(hugeMemfd), os.dup(hugeMemfd)]
    with pytest.raises(VirtqueueError) as refused:
        GuestMemory.map([Region(0, MB, 0, 0), Region(MB, MB, MB, 2 * MB)], fds,
                        reserve=lambda size, what: space.reserve(size, 1000, what),
                        owner=1000)
    message = str(refused.value)
    assert "in huge pages (hugetlbfs), from uid 1000's front-end" in message
    assert re.search(r"run QEMU as root or as the switch's user \(uid \d+\), or give it "
                     r"memory without hugetlb=on", message), message
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert space.used == 0
    with pytest.raises(VirtqueueError, match="the dirty log is in huge pages"):
        DirtyLog.map(os.dup(hugeMemfd), MB, 0)


def test_trustedHugePagesAreMappedByWholeHugePages(hugeMemfd: int) -> None:
    """
    From root or the switch's user, huge pages are taken; the window is
    aligned to the huge page (the kernel refuses other offsets) and whole
    huge pages long (a shorter mapping could not be unmapped).
    """
    assert Window.plan(hugeMemfd, 2 * MB + 4096, 4096, "a region", True) == \
        Window(2 * MB, 2 * MB, 4096, 2 * MB)
    assert Window.plan(hugeMemfd, 0, 3 * MB, "a region", True).mapped == 4 * MB
