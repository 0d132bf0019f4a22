"""
The sending half of a relayed TCP connection: host data to the guest (and
the SYN options both halves agree on).

Theory of operation: what the host socket gives us is appended to one
C{bytearray}, L{SendSide.sendBuffer}, which always starts at the oldest
unacknowledged byte (C{sndUna}); an ACK from the guest deletes its front.
Sequence numbers are kept as unbounded integers counted from our initial
sequence number (our SYN is 0, the first data byte 1), so no comparison
ever wraps; they become 32-bit wire numbers only in headers, and a guest's
acknowledgment number is read relative to C{sndUna}.

L{SendSide.output} sends new data while it fits in the smaller of the
guest's window (scaled by its shift) and a congestion window (slow start,
congestion avoidance, NewReno-style recovery: enough for a virtual link
that drops only when a queue is full).  Segments are C{segmentSize} bytes:
the guest's MSS, or a multiple of it up to the router's C{maxSegment} when
the router takes super-segments; where the windows leave less room than
that, whole MSS-sized segments fill it (one piece per round trip would
leave a guest too few segments to send duplicate ACKs for a loss).  The
last segment of a burst has PSH, and the FIN rides on the last data
segment once the host has finished sending.

One C{DelayedCall} per connection is the retransmission timer, the persist
timer (zero window) and, before the handshake completes, the SYN/SYN-ACK
timer; it is C{reset()} rather than recreated.  A timeout goes back to
C{sndUna} with a congestion window of one segment (go-back-N: the guest's
cumulative ACKs then pull the rest), backs the RTO off and gives up after
L{MAX_RETRIES}.  A zero window is probed as long as the guest answers (its
zero-window answers reset the back-off), but once the host is gone (EOF
seen, socket lost) the connection is an orphan: it is reset after
L{ORPHAN_PROBES} timeouts in a row (probes, retransmissions of data or of
the FIN, which a full guest may answer with a zero window for ever)
without progress (new data acknowledged, the window opening).  Three
duplicate ACKs retransmit the first unacknowledged segment at once; a
guest that sends SACK blocks has every gap they reveal resent instead,
SACKed bytes not counted as in flight, and a lost tail (too few segments
after it for duplicate ACKs) is probed for after two round trips instead
of a timeout (L{vtwisted.slirp.tcpsack}).  When the buffer holds more than
a high-water mark (at most the connection's share of the port's budget)
the host transport is paused, and resumed below half of it.
"""

from __future__ import annotations

import struct
from typing import Any

from vtwisted.slirp.tcpsack import SackRecovery
from vtwisted.wire.checksum import Buffer
from vtwisted.wire.tcp import (
    ACK,
    FIN,
    PSH,
)

MASK = 0xFFFFFFFF
#: Round-trip estimates and retransmission timeouts, in seconds.
INITIAL_RTO = 0.2
MIN_RTO = 0.2
MAX_RTO = 60.0
#: Consecutive timeouts after which a connection is reset.
MAX_RETRIES = 12
#: Timeouts (zero-window probes, retransmissions, the FIN's too) without
#: progress (nothing new acknowledged, the window not opening) before a
#: connection whose host is gone is reset (an orphan: Linux's
#: C{tcp_orphan_retries}; at most 9 minutes, the timer backing off).
ORPHAN_PROBES = 8
#: The send buffer's high-water mark is four guest windows, within these.
HIGH_WATER_MIN = 256 * 1024
HIGH_WATER_MAX = 4 * 1024 * 1024
#: The congestion window starts at ten segments, or this many bytes if more
#: (a virtual link: the guest's window is what really limits).
INITIAL_CWND = 256 * 1024
#: The congestion window never grows past this many bytes.
MAX_CWND = 64 * 1024 * 1024

#: Our window scale shift, when the guest scales.
SCALE_SHIFT = 5
#: A TCP header without options (packed here: the hot path).
FIXED_HEADER = struct.Struct("!HHIIHHHH")


def signed(difference: int) -> int:
    """
    A 32-bit sequence-number difference as a signed integer.
    """
    difference &= MASK
    return difference - 0x100000000 if difference & 0x80000000 else difference


