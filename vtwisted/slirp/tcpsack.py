"""
Loss recovery toward a guest that sends SACK blocks (RFC 2018, after RFC
6675 as far as it is simple).

Theory of operation: a guest that offered SACK names, in its duplicate
ACKs, the blocks it holds past a hole.  L{sackReceived} turns each block's
32-bit edges into our unbounded relative sequence numbers (the ones of
L{vtwisted.slirp.tcpsend}) and puts them on a L{Scoreboard}: sorted,
merged ranges above C{sndUna}, at most L{MAX_RANGES} of them (past that
the highest is forgotten, which only makes us resend more).  Blocks that
are not between C{sndUna} and C{sndMax} (D-SACKs, bogus ones) are ignored.

A duplicate ACK is one that acknowledges nothing new but SACKs new bytes
(RFC 6675: its window may have grown, as Linux's does), or a bare one as
before.  Recovery starts on the third, or as soon as more than two
segments' worth is SACKed above a gap (also on an ACK that moves
C{sndUna} up to the next gap), and ends once C{recover} (C{sndMax} at the
start) is acknowledged.  In it every gap below the highest SACKed byte
counts as lost and is resent once, in order from C{rexmitNext}, never
what was SACKed: at the start, then on each ACK as many bytes as that ACK
told us left the link (newly SACKed or acknowledged: packet conservation),
at least a segment.  The congestion window is halved once per recovery,
and SACKed bytes do not count against it, so new data keeps flowing while
gaps are repaired: a window with several losses is repaired in about one
round trip, not one gap per round trip as NewReno does.  If the guest
SACKs more than two segments sent after our latest retransmission while
gaps stay open, those retransmissions were lost too (the link keeps the
order): the gaps are resent once more, not left to the timer.  An RTT is
also sampled when the timed segment is SACKed, so the RTO follows the
link through long lossy stretches.  A timeout clears the scoreboard (RFC
2018: the guest may renege) and goes back to C{sndUna} as before.

A loss in the last segments of a flight leaves too few segments after it
for duplicate ACKs, and would wait for the retransmission timer (200 ms
at least).  So, as RFC 8985's tail loss probe, when the timer is armed for
a flight outside recovery it is first armed for two round trips (10 ms at
least; 40 ms more for a lone segment, a delayed ACK): if no ACK came by
then and the guest had SACKed past a gap, the gap is lost (the link keeps
the order), and recovery starts, where it would need three duplicate ACKs;
in recovery, what was resent last is resent again (a lost retransmission
at the end of a stream, which no later SACK can reveal); if nothing was
SACKed, the last MSS of the flight (and the FIN) is sent again, once per
flight.  If it was what was lost, its ACK ends the
matter; if more was lost, the guest SACKs the probe above the gap, and
that ACK starts recovery at once.  Without
SACK the connection does what L{vtwisted.slirp.tcpsend} describes.
"""

from __future__ import annotations

import struct
from typing import Any

from vtwisted.wire.tcp import ACK, FIN, OPT_SACK, PSH, TCPError, iterOptions

#: Ranges a scoreboard keeps at most (a guest names 3 or 4 per ACK).
MAX_RANGES = 64
#: The shortest wait before a tail loss probe (RFC 8985's floor), and what
#: a guest may hold back the ACK of a lone segment: Linux's shortest delayed
#: ACK (a guest that waits longer gets a probe it did not need: a segment
#: sent twice, which it acknowledges at once).
MIN_PTO = 0.01
DELAYED_ACK = 0.04
_EDGES = struct.Struct("!II")


def sackEdges(options: bytes) -> list[tuple[int, int]]:
    """
    The (left, right) 32-bit edges of the SACK option in C{options}, if
    any; unreadable options give none.
    """
    try:
        for kind, value in iterOptions(options):
            if kind == OPT_SACK:
                return [_EDGES.unpack_from(value, at) for at in range(0, len(value) - 7, 8)]
    except TCPError:
        pass
    return []


