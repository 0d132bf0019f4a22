"""
Virtio packed virtqueues (VIRTIO 1.1, section 2.7; C{VIRTIO_F_RING_PACKED})
in memory a guest shares with the switch: what the C{vhostuser:} port
serves when the guest's driver takes them (QEMU's C{packed=on}).

Theory of operation
-------------------
A packed queue is one ring of descriptors (address, length, buffer id,
flags; 16 bytes each) that the driver and the device both write, plus two
4-byte event suppression areas: the driver's (QEMU's "available" address),
which says when the guest wants an interrupt, and the device's (QEMU's
"used" address), which says when the guest should kick.

The driver makes a chain available by writing its descriptors one after
the other from where it got to, wrapping at the end of the ring, and the
head's flags last: a descriptor is available when its C{AVAIL} bit equals
the driver's wrap counter and its C{USED} bit does not; the counter flips
each time the driver wraps.  The device gives chains back in order, each
as one used descriptor (buffer id, bytes written, C{AVAIL} and C{USED}
both equal to the device's own wrap counter) written where the next used
descriptor goes, and then skips as many slots as the chain had
descriptors; the flags of the first used descriptor of a batch are
written last (L{PackedQueue.publish}), so that the driver sees the batch
(all the buffers of a mergeable packet) used at once.  An indirect chain
takes one slot; its table's descriptors are read in sequence (only their
C{WRITE} flag counts).

L{PackedQueue} has the interface L{vtwisted.ports.vhostrings.Ring} uses
with L{vtwisted.ports.virtqueue.SplitQueue}, so the ring picks one or the
other once, when it starts.  A chain's "head" is its first slot.
L{PackedQueue.pending} scans forward from the last descriptor it saw
(each descriptor's flags are read once, and the rest of a chain only
after its head's flags say it is available: the driver writes them last),
remembering each chain found;
L{PackedQueue.take} and L{PackedQueue.put} move the driver's and the
device's positions past them.  Every chain taken is given back at once, so
when the ring stops the two positions agree; C{GET_VRING_BASE} reports
them as QEMU and DPDK encode them (bits 0-14 the next slot to take, 15
the driver's wrap counter, 16-30 and 31 the same for the next used slot),
and C{SET_VRING_BASE} is read from its low half, as DPDK does.

The guest is not trusted: a chain longer than the ring or of more than
1024 buffers (L{vtwisted.ports.virtqueue.MAX_CHAIN}), an address outside
the shared regions or a malformed indirect descriptor raise
L{VirtqueueError} and nothing is read or written.
"""

from __future__ import annotations

import struct
from collections import deque

from vtwisted.ports.virtqueue import (
    DESCRIPTOR,
    INDIRECT,
    MAX_CHAIN,
    MAX_QUEUE_SIZE,
    NEXT,
    WRITE,
    DirtyLog,
    GuestMemory,
    VirtqueueError,
    fence,
)

#: Descriptor flags: available (as the driver's wrap counter) and used.
AVAIL, USED = 1 << 7, 1 << 15
#: Event suppression flags: always, never, at the descriptor named.
EVENT_ENABLE, EVENT_DISABLE, EVENT_DESC = 0, 1, 2
#: Bytes of an event suppression area (offset and wrap, flags).
EVENT_AREA = 4
_U16 = struct.Struct("<H")
_ID_FLAGS = struct.Struct("<HH")
_LENGTH_ID = struct.Struct("<IH")


