"""
The switch's address space shared with C{vhostuser:} front-ends
(L{vtwisted.ports.addressspace}): counted before anything is mapped, given
back when it is unmapped, limited in all and for each untrusted user.
"""

from __future__ import annotations

import os

import pytest

from vtwisted.ports.addressspace import AddressSpace
from vtwisted.ports.virtqueue import DirtyLog, GuestMemory, VirtqueueError
from vtwisted.wire.vhostuser import Region

MB = 1 << 20


def sealedMemfd(size: int = MB) -> int:
    fd = os.memfd_create("guest", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    return fd


def test_aStrangersMemoryIsCountedAndGivenBackWhenUnmapped() -> None:
    space = AddressSpace(limit=8 * MB, perUser=3 * MB)
    memory = GuestMemory.map([Region(0, 2 * MB, 0, 0)], [sealedMemfd(2 * MB)],
                             reserve=lambda size, what: space.reserve(size, 1000, what))
    assert (space.used, space.byUser) == (2 * MB, {1000: 2 * MB})
    memory.close()
    memory.close()
    assert (space.used, space.byUser) == (0, {})


def test_aStrangerPastItsShareIsRefusedBeforeAnythingIsMapped() -> None:
    """
    The table is refused whole, its descriptors closed, nothing counted;
    root's front-ends (no user) still get memory.
    """
    space = AddressSpace(limit=8 * MB, perUser=3 * MB)
    fds = [sealedMemfd(), sealedMemfd(3 * MB)]
    with pytest.raises(VirtqueueError, match="of uid 1000 past"):
        GuestMemory.map([Region(0, MB, 0, 0), Region(MB, 3 * MB, MB, 0)], fds,
                        reserve=lambda size, what: space.reserve(size, 1000, what))
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert (space.used, space.byUser) == (0, {})
    root = GuestMemory.map([Region(0, 4 * MB, 0, 0)], [sealedMemfd(4 * MB)],
                           reserve=lambda size, what: space.reserve(size, None, what))
    assert (space.used, space.byUser) == (4 * MB, {})
    root.close()


def test_allFrontEndsTogetherArePastTheLimitToo() -> None:
    space = AddressSpace(limit=2 * MB, perUser=2 * MB)
    release = space.reserve(MB, 1000, "guest memory")
    with pytest.raises(VirtqueueError, match="front-ends past"):
        space.reserve(2 * MB, 1001, "guest memory")
    release()
    space.reserve(2 * MB, 1001, "guest memory")


def test_aDirtyLogIsCountedToo() -> None:
    space = AddressSpace(limit=2 * MB, perUser=2 * MB)
    with pytest.raises(VirtqueueError, match="the dirty log"):
        DirtyLog.map(sealedMemfd(), 2 * MB, MB,
                     reserve=lambda size, what: space.reserve(size, 1000, what))
    log = DirtyLog.map(sealedMemfd(), MB, 0,
                       reserve=lambda size, what: space.reserve(size, 1000, what))
    assert space.used == MB
    log.close()
    assert space.used == 0
