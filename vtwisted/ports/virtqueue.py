"""
Virtio split virtqueues (VIRTIO 1.1, section 2.6) in memory a guest
shares with the switch: what the C{vhostuser:} port reads and writes.

Theory of operation
-------------------
L{GuestMemory} holds the regions of guest memory the front-end shared
(mapped from their file descriptors) and translates guest-physical
addresses (in descriptors) and front-end addresses (of the rings) into
memoryviews of them.  A queue is three structures there: the descriptor
table (address, length, flags, next; 16 bytes each), the available ring
the guest fills with chain heads (flags, index, heads), and the used ring
the device fills with (head, bytes written) pairs (flags, index, pairs).

L{SplitQueue} takes the chains the guest made available after
C{lastAvail}, walks each (following C{NEXT} links and one level of
C{INDIRECT} tables), returns them as memoryviews marked writable or not,
and puts them back on the used ring; the used index is stored once per
batch (L{SplitQueue.publish}), after the entries, which x86's store order
keeps visible in that order.  The 16-bit fields the driver reads while
the device writes them (the used index, flags and C{avail_event}) are each
written with a single store through a memoryview: C{struct.pack_into}
zeroes a field before storing the value, and a driver can read that 0.
Stores may still be passed by later loads,
so where the device stores one thing and then reads what the guest wrote
in answer to it, a full barrier (L{fence}) sits in between, at the two
places Linux's vhost has one: after re-enabling kicks, before the avail
index is read again (else a chain added meanwhile could wait for a kick
that never comes), and after publishing used chains, before the guest's
interrupt wish is read (else its interrupt could be missed).

While the guest migrates, the switch records every page it writes to (the
buffers of receive chains, and the used rings) in the front-end's
L{DirtyLog}, so that QEMU copies those pages again.

The guest is not trusted: an index past the table, a chain longer than
the table (a loop) or of more than L{MAX_CHAIN} buffers, an address
outside the shared regions or a nested indirect table raise
L{VirtqueueError} and nothing is read or written.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

from vtwisted.ports.sharedmemory import RefusedMemory, Window, forbidShrinking
from vtwisted.wire.vhostuser import Region

DESCRIPTOR = struct.Struct("<QIHH")
NEXT, WRITE, INDIRECT = 1, 2, 4
#: Available ring flag: the guest needs no interrupt now.
NO_INTERRUPT = 1
#: Used ring flag: the device needs no kick now.
NO_NOTIFY = 1
MAX_QUEUE_SIZE = 32768
#: The most buffers a chain may have, indirect ones included (as Linux's
#: vhost, C{UIO_MAXIOV}; Linux's drivers use 19 at most).
MAX_CHAIN = 1024
_U16 = struct.Struct("<H")
_USED = struct.Struct("<II")
#: Counts bytes about to be mapped (and what for), or refuses them; returns
#: what gives them back (L{vtwisted.ports.addressspace.AddressSpace.reserve}).
Reserve = Callable[[int, str], Callable[[], None]]


class VirtqueueError(Exception):
    """
    The guest's queue or the front-end's memory table is unusable.
    """


def _tooLong(head: int, count: int) -> str:
    """
    What is wrong with the chain at C{head}, still going after C{count} buffers.
    """
    if count >= MAX_CHAIN:
        return f"chain at {head} has more than {MAX_CHAIN} buffers"
    return f"chain at {head} loops (longer than its table)"


class GuestMemory:
    """
    The regions of guest memory shared with the switch.
    """

    def __init__(self, regions: Sequence[tuple[Region, Any]],
                 starts: Sequence[int] | None = None) -> None:
        """
        @param regions: each region and a buffer holding its file (an
            C{mmap}, or a C{bytearray} in tests) from C{starts}.
        @param starts: where each buffer starts in its file (0 if not given).
        """
        self._maps = [buffer for _, buffer in regions]
        self._release: Callable[[], None] | None = None
        at = list(starts) if starts is not None else [0] * len(regions)
        self._regions = [(r.guestAddress, r.userAddress, r.size,
                          memoryview(buffer)[r.mmapOffset - start:
                                             r.mmapOffset - start + r.size])
                         for (r, buffer), start in zip(regions, at)]
        for region, (_, _, size, view) in zip(regions, self._regions):
            if len(view) != size:
                raise VirtqueueError(f"region at guest address {region[0][0]:#x}: "
                                     f"{size} bytes, but {len(view)} mapped")

    @classmethod
    def map(cls, regions: Sequence[Region], fds: Sequence[int],
            trusted: bool = False, reserve: Reserve | None = None,
            owner: int | None = None) -> GuestMemory:
        """
        Map each region's file descriptor (which is then closed), only the
        pages that hold the region (L{Window}); unless C{trusted}, only
        memory sealed against shrinking and not in huge pages (see
        L{vtwisted.ports.sharedmemory}).

        @param reserve: called with the bytes to be mapped before anything
            is, returns what gives them back once they are unmapped (see
            L{vtwisted.ports.addressspace}).
        @param owner: the front-end's user, for messages.
        @raise VirtqueueError: a descriptor cannot be mapped, or C{reserve}
            refused.
        """
        mapped = []
        release = None
        try:
            whats = [f"the region at guest address {r.guestAddress:#x}" for r in regions]
            windows = [Window.plan(fd, r.mmapOffset, r.size, what, trusted, owner)
                       for r, fd, what in zip(regions, fds, whats)]
            if reserve is not None:
                release = reserve(sum(w.mapped for w in windows), "guest memory")
            for region, fd, what, window in zip(regions, fds, whats, windows):
                forbidShrinking(fd, what, trusted)
                try:
                    mapped.append((region, window.map(fd)))
                except (OSError, ValueError, OverflowError) as e:
                    raise VirtqueueError(f"cannot map the region at guest address "
                                         f"{region.guestAddress:#x} ({region.size} bytes): "
                                         f"{e}") from None
            memory = cls(mapped, [w.start for w in windows])
        except BaseException as e:
            for _, buffer in mapped:
                buffer.close()
            if release is not None:
                release()
            if isinstance(e, RefusedMemory):
                raise VirtqueueError(str(e)) from None
            raise
        finally:
            for fd in fds:
                os.close(fd)
        memory._release = release
        return memory

    def guest(self, address: int, length: int) -> memoryview:
        """
        C{length} bytes at guest-physical C{address}.

        @raise VirtqueueError: not inside one region.
        """
        return self._find(0, address, length, "guest address")

    def user(self, address: int, length: int) -> memoryview:
        """
        C{length} bytes at front-end address C{address} (ring addresses).

        @raise VirtqueueError: not inside one region.
        """
        return self._find(1, address, length, "ring address")

    def guestAddressOf(self, address: int) -> int:
        """
        The guest-physical address of front-end address C{address} (for
        the dirty log).

        @raise VirtqueueError: not inside a region.
        """
        for guest, user, size, _ in self._regions:
            if 0 <= address - user < size:
                return guest + address - user
        raise VirtqueueError(f"ring address {address:#x} is outside the shared memory")

    def _find(self, space: int, address: int, length: int, what: str) -> memoryview:
        for guest, user, size, view in self._regions:
            offset = address - (user if space else guest)
            if 0 <= offset and offset + length <= size:
                return view[offset:offset + length]
        raise VirtqueueError(f"{what} {address:#x} (+{length}) is outside the shared memory")

    @property
    def size(self) -> int:
        """
        Bytes shared, over all regions.
        """
        return sum(size for _, _, size, _ in self._regions)

    def close(self) -> None:
        """
        Forget the regions; each is unmapped once nothing refers to it.
        """
        for *_, view in self._regions:
            view.release()
        self._regions = []
        for buffer in self._maps:
            close = getattr(buffer, "close", None)
            if close is not None:
                try:
                    close()
                except BufferError:  # a view is still held; it goes with it
                    pass
        self._maps = []
        if self._release is not None:
            self._release()
            self._release = None


class DirtyLog:
    """
    The front-end's log of the guest pages the switch writes to, while a
    guest migrates (C{VHOST_F_LOG_ALL}): one bit per 4 KB page of guest
    physical memory, in memory QEMU shares (C{SET_LOG_BASE}) with every
    vhost-user back-end of the guest.  QEMU reads and clears words of it
    while the others set bits, so a bit is set with an atomic OR of its
    byte (libatomic's, through C{ctypes}): a plain read and write could
    undo another back-end's bit set in between, and that page would not be
    sent again.  Where libatomic is missing the plain way is used; it is
    safe with QEMU alone (at worst it sets again bits QEMU just took).
    """

    PAGE_SHIFT = 12

    def __init__(self, buffer: Any, offset: int, size: int) -> None:
        self._map = buffer
        self.view = memoryview(buffer)[offset:offset + size]
        #: Writes logged so far.
        self.writes = 0
        self._release: Callable[[], None] | None = None
        if len(self.view) != size:
            raise VirtqueueError(f"dirty log of {size} bytes, but {len(self.view)} mapped")
        atomicOr = _atomicOr()
        self._anchor: Any = None
        if atomicOr is not None and size:
            self._anchor = ctypes.c_char.from_buffer(buffer, offset)
            base = ctypes.addressof(self._anchor)
            self._set = lambda at, bit: atomicOr(base + at, bit, _SEQ_CST)
        else:
            self._set = self._plainSet

    def _plainSet(self, at: int, bit: int) -> None:
        self.view[at] |= bit

    @classmethod
    def map(cls, fd: int, size: int, offset: int, trusted: bool = False,
            reserve: Reserve | None = None, owner: int | None = None) -> DirtyLog:
        """
        Map the log from C{fd} (which is then closed), only its pages; unless
        C{trusted}, only a log sealed against shrinking and not in huge pages
        (see L{vtwisted.ports.sharedmemory}).

        @param reserve: as for L{GuestMemory.map}.
        @param owner: the front-end's user, for messages.
        @raise VirtqueueError: it cannot be mapped, or C{reserve} refused.
        """
        release = None
        try:
            window = Window.plan(fd, offset, size, "the dirty log", trusted, owner)
            if reserve is not None:
                release = reserve(window.mapped, "the dirty log")
            forbidShrinking(fd, "the dirty log", trusted)
            log = cls(window.map(fd), window.skip, size)
        except BaseException as e:
            if release is not None:
                release()
            if isinstance(e, RefusedMemory):
                raise VirtqueueError(str(e)) from None
            if isinstance(e, (OSError, ValueError, OverflowError)):
                raise VirtqueueError(f"cannot map the dirty log ({size} bytes at "
                                     f"{offset}): {e}") from None
            raise
        finally:
            os.close(fd)
        log._release = release
        return log

    def mark(self, address: int, length: int) -> None:
        """
        Log a write of C{length} bytes at guest-physical C{address}; pages
        past the log's end are not logged (QEMU sizes it for all memory).
        """
        if length <= 0:
            return
        self.writes += 1
        size, shift, setBit = len(self.view), self.PAGE_SHIFT, self._set
        for page in range(address >> shift, ((address + length - 1) >> shift) + 1):
            at = page >> 3
            if at < size:
                setBit(at, 1 << (page & 7))

    def close(self) -> None:
        self._set = self._plainSet
        self._anchor = None  # the buffer is exported while it lives
        self.view.release()
        try:
            self._map.close()
        except (AttributeError, BufferError):
            pass
        if self._release is not None:
            self._release()
            self._release = None


#: C{__ATOMIC_SEQ_CST}.
_SEQ_CST = 5
_atomic: list[Any] = []


def _makeFence() -> Any:
    """
    A full memory barrier: libatomic's C{atomic_thread_fence}, or where
    there is none, taking and releasing a lock (which is one on x86 and
    every platform whose locks use atomic instructions).
    """
    try:
        function = ctypes.CDLL("libatomic.so.1").atomic_thread_fence
    except (OSError, AttributeError):
        import threading

        lock = threading.Lock()

        def fence() -> None:
            with lock:
                pass

        return fence
    function.argtypes = [ctypes.c_int]
    function.restype = None
    return lambda: function(_SEQ_CST)


#: Order every store before it before every load after it (C{smp_mb()}).
fence = _makeFence()


def _atomicOr() -> Any:
    """
    libatomic's C{__atomic_fetch_or_1}, or None where there is none.
    """
    if not _atomic:
        try:
            function = ctypes.CDLL("libatomic.so.1").__atomic_fetch_or_1
            function.argtypes = [ctypes.c_void_p, ctypes.c_ubyte, ctypes.c_int]
            function.restype = ctypes.c_ubyte
            _atomic.append(function)
        except (OSError, AttributeError):
            _atomic.append(None)
    return _atomic[0]


class SplitQueue:
    """
    One split virtqueue, as the device sees it.

    @ivar lastAvail: the index of the next available entry to take.
    """

    def __init__(self, memory: GuestMemory, size: int, descriptors: int, available: int,
                 used: int, lastAvail: int, eventIndex: bool = False) -> None:
        """
        @param eventIndex: C{VIRTIO_RING_F_EVENT_IDX} was negotiated: the
            guest says when it wants an interrupt (C{used_event}) and the
            device when it wants a kick (C{avail_event}), instead of flags.
        @raise VirtqueueError: a size that is not a power of two up to
            32768, or a structure outside the shared memory.
        """
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two up to "
                                 f"{MAX_QUEUE_SIZE}")
        self.memory = memory
        self.size = size
        self.eventIndex = eventIndex
        extra = 2 if eventIndex else 0
        self.table = memory.user(descriptors, 16 * size)
        self.available = memory.user(available, 4 + 2 * size + extra)
        #: Bytes of the used ring (flags, index, pairs, C{avail_event}).
        self.usedLength = 4 + 8 * size + extra
        self.used = memory.user(used, self.usedLength)
        #: The 16-bit fields of the used ring the driver reads while the
        #: device runs (flags, index, C{avail_event}), each written with one
        #: store: C{struct.pack_into} zeroes a field before it stores the
        #: value, and a driver reading a used index of 0 then would take
        #: entries the device has not written.
        self._usedFlags = self.used[0:2].cast("H")
        self._usedIndex = self.used[2:4].cast("H")
        self._availEvent = self.used[4 + 8 * size:6 + 8 * size].cast("H") if eventIndex \
            else None
        self.lastAvail = lastAvail & 0xFFFF
        self.usedIndex: int = _U16.unpack_from(self.used, 2)[0]
        #: The used index when the guest was last considered for an interrupt,
        #: and whether it was (until then, what happened before the start is
        #: unknown: the first chance interrupts, as Linux's vhost does).
        self.signalled, self.considered = self.usedIndex, False

    def pending(self) -> int:
        """
        How many chains the guest has made available and not been taken.

        @raise VirtqueueError: more than the queue holds.
        """
        count = (_U16.unpack_from(self.available, 2)[0] - self.lastAvail) & 0xFFFF
        if count > self.size:
            raise VirtqueueError(f"{count} chains available in a queue of {self.size}")
        return count

    def peek(self, ahead: int = 0) -> int:
        """
        The head of the chain C{ahead} places after the next one to take.
        """
        slot = (self.lastAvail + ahead) % self.size
        head: int = _U16.unpack_from(self.available, 4 + 2 * slot)[0]
        return head

    def take(self) -> int:
        """
        Take the next available chain: its head.
        """
        head = self.peek()
        self.lastAvail = (self.lastAvail + 1) & 0xFFFF
        return head

    def chain(self, head: int, written: list[tuple[int, int]] | None = None
              ) -> list[tuple[memoryview, bool]]:
        """
        The buffers of the chain at C{head}, each with whether the device
        may write it.

        @param written: if given, the guest address and length of each
            buffer the device may write are appended to it (for the dirty
            log, L{DirtyLog}).
        @raise VirtqueueError: the chain is malformed.
        """
        buffers = []
        table, limit, index, indirect = self.table, self.size, head, False
        count, most = 0, min(limit, MAX_CHAIN)
        while True:
            if index >= limit:
                raise VirtqueueError(f"descriptor {index} past a table of {limit}")
            address, length, flags, following = DESCRIPTOR.unpack_from(table, 16 * index)
            if flags & INDIRECT:
                if indirect or flags & NEXT or not length or length % 16:
                    raise VirtqueueError(f"bad indirect descriptor ({length} bytes, "
                                         f"flags {flags:#x})")
                table, limit, index, indirect = self.memory.guest(address, length), \
                    length // 16, 0, True
                most = min(count + limit, MAX_CHAIN)
                continue
            buffers.append((self.memory.guest(address, length), bool(flags & WRITE)))
            if written is not None and flags & WRITE:
                written.append((address, length))
            count += 1
            if not flags & NEXT:
                return buffers
            if count >= most:
                raise VirtqueueError(_tooLong(head, count))
            index = following

    def put(self, head: int, written: int) -> None:
        """
        Give the chain at C{head} back, with C{written} bytes written to it.
        """
        _USED.pack_into(self.used, 4 + 8 * (self.usedIndex % self.size), head, written)
        self.usedIndex = (self.usedIndex + 1) & 0xFFFF

    def publish(self) -> None:
        """
        Make the chains put back visible to the guest.
        """
        self._usedIndex[0] = self.usedIndex

    def logUsed(self, log: DirtyLog, address: int) -> None:
        """
        Mark the used ring, at guest address C{address}, in C{log}.
        """
        log.mark(address, self.usedLength)

    def quietKicks(self, quiet: bool) -> None:
        """
        Ask the guest not to kick (while the device is taking chains anyway)
        or to kick again for the next chain it adds.
        """
        if self._availEvent is not None:
            if not quiet:
                self._availEvent[0] = self.lastAvail
                fence()  # seen before the avail index is read again
        else:
            self._usedFlags[0] = NO_NOTIFY if quiet else 0
            if not quiet:
                fence()

    def wantsInterrupt(self) -> bool:
        """
        Whether the guest asked to be told about the chains used since it
        was last considered.
        """
        fence()  # the used index published before the guest's wish is read
        if not self.eventIndex:
            return not self.available[0] & NO_INTERRUPT
        event: int = _U16.unpack_from(self.available, 4 + 2 * self.size)[0]
        new, old, considered = self.usedIndex, self.signalled, self.considered
        self.signalled, self.considered = new, True
        return not considered or (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF
