"""
The files a C{vhostuser:} front-end shares with the switch (its guest
memory regions and dirty log): which the switch takes, and what of each it
maps.

Theory of operation
-------------------
A front-end sends a file descriptor and the part of the file it means (an
offset and a size).  L{Window.plan} decides what is mapped: from the
offset rounded down to the file's page size (4 KB, or the huge page size
on hugetlbfs, which refuses other offsets) to the end rounded up to it (a
huge-page mapping of another length could not be unmapped whole).  Its
length is what counts against the switch's address space
(L{vtwisted.ports.addressspace}): a region at the end of a big file takes
its own size, not the file's.  An empty region is refused: mapping 0
bytes would map the whole file, uncounted.

The switch dies (C{SIGBUS}) if it touches shared memory that is no longer
there, so a front-end must not be able to take it away:

* shrinking the file: a memfd is sealed against it (L{forbidShrinking});
  anything else is refused unless the front-end is trusted (it runs as
  root or as the switch's user, and could stop the switch anyway).  A
  hole punched in a plain memfd is no danger: its next touch gets zeroed
  pages.
* huge pages (hugetlbfs: QEMU's C{hugetlb=on}, a memfd made with
  C{MFD_HUGETLB}): a file's huge pages are reserved when it is mapped,
  but a hole punched in it (C{fallocate(PUNCH_HOLE)}) gives them back with
  their reservation, and the next touch needs a free huge page from the
  system's pool; with none left (the front-end may take them all),
  C{SIGBUS}.  No seal that the guest can live with forbids holes: Linux's
  hugetlbfs (as shmem) refuses them only under C{F_SEAL_WRITE}, which
  cannot be set while the guest's memory is mapped writable, or
  C{F_SEAL_FUTURE_WRITE}, which also forbids every new writable mapping:
  the switch's own for the next memory table (QEMU sends one each time
  the guest's driver starts the device) or after a restart, and those of
  the guest's other back-ends.  Populating or locking the mapping does
  not help either: a hole is unmapped from every mapping.  So huge-page
  memory is taken from trusted front-ends only, and refused from others
  (L{HUGETLBFS_MAGIC} by C{fstatfs}), saying what to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import mmap
import os
from dataclasses import dataclass

#: C{f_type} of hugetlbfs (C{linux/magic.h}).
HUGETLBFS_MAGIC = 0x958458F6


class RefusedMemory(Exception):
    """
    A shared file cannot or must not be mapped; the message says why.
    """


def fileSystem(fd: int) -> tuple[int, int]:
    """
    The type (magic number) of the file system holding C{fd}'s file and
    its block size (for hugetlbfs, the huge page size), by C{fstatfs}.

    @raise OSError: C{fstatfs} failed.
    """
    buffer = ctypes.create_string_buffer(256)  # struct statfs: 120 bytes on 64-bit Linux
    if _libc().fstatfs(fd, buffer) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    # f_type and f_bsize, the first two words (f_type's 32 bits matter)
    kind = ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF
    blockSize = ctypes.c_long.from_buffer(buffer, ctypes.sizeof(ctypes.c_long)).value
    return kind, blockSize


_loaded: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    if not _loaded:
        _loaded.append(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True))
    return _loaded[0]


def forbidShrinking(fd: int, what: str, trusted: bool = False) -> None:
    """
    Make sure the front-end cannot shrink the file behind C{fd} once it is
    mapped: the switch's next read past its new end would kill it (C{SIGBUS}).
    A memfd is sealed against it (QEMU's C{memory-backend-memfd} and its
    dirty log are already, C{seal=on}).  Anything else is refused, unless
    the front-end is C{trusted}: it runs as the switch's user or as root,
    and could kill the switch anyway (QEMU's C{memory-backend-file}).

    @raise RefusedMemory: it cannot be sealed.
    """
    try:
        if not fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError as e:
        if trusted:
            return
        raise RefusedMemory(f"{what} is not in a memfd sealed against shrinking, so the "
                            f"front-end could crash the switch ({e.strerror}, errno "
                            f"{e.errno}); give QEMU memory-backend-memfd") from None


@dataclass(frozen=True)
class Window:
    """
    What of a shared file is mapped: C{length} bytes from C{start}, the
    wanted part C{skip} bytes in.
    """

    start: int
    length: int
    skip: int
    #: The mapping's page size (the huge page size on hugetlbfs).
    pageSize: int

    @property
    def mapped(self) -> int:
        """
        The address space the mapping takes (whole pages).
        """
        return -(-self.length // self.pageSize) * self.pageSize

    @classmethod
    def plan(cls, fd: int, offset: int, size: int, what: str, trusted: bool,
             owner: int | None = None) -> Window:
        """
        The window to map for C{size} bytes at C{offset} of C{fd}'s file.

        @param owner: the front-end's user, for the refusal.
        @raise RefusedMemory: huge pages from a front-end not C{trusted}.
        """
        pageSize = mmap.ALLOCATIONGRANULARITY
        hugePages = False
        try:
            kind, blockSize = fileSystem(fd)
        except OSError:
            kind = blockSize = 0
        if kind == HUGETLBFS_MAGIC and blockSize > 0:
            if not trusted:
                whose = "another user's" if owner is None else f"uid {owner}'s"
                raise RefusedMemory(
                    f"{what} is in huge pages (hugetlbfs), from {whose} front-end: it could "
                    "crash the switch (SIGBUS) by punching a hole in them when no huge page "
                    "is free, and no seal forbids that; run QEMU as root or as the switch's "
                    f"user (uid {os.geteuid()}), or give it memory without hugetlb=on")
            pageSize, hugePages = blockSize, True
        if size <= 0:
            # mmap would map the whole file, whatever its size, uncounted
            raise RefusedMemory(f"{what} is empty ({size} bytes)")
        start = offset - offset % pageSize
        length = offset - start + size
        if hugePages:
            length = -(-length // pageSize) * pageSize
        return cls(start, length, offset - start, pageSize)

    def map(self, fd: int) -> mmap.mmap:
        """
        Map the window of C{fd}'s file, shared and writable.

        @raise OSError, ValueError, OverflowError: it cannot be.
        """
        return mmap.mmap(fd, self.length, mmap.MAP_SHARED, offset=self.start)
