"""
Ports whose peers speak over a stream (TCP, Unix, TLS), one length-prefixed
message per frame: what C{qemu:} and C{cable:} share.

Theory of operation
-------------------
Each message is a 4-byte big-endian length and its body; Twisted's
L{Int32StringReceiver} does the framing, and a length over the link's
C{MAX_LENGTH} cannot be resynchronised: it is counted as malformed, logged
and the connection closed.  L{StreamListener} listens on a Twisted server
endpoint and gives every connection a port of its own, freed when it goes;
a Unix socket left by a crash is replaced first.
L{vtwisted.ports.streamconnector} connects and reconnects.

A TLS connection is plugged in once its handshake is done (a cable's once
the far switch's hello has come): one that fails is logged with the cause
once per series (L{vtwisted.ports.streamfailures}), and one that gets
nowhere within L{READY_TIMEOUT} seconds (a client that connects and sends
nothing, or half a ClientHello) is cut off and noted the same way, so that
whoever can reach a listener cannot hold its descriptors for ever.

A connection that ends inside a message (a peer killed mid-write, say) has
its last frame counted as malformed on its port and logged with how much of
it came; a connection the switch closes itself is not checked.

Sending never blocks and never buffers without bound: messages go into the
transport's buffer, which Twisted flushes with one system call for many;
past L{SEND_BUFFER} bytes the transport pauses its producer, a
L{_SendValve}, and frames to that peer are dropped and counted as C{busy}
until it has drained.  TLS shuts down only once its producer is gone, so
closing a link unregisters the valve first.

A link the switch closes (its port deleted, what its peer sent, the
switch stopping) stops its watches at once (L{StreamLink.stopWatching}: a
keepalive watch, a stall timer) and sends what is queued before the end of
the stream; a peer that reads none of it (a QEMU stopped with C{-S}, a far
switch that is stuck) has its connection aborted after
L{vtwisted.closing.CLOSE_GRACE} seconds, logged once, instead of holding
it for ever.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted import errors
from vtwisted.closing import GracefulClose
from vtwisted.interfaces import ILink
from vtwisted.portoptions import PortOptions
from vtwisted.ports.streamfailures import (
    FailureLog,
    endedTooSoon,
    peerHost,
    whyLost,
)
from vtwisted.sockettools import describePeer, socketOf

log = Logger()

#: Bytes buffered for one peer before frames to it are dropped.
SEND_BUFFER = 2 * 1024 * 1024

#: Seconds a connection that waits for something before it is plugged in
#: (its TLS handshake; a cable's hello) has to get there; then it is cut
#: off, since whoever can connect could otherwise hold descriptors for ever.
READY_TIMEOUT = 10.0

#: A message's 4-byte length prefix.
packLength = struct.Struct("!I").pack


@implementer(IPushProducer)
class _SendValve:
    """
    The producer registered with a link's transport: closed while the
    transport's buffer is over its size.
    """

    full = False

    def pauseProducing(self) -> None:
        self.full = True

    def resumeProducing(self) -> None:
        self.full = False

    def stopProducing(self) -> None:
        self.full = True


@implementer(ILink, IHandshakeListener)
class StreamLink(Int32StringReceiver):
    """
    One peer's connection, plugged into a switch port of its own; each
    message is a 4-byte big-endian length and a frame.  Subclasses say
    what a message holds (L{receiverFor}, L{sendVnetPacket}).
    """

    module = "stream"
    vnetHeader = False
    #: Whether a TLS connection is plugged in only once its handshake is
    #: done: one that fails never gets a port, and is logged with the
    #: cause (a subclass whose peer says hello after TLS waits for that).
    waitsForTls = True

    def __init__(self, owner: StreamPorts) -> None:
        self.owner = owner
        self.port: Any = None
        self.uid: int | None = None
        self.linkId = 0
        self.description = ""
        #: When it was plugged in (by the owner's clock).
        self.upAt = 0.0
        self.valve = _SendValve()
        self._receive: Any = None
        self._broken = False
        self._handshaking = False
        self._deadline: Any = None
        #: Its closing by the switch, once asked for (L{close}).
        self.closing: GracefulClose | None = None

    def connectionMade(self) -> None:
        self.owner.connections.add(self)
        transport: Any = self.transport
        layer = transport
        while layer is not None:  # TLS too: its socket's buffer is the one that fills
            layer.bufferSize = SEND_BUFFER
            layer = getattr(layer, "transport", None)
        transport.registerProducer(self.valve, True)
        handle = socketOf(transport)
        self.linkId = handle.fileno()
        self.uid, self.description = describePeer(transport.getPeer(), handle)
        if not isinstance(transport.getPeer(), UNIXAddress):
            transport.setTcpNoDelay(True)
        self.sendFrame = self._makeSender(transport.writeSequence)  # type: ignore[method-assign]
        if self.waitsForTls and ISSLTransport.providedBy(transport):
            self._handshaking = True  # plugged in by handshakeCompleted
            self.startDeadline()
            return
        self.linkReady()

    def handshakeCompleted(self) -> None:
        """
        TLS is up (and the peer's certificate checked): plug the link in.
        """
        if self._handshaking and not getattr(self.transport, "disconnecting", False):
            self._handshaking = False
            self.stopDeadline()
            self.linkReady()

    def linkReady(self) -> None:
        """
        The connection is up: plug it in (a subclass may wait for a hello).
        """
        self.owner.linkUp(self)

    def startDeadline(self) -> None:
        """
        Cut the connection off unless L{stopDeadline} is called within
        L{READY_TIMEOUT} seconds.
        """
        self._deadline = self.owner.reactor.callLater(READY_TIMEOUT, self._tooLate)

    def stopDeadline(self) -> None:
        """
        The connection got where it had to (or is going): no deadline.
        """
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _tooLate(self) -> None:
        self._deadline = None
        self.notReadyInTime()
        self._abort()

    def notReadyInTime(self) -> None:
        """
        Note a connection cut off by its deadline, still in its TLS
        handshake (a subclass may wait for more).
        """
        self._handshaking = False  # noted here, not again as it goes
        self.owner.handshakeFailed(self, f"TLS handshake not done within {READY_TIMEOUT:g} s; "
                                         "closing")

    def whenReady(self) -> Any:
        """
        A L{Deferred} (or value) for when the link is plugged in, which is
        when a L{ClientService} counts the connection as made.
        """
        return None

    def dataReceived(self, data: bytes) -> None:
        if not self._broken:  # after a bad length, the receiver would replay what it kept
            super().dataReceived(data)

    def _pendingProblem(self) -> str:
        """
        How much of the incomplete message pending has come, in words.
        """
        pending = self.recvd
        prefix = self.prefixLength
        if len(pending) < prefix:
            return f"{len(pending)} of the {prefix} bytes of a length prefix"
        length = struct.unpack(self.structFormat, pending[:prefix])[0]
        return f"{len(pending) - prefix} of {length} bytes of a frame"

    def stringReceived(self, frame: bytes) -> None:
        try:
            self._receive(self.port, frame)
        except Exception:
            log.failure("{link}: the switch failed on a frame", link=self.description)

    def lengthLimitExceeded(self, length: int) -> None:
        if self._broken:
            return
        self._broken = True
        problem = f"message length {length} is over the limit of {self.MAX_LENGTH}"
        if self.port is not None:
            self.port.counters.drops["malformed"] += 1
        if not self.owner.failedOnTrial(self, f"{problem}; closing the connection",
                                        "message length over the limit"):
            log.error(
                "{spec}: {peer}: {problem}; closing the connection",
                spec=self.owner.spec, peer=self.description, problem=problem,
            )
        # unplugged at once, and closed even over TLS (see close)
        self.close()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.owner.connections.discard(self)
        self.stopDeadline()
        self.stopWatching()
        if self.closing is not None:
            self.closing.lost()
        if self._handshaking:
            self._handshaking = False
            self.owner.handshakeFailed(self, whyLost(reason))
        if self.port is not None and self in self.owner.links:  # the peer ended it
            if not self._noteTruncated():
                self.owner.peerEnded(self, reason)
        self.owner.linkDown(self)

    def _noteTruncated(self) -> bool:
        """
        Count and log a last message the peer cut short, if any: it can
        never be completed, so it is a malformed frame.  On a link still on
        trial it is that link's failure, noted once per series.

        @return: whether it was noted as such a failure.
        """
        pending = self.recvd  # what the receiver kept of an incomplete message
        if not pending or self._broken:
            return False
        problem = self._pendingProblem()
        self.port.counters.drops["malformed"] += 1
        text = f"the connection ended inside a message ({problem} received); dropped as malformed"
        if self.owner.failedOnTrial(self, text, "ended inside a message", LogLevel.warn):
            return True
        log.warn("{spec}: {peer}: {text}", spec=self.owner.spec, peer=self.description,
                 text=text)
        return False

    # ILink

    def sendFrame(self, frame: bytes) -> None:
        """
        Queue one frame for the guest, or drop it if too much is queued.
        Replaced per link by a closure from L{_makeSender}.
        """

    def _makeSender(self, writeSequence: Any, header: bytes = b"") -> Any:
        """
        A closure that queues C{header} and a frame as one message, handing
        the transport the frame itself (no copy here: Twisted joins the
        pieces once when it writes, and TLS once when it encrypts).
        """
        valve = self.valve
        link = self
        detail = f"{self.description}: peer not reading ({SEND_BUFFER} bytes queued)"
        extra = len(header)
        packLength = struct.Struct(self.structFormat).pack  # the receiver's format

        def sendFrame(frame: bytes) -> None:
            if valve.full:
                link.port.dropped("busy", detail)
                return
            if frame.__class__ is not bytes:
                frame = bytes(frame)
            writeSequence((packLength(len(frame) + extra) + header, frame))

        return sendFrame

    def sendVnetPacket(self, packet: bytes) -> None:
        raise NotImplementedError(f"{self.module} carries plain frames only")

    def receiverFor(self, switch: Any) -> Any:
        """
        What each message received is handed to: C{receive(port, message)}.
        """
        return switch.frameReceived

    def plug(self, switch: Any, port: Any) -> None:
        """
        Attach to C{port}; messages go to what L{receiverFor} says.
        """
        self.port = port
        self._receive = self.receiverFor(switch)
        switch.attach(port, self)

    def close(self) -> None:
        """
        Unplug and disconnect the peer: what is queued for it goes first,
        unless it reads nothing for L{vtwisted.closing.CLOSE_GRACE} seconds
        (then the connection is aborted).  Its watches stop now.
        """
        self.owner.linkDown(self)
        self.stopWatching()
        transport: Any = self.transport
        if transport is not None:
            # TLS waits for its producer to go before it shuts down
            transport.unregisterProducer()
            self.closeGracefully(transport)

    def closeGracefully(self, transport: Any) -> None:
        """
        Close C{transport}, and abort it if its peer does not let it go
        within the grace (L{vtwisted.closing.GracefulClose}).
        """
        if self.closing is None:
            self.closing = GracefulClose(self.owner.reactor)
        self.closing.close(transport, f"{self.owner.spec}: {self.description}")

    def stopWatching(self) -> None:
        """
        The switch closed the link, or it went: stop what watches it
        (a subclass's keepalive watch, its stall timer).
        """

    def abandon(self) -> None:
        """
        Cut off a connection not plugged in yet (in its TLS handshake, say,
        which a close would wait for), quietly, as its port goes.
        """
        self._handshaking = False
        self.stopDeadline()
        self._abort()

    def _abort(self) -> None:
        """
        Drop the connection at once (a TLS close would wait for the
        handshake).
        """
        transport: Any = self.transport
        transport.unregisterProducer()
        transport.abortConnection()


class StreamPorts(Service):
    """
    What listening and connecting specs share: a port for each connection.

    @ivar links: the connections plugged in now.
    @ivar connections: every connection open now, plugged in or not yet
        (a cable's, until the far switch's hello): all are closed when the
        service stops.
    @cvar protocol: the L{StreamLink} class of each connection.
    """

    protocol: type[StreamLink] = StreamLink
    #: Whether peers connect to the switch (else the switch connects).
    listening = False
    #: Whether links coming and going are logged (a subclass may log them
    #: itself, when they matter).
    announceLinks = True
    #: Whether a link plugged in has worked (ends a series of failures and
    #: is announced); if not, a link works once it has lasted L{SHORT_LINK}
    #: seconds, or a subclass says when (L{linkWorks}).
    upMeansWorking = True
    #: Unless being plugged in says a link works (L{upMeansWorking}), one
    #: that lasts this many seconds has worked: it is announced then, and
    #: one that ends sooner (the peer closing, or sending something
    #: unusable: a port scanner, a client of another protocol) is a
    #: failure, noted once per series.
    SHORT_LINK = 1.0

    def __init__(self, switch: Any, reactor: Any, options: PortOptions, spec: str) -> None:
        self.switch = switch
        self.reactor = reactor
        self.options = options
        self.spec = spec
        self.links: list[StreamLink] = []
        self.connections: set[StreamLink] = set()
        #: The links whose coming was logged (so is their going).
        self.announced: set[StreamLink] = set()
        self.failures = FailureLog(spec)
        #: Links on trial (see L{upMeansWorking}): the call that ends it.
        self._trials: dict[Any, Any] = {}
        self.factory = Factory.forProtocol(lambda: self.protocol(self))
        self.factory.noisy = False

    def linkUp(self, link: StreamLink) -> None:
        """
        Give a new connection a port, or close it if none is left.
        """
        link.upAt = self.reactor.seconds()
        try:
            port = self.portFor(link)
        except errors.SwitchError as e:
            log.error("{spec}: {peer}: no port: {problem}; closing the connection",
                      spec=self.spec, peer=link.description, problem=e.message)
            link._receive = lambda port, frame: None
            link.close()
            return
        self.options.apply(self.switch, port, self.spec)
        self.links.append(link)
        link.plug(self.switch, port)
        if self.upMeansWorking:
            self.linkWorks(link)
        elif self.SHORT_LINK:
            self._trials[link] = self.reactor.callLater(self.SHORT_LINK, self._lasted, link)

    def portFor(self, link: StreamLink) -> Any:
        """
        The port a new connection gets: the lowest free one.

        @raise errors.SwitchError: none is left.
        """
        return self.switch.allocatePort(None, link.uid)

    def _lasted(self, link: StreamLink) -> None:
        del self._trials[link]
        self.linkWorks(link)

    def failedOnTrial(
        self, link: Any, problem: str, kind: str, level: LogLevel = LogLevel.error
    ) -> bool:
        """
        Note a link on trial that failed for what its peer sent (C{problem},
        logged at C{level}), once per series for its peer and this C{kind}
        of problem; a link that has worked is not noted here.

        @return: whether it was noted (then it is not to be logged again).
        """
        if link not in self._trials:
            return False
        self.failures.note(problem, link.description,
                           f"{peerHost(link.transport, link.description)}: {kind}", level)
        return True

    def linkWorks(self, link: StreamLink) -> None:
        """
        A link plugged in has worked: a series of failures ends, and the
        link is announced (if L{announceLinks}).
        """
        self.failures.worked()
        if self.announceLinks:
            self.announced.add(link)
            log.info("{spec}: {peer} on port {number}", spec=self.spec, peer=link.description,
                     number=link.port.number)

    def handshakeFailed(self, link: StreamLink, problem: str) -> None:
        """
        A TLS connection went, or is cut off, before its handshake was
        done: log why, once per series for its peer's host.
        """
        self.failures.note(problem, link.description,
                           f"{peerHost(link.transport, link.description)}: {problem}")

    def peerEnded(self, link: StreamLink, reason: Failure | None) -> None:
        """
        The peer ended a link plugged in (its L{linkDown} follows): a
        failure of the series if it was still on trial.
        """
        if link in self._trials:
            problem = endedTooSoon(reason, self.reactor.seconds() - link.upAt,
                                   self.SHORT_LINK, self.listening)
            self.failures.note(problem, link.description,
                               f"{peerHost(link.transport, link.description)}: ended too soon")

    def linkDown(self, link: StreamLink) -> None:
        """
        Unplug a connection that went.
        """
        if link not in self.links:
            return
        trial = self._trials.pop(link, None)
        if trial is not None and trial.active():
            trial.cancel()
        self.links.remove(link)
        self.switch.detach(link.port, link)
        if link in self.announced:
            self.announced.discard(link)
            log.info("{spec}: {peer} left port {number}", spec=self.spec, peer=link.description,
                     number=link.port.number)

    def currentLinks(self) -> list[ILink]:
        """
        The connections plugged in now.
        """
        return list(self.links)

    def _closeLinks(self) -> None:
        waiting = self.connections.difference(self.links)
        for link in list(self.links):
            link.close()
        for link in waiting:
            link.abandon()
