"""
A fake QEMU and guest driver for the C{vhostuser:} port: guest memory in a
real memfd (which the link maps through the descriptor it is sent, as from
QEMU), real eventfds, virtio split rings laid out and filled as a Linux
guest driver does, and the vhost-user messages QEMU sends.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from typing import Any, cast

from twisted.internet.address import UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, globalLogPublisher

from vtwisted.portoptions import PortOptions
from vtwisted.ports.streamlinks import StreamPorts
from vtwisted.ports.vhostuser import OFFERED, VhostUserLink
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import vhostuser as vu

MEMORY = 4 << 20
#: Where the memory is in the fake QEMU's address space (ring addresses).
USER_BASE = 0x7F0000000000
QUEUE_SIZE = 64
DESC = struct.Struct("<QIHH")
NEXT, WRITE, INDIRECT = 1, 2, 4
#: Guest-physical layout: the rings (up to 4 pairs), then receive buffers
#: (4 KB each, a ring's 64 together), then transmit data.
RINGS = tuple(0x2000 * i for i in range(8))
RX_BUFFERS = 0x10000
SLOT = 0x1000
TX_DATA = 0x200000
#: Every feature the device offers by default: split rings (the fake's layout).
SPLIT = OFFERED
#: The ring layouts the fakes drive: L{FakeDriver} and L{packedfakes.PackedDriver}.
LAYOUTS = ("split", "packed")


class PeerTransport(StringTransport):
    """
    A transport whose handle is a real Unix socket, for the peer's credentials.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=UNIXAddress(None))
        self.ends = socket.socketpair()

    def getHandle(self) -> Any:
        return self.ends[0]


