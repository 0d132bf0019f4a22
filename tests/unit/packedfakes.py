"""
A fake QEMU and guest driver for the C{vhostuser:} port with packed rings
(VIRTIO 1.1, 2.7): L{vhostfakes.FakeDriver}'s memory, eventfds and
messages, with each ring laid out and filled as Linux's packed-ring driver
does (chains written from where the driver got to, the head's flags last,
wrap counters flipping at the end of the ring).
"""

from __future__ import annotations

import struct

from vhostfakes import DESC, QUEUE_SIZE, RINGS, RX_BUFFERS, SLOT, FakeDriver

from vtwisted.ports.packedring import AVAIL, USED
from vtwisted.ports.vhostuser import PACKED_OFFERED
from vtwisted.ports.virtqueue import INDIRECT, NEXT, WRITE

#: The state QEMU sends for a fresh packed ring: slot 0, both wrap counters set.
FRESH = 0x8000 | 0x8000 << 16
_ID_FLAGS = struct.Struct("<HH")


def state(slot: int, wrap: bool) -> int:
    """
    A ring state as GET_VRING_BASE and SET_VRING_BASE carry it, with the
    used slot and wrap counter equal to the available ones.
    """
    half = slot | int(wrap) << 15
    return half | half << 16


class PackedDriver(FakeDriver):
    """
    QEMU and a guest driver using packed rings.

    @ivar slot: per ring, the driver's next slot and wrap counter.
    @ivar usedSlot: per ring, the next used descriptor it looks for.
    @ivar chains: per ring, each outstanding buffer id's slots and buffers.
    """

    def __init__(self, pairs: int = 1) -> None:
        super().__init__(pairs=pairs, offered=PACKED_OFFERED)
        count = len(self.rings)
        self.slot = [(0, True)] * count
        self.usedSlot = [(0, True)] * count
        self.nextId = [0] * count
        self.chains: list[dict[int, tuple[int, list[tuple[int, int]]]]] = [
            {} for _ in range(count)]

    def negotiate(self, features: int = PACKED_OFFERED, protocol: bool = True, base: int = FRESH,
                  enabledPairs: int | None = None) -> None:
        super().negotiate(features, protocol, base, enabledPairs)

    def resetRings(self, base: int) -> None:
        """
        Lay out each ring as a driver that got to the slot and wrap counter
        of C{base} would have it: every descriptor used, those before the
        slot in this lap and the others in the last one.
        """
        slot, wrap = base & 0x7FFF, bool(base & 0x8000)
        for ring in range(len(self.rings)):
            self.slot[ring] = self.usedSlot[ring] = (slot, wrap)
            desc, avail, used = self.ringAddresses(RINGS[ring])
            for at in range(QUEUE_SIZE):
                lap = wrap if at < slot else not wrap
                DESC.pack_into(self.memory, desc + 16 * at, 0, 0, 0, AVAIL | USED if lap else 0)
            self.memory[avail:avail + 4] = bytes(4)
            self.memory[used:used + 4] = bytes(4)

    def makeAvailable(self, ring: int, spans: list[tuple[int, int, int]]) -> int:
        """
        Write a chain of (address, length, flags) descriptors from the
        driver's next slot, the head's flags last; return its buffer id.
        """
        bufferId = self.nextId[ring] % QUEUE_SIZE
        self.nextId[ring] += 1
        desc = RINGS[ring]
        at, wrap = self.slot[ring]
        writes = []
        for i, (address, length, flags) in enumerate(spans):
            flags |= (AVAIL if wrap else USED) | (NEXT if i < len(spans) - 1 else 0)
            writes.append((at, address, length, flags))
            at += 1
            if at == QUEUE_SIZE:
                at, wrap = 0, not wrap
        self.slot[ring] = (at, wrap)
        for slot, address, length, flags in writes[1:] + writes[:1]:
            DESC.pack_into(self.memory, desc + 16 * slot, address, length, bufferId, flags)
        self.chains[ring][bufferId] = (len(spans), [(a, n) for a, n, _ in spans])
        return bufferId

    def postReceiveBuffers(self, count: int, size: int = 2048, ring: int = 0,
                           pieces: int = 1) -> None:
        """
        Make C{count} receive buffers of C{size} bytes (4 KB at most)
        available on receive ring C{ring}, each a chain of C{pieces}
        descriptors.
        """
        assert size <= SLOT and size % pieces == 0
        step = size // pieces
        for _ in range(count):
            start = RX_BUFFERS + ((ring // 2) * QUEUE_SIZE + self.nextId[ring] % QUEUE_SIZE) * SLOT
            self.makeAvailable(ring, [(start + i * step, step, WRITE) for i in range(pieces)])

    def transmit(self, header: bytes, frame: bytes, pieces: int = 1, indirect: bool = False,
                 ring: int = 1, kick: bool = True) -> None:
        """
        Put C{header} and C{frame} on the transmit ring (in C{pieces}
        descriptors, through an indirect table if asked) and kick, if asked.
        """
        spans = self._stage(header + frame, pieces)
        if indirect:
            table = self.txAt
            self.txAt += 4096
            for i, (at, length) in enumerate(spans):
                DESC.pack_into(self.memory, table + 16 * i, at, length, 0, 0)
            self.makeAvailable(ring, [(table, 16 * len(spans), INDIRECT)])
        else:
            self.makeAvailable(ring, [(at, length, 0) for at, length in spans])
        if kick:
            self.kick(ring)

    def used(self, ring: int) -> list[tuple[int, int]]:
        """
        The (buffer id, length) pairs the device put back since the last
        call, each chain's slots skipped as the driver does.
        """
        desc = RINGS[ring]
        pairs = []
        at, wrap = self.usedSlot[ring]
        while True:
            _, length, bufferId, flags = DESC.unpack_from(self.memory, desc + 16 * at)
            if flags & (AVAIL | USED) != (AVAIL | USED if wrap else 0):
                break
            pairs.append((bufferId, length))
            at += self.chains[ring][bufferId][0]
            if at >= QUEUE_SIZE:
                at, wrap = at - QUEUE_SIZE, not wrap
        self.usedSlot[ring] = (at, wrap)
        return pairs

    def buffers(self, ring: int, entry: int) -> list[tuple[int, int]]:
        """
        The (address, length) pieces of the buffer a used descriptor names:
        in a packed ring, those the driver made available under buffer id
        C{entry} (now free again).
        """
        return self.chains[ring].pop(entry)[1]

    def setDriverEvents(self, ring: int, flags: int, offWrap: int = 0) -> None:
        """
        Write the driver's event suppression area: when to interrupt.
        """
        _, avail, _ = self.ringAddresses(RINGS[ring])
        _ID_FLAGS.pack_into(self.memory, avail, offWrap, flags)

    def deviceEvents(self, ring: int) -> tuple[int, int]:
        """
        The device's event suppression area: (offset and wrap, flags).
        """
        _, _, used = self.ringAddresses(RINGS[ring])
        offWrap, flags = _ID_FLAGS.unpack_from(self.memory, used)
        return offWrap, flags