class Scoreboard:
    """
    What the guest SACKed: sorted ranges C{[start, end)} of relative
    sequence numbers, neither overlapping nor touching.

    @ivar ranges: C{[start, end]} lists, lowest first.
    @ivar size: their bytes.
    """

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []
        self.size = 0

    def clear(self) -> None:
        self.ranges = []
        self.size = 0

    def highest(self) -> int:
        """
        One past the highest SACKed byte, 0 if none.
        """
        return self.ranges[-1][1] if self.ranges else 0

    def add(self, start: int, end: int) -> int:
        """
        Mark C{[start, end)} SACKed.

        @return: how many of its bytes were not SACKed already.
        """
        ranges = self.ranges
        i = 0
        while i < len(ranges) and ranges[i][1] < start:
            i += 1
        j = i
        covered = 0
        while j < len(ranges) and ranges[j][0] <= end:
            covered += min(ranges[j][1], end) - max(ranges[j][0], start)
            j += 1
        if i == j:
            ranges.insert(i, [start, end])
        else:
            ranges[i:j] = [[min(start, ranges[i][0]), max(end, ranges[j - 1][1])]]
        new = end - start - covered
        self.size += new
        if len(ranges) > MAX_RANGES:
            self.size -= sum(high - low for low, high in ranges[MAX_RANGES:])
            del ranges[MAX_RANGES:]
        return new

    def acknowledged(self, una: int) -> None:
        """
        Forget what lies below C{una}, now cumulatively acknowledged.
        """
        ranges = self.ranges
        while ranges and ranges[0][1] <= una:
            low, high = ranges.pop(0)
            self.size -= high - low
        if ranges and ranges[0][0] < una:
            self.size -= una - ranges[0][0]
            ranges[0][0] = una

    def nextHole(self, start: int) -> tuple[int, int] | None:
        """
        The first gap from C{start} on below the highest SACKed byte, as
        C{(first, end)}; L{None} if there is none.
        """
        for low, high in self.ranges:
            if start < low:
                return start, low
            if start < high:
                start = high
        return None


