"""
A live capture (C{pcap:FIFO}): the capture port's records written to a
FIFO that Wireshark or tcpdump reads as they come, without ever holding up
the switch.

Theory of operation
-------------------
The FIFO is opened for writing without blocking (C{O_NONBLOCK}): while no
reader has it open that fails (C{ENXIO}), and it is tried again once a
second (the service's clock).  Until a reader comes the port monitors
nothing, so the switch keeps its fast path.  Each reader gets a pcap file
header first, then the records of the frames read from then on.

Records wait in a L{RecordBuffer} (a megabyte at most) and are written
once per reactor turn, as many as the pipe takes.  When it takes no more
(C{EAGAIN}) the reactor says when it can; meanwhile, new records that do
not fit the buffer are dropped whole and counted as C{busy}, and the rest
of a record the pipe took part of is written first, so the stream stays
parseable however slow the reader.

The descriptor is also watched for reading, which on a pipe's writing end
only ever reports the error a pipe without readers raises: a reader that
goes away is noticed at once, even with no frame to write (else the next
reader would join the old pipe mid-stream, without a header).  A write
may report it too (C{EPIPE}: Python ignores C{SIGPIPE}, and so does
twistd).  The descriptor is closed, records still waiting are counted as
dropped, and the next reader gets a new stream.  It is closed first, before
the watch on the FIFO's opens (below), whose closing waits for the kernel
(some 15 ms), and before anything is logged: a reader that opens the FIFO
while the switch still holds it joins the old pipe, and would be handed
the end of its input (tcpdump started at once after the last one: 'truncated
dump file'); once it is closed, an open waits for the next stream.  The
reactor's report of the error is looked at again before the stream ends:
polled when the reader left, it may be handled after another opened the
FIFO.

Neither shows a reader that leaves while another opens the FIFO before the
switch looks (the same reactor turn, a busy or stopped switch): the new
reader would read on from the old stream.  So each stream also watches
the FIFO's opens and closes (L{vtwisted.ports.fifoopens}), read before
each write and after it.  A reader's close with another reader already
there is a hand-over: if the pipe is empty (C{FIONREAD} on the writing
end), nothing was written since the last look and the new reader has
not read since it opened the FIFO (no C{IN_ACCESS}: else it took what
the last one left, and the pipe is empty again), the new reader has read
nothing yet and gets a stream of its own on the same descriptor, header
first.
Otherwise it is reading the rest of the old stream, which no writer can
take back (a FIFO is one byte stream: whoever reads takes), and the log
says so.  A new reader is one whose open comes after the close: a reader
blocked in C{open} until the switch opened the FIFO is reported open only
after the switch's watch began, and two readers sharing the FIFO (each
reading a part of one stream) show as a close with no open after it,
which the log names too.  Once such a reader leaves, the next gets a
stream of its own as usual.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import struct
import termios
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.interfaces import ILink
from vtwisted.ports.fifoopens import IN_ACCESS, IN_CLOSE_NOWRITE, IN_OPEN, OpenWatch
from vtwisted.ports.pcapbuffer import BUFFER, CaptureLink, RecordBuffer, droppedNote
from vtwisted.wire import pcap

if TYPE_CHECKING:
    from vtwisted.ports.pcap import PcapService

log = Logger()


@implementer(ILink)
class FifoLink(CaptureLink):
    """
    A FIFO read live, as the link of a monitor port.

    @ivar out: the records waiting for the current reader (none: no reader).
    @ivar frames: how many frames reached readers whole.
    @ivar lost: how many were dropped (counted as C{busy} on the port).
    @ivar readers: how many readers have opened the FIFO.
    """

    module = "pcap"
    vnetHeader = False
    uid = None
    linkId = 0

    def __init__(self, service: PcapService) -> None:
        """
        Open the FIFO if a reader has it open, else wait for one.

        @raise OSError: it cannot be opened for another reason (naming the
            spec, the path and the errno).
        """
        self.service = service
        self.description = f"live capture to the FIFO {service.path}"
        self.port: Any = None
        self.out: RecordBuffer | None = None
        self.lost = 0
        self.readers = 0
        self._closedFrames = 0
        self._clock = service.reactor.seconds
        self._watcher = FifoWatcher(self)
        self._soon: Any = None
        self._blocked = False
        self._stopped = False
        #: The errnos of open failures logged so far.
        self._warned: set[int] = set()
        #: The current stream's watch on the FIFO's opens and closes.
        self._opens: OpenWatch | None = None
        #: Whether anything was written since the opens were last read (a
        #: reader's close read then may have come before what was written).
        self._wrote = False
        self._noWatch = False
        try:
            self._open()
        except OSError as e:
            raise OSError(e.errno, f"{service.spec}: cannot open {service.path}: "
                                   f"{e.strerror} (errno {e.errno})") from None
        if self.out is None:
            log.info("{spec}: waiting for a reader to open the FIFO {path} (tried every "
                     "second)", spec=service.spec, path=service.path)

    @property
    def frames(self) -> int:
        out = self.out
        return self._closedFrames + (out.frames if out is not None else 0)

    def _open(self) -> None:
        """
        Open the FIFO for its reader, if one has it open (else do nothing).

        @raise OSError: it cannot be opened for another reason.
        """
        path = self.service.path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "no longer a FIFO")
        self.out = RecordBuffer(fd, pcap.fileHeader(self.service.snaplen))
        self.readers += 1
        self._watchOpens()
        self.service.reactor.addReader(self._watcher)
        log.info("{spec}: a reader opened {path}: capturing", spec=self.service.spec,
                 path=path)
        if self.port is not None:
            self.service.switch.setMonitor(self.port, True)
        self._writeSoon()

    def _watchOpens(self) -> None:
        """
        Watch the FIFO's opens and closes for this stream, if inotify can
        (else say once that a reader swap goes unnoticed).
        """
        self._wrote = False
        try:
            self._opens = OpenWatch(self.service.path)
        except OSError as e:
            self._opens = None
            if not self._noWatch:
                self._noWatch = True
                log.warn("{spec}: cannot watch who opens {path} ({error}, errno {errno}): "
                         "a reader that opens it just as the last one leaves may join the "
                         "last stream", spec=self.service.spec, path=self.service.path,
                         error=e.strerror, errno=e.errno)

    def _checkOpens(self) -> None:
        """
        Read the opens and closes of the FIFO since the last look: a reader
        gone, handed over, or sharing the stream.
        """
        watch = self._opens
        if watch is None:
            return
        try:
            masks = watch.events()
        except OSError:
            masks = []
        wrote, self._wrote = self._wrote, False
        for i, mask in enumerate(masks):
            if self.out is None:
                return
            if mask & IN_CLOSE_NOWRITE:
                later = masks[i + 1:]
                opened = next((j for j, m in enumerate(later) if m & IN_OPEN), None)
                self._readerLeft(
                    wrote, opened is not None,
                    opened is not None and any(m & IN_ACCESS for m in later[opened + 1:]))

    def _readerLeft(self, wrote: bool, followed: bool, readSince: bool) -> None:
        """
        A reader closed the FIFO: if none has it now, the stream ends.  If
        one opened it after (C{followed}: its open is queued after this
        close), give it a stream of its own if it cannot have read the old
        one (the pipe empty, nothing written since the last look, and no
        read since it opened: C{readSince}), else say why not; if the one
        there opened it before, readers share the stream, which the log
        says.
        """
        out = self.out
        assert out is not None
        poller = select.poll()
        poller.register(out.fd, 0)
        if poller.poll(0):
            self.readerGone(None)
            return
        spec, path = self.service.spec, self.service.path
        if not followed:
            log.warn("{spec}: a reader of {path} left while another had it open too: "
                     "readers of one FIFO share one stream, each reading a part of it (the "
                     "later one from mid-stream, with no header)", spec=spec, path=path)
            return
        self.readers += 1
        unread = _unread(out.fd)
        if wrote or unread or readSince:
            left = ("it read what the last one left" if readSince and not unread else
                    f"{'?' if unread is None else unread} bytes of its stream unread in "
                    "the pipe")
            log.warn("{spec}: a reader opened {path} before the switch saw the last one "
                     "leave ({left}): it reads on from the last stream, with no header; "
                     "start it again", spec=spec, path=path, left=left)
            return
        log.info("{spec}: the reader of {path} went away after {n} frames and another "
                 "opened it at once: a stream of its own", spec=spec, path=path,
                 n=out.frames)
        self._closedFrames += out.frames
        self._drop(out.restart(pcap.fileHeader(self.service.snaplen)))

    def tick(self) -> None:
        """
        Every second: look for a reader if there is none.
        """
        if self.out is not None or self._stopped:
            return
        try:
            self._open()
        except OSError as e:
            if e.errno not in self._warned:
                self._warned.add(e.errno or 0)
                log.error("{spec}: cannot open {path}: {error} (errno {errno}); tried again "
                          "every second", spec=self.service.spec, path=self.service.path,
                          error=e.strerror, errno=e.errno)

    def sendFrame(self, frame: bytes) -> None:
        """
        Queue one frame's record for the reader; drop it (counted as
        C{busy}) if the reader lets a megabyte wait.
        """
        out = self.out
        if out is None:
            return
        data = pcap.record(self._clock(), frame, self.service.snaplen)
        if len(out.pending) + len(data) > BUFFER:
            self.lost += 1
            if self.port is not None:
                self.port.dropped("busy", f"{self.service.spec}: the reader of "
                                          f"{self.service.path} does not keep up")
            return
        out.add(data)
        if self._soon is None and not self._blocked:
            self._writeSoon()

    def _writeSoon(self) -> None:
        """
        Write what waits at the end of this reactor turn (one write for
        every frame of the turn).
        """
        if self._soon is None and not self._blocked:
            self._soon = self.service.reactor.callLater(0, self.write)

    def write(self) -> None:
        """
        Write what the pipe takes; if it is full, wait until it takes more.
        The FIFO's opens and closes are read just before (a reader handed
        over gets its header first) and just after (a reader that left
        while this was written is seen before anything more is).
        """
        self._soon = None
        self._checkOpens()
        out = self.out
        if out is None:
            return
        self._wrote = bool(out.pending)
        try:
            out.write()
        except BlockingIOError:
            if not self._blocked:
                self._blocked = True
                self.service.reactor.addWriter(self._watcher)
            self._checkOpens()
            return
        except OSError as e:
            self.readerGone(e)
            return
        if self._blocked:
            self._blocked = False
            self.service.reactor.removeWriter(self._watcher)
        self._checkOpens()

    def checkReader(self) -> None:
        """
        The descriptor reported an event: if the pipe lost its reader, so
        be it.
        """
        out = self.out
        if out is None:
            return
        poller = select.poll()
        poller.register(out.fd, 0)
        if poller.poll(0):
            self.readerGone(None)

    def reactorSawError(self) -> None:
        """
        The reactor reported the pipe's error when it polled, and dropped
        the descriptor from its watch.  A reader that opened the FIFO since
        (one started at once after the last one) is there now: read the
        opens and closes first, as before a write (a hand-over: the new
        reader gets a stream of its own, or the log says why not), and end
        the stream only if the pipe still has no reader; else watch the
        descriptor again.  Ending it then would hand that reader the end of
        its input, with nothing or the rest of the old stream before it.
        """
        out = self.out
        if out is None:
            return
        self._checkOpens()
        if self.out is not out:
            return
        self.checkReader()
        if self.out is out:
            reactor = self.service.reactor
            reactor.addReader(self._watcher)
            if self._blocked:
                reactor.addWriter(self._watcher)

    def readerGone(self, error: OSError | None) -> None:
        """
        The reader closed the FIFO (or writing failed with C{error}): close
        it, count the records it did not get, and wait for the next reader.
        """
        out = self.out
        if out is None:
            return
        # Closed first: a reader that opens the FIFO until then joins this
        # pipe and reads the end of its input (tcpdump started at once after
        # the last one: 'truncated dump file'); after, its open waits for
        # the next stream.  Closing the inotify watch waits for the kernel
        # (some 15 ms), logging may take a while too: both come after.
        self._release(out)
        self.out = None
        lost = out.discard()
        self._close(out)
        self._unwatchOpens()
        if self.port is not None:
            self.service.switch.setMonitor(self.port, False)
        why = "went away" if error is None or error.errno == errno.EPIPE else (
            f"cannot be written: {error.strerror} (errno {error.errno})")
        log.info("{spec}: the reader of {path} {why} after {n} frames{lost}; waiting for "
                 "the next reader", spec=self.service.spec, path=self.service.path, why=why,
                 n=out.frames, lost=droppedNote(lost))
        self._drop(lost)

    def _release(self, out: RecordBuffer) -> None:
        """
        Stop watching C{out}'s descriptor and writing to it (its opens and
        closes are watched until L{_unwatchOpens}).
        """
        reactor = self.service.reactor
        reactor.removeReader(self._watcher)
        if self._blocked:
            self._blocked = False
            reactor.removeWriter(self._watcher)
        if self._soon is not None:
            if self._soon.active():
                self._soon.cancel()
            self._soon = None
        self._closedFrames += out.frames

    def _unwatchOpens(self) -> None:
        """
        Stop watching the FIFO's opens and closes (after its descriptor is
        closed: closing an inotify instance waits for the kernel).
        """
        if self._opens is not None:
            self._opens.close()
            self._opens = None

    def _drop(self, count: int) -> None:
        """
        Count C{count} records lost with their reader as C{busy} drops.
        """
        self.lost += count
        if count and self.port is not None:
            self.port.counters.drops["busy"] += count

    def _close(self, out: RecordBuffer) -> None:
        try:
            out.close()
        except OSError:
            pass  # a pipe's close reports nothing that matters here

    def finish(self) -> None:
        """
        Write what the pipe takes now and close it (the service stops).
        """
        self._stopped = True
        out = self.out
        if out is not None:
            try:
                out.write()
            except OSError:
                pass
            self._release(out)
            self.out = None
            self._drop(out.discard())
            self._close(out)
        self._unwatchOpens()
        log.info("{spec}: {n} frames written to {path} for {readers}{lost}",
                 spec=self.service.spec, n=self.frames, path=self.service.path,
                 readers="1 reader" if self.readers == 1 else f"{self.readers} readers",
                 lost=droppedNote(self.lost))

    def monitoring(self) -> bool:
        """
        Whether a reader has the FIFO open (only then does the port monitor).
        """
        return self.out is not None


def _unread(fd: int) -> int | None:
    """
    How many bytes the pipe of C{fd} holds unread (C{None}: unknown).
    """
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])
    except OSError:
        return None


@implementer(IReadDescriptor, IWriteDescriptor)
class FifoWatcher:
    """
    The reactor's view of the FIFO's descriptor: writable again, or its
    reader gone.
    """

    def __init__(self, link: FifoLink) -> None:
        self.link = link

    def fileno(self) -> int:
        out = self.link.out
        return out.fd if out is not None else -1

    def doRead(self) -> None:
        """
        A writing end is never readable: select-based reactors say so when
        the pipe lost its reader.
        """
        self.link.checkReader()

    def doWrite(self) -> None:
        self.link.write()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw the pipe's error (and stopped watching the
        descriptor): the reader left, but another may have opened the FIFO
        since, which the link looks at before it ends the stream.
        """
        self.link.reactorSawError()

    def logPrefix(self) -> str:
        return self.link.service.spec
