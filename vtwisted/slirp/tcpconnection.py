"""
One guest TCP connection relayed to a host socket.

Theory of operation: a L{TcpConnection} terminates the guest's TCP and
speaks to the host through an ordinary Twisted transport, over IPv4 or IPv6
as the guest does.  Its states (the opening handshake and the segment sizes
by family are in L{vtwisted.slirp.tcpstates}):

  - C{connecting}: the guest's SYN started a host C{connect()}; nothing is
    sent to the guest yet (a retransmitted SYN is ignored).
  - C{syn-received}: the host connected; our SYN-ACK is out (sent again on
    the handshake timer or on a retransmitted SYN).
  - C{syn-sent}: a host port forward accepted a client; our SYN is out and
    the host transport is paused until the guest's SYN-ACK.
  - C{established}: data both ways.  Each direction closes on its own: a
    guest FIN half-closes the host socket (C{loseWriteConnection}, which
    Twisted does after flushing), a host EOF becomes our FIN after the
    buffered data.  When both are closed and our FIN is acknowledged the
    connection lingers in C{time-wait} for L{TIME_WAIT_SECONDS} to re-ACK a
    retransmitted FIN, then it is forgotten.  A RST either way, or giving up
    on retransmissions, forgets it at once; it aborts the host socket, but
    not in C{time-wait}, where the guest's RST is routine (a closed guest
    answering our second ACK of its FIN, after its tail loss probe) and the
    host must still get what the guest sent last.  That host socket, once
    closed, has L{HOST_CLOSE_GRACE} seconds to take what is left for it:
    a host peer that reads nothing would otherwise keep it, and its
    buffer, for ever (nobody owns it any more, as the kernel's orphans,
    which it gives up on too); it is aborted then, counted as C{unread}
    and logged once per port (L{vtwisted.slirp.tcp.TcpNat.hostUnread}).

Receiving (guest to host) trims what was already received and what lies
past the right edge of the window we advertised.  A segment past a hole
(one the link lost) is kept in L{TcpConnection.reassembly}, in order, at
most a window's worth (L{vtwisted.slirp.tcpreassembly}), and answered at
once with a duplicate ACK, naming what is kept if the guest takes SACK, so the
guest's fast retransmission of the missing one fills the hole and all of
it goes to the host, acknowledged at once: a loss costs one
retransmission, not a go-back-N of everything after it.  A bare segment
from before C{rcvNxt} (the guest's keep-alive and zero-window probes,
which would otherwise time the connection out) gets a duplicate ACK too.
Accepted data is written to the host transport, and the ACK is deferred to
the end of the reactor turn (L{vtwisted.slirp.tcp.TcpNat.ackSoon}) so a
batch of segments costs one ACK.  The connection is the host transport's
streaming producer: while the transport's buffer is full we advertise a zero
window (still accepting data inside the edge promised before) and a window
update follows the resume.  Sending is L{vtwisted.slirp.tcpsend.SendSide}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.error import ConnectionDone, NotConnectingError
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.closing import GracefulClose
from vtwisted.slirp.addresses import guestEndpoint
from vtwisted.slirp.tcpreassembly import Reassembly
from vtwisted.slirp.tcpsend import FIXED_HEADER, MASK, signed
from vtwisted.slirp.tcpstates import (
    CLOSED,
    CONNECTING,
    ESTABLISHED,
    READ_SIZE,
    REFUSED,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    Handshake,
)
from vtwisted.wire.checksum import Buffer
from vtwisted.wire.tcp import ACK, FIN, RST, SYN

#: The receive window we advertise while the host takes data.
RECEIVE_BUDGET = 1 << 20
UNSCALED_WINDOW = 0xFFFF
TIME_WAIT_SECONDS = 2.0
#: How long our acknowledged FIN waits for the guest's once the host is gone.
FIN_WAIT_SECONDS = 60.0
#: How long a host socket closed after both sides finished may take to be
#: read before it is aborted (as Linux's C{tcp_fin_timeout}, 60 s).
HOST_CLOSE_GRACE = 60.0


@implementer(IPushProducer)
class TcpConnection(Handshake):
    """
    A guest's TCP connection and its host socket.

    @ivar key: (guest address, guest port, remote address, remote port),
        the guest-side addresses.
    @ivar hostLabel: where it goes on the host, for L{describe}.
    @ivar state: one of the state names of L{vtwisted.slirp.tcpstates}.
    @ivar transport: the host transport, or L{None} before it connects and
        after it is lost.
    @ivar bytesToHost: data bytes written to the host.
    """

    def __init__(self, nat: Any, key: tuple[bytes, int, bytes, int], hostLabel: str) -> None:
        self.nat = nat
        self.network = nat.network
        self.reactor = nat.reactor
        self.key = key
        self.guest, self.guestPort, self.remote, self.remotePort = key
        self.hostLabel = hostLabel
        self.state = CONNECTING
        self.transport: Any = None
        self.connector: Any = None
        self.synPacket = b""
        self.iss = int.from_bytes(os.urandom(4), "big")
        self.irs = 0
        self.rcvNxt = 0
        self.rcvEdge = 0
        self.rcvShift = 0
        self.sndShift = 0
        self.hostPaused = False
        self.guestFin = False
        self.ackPending = False
        self.retries = 0
        self.bytesToHost = 0
        self.closing = False
        #: Closes the host socket, aborting it if its peer reads nothing.
        self.closer = GracefulClose(nat.reactor, HOST_CLOSE_GRACE, nat.hostUnread)
        self.closeTimer: Any = None
        #: Whether the guest sent a segment since the last keep-alive
        #: sweep, and the sweeps since it last did (L{vtwisted.slirp.tcpkeepalive}).
        self.heard = True
        self.silentSweeps = 0
        self.rcvBudget = min(RECEIVE_BUDGET, nat.share)
        #: What the guest sent past a hole.
        self.reassembly = Reassembly()
        self.initHandshake(len(self.guest) == 16)
        self.initSendSide()

    def describe(self) -> str:
        """
        One line for a console.
        """
        state = self.state
        if state == ESTABLISHED and (self.guestFin or self.hostEof):
            state = {(True, False): "close-wait", (False, True): "fin-wait"}.get(
                (self.guestFin, self.hostEof), "closing")
        guest = guestEndpoint(self.guest, self.guestPort)
        return (f"{guest} -> {self.hostLabel} {state}, {self.bytesToHost} bytes to host, "
                f"{self.bytesToGuest} to guest")

    # Sending to the guest.

    def emit(self, seq: int, flags: int, payload: Buffer = b"", options: bytes = b"") -> None:
        """
        Send one segment to the guest: sequence number C{seq} (relative to
        our ISN), our current acknowledgment and window.
        """
        if flags & SYN:
            window = field = min(self.receiveWindow(), UNSCALED_WINDOW)
        else:
            field = min(self.receiveWindow() >> self.rcvShift, UNSCALED_WINDOW)
            window = field << self.rcvShift
        edge = (self.rcvNxt + window) & MASK
        if signed(edge - self.rcvEdge) > 0:
            self.rcvEdge = edge
        header = FIXED_HEADER.pack(
            self.remotePort, self.guestPort, (self.iss + seq) & MASK,
            self.rcvNxt if flags & ACK else 0, (5 + len(options) // 4) << 12 | flags,
            field, 0, 0,
        )
        if options:
            header += options
        if flags & ACK:
            self.ackPending = False
        self.network.sendTcp(self.remote, self.guest, header, payload, self.mss)

    def receiveWindow(self) -> int:
        if self.hostPaused:
            return 0
        return self.rcvBudget if self.rcvShift else min(self.rcvBudget, UNSCALED_WINDOW)

    def shareChanged(self, share: int) -> None:
        """
        What the connection may buffer each way is now C{share} bytes:
        the window it advertises from now on (what it promised before
        still holds), and what its host socket reads at once and holds
        for writing before it pauses us.  What it holds for the guest is
        checked against L{share} as the host sends.
        """
        self.rcvBudget = min(RECEIVE_BUDGET, share)
        if self.transport is not None and hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = min(READ_SIZE, share)

    def sendAck(self) -> None:
        """
        Send a bare ACK, unless one went out since it was asked for.
        """
        if self.ackPending and self.state in (ESTABLISHED, TIME_WAIT):
            self.emit(self.bareSeq(), ACK)

    def keepAliveProbe(self) -> None:
        """
        A keep-alive probe: a bare ACK one byte back (what the guest has
        acknowledged already), which a live guest answers with an ACK.
        """
        self.emit(self.sndUna - 1, ACK)

    def reset(self) -> None:
        """
        Send the guest a RST for this connection.
        """
        self.nat.resets += 1
        self.emit(self.bareSeq(), RST | ACK)

    # Segments from the guest.

    def segmentReceived(self, header: Any, payload: memoryview) -> None:
        """
        Handle one segment of this connection from the guest.
        """
        flags = header.flags
        if flags & RST:
            self.resetReceived(header)
            return
        state = self.state
        if state == ESTABLISHED:
            if flags & SYN:
                self.emit(self.bareSeq(), ACK)
            elif flags & ACK:
                fin = flags & FIN
                sacked = self.sackReceived(header.options) if header.options and self.sackOk else 0
                if not self.ackReceived(header.ack, header.window, not payload and not fin, sacked):
                    self.nat.ackSoon(self)
                elif (payload or fin) and self.state == ESTABLISHED:
                    self.dataReceived(header.seq, payload, bool(fin))
                elif header.seq != self.rcvNxt:
                    # A keep-alive or zero-window probe (one byte back):
                    # unacceptable, so it is answered (RFC 9293 3.10.7.4).
                    self.nat.ackSoon(self)
        elif state == SYN_RECEIVED:
            self.synReceivedSegment(header, payload)
        elif state == SYN_SENT:
            self.synSentSegment(header)
        elif state == TIME_WAIT and (payload or flags & FIN):
            self.emit(self.bareSeq(), ACK)

    def resetReceived(self, header: Any) -> None:
        """
        A RST from the guest: believe it if its sequence number is in our window.
        """
        state = self.state
        if state == SYN_SENT:
            if header.flags & ACK and header.ack == (self.iss + 1) & MASK:
                self.forwardFailed("refused it (RST: nothing listens there)", REFUSED)
            return
        offset = signed(header.seq - self.rcvNxt)
        if not 0 <= offset < max((self.rcvEdge - self.rcvNxt) & MASK, 1):
            return
        if state == TIME_WAIT:
            # Both streams ended and were acknowledged: a guest that closed
            # answers our ACK of its retransmitted FIN with a RST.  The host
            # socket is already closing, after what the guest sent last.
            self.forget()
            return
        self.nat.guestResets += 1
        transport, connector = self.transport, self.connector
        self.forget()
        self.release(transport, connector)

    def dataReceived(self, seq: int, payload: memoryview, fin: bool) -> None:
        """
        Take in-order data (and FIN) from the guest for the host.
        """
        offset = signed(seq - self.rcvNxt)
        if offset > 0 or self.guestFin:
            if not self.guestFin:
                self.keepForLater(seq, offset, payload, fin)
            self.sendAckNow()
            return
        if offset < 0:
            if -offset > len(payload) or (-offset == len(payload) and not fin):
                self.emit(self.bareSeq(), ACK)
                return
            payload = payload[-offset:]
        room = (self.rcvEdge - self.rcvNxt) & MASK
        ackNow = len(payload) > room
        if ackNow:
            payload = payload[:room]
            fin = False
        if payload:
            if self.transport is None or self.closing:
                self.reset()
                self.forget()
                return
            self.transport.write(bytes(payload))
            self.rcvNxt = (self.rcvNxt + len(payload)) & MASK
            self.bytesToHost += len(payload)
            if self.reassembly.blocks and not fin:
                fin = self.fillHole()
                ackNow = True
        if fin:
            self.rcvNxt = (self.rcvNxt + 1) & MASK
            self.guestFin = True
            self.emit(self.bareSeq(), ACK)
            if self.transport is not None and not self.closing:
                # Twisted half-closes only once no producer is registered:
                # with one paused, a drained buffer resumes it instead.
                release(self.transport)
                self.transport.loseWriteConnection()
            self.maybeClose()
        elif ackNow:
            self.sendAckNow()
        else:
            self.nat.ackSoon(self)

    def keepForLater(self, seq: int, offset: int, payload: memoryview, fin: bool) -> None:
        """
        Keep a segment past a hole, inside the window we promised, for
        when the hole is filled; what does not fit is dropped.
        """
        window = (self.rcvEdge - self.rcvNxt) & MASK
        room = window - offset
        if room <= 0:
            return
        if len(payload) > room:
            payload, fin = payload[:room], False
        if self.reassembly.size + len(payload) <= window:
            self.reassembly.add(seq, offset, payload, fin, self.rcvNxt)

    def fillHole(self) -> bool:
        """
        Write to the host what was kept and is now in order.

        @return: whether the guest's FIN is now in order too.
        """
        reassembly = self.reassembly
        while (block := reassembly.pop(self.rcvNxt)) is not None:
            data, fin = block
            if data:
                self.transport.write(bytes(data))
                self.rcvNxt = (self.rcvNxt + len(data)) & MASK
                self.bytesToHost += len(data)
            if fin:
                reassembly.clear()
                return True
        return False

    def sendAckNow(self) -> None:
        """
        Acknowledge at once, with SACK blocks for what is kept past a hole
        if the guest takes them.
        """
        if self.sackOk and self.reassembly:
            self.emit(self.bareSeq(), ACK, options=self.reassembly.sackOption())
        else:
            self.emit(self.bareSeq(), ACK)

    # Host events.

    def hostEofReceived(self) -> None:
        """
        The host finished sending (it half-closed, or closed cleanly).
        """
        self.closeSending()
        self.maybeClose()

    def hostLost(self, reason: Failure) -> None:
        """
        The host transport is gone: a clean close ends our sending, anything
        else resets the guest.
        """
        self.transport = None
        self.closer.lost()
        self.nat.hostClosing.discard(self)
        if self.state in (CLOSED, TIME_WAIT, CONNECTING):
            return
        if self.state == SYN_SENT or not reason.check(ConnectionDone):
            if self.state != SYN_SENT:
                self.reset()
            self.forget()
            return
        self.hostEofReceived()

    def finAcked(self) -> None:
        self.maybeClose()

    def maybeClose(self) -> None:
        """
        Close the host socket once both directions are done; linger once
        our FIN is acknowledged too.
        """
        if self.guestFin and self.hostEof and not self.closing:
            self.closing = True
            if self.transport is not None:
                release(self.transport)
                # Ours alone now: what is left for the host goes, unless
                # it reads nothing (L{HOST_CLOSE_GRACE}).
                self.nat.hostClosing.add(self)
                self.closer.close(self.transport, self.hostLabel)
        if self.hostEof and self.sndUna > self.sndEnd and self.state == ESTABLISHED:
            if self.guestFin:
                self.state = TIME_WAIT
                self.stopTimer()
                self.lingerFor(TIME_WAIT_SECONDS)
            elif self.transport is None:
                self.lingerFor(FIN_WAIT_SECONDS)

    def lingerFor(self, seconds: float) -> None:
        if self.closeTimer is not None and self.closeTimer.active():
            self.closeTimer.cancel()
        self.closeTimer = self.reactor.callLater(seconds, self.forget)

    # IPushProducer, for the host transport.

    def pauseProducing(self) -> None:
        self.hostPaused = True

    def resumeProducing(self) -> None:
        if self.hostPaused:
            self.hostPaused = False
            if self.state == ESTABLISHED:
                self.emit(self.bareSeq(), ACK)

    def stopProducing(self) -> None:
        pass

    # Ending.

    def abort(self, resetGuest: bool) -> None:
        """
        Tear the connection down now, resetting the guest if asked to.
        """
        if resetGuest and self.state in (ESTABLISHED, SYN_RECEIVED):
            self.nat.timeouts += 1
            self.reset()
        transport, connector = self.transport, self.connector
        self.forget()
        self.release(transport, connector)

    @staticmethod
    def release(transport: Any, connector: Any) -> None:
        """
        Abort a host transport and stop a host connect, as far as they exist.
        """
        if transport is not None:
            transport.abortConnection()
        if connector is not None:
            try:
                connector.stopConnecting()
            except NotConnectingError:
                pass

    def forget(self) -> None:
        """
        Drop every timer and the NAT's entry.
        """
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.reassembly.clear()
        self.stopTimer()
        if self.closeTimer is not None and self.closeTimer.active():
            self.closeTimer.cancel()
        self.closeTimer = None
        self.nat.forget(self)


def release(transport: Any) -> None:
    """
    Unregister the connection as C{transport}'s producer, if it still is.
    """
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()