class SendSide(SackRecovery):
    """
    Sequence state and timers of the host-to-guest direction; mixed into
    L{vtwisted.slirp.tcpconnection.TcpConnection}, which provides
    L{emit}, L{abort}, C{transport}, C{reactor} and the handshake states.

    @ivar sendBuffer: data from C{sndUna} on, acknowledged data removed.
    @ivar sndUna: the oldest unacknowledged sequence number (relative).
    @ivar sndNxt: the next sequence number to send.
    @ivar sndMax: the highest sequence number sent so far, plus one.
    @ivar sndEnd: one past the last byte the host gave us.
    @ivar sndWnd: the guest's window in bytes (already scaled).
    @ivar hostEof: the host sent its last byte: a FIN follows it.
    @ivar bytesToGuest: data bytes the guest acknowledged.
    """

    reactor: Any
    transport: Any
    nat: Any
    iss: int
    mss: int
    segmentSize: int
    sndShift: int

    def initSendSide(self) -> None:
        """
        Start with only our SYN (sequence number 0) outstanding.
        """
        self.sendBuffer = bytearray()
        self.sndUna = 0
        self.sndNxt = 1
        self.sndMax = 1
        self.sndEnd = 1
        self.sndWnd = 0
        self.maxWnd = 0
        self.hostEof = False
        self.bytesToGuest = 0
        self.cwnd = max(INITIAL_CWND, 10 * self.mss)
        self.ssthresh = MAX_CWND
        self.recover = -1
        self.dupAcks = 0
        self.backoff = 0
        self.rto = INITIAL_RTO
        self.srtt = 0.0
        self.rttvar = 0.0
        self.rttSeq = -1
        self.rttStart = 0.0
        self.rttKnown = False
        self.readingPaused = False
        self.timer: Any = None
        self.probing = False
        self.orphanProbes = 0  # Timeouts without progress, host gone.
        self.initSack()

    # Hooks the connection provides.

    def emit(self, seq: int, flags: int, payload: Buffer = b"", options: bytes = b"") -> None:
        raise NotImplementedError()

    def abort(self, resetGuest: bool) -> None:
        raise NotImplementedError()

    def handshakeTimeout(self) -> None:
        raise NotImplementedError()

    def sendAllowed(self) -> bool:
        raise NotImplementedError()

    def finAcked(self) -> None:
        raise NotImplementedError()

    # The timer.

    def armTimer(self, delay: float) -> None:
        """
        (Re)start the connection's timer to fire in C{delay} seconds.
        """
        if self.timer is not None and self.timer.active():
            self.timer.reset(delay)
        else:
            self.timer = self.reactor.callLater(delay, self.timerFired)

    def stopTimer(self) -> None:
        """
        Cancel the connection's timer, if it runs.
        """
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.probing = False

    def armRetransmit(self) -> None:
        """
        (Re)start the timer for what is in flight: as a tail loss probe if
        one may go (L{probeTimeout}), else as the retransmission timer.
        """
        delay = self.probeTimeout()
        self.probing = delay > 0
        self.armTimer(delay or self.rto)

    def timerRunning(self) -> bool:
        return self.timer is not None and self.timer.active()

    def timerFired(self) -> None:
        """
        Retransmit, probe for a lost tail, probe a zero window, or repeat
        the handshake.
        """
        self.timer = None
        if not self.sendAllowed():
            self.handshakeTimeout()
            return
        if self.sndMax <= self.sndUna and not self.persisting():
            return
        if self.probing:
            self.probing = False
            self.probeDue()
            self.armTimer(self.rto)
            return
        self.backoff += 1
        if self.backoff > MAX_RETRIES or self.orphanGivenUp():
            self.abort(resetGuest=True)
            return
        self.rto = min(self.rto * 2, MAX_RTO)
        self.rttSeq = -1
        if self.sndWnd == 0 and self.sndUna < self.sndEnd:
            self.probe()
        else:
            self.ssthresh = max((self.sndMax - self.sndUna) // 2, 2 * self.mss)
            self.cwnd = self.mss
            self.recover = -1
            self.probeHigh = -1
            self.scoreboard.clear()
            self.sndNxt = self.sndUna
            self.output()
        self.armTimer(self.rto)

    def orphanGivenUp(self) -> bool:
        """
        Count one more timeout (a probe or a retransmission, of data or of
        the FIN) without progress once the host is gone (EOF seen, socket
        lost): a zero-window answer resets the back-off, not this count.

        @return: whether L{ORPHAN_PROBES} of them went without progress.
        """
        if not self.hostEof or self.transport is not None:
            return False
        if self.orphanProbes >= ORPHAN_PROBES:
            return True
        self.orphanProbes += 1
        return False

    def bareSeq(self) -> int:
        """
        The sequence number of a segment without data, SYN or FIN (an ACK,
        a window update, a RST): the highest sent so far, as in BSD's
        C{tcp_output}, so that a guest that has it all takes the segment
        while we go back after a timeout; but where a zero window is probed,
        the probe's byte may not have been taken.
        """
        return self.sndMax if self.sndWnd else self.sndNxt

    def persisting(self) -> bool:
        """
        Whether the guest's zero window holds back data we have.
        """
        return self.sndWnd == 0 and self.sndMax <= self.sndUna < self.sndEnd

    def probe(self) -> None:
        """
        Send one byte past a zero window, to learn when it opens.
        """
        una = self.sndUna
        if una >= self.sndEnd:
            return
        self.emit(una, ACK | PSH, bytes(self.sendBuffer[:1]))
        self.sndMax = max(self.sndMax, una + 1)

    # Sending.

    def hostData(self, data: bytes) -> None:
        """
        Queue C{data} from the host and send what the windows allow.
        """
        if self.hostEof:
            return
        self.sendBuffer += data
        self.sndEnd += len(data)
        if self.sendAllowed():
            self.output()
        if not self.readingPaused and len(self.sendBuffer) > self.highWater():
            self.readingPaused = True
            self.transport.pauseProducing()

    def highWater(self) -> int:
        """
        How many unacknowledged and unsent bytes we hold before pausing the host.
        """
        return min(max(4 * self.maxWnd, HIGH_WATER_MIN), HIGH_WATER_MAX, self.nat.share)

    def output(self) -> None:
        """
        Send new data (and the FIN) as far as the windows allow.
        """
        nxt = self.sndNxt
        end = self.sndEnd
        una = self.sndUna
        size = self.segmentSize
        mss = self.mss
        limit = una + min(self.sndWnd, self.cwnd + self.scoreboard.size)
        buffer = self.sendBuffer
        while nxt < end:
            n = min(size, end - nxt, limit - nxt)
            if n < size and n < end - nxt and nxt > una:
                n -= n % mss
            if n <= 0:
                break
            flags = ACK
            if nxt + n == end:
                flags = ACK | PSH | FIN if self.hostEof else ACK | PSH
            offset = nxt - una
            if self.rttSeq < 0 and nxt + n > self.sndMax:
                self.rttSeq = nxt + n
                self.rttStart = self.reactor.seconds()
            # The router copies the payload into its packet at once: a view
            # saves a copy, and is released before the buffer changes.
            with memoryview(buffer) as view, view[offset : offset + n] as payload:
                self.emit(nxt, flags, payload)
            nxt += n + (flags & FIN)
        if nxt == end and self.hostEof:
            self.emit(nxt, ACK | FIN)
            nxt += 1
        self.sndNxt = nxt
        if nxt > self.sndMax:
            self.sndMax = nxt
        if not self.timerRunning() and (self.sndMax > self.sndUna or self.persisting()):
            self.armRetransmit()

    def closeSending(self) -> None:
        """
        The host sent its last byte: send a FIN after the data.
        """
        if self.hostEof:
            return
        self.hostEof = True
        if self.sendAllowed() and self.sndNxt == self.sndEnd:
            self.output()

    # Acknowledgments.

    def ackReceived(self, ackNumber: int, window: int, bare: bool, sacked: int = 0) -> bool:
        """
        Take the guest's acknowledgment and window.

        @param ackNumber: the acknowledgment field (32 bits).
        @param window: the window field, unscaled.
        @param bare: the segment has no data, SYN or FIN (a duplicate ACK
            candidate).
        @param sacked: bytes its SACK blocks newly named (L{sackReceived}).
        @return: False if it acknowledges something never sent.
        """
        una = self.sndUna
        ack = una + signed(ackNumber - self.iss - una)
        if ack > self.sndMax:
            return False
        window <<= self.sndShift
        if ack < una:
            return True
        if ack == una:
            if sacked:
                self.sackDuplicate(sacked)
            else:
                self.sameAck(window, bare)
        else:
            self.newAck(ack, sacked)
        if self.probeHigh >= 0:
            self.probeAnswered(ack, sacked)
        if window > self.maxWnd:
            self.maxWnd = window
        if window == 0:
            self.backoff = 0
        opened = window > self.sndWnd
        if opened:
            self.orphanProbes = 0
        self.sndWnd = window
        if opened and self.timerRunning() and self.sndMax <= self.sndUna:
            self.stopTimer()
        self.output()
        return True

    def sameAck(self, window: int, bare: bool) -> None:
        """
        An ACK that acknowledges nothing new: maybe a duplicate.
        """
        if not bare or window != self.sndWnd or not window or self.sndMax <= self.sndUna:
            self.dupAcks = 0
            return
        self.dupAcks += 1
        if self.scoreboard.ranges:
            if self.dupAcks == 3 and self.recover < 0:
                self.sackRecovery(0)
        elif self.dupAcks == 3:
            flight = self.sndMax - self.sndUna
            self.ssthresh = max(flight // 2, 2 * self.mss)
            self.cwnd = self.ssthresh + 3 * self.mss
            self.recover = self.sndMax
            self.rttSeq = -1
            self.retransmitFirst()
        elif self.dupAcks > 3 and self.recover >= 0:
            self.cwnd += self.mss

    def retransmitFirst(self) -> None:
        """
        Send again the segment at C{sndUna}: at most what was sent (a
        super-segment reaching past C{sndMax} would be data the guest's
        ACK of could not be taken), the FIN only if it was.
        """
        una = self.sndUna
        sent = self.sndMax - una
        n = min(self.segmentSize, self.sndEnd - una, sent)
        fin = self.hostEof and self.sndMax > self.sndEnd
        if n <= 0:
            if fin and sent > 0:
                self.emit(una, ACK | FIN)
            return
        flags = ACK | PSH | FIN if fin and una + n == self.sndEnd else ACK
        self.emit(una, flags, bytes(self.sendBuffer[:n]))

    def newAck(self, ack: int, sacked: int = 0) -> None:
        """
        Forget the data C{ack} acknowledges; grow the congestion window;
        with SACK, go on or start resending what is lost.
        """
        una = self.sndUna
        acked = ack - una
        data = min(ack, self.sndEnd) - una
        if data > 0:
            del self.sendBuffer[:data]
            self.bytesToGuest += data
        self.sndUna = ack
        if self.sndNxt < ack:
            self.sndNxt = ack
        self.backoff = 0
        self.orphanProbes = 0
        if 0 <= self.rttSeq <= ack:
            self.rttSample(self.reactor.seconds() - self.rttStart)
        if self.scoreboard.ranges or (self.recover >= 0 and self.sackOk):
            self.sackAcknowledged(acked, ack, sacked)
        else:
            self.grow(acked, ack)
        if self.probeHigh >= 0 and ack >= self.probeHigh:
            self.probeHigh = -1
        if self.sndMax > ack:
            self.armRetransmit()
        else:
            self.stopTimer()
        if self.hostEof and ack == self.sndEnd + 1:
            self.finAcked()
        if self.readingPaused and len(self.sendBuffer) <= self.highWater() // 2:
            self.readingPaused = False
            if self.transport is not None and not self.hostEof:
                self.transport.resumeProducing()

    def grow(self, acked: int, ack: int) -> None:
        """
        Open the congestion window for C{acked} new bytes; in recovery,
        resend the next hole at once on a partial acknowledgment.
        """
        if self.recover >= 0:
            if ack < self.recover:
                self.dupAcks = 0
                self.retransmitFirst()
                return
            self.recover = -1
            self.cwnd = self.ssthresh
        self.dupAcks = 0
        if self.cwnd < self.ssthresh:
            self.cwnd += acked
        else:
            self.cwnd += max(1, self.mss * acked // self.cwnd)
        if self.cwnd > MAX_CWND:
            self.cwnd = MAX_CWND

    def rttSample(self, sample: float) -> None:
        """
        Update the RTO from one round-trip time (Jacobson/Karels).
        """
        self.rttSeq = -1
        self.rttKnown = True
        if self.srtt == 0.0:
            self.srtt = sample
            self.rttvar = sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample
        self.rto = min(max(self.srtt + 4 * self.rttvar, MIN_RTO), MAX_RTO)