class PackedQueue:
    """
    One packed virtqueue, as the device sees it.
    """

    def __init__(self, memory: GuestMemory, size: int, descriptors: int, available: int,
                 used: int, lastAvail: int, eventIndex: bool = False) -> None:
        """
        @param descriptors: the front-end address of the descriptor ring.
        @param available: that of the driver's event suppression area.
        @param used: that of the device's event suppression area.
        @param lastAvail: the state C{SET_VRING_BASE} gave: the next slot
            to take (bits 0-14) and the driver's wrap counter (bit 15).
        @param eventIndex: C{VIRTIO_RING_F_EVENT_IDX} was negotiated: the
            event areas may name a descriptor.
        @raise VirtqueueError: a size of 0 or over 32768, a start past the
            ring, or a structure outside the shared memory.
        """
        if not 0 < size <= MAX_QUEUE_SIZE:
            raise VirtqueueError(f"packed queue size {size} is not between 1 and "
                                 f"{MAX_QUEUE_SIZE}")
        start, wrap = lastAvail & 0x7FFF, bool(lastAvail & 0x8000)
        if start >= size:
            raise VirtqueueError(f"start index {start} past a packed queue of {size}")
        self.memory = memory
        self.size = size
        self.eventIndex = eventIndex
        self.table = memory.user(descriptors, 16 * size)
        self.driverEvents = memory.user(available, EVENT_AREA)
        self.deviceEvents = memory.user(used, EVENT_AREA)
        #: The ring and the device's area as 16-bit words, each written with
        #: one store (C{struct.pack_into} zeroes a field before storing it):
        #: slot C{s}'s flags are word C{8 * s + 7}.
        self._words = self.table.cast("H")
        self._deviceWords = self.deviceEvents.cast("H")
        #: The slot and flags of the first used descriptor put since the
        #: last publish: written last, at the publish, so that the driver
        #: sees the chains of a batch (a mergeable packet's buffers) used
        #: all together, as it does with a split ring's used index.
        self._held: tuple[int, int] | None = None
        #: Bytes of the device's area written (for the dirty log).
        self.usedLength = EVENT_AREA
        self._tableAddress = memory.guestAddressOf(descriptors)
        #: The next slot to take, and the driver's wrap counter there.
        self._next, self._wrap = start, wrap
        #: The next slot to write a used descriptor to, and the device's wrap counter.
        self._used, self._usedWrap = start, wrap
        self._usedFlags = AVAIL | USED if wrap else 0
        #: The first slot not yet seen available, and the wrap counter there.
        self._scan, self._scanWrap = start, wrap
        #: Chains seen available and not taken: (first slot, slots, buffer id).
        self._found: deque[tuple[int, int, int]] = deque()
        self._outstanding = 0
        self._taken = (0, 0)
        #: Where the used slot was when the guest was last considered for an
        #: interrupt (slot, plus the size if the device's wrap counter was
        #: set), and the slots used since.
        self.signalled = start + size * wrap
        self._moved = 0
        #: The slots used since the dirty log was last marked, from the first.
        self._logFrom, self._unlogged = start, 0
        #: Whether the guest was considered for an interrupt since the start
        #: (until then, the first chance interrupts, as Linux's vhost does).
        self.considered = False

    @property
    def lastAvail(self) -> int:
        """
        Where the ring got to, as C{GET_VRING_BASE} reports it.
        """
        return (self._next | self._wrap << 15 | self._used << 16 | self._usedWrap << 31)

    def pending(self) -> int:
        """
        How many chains the guest has made available and not been taken.

        @raise VirtqueueError: a chain runs past the ring's room.
        """
        table, size, found = self.table, self.size, self._found
        at, wrap, outstanding = self._scan, self._scanWrap, self._outstanding
        want = AVAIL if wrap else USED
        while outstanding < size:
            # the flags first: the driver writes a descriptor's other fields
            # before them, so its buffer id may be read only once they say
            # it is available (read together, the id may be the old one)
            flags = _U16.unpack_from(table, 16 * at + 14)[0]
            if flags & (AVAIL | USED) != want:
                break
            bufferId = _U16.unpack_from(table, 16 * at + 12)[0]
            count, slot = 1, at
            while flags & NEXT:
                count += 1
                if outstanding + count > size:
                    raise VirtqueueError(f"chain at {at} loops (longer than the ring's "
                                         f"{size - outstanding} free slots)")
                slot = slot + 1 if slot + 1 < size else 0
                bufferId, flags = _ID_FLAGS.unpack_from(table, 16 * slot + 12)
            found.append((at, count, bufferId))
            outstanding += count
            at += count
            if at >= size:
                at -= size
                wrap = not wrap
                want = AVAIL if wrap else USED
        self._scan, self._scanWrap, self._outstanding = at, wrap, outstanding
        return len(found)

    def peek(self, ahead: int = 0) -> int:
        """
        The first slot of the chain C{ahead} places after the next one to take.
        """
        return self._found[ahead][0]

    def take(self) -> int:
        """
        Take the next available chain: its first slot.
        """
        head, count, bufferId = self._found.popleft()
        self._outstanding -= count
        self._taken = (count, bufferId)
        following = self._next + count
        if following >= self.size:
            following -= self.size
            self._wrap = not self._wrap
        self._next = following
        return head

    def chain(self, head: int, written: list[tuple[int, int]] | None = None
              ) -> list[tuple[memoryview, bool]]:
        """
        The buffers of the chain at slot C{head}, each with whether the
        device may write it.

        @param written: if given, the guest address and length of each
            buffer the device may write are appended to it.
        @raise VirtqueueError: the chain is malformed.
        """
        buffers: list[tuple[memoryview, bool]] = []
        table, size, guest, at = self.table, self.size, self.memory.guest, head
        for _ in range(min(size, MAX_CHAIN)):
            address, length, _, flags = DESCRIPTOR.unpack_from(table, 16 * at)
            if flags & INDIRECT:
                if length > 16 * MAX_CHAIN:
                    raise VirtqueueError(f"chain at {head} has more than {MAX_CHAIN} buffers")
                if buffers or flags & NEXT or not length or length % 16:
                    raise VirtqueueError(f"bad indirect descriptor ({length} bytes, "
                                         f"flags {flags:#x})")
                return self._indirect(guest(address, length), written)
            buffers.append((guest(address, length), bool(flags & WRITE)))
            if written is not None and flags & WRITE:
                written.append((address, length))
            if not flags & NEXT:
                return buffers
            at = at + 1 if at + 1 < size else 0
        if size > MAX_CHAIN:
            raise VirtqueueError(f"chain at {head} has more than {MAX_CHAIN} buffers")
        raise VirtqueueError(f"chain at {head} loops (longer than the ring)")

    def _indirect(self, entries: memoryview, written: list[tuple[int, int]] | None
                  ) -> list[tuple[memoryview, bool]]:
        """
        The buffers of an indirect table: every entry, in order.
        """
        buffers = []
        guest = self.memory.guest
        for offset in range(0, len(entries), 16):
            address, length, _, flags = DESCRIPTOR.unpack_from(entries, offset)
            buffers.append((guest(address, length), bool(flags & WRITE)))
            if written is not None and flags & WRITE:
                written.append((address, length))
        return buffers

    def put(self, head: int, written: int) -> None:
        """
        Give the chain just taken back, with C{written} bytes written to it:
        its used descriptor (id and length first, flags last), then skip
        its slots.
        """
        count, bufferId = self._taken
        at = self._used
        _LENGTH_ID.pack_into(self.table, 16 * at + 8, written, bufferId)
        flags = self._usedFlags | WRITE if written else self._usedFlags
        if self._held is None:
            self._held = (at, flags)
        else:
            self._words[8 * at + 7] = flags
        self._moved += count
        self._unlogged += count
        following = self._used + count
        if following >= self.size:
            following -= self.size
            self._usedWrap = not self._usedWrap
            self._usedFlags = AVAIL | USED if self._usedWrap else 0
        self._used = following

    def publish(self) -> None:
        """
        Make the chains put back visible to the guest: the first one's
        flags, held back until now (the driver takes used descriptors in
        order, so it sees none of them before).
        """
        if self._held is not None:
            at, flags = self._held
            self._held = None
            self._words[8 * at + 7] = flags

    def logUsed(self, log: DirtyLog, address: int) -> None:
        """
        Mark the device's event area (at guest address C{address}) and the
        descriptors used since the last call (where used descriptors are
        written), in C{log}.
        """
        log.mark(address, EVENT_AREA)
        start, count, size, table = self._logFrom, self._unlogged, self.size, self._tableAddress
        self._logFrom, self._unlogged = self._used, 0
        if count >= size:
            log.mark(table, 16 * size)
        elif start + count <= size:
            log.mark(table + 16 * start, 16 * count)
        else:
            log.mark(table + 16 * start, 16 * (size - start))
            log.mark(table, 16 * (start + count - size))

    def quietKicks(self, quiet: bool) -> None:
        """
        Ask the guest not to kick (while the device is taking chains anyway)
        or to kick again: for any chain, or (with event indexes) when it
        makes the next slot not yet seen available.
        """
        events = self._deviceWords
        if quiet:
            events[1] = EVENT_DISABLE
        elif self.eventIndex:
            events[0] = self._scan | self._scanWrap << 15
            events[1] = EVENT_DESC
            fence()  # seen before the next descriptor is read again
        else:
            events[1] = EVENT_ENABLE
            fence()

    def wantsInterrupt(self) -> bool:
        """
        Whether the guest asked to be told about the chains used since it
        was last considered: always, never, or (with event indexes) if a
        used descriptor went where its event area says.
        """
        fence()  # the used descriptors written before the guest's wish is read
        offWrap, flags = _ID_FLAGS.unpack_from(self.driverEvents, 0)
        size, old, moved, considered = self.size, self.signalled, self._moved, self.considered
        self.signalled, self._moved = self._used + size * self._usedWrap, 0
        self.considered = True
        if flags == EVENT_DISABLE:
            return False
        if flags != EVENT_DESC or not self.eventIndex or not considered:
            return True
        # slots are counted over two laps, the wrap counter telling them apart
        event = (offWrap & 0x7FFF) + size * (offWrap >> 15)
        return (event - old) % (2 * size) < moved
