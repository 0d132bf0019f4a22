"""
A live capture server (C{pcap:listen:ENDPOINT}): every reader that
connects gets a libpcap stream of its own, header first, then the records
of every frame the switch reads from then on.

Theory of operation
-------------------
The spec is one switch port, a monitor (as C{pcap:PATH} is, see
L{vtwisted.ports.pcap}) that is a member of no VLAN, and a listening
Twisted server endpoint (C{unix:PATH}, made 0600 unless C{mode=} says
otherwise, a stale socket replaced; C{tcp:PORT}, on the loopback address
unless C{interface=} says otherwise, since a reader sees the whole LAN),
read and opened as C{qemu:listen:} and C{cable:listen:} do
(L{vtwisted.ports.streamspec}, L{vtwisted.sockettools.listenNow}).  The
port monitors only while at least one reader is connected: with none, the
switch remembers routes and forwards at full speed.

Each reader is a L{CaptureReader}: a connection whose records wait in a
L{RecordBuffer} of its own that hands them to the connection's transport
whole.  A frame's record is made once and queued for every reader; the
queues are handed over once per reactor turn (or 64 KiB at a time, in a
long turn).  The reader is the
transport's streaming producer: when the transport holds more than it
sends at once (Twisted's C{bufferSize}) it pauses the reader, whose
records then wait in its buffer, up to L{BUFFER} bytes; a record that
would not fit is dropped whole and counted (on the reader and as C{busy}
on the port, the first drop logged once per reader).  When the transport
has sent everything it resumes the reader, who hands it what waits.  So a
reader holds at most twice L{BUFFER}, never holds up the switch, and
never sees half a record.

A reader who closes (or half-closes: the switch takes an end of its
reading as the reader leaving, and says so, since plain C{socat -} does it
when its input ends; anything it sends is ignored) frees its
buffer; its records not handed over are counted as dropped.  At most
L{MAX_READERS} are connected at once: more are closed at once, logged once
until one connects again.  When the service stops, what waits is handed
to each reader before its connection is closed, so each stream ends whole.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.closing import GracefulClose
from vtwisted.impair import ALL_KEYWORDS as IMPAIRMENTS
from vtwisted.interfaces import ILink, IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.pcapbuffer import (
    BUFFER,
    CaptureLink,
    CaptureService,
    RecordBuffer,
    droppedNote,
)
from vtwisted.ports.streamspec import readStreamSpec
from vtwisted.sockettools import addressText, describePeer, listenNow, stopListeningNow
from vtwisted.spec import PortSpec
from vtwisted.vlans import NOVLAN
from vtwisted.wire import pcap

log = Logger()

#: How many bytes of records a reader that keeps up is handed at once, even
#: before the reactor turn ends (a burst from many ports at once).
HANDOVER = 1 << 16

#: How many readers may be connected at once.
MAX_READERS = 64

#: Options of other port types that a capture port refuses, as C{pcap:PATH}
#: does: it sees every frame of every VLAN, as read.
REFUSED = ("vlan", "trunk", "mtu", "keepalive", *IMPAIRMENTS)


@implementer(IPushProducer, IHalfCloseableProtocol)
class CaptureReader(Protocol):
    """
    One reader's connection and the records waiting for it.

    @ivar frames: how many records were handed to its connection.
    @ivar dropped: how many found no room and were dropped.
    """

    def __init__(self, link: ListenLink) -> None:
        self.link = link
        self.peer = "reader"
        self.paused = False
        self.dropped = 0
        #: Whether it left by closing its sending half (L{readConnectionLost}).
        self.halfClosed = False
        self.out = RecordBuffer(-1, pcap.fileHeader(link.service.snaplen), self._send)
        #: Its closing when the service stops or it stops sending: a reader
        #: that reads nothing more is aborted after a grace (L{vtwisted.closing}).
        self.closing = GracefulClose(link.service.reactor)

    @property
    def frames(self) -> int:
        return self.out.frames

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeer()
        try:
            self.peer = describePeer(peer, transport.getHandle())[1]
        except (AttributeError, OSError):
            self.peer = addressText(peer)
        transport.registerProducer(self, True)
        self.link.readerJoined(self)
        self.flush()  # the header

    def _send(self, data: bytearray) -> int:
        transport = self.transport
        assert transport is not None
        transport.write(bytes(data))
        return len(data)

    def add(self, record: bytes) -> None:
        """
        Queue one whole record, or drop it if the reader lets L{BUFFER}
        bytes wait.
        """
        out = self.out
        if len(out.pending) + len(record) <= BUFFER:
            out.add(record)
            if len(out.pending) >= HANDOVER:
                self.flush()
            return
        self.dropped += 1
        self.link.lose(1)
        if self.dropped == 1:
            log.warn("{spec}: the reader {peer} does not keep up: records that find no room "
                     "(a megabyte waits) are dropped whole, counted as busy (said once per "
                     "reader)", spec=self.link.service.spec, peer=self.peer)

    def flush(self) -> None:
        """
        Hand what waits to the connection, unless it is paused.
        """
        if not self.paused and self.out.pending and self.connected:
            self.out.write()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.flush()

    def stopProducing(self) -> None:
        """
        The connection ends (L{connectionLost} follows).
        """

    def dataReceived(self, data: bytes) -> None:
        """
        A reader has nothing to say: what it sends is ignored.
        """

    def readConnectionLost(self) -> None:
        """
        The reader's sending half ended: it closed, or closed that half
        alone, as plain C{socat -} does when its standard input ends.
        Either way it is taken as gone; in the second (told apart on a
        Unix socket only, L{_halfClosed}) the log says why.
        """
        self.halfClosed = _halfClosed(self.transport)
        if self.transport is not None:  # what waits is sent first, within the grace
            self.closing.close(self.transport, f"{self.link.service.spec}: {self.peer}")

    def writeConnectionLost(self) -> None:
        """
        The switch never closes its sending half alone.
        """

    def finish(self) -> None:
        """
        The service stops: hand over what waits, paused or not, and close.
        """
        if self.connected and self.transport is not None:
            self.paused = False
            self.flush()
            self.closing.close(self.transport, f"{self.link.service.spec}: {self.peer}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing.lost()
        self.connected = False
        self.link.readerLeft(self)


class ReaderFactory(Factory):
    """
    Makes a L{CaptureReader} for each connection, up to L{MAX_READERS}.
    """

    noisy = False

    def __init__(self, link: ListenLink) -> None:
        self.link = link
        self._full = False

    def buildProtocol(self, addr: Any) -> CaptureReader | None:
        link = self.link
        if link.port is None:
            return None  # unplugged: nothing to capture
        if len(link.readers) >= MAX_READERS:
            if not self._full:
                self._full = True
                log.warn("{spec}: {n} readers are connected, the most there may be: more "
                         "are closed at once (said once until one connects again)",
                         spec=link.service.spec, n=len(link.readers))
            return None
        self._full = False
        return CaptureReader(link)


@implementer(ILink)
class ListenLink(CaptureLink):
    """
    A capture server, as the link of a monitor port.

    @ivar readers: the readers connected now.
    @ivar frames: how many records were handed to readers' connections (a
        frame sent to two readers counts twice).
    @ivar lost: how many records were dropped (counted as C{busy}).
    """

    module = "pcap"
    vnetHeader = False
    uid = None
    linkId = 0

    def __init__(self, service: PcapListener) -> None:
        self.service = service
        self.port: Any = None
        self.readers: list[CaptureReader] = []
        self.lost = 0
        self.served = 0
        self._closedFrames = 0
        self._clock = service.reactor.seconds
        self._soon: Any = None

    @property
    def description(self) -> str:
        n = len(self.readers)
        return (f"live capture server on {self.service.address}: "
                f"{n} reader{'' if n == 1 else 's'}")

    @property
    def frames(self) -> int:
        return self._closedFrames + sum(reader.frames for reader in self.readers)

    def monitoring(self) -> bool:
        """
        Whether a reader is connected (only then does the port monitor).
        """
        return bool(self.readers)

    def sendFrame(self, frame: bytes) -> None:
        """
        Queue one frame's record for every reader; hand the queues over at
        the end of the reactor turn.
        """
        readers = self.readers
        if not readers:
            return
        data = pcap.record(self._clock(), frame, self.service.snaplen)
        for reader in readers:
            reader.add(data)
        if self._soon is None:
            self._soon = self.service.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Hand every reader's records to its connection.
        """
        self._soon = None
        for reader in self.readers:
            reader.flush()

    def lose(self, count: int) -> None:
        """
        Count C{count} records dropped as C{busy} on the port.
        """
        self.lost += count
        if count and self.port is not None:
            self.port.counters.drops["busy"] += count

    def readerJoined(self, reader: CaptureReader) -> None:
        """
        A reader connected: the first one turns the monitor on.
        """
        self.readers.append(reader)
        self.served += 1
        if len(self.readers) == 1 and self.port is not None:
            self.service.switch.setMonitor(self.port, True)
        log.info("{spec}: {peer} connected: capturing for {n}", spec=self.service.spec,
                 peer=reader.peer, n=_readers(len(self.readers)))

    def readerLeft(self, reader: CaptureReader) -> None:
        """
        A reader's connection ended: free its records (those not handed
        over counted as dropped); the last one turns the monitor off.
        """
        if reader not in self.readers:
            return
        self.readers.remove(reader)
        out = reader.out
        unsent = out.discard()
        reader.dropped += unsent
        self.lose(unsent)
        self._closedFrames += out.frames
        if not self.readers and self.port is not None:
            self.service.switch.setMonitor(self.port, False)
        left = _readers(len(self.readers)) if self.readers else "no reader: capture off"
        why = (" (it closed its sending half, as socat without -u does when its input ends: "
               "read with socat -u)" if reader.halfClosed else "")
        log.info("{spec}: {peer} left after {n} frames{lost}{why}; {left}",
                 spec=self.service.spec, peer=reader.peer, n=out.frames,
                 lost=droppedNote(reader.dropped), why=why, left=left)

    def finish(self) -> None:
        """
        End every reader's stream whole (the service stops), and say how
        many frames they got.
        """
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        for reader in list(self.readers):
            reader.finish()
        if self.port is None:
            return  # never plugged in (its spec refused): nothing was told of it
        log.info("{spec}: {n} frames sent to {readers}{lost}", spec=self.service.spec,
                 n=self.frames, readers=_readers(self.served), lost=droppedNote(self.lost))


def _halfClosed(transport: Any) -> bool:
    """
    Whether the peer of C{transport}, whose end of input was just read,
    closed its sending half alone: on a Unix socket the kernel reports a
    hang-up once the peer has closed (or shut down) both halves.  Over TCP
    a closed peer and a half-closed one look the same until a write fails:
    C{False}.
    """
    try:
        handle = transport.getHandle()
        if handle.family != socket.AF_UNIX:
            return False
        poller = select.poll()
        poller.register(handle.fileno(), select.POLLIN)
        return not any(events & select.POLLHUP for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _readers(n: int) -> str:
    return "1 reader" if n == 1 else f"{n} readers"


@implementer(IPortService)
class PcapListener(CaptureService):
    """
    The service of one C{pcap:listen:} spec: its port and its listening
    endpoint.
    """

    def __init__(self, switch: Any, reactor: Any, endpoint: Any, snaplen: int,
                 options: PortOptions, spec: str, unixPath: str | None = None,
                 address: str = "") -> None:
        """
        @param unixPath: the path of a listening Unix socket, if any.
        @param address: where it listens, for descriptions.
        """
        super().__init__(switch, reactor, options, spec)
        self.endpoint = endpoint
        self.snaplen = snaplen
        self.unixPath = unixPath
        self.address = address
        self.link: ListenLink | None = None
        self.listeningPort: Any = None

    def bound(self) -> bool:
        return self.link is not None

    def bind(self) -> None:
        self.link = ListenLink(self)

    def _listen(self) -> None:
        assert self.link is not None
        self.listeningPort = listenNow(self.endpoint, ReaderFactory(self.link), self.spec,
                                       self.unixPath)
        self.address = addressText(self.listeningPort.getHost())

    def listeningAddress(self) -> str:
        """
        Where it listens, while it does, for C{port/specs} (C{tcp
        127.0.0.1:43211} for C{tcp:0}).
        """
        port = self.listeningPort
        return addressText(port.getHost()) if port is not None else ""

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.unixPath is None:  # a TCP port below 1024 needs root
            self._listen()

    def startService(self) -> None:
        if not self.bound():
            self.checkedBind()
        if self.listeningPort is None:
            self._listen()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        link = self.link
        if link is not None:
            link.finish()  # while plugged in: records it loses are counted on the port
        self.unplug()
        self.link = None
        port, self.listeningPort = self.listeningPort, None
        if port is not None:
            return stopListeningNow(port)  # free for a port/add in the same batch
        return None


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> PcapListener:
    """
    Build the service for C{pcap:listen:SERVER-ENDPOINT[:snaplen=N][:port=N]};
    every other keyword is the endpoint's.
    """
    from vtwisted.ports.pcap import DEFAULT_SNAPLEN

    for key in ("maxsize", "files"):
        if key in spec.kwargs:
            raise spec.error(f"{key}= bounds capture files: a capture server's readers each "
                             "get a stream of their own, dropped from when they fall a "
                             "megabyte behind")
    for key in REFUSED:
        if key in spec.kwargs:
            raise spec.error(f"{key}= is not for a capture port: it sees every frame of "
                             "every port and VLAN, as read")
    snaplen = spec.integer("snaplen", DEFAULT_SNAPLEN, 64, DEFAULT_SNAPLEN)
    assert snaplen is not None
    number = spec.integer("port", None, 0, 65535)
    read = readStreamSpec(spec, reactor, ("snaplen", "port"), listenByDefault=True)
    # A member of no VLAN: the port gets the monitor's copies and nothing else.
    return PcapListener(switch, reactor, read.endpoint, snaplen,
                        PortOptions(number=number, vlan=NOVLAN), spec.text, read.unixPath,
                        read.description)
