"""
A capture port (C{pcap:PATH}): every frame any other port of the switch
reads, written to a libpcap file that tcpdump, tshark and Wireshark read.

Theory of operation
-------------------
The port is a monitor (L{vtwisted.switch.Switch.setMonitor}): the switch
hands it a copy of each frame as it was read, before VLAN processing, from
every port and VLAN; the port is a member of no VLAN, so it gets nothing
else.  While a monitor is plugged in the switch remembers no routes, so
every frame takes the switch's slower path: capturing costs throughput, as
it does on any switch's mirror port.  The link takes no virtio-net header,
so TCP super-frames from offload TAPs are cut into the frames a wire would
carry.  Records wait in a L{RecordBuffer} and are written once a megabyte
waits, once a second, and when the port stops, so the frames written and
those lost (a full disk) are counted exactly; C{snaplen=} keeps only the
first bytes of each frame.  A C{PATH} that is a FIFO is a live capture
(L{vtwisted.ports.pcapfifo}), never allowed to hold up the switch.

C{pcap:listen:ENDPOINT} is a capture server instead, each reader with a
stream of its own (L{vtwisted.ports.pcaplisten}).

C{maxsize=MB} bounds the file (in millions of bytes, as tcpdump's C{-C}):
frames that would not fit are dropped and counted as C{busy}, unless
C{files=N} asks for a ring of N files, as C{tcpdump -C -W} keeps: the full
file becomes C{PATH.1} (the one before C{PATH.2}, and so on, the oldest
dropped) and a new C{PATH} starts.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.interfaces import ILink, IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.pcapbuffer import (
    BUFFER,
    CaptureLink,
    CaptureService,
    RecordBuffer,
    droppedNote,
)
from vtwisted.ports.pcapfifo import FifoLink
from vtwisted.spec import PortSpec
from vtwisted.vlans import NOVLAN
from vtwisted.wire import pcap

if TYPE_CHECKING:
    from vtwisted.ports.pcaplisten import PcapListener

log = Logger()

DEFAULT_SNAPLEN = 262144
#: No size limit.
UNLIMITED = 1 << 62


@implementer(ILink)
class PcapLink(CaptureLink):
    """
    The capture file, as the link of a monitor port.

    @ivar frames: how many frames reached the files whole.
    @ivar lost: how many were dropped (counted as C{busy} on the port).
    """

    module = "pcap"
    vnetHeader = False
    uid = None
    linkId = 0

    def __init__(self, service: PcapService, fd: int) -> None:
        self.service = service
        self.description = f"capture to {service.path}"
        self.port: Any = None
        self.lost = 0
        #: Frames written whole to the files of a ring closed so far.
        self._closedFrames = 0
        #: Whether writing failed: frames are dropped until a flush works.
        self._failing = False
        #: The errnos of write failures logged so far.
        self._warned: set[int] = set()
        self._clock = service.reactor.seconds
        self._useFile(fd)

    @property
    def frames(self) -> int:
        return self._closedFrames + self.out.frames

    def _useFile(self, fd: int) -> None:
        """
        Write to C{fd}, a new empty file, from now on.
        """
        self.out = RecordBuffer(fd, pcap.fileHeader(self.service.snaplen))
        self.written = pcap.FILE_HEADER_LENGTH

    def sendFrame(self, frame: bytes) -> None:
        """
        Record one frame; write the records once a megabyte waits.
        """
        if self._failing:
            self._lose(1)
            return
        data = pcap.record(self._clock(), frame, self.service.snaplen)
        if self.written + len(data) > self.service.maxSize:
            self._full(data)
            return
        out = self.out
        out.add(data)
        self.written += len(data)
        if len(out.pending) >= BUFFER:
            self.flush()

    def _cannotWrite(self, e: OSError, doing: str = "") -> None:
        """
        The file cannot be written (or the next one of a ring started,
        C{doing}): log it once per errno, and drop frames (counted as
        C{busy}, not logged again) without trying to write them until a
        flush succeeds again (L{flush}, every second).
        """
        if e.errno not in self._warned:
            self._warned.add(e.errno or 0)
            doing = doing or f"write {self.service.path}"
            where = f" ({e.filename})" if e.filename else ""
            log.error("{spec}: cannot {doing}: {error} (errno {errno}){where}; frames are "
                      "dropped (counted as busy) until it can be written again (tried every "
                      "second)", spec=self.service.spec, doing=doing, error=e.strerror,
                      errno=e.errno, where=where)
        self._failing = True

    def _full(self, data: bytes) -> None:
        """
        The file has no room for C{data}: start the next file if there are
        several, else drop the frame (counted as C{busy}).
        """
        service = self.service
        if service.files > 1 and self.written > pcap.FILE_HEADER_LENGTH:
            try:
                service.rotate()
                fd = service.openFile()
            except OSError as e:
                self._cannotWrite(e, "start the next capture file")
                self._lose(1)
                return
            self._closeFile()
            self._useFile(fd)
            self.out.add(data)
            self.written += len(data)
            return
        if self.port is not None:
            self.lost += 1
            self.port.dropped("busy", f"{service.spec}: the capture file is full "
                                      f"(maxsize={service.maxSize // 1000000} MB)")

    def _lose(self, count: int) -> None:
        """
        Count C{count} frames dropped as C{busy}, without logging them.
        """
        self.lost += count
        if count and self.port is not None:
            self.port.counters.drops["busy"] += count

    def flush(self) -> None:
        """
        Write the records waiting; if writing had failed and now succeeds,
        record frames again.
        """
        try:
            self.out.write()
        except OSError as e:
            self._cannotWrite(e)
            return
        if self._failing:
            self._failing = False
            log.info("{spec}: writing {path} again", spec=self.service.spec,
                     path=self.service.path)

    tick = flush

    def _closeFile(self) -> None:
        """
        Write what waits and close the current file; records that cannot
        be written are logged and counted as lost.
        """
        out = self.out
        try:
            out.write()
        except OSError as e:
            if e.errno not in self._warned:  # else said, and the drops are in the last line
                log.error("{spec}: cannot write {path}: {error} (errno {errno}); the capture "
                          "misses its last {n} frames", spec=self.service.spec,
                          path=self.service.path, error=e.strerror, errno=e.errno,
                          n=out.waiting)
        self._closedFrames += out.frames
        self._lose(out.discard())
        try:
            out.close()
        except OSError as e:
            log.error("{spec}: cannot close {path}: {error} (errno {errno})",
                      spec=self.service.spec, path=self.service.path, error=e.strerror,
                      errno=e.errno)
        self.out = RecordBuffer(-1, b"")

    def finish(self) -> None:
        """
        Write what waits and close the file (the service stops).
        """
        self._closeFile()
        log.info("{spec}: {n} frames written to {path}{lost}", spec=self.service.spec,
                 n=self.frames, path=self.service.path, lost=droppedNote(self.lost))


@implementer(IPortService)
class PcapService(CaptureService):
    """
    The service of one C{pcap:} spec.
    """

    def __init__(self, switch: Any, reactor: Any, path: str, snaplen: int,
                 options: PortOptions, spec: str, maxSize: int = UNLIMITED,
                 files: int = 1, fifo: bool = False) -> None:
        """
        @param fifo: whether C{path} is a FIFO (a live capture).
        """
        super().__init__(switch, reactor, options, spec)
        self.path = path
        self.snaplen = snaplen
        self.maxSize = maxSize
        self.files = files
        self.fifo = fifo
        self.link: PcapLink | FifoLink | None = None
        self._flusher: LoopingCall | None = None

    def bound(self) -> bool:
        return self.link is not None

    def bind(self) -> None:
        self.link = FifoLink(self) if self.fifo else PcapLink(self, self.openFile())

    def openFile(self) -> int:
        """
        Open the capture file afresh, empty.

        @raise OSError: naming the spec, the path and the errno.
        """
        try:
            return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                           0o666)
        except OSError as e:
            raise OSError(e.errno, f"{self.spec}: cannot write {self.path}: {e.strerror} "
                                   f"(errno {e.errno})") from None

    def rotate(self) -> None:
        """
        Keep the full file as C{PATH.1}, older ones as C{PATH.2}... up to
        C{files} in all, the oldest dropped.
        """
        for number in range(self.files - 1, 0, -1):
            older = self.path if number == 1 else f"{self.path}.{number - 1}"
            try:
                os.replace(older, f"{self.path}.{number}")
            except FileNotFoundError:
                pass

    def startService(self) -> None:
        super().startService()
        assert self.link is not None
        self._flusher = LoopingCall(self.link.tick)
        self._flusher.clock = self.reactor
        self._flusher.start(1.0, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        link = self.link
        if link is not None:
            link.finish()  # while plugged in: frames it loses are counted on the port
        self.unplug()
        self.link = None
        return None


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> PcapService | PcapListener:
    """
    Build the service for C{pcap:PATH[:snaplen=N][:maxsize=MB[:files=N]][:port=N]},
    or for C{pcap:listen:ENDPOINT} (a capture server,
    L{vtwisted.ports.pcaplisten}; a file named C{listen} is C{pcap:./listen}).
    """
    if spec.args and spec.args[0] == "listen":
        from vtwisted.ports import pcaplisten

        return pcaplisten.makeService(switch, spec, reactor)
    (path,) = spec.positional(["path"], 1)
    if not path:
        raise spec.error("needs a file to write, pcap:/tmp/lan.pcap")
    snaplen = spec.integer("snaplen", DEFAULT_SNAPLEN, 64, DEFAULT_SNAPLEN)
    assert snaplen is not None
    number = spec.integer("port", None, 0, 65535)
    megabytes = spec.integer("maxsize", None, 1, 1 << 30)
    files = spec.integer("files", 1, 1, 1000)
    assert files is not None
    if files > 1 and megabytes is None:
        raise spec.error("files= needs maxsize= (the size at which the next file starts)")
    spec.checkKeywords()
    path = os.path.abspath(path)
    fifo = isFifo(path)
    if fifo and (megabytes is not None or files > 1):
        raise spec.error(f"{path} is a FIFO (a live capture, read as it is written): "
                         "maxsize= and files= bound capture files, not FIFOs")
    # A member of no VLAN: the port gets the monitor's copies and nothing else.
    return PcapService(switch, reactor, path, snaplen,
                       PortOptions(number=number, vlan=NOVLAN), spec.text,
                       UNLIMITED if megabytes is None else megabytes * 1000000, files, fifo)


def isFifo(path: str) -> bool:
    """
    Whether C{path} is a FIFO (made with C{mkfifo}).
    """
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False
