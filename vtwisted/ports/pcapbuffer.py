"""
Whole pcap records waiting to be written to one capture file, FIFO or
reader's connection, and how many of them got there.

Records are added whole and leave from the front as the descriptor takes
them.  A write that takes part of a record leaves the rest of it first in
line, so the stream a reader sees never holds half a record followed by
another one; only new records are ever refused, never the rest of one
begun.  The buffer knows the length of each record waiting, so the frames
written and those lost when the descriptor is closed with records still
waiting (a full disk, a reader gone) are counted exactly.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from vtwisted.ports.singlelink import SingleLinkService

#: How many bytes of records wait before they are written to a file, and
#: at most for a FIFO's reader.
BUFFER = 1 << 20


class CaptureLink:
    """
    What the links of the kinds of capture port (a file, a FIFO, a capture
    server) share:
    plugged in as a monitor of their port, plain frames only, unplugged by
    their service.
    """

    service: Any
    port: Any = None

    def monitoring(self) -> bool:
        """
        Whether the port should see every frame now.
        """
        return True

    def plug(self, switch: Any, port: Any) -> None:
        """
        Attach to C{port}, as a monitor if L{monitoring}.
        """
        self.port = port
        switch.attach(port, self)
        if self.monitoring():
            switch.setMonitor(port, True)

    def sendVnetPacket(self, packet: bytes) -> None:
        raise NotImplementedError("a capture port takes plain frames")

    def close(self) -> None:
        """
        Unplug from the switch (the file or FIFO stays open until the
        service stops).
        """
        self.service.unplug()


class CaptureService(SingleLinkService):
    """
    What the services of the capture ports share: their port stops
    monitoring as their link is unplugged.
    """

    def unplug(self) -> None:
        link = self.link
        if link is not None and link.port is not None:
            self.switch.setMonitor(link.port, False)
        super().unplug()


def droppedNote(lost: int) -> str:
    """
    What the last log line of a capture says of its frames dropped.
    """
    return f" ({lost} dropped, counted as busy)" if lost else ""


class RecordBuffer:
    """
    The records waiting for one descriptor, its file header first.

    @ivar pending: the bytes not written yet.
    @ivar frames: how many records were written whole.
    """

    def __init__(self, fd: int, header: bytes,
                 send: Callable[[bytearray], int] | None = None) -> None:
        """
        @param fd: the descriptor, owned from now on (see L{close}); C{-1}
            with C{send}.
        @param header: the file header, written before any record.
        @param send: what writes, in place of C{os.write} on C{fd}: takes
            the bytes pending, returns how many it took (a transport's
            C{write}, which takes them all).
        """
        self.fd = fd
        self._send = send or self._writeFd
        self.pending = bytearray(header)
        self.frames = 0
        #: The length of each record not written whole, oldest first.
        self._lengths: deque[int] = deque()
        #: Bytes of the header not written yet.
        self._header = len(header)
        #: Bytes of the oldest record already written.
        self._begun = 0

    def add(self, record: bytes) -> None:
        """
        Queue one whole record.
        """
        self.pending += record
        self._lengths.append(len(record))

    @property
    def waiting(self) -> int:
        """
        How many records are not written whole.
        """
        return len(self._lengths)

    def write(self) -> None:
        """
        Write what is pending, counting the records written whole.

        @raise OSError: the descriptor takes no more now (L{BlockingIOError}
            when a non-blocking descriptor is full); what it took is counted.
        """
        pending = self.pending
        while pending:
            n = self._send(pending)
            if n <= 0:
                return
            del pending[:n]
            self._took(n)

    def _writeFd(self, data: bytearray) -> int:
        return os.write(self.fd, data)

    def _took(self, n: int) -> None:
        """
        The descriptor took the first C{n} pending bytes.
        """
        header = min(n, self._header)
        self._header -= header
        n += self._begun - header
        lengths = self._lengths
        while lengths and n >= lengths[0]:
            n -= lengths.popleft()
            self.frames += 1
        self._begun = n

    def restart(self, header: bytes) -> int:
        """
        Begin a new stream on the same descriptor, for a new reader: the
        file header first, then the records not begun yet (the rest of a
        record partly written, which the old reader took the start of,
        would make no sense to the new one).

        @return: how many records were dropped (0 or 1).
        """
        skip, lost = self._header, 0
        if self._begun:
            skip += self._lengths.popleft() - self._begun
            lost = 1
        del self.pending[:skip]
        self.pending[:0] = header
        self._header = len(header)
        self._begun = 0
        self.frames = 0
        return lost

    def discard(self) -> int:
        """
        Forget what is pending (the descriptor is about to be closed).

        @return: how many records were lost (not written whole).
        """
        lost = len(self._lengths)
        self._lengths.clear()
        self.pending.clear()
        self._header = self._begun = 0
        return lost

    def close(self) -> None:
        """
        Close the descriptor (after L{discard}).

        @raise OSError: closing failed (the descriptor is released anyway).
        """
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
