"""
The two queues of a C{vhostuser:} guest: what QEMU said about each, the
eventfds, and moving frames through them.

Theory of operation
-------------------
A L{Ring} collects its size, start index and addresses from QEMU's
messages and starts when it has those, the guest memory and the eventfd
the guest kicks (QEMU's C{SET_VRING_KICK} comes last); C{GET_VRING_BASE}
stops it and returns where it got to.  A started ring is a
L{vtwisted.ports.virtqueue.SplitQueue}, or a
L{vtwisted.ports.packedring.PackedQueue} if the guest took packed rings:
the two have one interface, and the choice is made once, at the start.

The transmit ring (the guest's frames) is drained when its eventfd is
readable: the guest is asked not to kick meanwhile, every chain taken is
given back at once (nothing of the guest's is kept; one longer than a
64 KB packet unread, counted as C{oversize}), kicks are asked for
again before a last look, the used index is published once per batch and
the guest interrupted once, if it wants to be.  The receive ring is written to by
L{Ring.deliver}, one frame at a time (in 1024 buffers at most, over all
the chains it takes), each visible to the guest at once;
the interrupt comes once for all a reactor turn delivered, from a call
that runs before the reactor next waits.  While the guest migrates, the
pages written (receive buffers, used rings, or a packed ring's
descriptors) are marked in the dirty log after they are written.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.ports.packedring import PackedQueue
from vtwisted.ports.virtqueue import MAX_CHAIN, SplitQueue, VirtqueueError
from vtwisted.wire.vhostuser import RingAddresses

log = Logger()

#: Chains taken from the transmit ring per reactor turn.
TX_BUDGET = 256
#: Buffers walked on the transmit ring per reactor turn, at most (a chain
#: started is finished): ordinary chains have one to twenty, but a guest
#: could make each of L{TX_BUDGET} chains 1024 long.
TX_BUFFERS = 8192
#: The longest chain a guest transmits (a 64 KB packet, its Ethernet header
#: and a tag, behind a 12-byte virtio-net header; with the TAP's slack):
#: longer ones are dropped unread.
MAX_PACKET = 65536 + 12 + 4 + 64
#: Ring address flag: log the writes to the used ring (C{VHOST_VRING_F_LOG}).
LOG_USED = 1
_ONE = (1).to_bytes(8, "little")
#: A started queue, split or packed.
Queue = SplitQueue | PackedQueue


@implementer(IReadDescriptor)
class _Kicks:
    """
    The eventfd a guest kicks, watched by the reactor.
    """

    def __init__(self, fd: int, ring: Ring) -> None:
        self.fd = fd
        self.ring = ring

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.ring.kicked()

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return f"vhost-user kick {self.fd}"


class Ring:
    """
    One queue of a guest, as QEMU described it.
    """

    def __init__(self, link: Any, index: int) -> None:
        self.link = link
        self.index = index
        self.size = 0
        self.base = 0
        self.addresses: RingAddresses | None = None
        self.kick = -1
        self.call = -1
        self.queue: Queue | None = None
        #: Whether frames move (QEMU enables the rings it uses).
        self.enabled = False
        self._reader: _Kicks | None = None
        self._again: Any = None
        self._interrupting: Any = None

    def setKick(self, fd: int) -> None:
        """
        The guest's kicks come on C{fd} (-1: none): start the ring.
        """
        self.stop()
        if self.kick >= 0:
            os.close(self.kick)
        self.kick = fd
        self.restart()

    def setCall(self, fd: int) -> None:
        """
        Interrupt the guest through C{fd} (-1: never) from now on.
        """
        if self.call >= 0:
            os.close(self.call)
        self.call = fd

    def restart(self) -> None:
        """
        Start the ring if everything it needs is known (again, after the
        memory table changed).

        @raise VirtqueueError: the ring does not fit in the guest memory.
        """
        memory = self.link.memory
        if self.kick < 0 or memory is None or self.addresses is None or self.queue is not None:
            return
        a = self.addresses
        kind = PackedQueue if self.link.packed else SplitQueue
        self.queue = kind(memory, self.size, a.descriptors, a.available, a.used, self.base,
                          self.link.eventIndex)
        self._reader = _Kicks(self.kick, self)
        self.link.owner.reactor.addReader(self._reader)
        self.link.ringsChanged()
        self.kicked()

    def stop(self) -> None:
        """
        Stop processing; remember the index reached.
        """
        if self._reader is not None:
            self.link.owner.reactor.removeReader(self._reader)
            self._reader = None
        if self._again is not None and self._again.active():
            self._again.cancel()
        if self._interrupting is not None and self._interrupting.active():
            self._interrupting.cancel()  # frames went in this turn: the guest must hear
            self.interrupt()             # now, or never (QEMU then takes the ring over)
        self._again = self._interrupting = None
        if self.queue is not None:
            self.base = self.queue.lastAvail
            self.queue = None
            self.link.ringsChanged()

    def closeDescriptors(self) -> None:
        for fd in (self.kick, self.call):
            if fd >= 0:
                os.close(fd)
        self.kick = self.call = -1

    def interrupt(self) -> None:
        """
        Tell the guest that used chains are waiting, if it wants to know.
        """
        if self.call >= 0 and self.queue is not None and self.queue.wantsInterrupt():
            try:
                os.write(self.call, _ONE)
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    self.link.fail(f"interrupting the guest failed: {e.strerror} "
                                   f"(errno {e.errno})")

    # Transmit: the guest's frames

    def kicked(self) -> None:
        """
        The guest added chains: on the transmit ring, take them.
        """
        self._again = None
        if self.index & 1 and self.queue is not None:
            try:
                self._drain(self.queue)
            except VirtqueueError as e:
                self.link.fail(f"transmit queue: {e}")

    def _drain(self, queue: Queue) -> None:
        link = self.link
        port, receive, strip = link.port, link._receive, link.headerLength - 10
        taken = walked = 0
        queue.quietKicks(True)
        pending = queue.pending()
        if not pending:
            queue.quietKicks(False)
            pending = queue.pending()
        while pending and taken < TX_BUDGET and walked < TX_BUFFERS:
            for _ in range(min(pending, TX_BUDGET - taken)):
                if walked >= TX_BUFFERS:
                    break
                head = queue.take()
                chain = queue.chain(head)
                walked += len(chain)
                views = [view for view, writable in chain if not writable]
                # the frame is copied out before the chain is given back: once
                # the guest sees it used (a packed ring's flags), it may reuse it
                packet = _packet(views, strip) if self.enabled else None
                queue.put(head, 0)
                taken += 1
                if not self.enabled:
                    continue
                if not packet:
                    _dropped(port, packet, views)
                    continue
                try:
                    receive(port, packet)
                except Exception:
                    log.failure("{spec}: the switch failed on a frame", spec=link.owner.spec)
            pending = queue.pending()
            if not pending:  # kicks on again, then look once more: none is missed
                queue.quietKicks(False)
                pending = queue.pending()
        queue.publish()
        if link.logging:
            self._logUsed(queue)
        if taken:
            self.interrupt()
        if pending:
            self._again = link.owner.reactor.callLater(0, self.kicked)

    # Receive: frames for the guest

    def deliver(self, header: bytes, frame: Any) -> None:
        """
        Write a frame behind C{header} (10 bytes) into the guest's next
        receive buffers, or drop it.
        """
        queue = self.queue
        link = self.link
        if queue is None:
            return
        logged: list[tuple[int, int]] | None = [] if link.logging else None
        try:
            chains = self._buffersFor(queue, link.headerLength + len(frame), logged)
            if chains is None:
                return
            if link.headerLength > 10:
                header += len(chains).to_bytes(2, "little")
            counts = _scatter((header, frame), [buffers for _, buffers in chains])
            for (head, _), written in zip(chains, counts):
                queue.take()
                queue.put(head, written)
            queue.publish()
        except VirtqueueError as e:
            link.fail(f"receive queue: {e}")
            return
        if logged is not None:
            _logWritten(link.dirtyLog, logged, sum(counts))
            self._logUsed(queue)
        if self._interrupting is None:
            self._interrupting = link.owner.reactor.callLater(0, self._interruptNow)

    def _interruptNow(self) -> None:
        self._interrupting = None
        self.interrupt()

    def _logUsed(self, queue: Queue) -> None:
        """
        Log the writes to the used ring (a packed ring's descriptors and
        device area), if QEMU asked for them (at the guest address it gave
        for the ring, C{VHOST_VRING_F_LOG}).
        """
        addresses = self.addresses
        if addresses is not None and addresses.flags & LOG_USED:
            queue.logUsed(self.link.dirtyLog, addresses.log)

    def _buffersFor(self, queue: Queue, total: int,
                    logged: list[tuple[int, int]] | None = None,
                    ) -> list[tuple[int, list[memoryview]]] | None:
        """
        The chains (heads and writable buffers) the next C{total} bytes go
        into, or None (and the frame counted as dropped) if they do not fit;
        the buffers' guest addresses are appended to C{logged} if given.

        @raise VirtqueueError: a chain is malformed, or the frame needs more
            than L{MAX_CHAIN} buffers (chains of empty ones).
        """
        port = self.link.port
        available = queue.pending()
        chains: list[tuple[int, list[memoryview]]] = []
        room = walked = 0
        while room < total:
            if len(chains) == available or (chains and not self.link.mergeable):
                if not chains:
                    port.dropped("busy", "the guest has no receive buffers free")
                elif len(chains) == available and self.link.mergeable:
                    port.dropped("busy", "the guest has too few receive buffers free")
                else:
                    port.dropped("mtu", f"a frame of {total} bytes does not fit the guest's "
                                 f"receive buffer of {room}")
                return None
            head = queue.peek(len(chains))
            chain = queue.chain(head, logged)
            walked += len(chain)
            if walked > MAX_CHAIN:
                # as Linux's vhost: else a guest whose chains have a thousand
                # empty buffers each holds the switch for a minute a frame
                raise VirtqueueError(f"a frame of {total} bytes needs more than {MAX_CHAIN} "
                                     "receive buffers")
            buffers = [view for view, writable in chain if writable]
            chains.append((head, buffers))
            room += sum(len(b) for b in buffers)
        return chains


def _packet(views: list[memoryview], strip: int) -> bytes | None:
    """
    A transmitted chain as a 10-byte header and a frame: C{strip} bytes
    (C{num_buffers}) after the first 10 left out; None if it is too short,
    C{b""} if it is longer than L{MAX_PACKET} (and then not read).
    """
    if not views:
        return None
    first = views[0]
    if len(views) == 1:
        if len(first) > MAX_PACKET:
            return b""
    elif sum(map(len, views)) > MAX_PACKET:
        return b""
    if strip and len(first) >= 10 + strip:
        return b"".join((first[:10], first[10 + strip:], *views[1:]))
    data = b"".join(views)
    if len(data) < 10 + strip:
        return None
    return data[:10] + data[10 + strip:] if strip else data


def _logWritten(log: Any, buffers: list[tuple[int, int]], count: int) -> None:
    """
    Mark in C{log} the first C{count} bytes of C{buffers} (guest address and
    length, in the order they were filled): what was written, not all a
    guest's buffers hold.
    """
    for address, length in buffers:
        if count <= 0:
            return
        log.mark(address, min(length, count))
        count -= length


def _dropped(port: Any, packet: bytes | None, views: list[memoryview]) -> None:
    """
    Count a chain L{_packet} did not read.
    """
    if packet is None:
        port.dropped("malformed", "a frame shorter than its virtio-net header")
    else:
        port.dropped("oversize", f"a chain of {sum(map(len, views))} bytes, more than "
                     f"{MAX_PACKET}")


def _scatter(pieces: tuple[Any, ...], buffers: list[list[memoryview]]) -> list[int]:
    """
    Copy C{pieces} one after the other into the buffers of each chain in
    turn; return how many bytes each chain got.
    """
    sources = [memoryview(p) for p in pieces]
    index, offset = 0, 0
    counts = []
    for chain in buffers:
        count = 0
        for buffer in chain:
            at, size = 0, len(buffer)
            while at < size and index < len(sources):
                source = sources[index]
                n = min(size - at, len(source) - offset)
                buffer[at:at + n] = source[offset:offset + n]
                at += n
                offset += n
                count += n
                if offset == len(source):
                    index, offset = index + 1, 0
        counts.append(count)
    return counts