class FakeDriver:
    """
    QEMU and a guest driver with one queue pair, talking to a real
    L{VhostUserLink} plugged into a real switch.
    """

    def __init__(self, switch: Switch | None = None, reactor: Any = None,
                 pairs: int = 1, offered: int = OFFERED, offset: int = 0) -> None:
        """
        @param offset: where the guest memory starts in its memfd (sparse
            before it), the region's C{mmap_offset}.
        """
        self.switch = switch or Switch()
        self.reactor = reactor or MemoryReactorClock()
        self.owner = StreamPorts(self.switch, self.reactor, PortOptions(), "vhostuser:fake")
        self.owner.offeredFeatures = offered  # type: ignore[attr-defined]
        #: What the device offers (for tests that negotiate less of it).
        self.offered = offered
        self.link = VhostUserLink(self.owner)
        self.transport = PeerTransport()
        self.link.makeConnection(self.transport)
        self.memfd = os.memfd_create("fake-guest", os.MFD_ALLOW_SEALING)
        os.ftruncate(self.memfd, offset + MEMORY)
        self.offset = offset
        self.memory = mmap.mmap(self.memfd, MEMORY, offset=offset)
        self.rings = RINGS[:2 * pairs]
        self.kicks = [os.eventfd(0, os.EFD_NONBLOCK) for _ in self.rings]
        self.calls = [os.eventfd(0, os.EFD_NONBLOCK) for _ in self.rings]
        self.availIndex = [0] * len(self.rings)
        self.usedSeen = [0] * len(self.rings)
        self.freeDescriptor = [0] * len(self.rings)
        self.txAt = TX_DATA

    @property
    def port(self) -> Any:
        return self.link.port

    def close(self) -> None:
        if self.transport.connected:
            self.link.connectionLost(None)
        for fd in (*self.kicks, *self.calls):
            os.close(fd)
        self.memory.close()
        os.close(self.memfd)
        for end in self.transport.ends:
            end.close()

    # QEMU's side

    def send(self, request: int, payload: bytes = b"", fds: tuple[int, ...] = (),
             flags: int = vu.VERSION) -> bytes:
        """
        Send a message (with duplicates of C{fds}); return what came back.
        """
        self.transport.clear()
        for fd in fds:
            self.link.fileDescriptorReceived(os.dup(fd))
        self.link.dataReceived(vu.message(request, payload, flags))
        return self.transport.value()

    def negotiate(self, features: int = SPLIT, protocol: bool = True, base: int = 0,
                  enabledPairs: int | None = None) -> None:
        """
        What QEMU sends when the guest starts the device; the rings start at
        index C{base} (as after a restart), their used index too.
        """
        enabled = len(self.rings) if enabledPairs is None else 2 * enabledPairs
        self.resetRings(base)
        self.send(vu.GET_FEATURES)
        if protocol:
            self.send(vu.GET_PROTOCOL_FEATURES)
            self.send(vu.SET_PROTOCOL_FEATURES, vu.packNumber(0))
        self.send(vu.SET_OWNER)
        self.send(vu.SET_FEATURES, vu.packNumber(features))
        region = vu.Region(0, MEMORY, USER_BASE, self.offset)
        self.send(vu.SET_MEM_TABLE, vu.packTable([region]), (self.memfd,))
        for index, start in enumerate(self.rings):
            desc, avail, used = self.ringAddresses(start)
            self.send(vu.SET_VRING_NUM, vu.packState(index, QUEUE_SIZE))
            self.send(vu.SET_VRING_BASE, vu.packState(index, base))
            self.send(vu.SET_VRING_ADDR, vu.packAddresses(vu.RingAddresses(
                index, 0, USER_BASE + desc, USER_BASE + used, USER_BASE + avail, 0)))
            self.send(vu.SET_VRING_CALL, vu.packNumber(index), (self.calls[index],))
            self.send(vu.SET_VRING_KICK, vu.packNumber(index), (self.kicks[index],))
            if protocol:
                self.send(vu.SET_VRING_ENABLE, vu.packState(index, int(index < enabled)))

    def resetRings(self, base: int) -> None:
        """
        Lay the rings out as a driver would have them at index C{base}.
        """
        for ring in range(len(self.rings)):
            self.availIndex[ring] = self.usedSeen[ring] = base
            _, avail, used = self.ringAddresses(RINGS[ring])
            struct.pack_into("<H", self.memory, avail + 2, base)
            struct.pack_into("<H", self.memory, used + 2, base)

    @staticmethod
    def ringAddresses(base: int) -> tuple[int, int, int]:
        return base, base + 16 * QUEUE_SIZE, base + 0x1000

    # The guest's side

    def _descriptor(self, ring: int, address: int, length: int, flags: int,
                    following: int = 0) -> int:
        index = self.freeDescriptor[ring] % QUEUE_SIZE
        self.freeDescriptor[ring] += 1
        DESC.pack_into(self.memory, RINGS[ring] + 16 * index, address, length, flags, following)
        return index

    def _makeAvailable(self, ring: int, head: int) -> None:
        _, avail, _ = self.ringAddresses(RINGS[ring])
        slot = self.availIndex[ring] % QUEUE_SIZE
        struct.pack_into("<H", self.memory, avail + 4 + 2 * slot, head)
        self.availIndex[ring] = (self.availIndex[ring] + 1) & 0xFFFF
        struct.pack_into("<H", self.memory, avail + 2, self.availIndex[ring])

    def postReceiveBuffers(self, count: int, size: int = 2048, ring: int = 0,
                           pieces: int = 1) -> None:
        """
        Make C{count} receive buffers of C{size} bytes (4 KB at most)
        available on receive ring C{ring} (0, 2, ...), each a chain of
        C{pieces} descriptors.
        """
        assert size <= SLOT and size % pieces == 0
        step = size // pieces
        for _ in range(count):
            slot = (ring // 2) * QUEUE_SIZE + self.availIndex[ring] % QUEUE_SIZE
            start = RX_BUFFERS + slot * SLOT
            indexes = [(self.freeDescriptor[ring] + i) % QUEUE_SIZE for i in range(pieces)]
            for i in range(pieces):
                last = i == pieces - 1
                self._descriptor(ring, start + i * step, step, WRITE | (0 if last else NEXT),
                                 0 if last else indexes[i + 1])
            self._makeAvailable(ring, indexes[0])

    def transmit(self, header: bytes, frame: bytes, pieces: int = 1,
                 indirect: bool = False, ring: int = 1) -> None:
        """
        Put C{header} and C{frame} on the transmit ring (in C{pieces}
        descriptors, through an indirect table if asked) and kick.
        """
        spans = self._stage(header + frame, pieces)
        if indirect:
            table = self.txAt
            self.txAt += 4096
            for i, (at, length) in enumerate(spans):
                last = i == len(spans) - 1
                DESC.pack_into(self.memory, table + 16 * i, at, length, 0 if last else NEXT,
                               i + 1)
            head = self._descriptor(ring, table, 16 * len(spans), INDIRECT)
        else:
            indexes = [self.freeDescriptor[ring] + i for i in range(len(spans))]
            for i, (at, length) in enumerate(spans):
                last = i == len(spans) - 1
                self._descriptor(ring, at, length, 0 if last else NEXT,
                                 0 if last else indexes[i + 1] % QUEUE_SIZE)
            head = indexes[0] % QUEUE_SIZE
        self._makeAvailable(ring, head)
        self.kick(ring)

    def _stage(self, data: bytes, pieces: int) -> list[tuple[int, int]]:
        """
        Copy C{data} to the next page of the transmit area; return the
        (address, length) spans of its C{pieces} descriptors.
        """
        address = self.txAt
        self.memory[address:address + len(data)] = data
        self.txAt += (len(data) + 4095) & ~4095
        step = -(-len(data) // pieces)
        return [(address + i, min(step, len(data) - i)) for i in range(0, len(data), step)]

    def kick(self, ring: int = 1) -> None:
        os.eventfd_write(self.kicks[ring], 1)
        self.link.rings[ring].kicked()

    def used(self, ring: int) -> list[tuple[int, int]]:
        """
        The (head, length) pairs the device put back since the last call.
        """
        _, _, used = self.ringAddresses(RINGS[ring])
        index = struct.unpack_from("<H", self.memory, used + 2)[0]
        pairs = []
        while self.usedSeen[ring] != index:
            slot = self.usedSeen[ring] % QUEUE_SIZE
            pairs.append(struct.unpack_from("<II", self.memory, used + 4 + 8 * slot))
            self.usedSeen[ring] = (self.usedSeen[ring] + 1) & 0xFFFF
        return pairs

    def received(self, headerLength: int = 12, ring: int = 0) -> list[tuple[bytes, bytes]]:
        """
        The packets the device wrote to the receive ring: (header, frame),
        buffers joined as C{num_buffers} says.
        """
        packets = []
        pairs = self.used(ring)
        while pairs:
            data = self._filled(ring, *pairs.pop(0))
            count = int.from_bytes(data[10:12], "little") if headerLength == 12 else 1
            for _ in range(count - 1):
                data += self._filled(ring, *pairs.pop(0))
            packets.append((data[:headerLength], data[headerLength:]))
        return packets

    def _filled(self, ring: int, entry: int, length: int) -> bytes:
        """
        The C{length} bytes the device wrote to the buffer of used entry C{entry}.
        """
        data = b"".join(bytes(self.memory[a:a + n]) for a, n in self.buffers(ring, entry))
        return data[:length]

    def buffers(self, ring: int, entry: int) -> list[tuple[int, int]]:
        """
        The (address, length) pieces of the buffer a used entry names: in a
        split ring, the descriptor chain from head C{entry}.
        """
        pieces = []
        at = entry
        while True:
            address, length, flags, following = DESC.unpack_from(
                self.memory, RINGS[ring] + 16 * at)
            pieces.append((address, length))
            if not flags & NEXT:
                return pieces
            at = following

    def interrupted(self, ring: int) -> bool:
        """
        Whether the device signalled the ring's call eventfd (and clear it).
        """
        try:
            return os.eventfd_read(self.calls[ring]) > 0
        except BlockingIOError:
            return False


def makeDriver(layout: str, pairs: int = 1) -> FakeDriver:
    """
    A fake QEMU and guest driver with rings of C{layout} (one of L{LAYOUTS}),
    for tests whose behaviour is the same for both.
    """
    if layout == "split":
        return FakeDriver(pairs=pairs)
    assert layout == "packed", layout
    from packedfakes import PackedDriver

    return PackedDriver(pairs=pairs)


def kickClosesOnlyThatGuest(driver: FakeDriver, problem: str) -> None:
    """
    Kick the transmit ring a test broke and check what follows: one error
    logged with the port's spec and C{problem}, counted as malformed, the
    connection closed; the switch keeps forwarding between its other ports.
    """
    a, b = FakeLink(), FakeLink()
    plug(driver.switch, a)
    plug(driver.switch, b)
    events: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        driver.kick()
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    errors = [e for e in events if e.get("log_level") and e["log_level"].name == "error"]
    assert len(errors) == 1 and problem in errors[0]["problem"], errors
    assert errors[0]["spec"] == "vhostuser:fake"
    assert driver.transport.disconnecting
    assert driver.port.counters.drops["malformed"] == 1
    hello = frame(mac(2), mac(1))
    a.receive(hello)
    assert b.takeSent() == [hello]