class SackRecovery:
    """
    The SACK half of L{vtwisted.slirp.tcpsend.SendSide}, mixed into it.

    @ivar scoreboard: what the guest SACKed.
    @ivar rexmitNext: in recovery, the gaps below it were resent.
    @ivar rexmitMark: C{sndMax} when we last resent a gap.
    """

    iss: int
    sackOk: bool
    reactor: Any
    rttStart: float
    sndUna: int
    sndMax: int
    sndEnd: int
    mss: int
    segmentSize: int
    sendBuffer: bytearray
    recover: int
    dupAcks: int
    ssthresh: int
    cwnd: int
    rttSeq: int
    rttKnown: bool
    srtt: float
    rto: float
    backoff: int
    sndWnd: int
    hostEof: bool
    nat: Any

    def initSack(self) -> None:
        self.scoreboard = Scoreboard()
        self.rexmitNext = 0
        self.rexmitMark = 0
        #: C{sndMax} when a tail loss probe went, until it is acknowledged.
        self.probeHigh = -1

    def emit(self, seq: int, flags: int, payload: Any = b"", options: bytes = b"") -> None:
        raise NotImplementedError()

    def grow(self, acked: int, ack: int) -> None:
        raise NotImplementedError()

    def rttSample(self, sample: float) -> None:
        raise NotImplementedError()

    def retransmitFirst(self) -> None:
        raise NotImplementedError()

    def probeTimeout(self) -> float:
        """
        When to look for a lost tail of what is in flight (L{probeDue}):
        two round trips (a lone segment's delayed ACK added); 0 if not:
        no SACK or RTT sample yet, a probe out already, a timeout backing
        off, a zero window, or not sooner than the retransmission timer.
        """
        if (not self.sackOk or not self.rttKnown or self.probeHigh >= 0
                or self.backoff or not self.sndWnd or self.sndMax <= self.sndUna):
            return 0.0
        timeout = max(2 * self.srtt, MIN_PTO)
        if self.sndMax - self.sndUna <= self.mss:
            timeout += DELAYED_ACK
        return timeout if timeout < self.rto else 0.0

    def probeDue(self) -> None:
        """
        Two round trips passed without an ACK (the link keeps the order):
        in recovery, what we resent last was lost too: resend the gaps
        again; else if the guest SACKed past a gap, the gap is lost:
        recover it now; else probe for a lost tail.
        """
        if self.recover >= 0:
            if self.scoreboard.ranges:
                self.rexmitNext = self.sndUna
                self.sackRetransmit(0)
            else:
                self.retransmitFirst()
        elif self.scoreboard.ranges:
            self.sackRecovery(0)
        else:
            self.tailProbe()

    def tailProbe(self) -> None:
        """
        Send the last MSS of the flight again (with the FIN if it went).
        """
        una = self.sndUna
        end = min(self.sndMax, self.sndEnd)
        fin = self.hostEof and self.sndMax > self.sndEnd
        start = max(una, end - self.mss)
        if start >= end and not fin:
            return
        offset = start - una
        with memoryview(self.sendBuffer) as view, view[offset : end - una] as payload:
            self.emit(start, ACK | PSH | FIN if fin else ACK | PSH, payload)
        self.probeHigh = self.sndMax
        self.nat.tailProbes += 1

    def probeAnswered(self, ack: int, sacked: int) -> None:
        """
        An ACK after a tail loss probe, SACKing C{sacked} new bytes: if it
        SACKs above a gap short of the probe's end, what the gaps hold was
        lost; recover it now.
        """
        if self.recover < 0 and self.scoreboard.ranges and ack < self.probeHigh:
            self.probeHigh = -1
            self.sackRecovery(sacked)

    def sackReceived(self, options: bytes) -> int:
        """
        Put the SACK blocks of an ACK's C{options} on the scoreboard.

        @return: how many bytes they name that were not SACKed before.
        """
        una, sndMax = self.sndUna, self.sndMax
        base = self.iss + una
        new = 0
        for left, right in sackEdges(options):
            start = una + ((left - base + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            end = una + ((right - base + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            if una <= start < end <= sndMax:
                new += self.scoreboard.add(start, end)
                if start < self.rttSeq <= end:
                    self.rttSample(self.reactor.seconds() - self.rttStart)
        return new

    def sackDuplicate(self, sacked: int) -> None:
        """
        An ACK that acknowledges nothing new but SACKs C{sacked} new bytes:
        a duplicate ACK (RFC 6675, whatever its window), which resends as
        much, or starts recovery once three came or more than two
        segments' worth is SACKed.
        """
        self.dupAcks += 1
        if self.recover >= 0:
            self.retransmissionsLost()
            self.sackRetransmit(sacked)
        elif self.dupAcks >= 3 or self.scoreboard.size > 2 * self.mss:
            self.sackRecovery(sacked)

    def sackAcknowledged(self, acked: int, ack: int, sacked: int) -> None:
        """
        C{ack} acknowledges C{acked} new bytes and the ACK SACKs C{sacked}
        more: resend as much in recovery; else open the congestion window
        and start recovery if a gap is still followed by more than two
        segments' worth SACKed.
        """
        board = self.scoreboard
        board.acknowledged(ack)
        if ack < self.recover:
            self.dupAcks = 0
            self.retransmissionsLost()
            self.sackRetransmit(acked + sacked)
            return
        self.grow(acked, ack)
        if board.size > 2 * self.mss:
            self.sackRecovery(sacked)

    def sackRecovery(self, sacked: int) -> None:
        """
        Enter recovery: halve the congestion window (SACKed bytes are not
        counted as in flight: L{vtwisted.slirp.tcpsend.SendSide.output})
        and resend the first gaps.
        """
        self.ssthresh = self.cwnd = max((self.sndMax - self.sndUna) // 2, 2 * self.mss)
        self.recover = self.sndMax
        self.rexmitNext = self.sndUna
        self.sackRetransmit(sacked)

    def retransmissionsLost(self) -> None:
        """
        If the guest SACKed more than two segments' worth sent after our
        latest retransmission, the gaps still open below it were lost again
        (the link keeps the order): resend them all once more.
        """
        if self.scoreboard.highest() > self.rexmitMark + 2 * self.mss:
            self.rexmitNext = self.sndUna
            self.rexmitMark = self.sndMax

    def sackRetransmit(self, budget: int) -> None:
        """
        Resend the gaps below the highest SACKed byte not yet resent in
        this recovery, about C{budget} bytes of them (at least a segment).
        """
        una = self.sndUna
        start = max(self.rexmitNext, una)
        end = min(self.sndEnd, self.scoreboard.highest())
        size = self.segmentSize
        budget = max(budget, self.mss)
        buffer = self.sendBuffer
        while budget > 0 and (hole := self.scoreboard.nextHole(start)) is not None:
            first, last = hole
            n = min(last, end) - first
            if n <= 0:
                break
            n = min(n, size)
            offset = first - una
            with memoryview(buffer) as view, view[offset : offset + n] as payload:
                self.emit(first, ACK, payload)
            if first < self.rttSeq <= first + n:
                self.rttSeq = -1
            start = first + n
            budget -= n
            self.rexmitMark = self.sndMax
        self.rexmitNext = start
