"""
The slirp TCP engine once the host is gone (an orphan,
L{vtwisted.slirp.tcpsend.ORPHAN_PROBES}): the guest that never reads is
reset after 8 probes or retransmissions without progress, whether our data
or our FIN waits on its zero window, or it never acknowledges the FIN at
all, not kept for ever; while the host is there, or while the guest makes
progress, probing goes on.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slirptcpharness import Harness, HostTransport
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from vtwisted.slirp.tcpconnection import FIN_WAIT_SECONDS
from vtwisted.slirp.tcpsend import MAX_RETRIES, ORPHAN_PROBES
from vtwisted.wire.tcp import ACK, FIN, RST, TCPHeader


@pytest.fixture
def h() -> Harness:
    return Harness()


def stalledGuest(h: Harness) -> HostTransport:
    """
    A connection whose guest advertises a zero window, with 100 bytes from
    the host held back.
    """
    transport = h.open(window=0)
    h.host(transport).dataReceived(b"o" * 100)
    assert h.take() == []
    return transport


def probeAndAnswer(h: Harness, acked: int = 0) -> bool:
    """
    Let the clock run until the engine sends the guest something; the
    guest answers a probe with a zero window, acknowledging C{acked} more
    bytes.

    @return: whether the engine reset the connection instead.
    """
    for _ in range(240):
        h.clock.advance(0.5)
        segments = h.takeAll()
        if segments:
            break
    else:
        raise AssertionError("no probe in 120 s")
    if any(header.flags & RST for header, _ in segments):
        return True
    assert [len(payload) for _, payload in segments] == [1]
    h.ours += acked
    h.ack(h.ours, window=0)
    return False


def hostGone(h: Harness, transport: HostTransport) -> None:
    h.host(transport).connectionLost(Failure(ConnectionDone()))
    assert h.take() == []


def test_orphanNeverReadingIsResetAfterEightProbes(h: Harness) -> None:
    """
    Once the host has closed, a guest answering probes with a zero window
    for ever is reset after 8 of them; the host socket is gone already,
    the connection forgotten and counted as timed out.
    """
    transport = stalledGuest(h)
    hostGone(h, transport)
    outcomes = [probeAndAnswer(h) for _ in range(9)]
    assert outcomes == [False] * 8 + [True]
    assert h.nat.connectionCount == 0
    assert h.nat.timeouts == 1 and h.nat.resets == 1


def test_orphanMakingProgressIsNotReset(h: Harness) -> None:
    """
    A guest that takes a byte now and then, its window zero again each
    time, starts the count again: only 8 probes in a row without progress
    reset it.
    """
    transport = stalledGuest(h)
    hostGone(h, transport)
    for _ in range(5):
        assert not any(probeAndAnswer(h) for _ in range(7))
        assert not probeAndAnswer(h, acked=1)
    assert h.nat.connectionCount == 1 and h.nat.timeouts == 0
    outcomes = [probeAndAnswer(h) for _ in range(9)]
    assert outcomes == [False] * 8 + [True]
    assert h.nat.timeouts == 1


def test_zeroWindowProbedForEverWhileHostIsThere(h: Harness) -> None:
    """
    A host that only half-closed is still there (it may read what the
    guest sends): its guest's zero window is probed for as long as it
    answers; the count starts once the host socket is lost.
    """
    transport = stalledGuest(h)
    h.host(transport).readConnectionLost()
    assert not any(probeAndAnswer(h) for _ in range(30))
    assert h.nat.connectionCount == 1 and h.nat.timeouts == 0
    assert not transport.aborted
    hostGone(h, transport)
    outcomes = [probeAndAnswer(h) for _ in range(9)]
    assert outcomes == [False] * 8 + [True]
    assert h.nat.connectionCount == 0 and h.nat.timeouts == 1


# The FIN of an orphan, and the FIN nobody acknowledges.

def nextSegments(h: Harness) -> list[tuple[TCPHeader, bytes]]:
    """
    Run the clock to the engine's next timer (and no further) until it
    sends the guest something.
    """
    for _ in range(100):
        calls = h.clock.getDelayedCalls()
        assert calls, "the engine has no timer left"
        h.clock.advance(max(min(call.getTime() for call in calls) - h.clock.seconds(), 0))
        segments = h.takeAll()
        if segments:
            return segments
    raise AssertionError("nothing sent on 100 timers")


def finAndAnswer(h: Harness, window: int | None = 0) -> bool:
    """
    Wait for the engine's next segment, our FIN, alone; the guest answers
    with an ACK of all but the FIN with C{window}, or not at all if None.

    @return: whether the engine reset the connection instead.
    """
    segments = nextSegments(h)
    if any(header.flags & RST for header, _ in segments):
        return True
    assert [(header.flags & FIN, header.seq, payload) for header, payload in segments] == [
        (FIN, h.ours, b"")]
    if window is not None:
        h.ack(h.ours, window=window)
    return False


def closedOnAFullGuest(h: Harness) -> HostTransport:
    """
    The host sent 100 bytes and closed, its socket gone; the guest's window
    had room for the data, not the FIN: it takes the data with a zero window.
    """
    transport = h.open(window=100)
    protocol = h.host(transport)
    protocol.dataReceived(b"d" * 100)
    protocol.connectionLost(Failure(ConnectionDone()))
    sent = h.takeAll()
    assert b"".join(payload for _, payload in sent) == b"d" * 100
    assert sent[-1][0].flags & FIN
    h.ours += 100
    h.ack(h.ours, window=0)
    assert h.take() == []
    return transport


def test_orphanFinRefusedByZeroWindowIsResetAfterEight(h: Harness) -> None:
    """
    An orphan whose guest took all the data but answers our FIN with a zero
    window, acknowledging nothing more, for ever, is reset after 8 of its
    retransmissions, counted as timed out: the zero-window answers reset the
    retransmission back-off, so nothing else would end it.
    """
    closedOnAFullGuest(h)
    outcomes = [finAndAnswer(h) for _ in range(ORPHAN_PROBES + 1)]
    assert outcomes == [False] * ORPHAN_PROBES + [True]
    assert h.nat.connectionCount == 0
    assert h.nat.timeouts == 1 and h.nat.resets == 1


def test_orphanBareFinOnAZeroWindowIsResetAfterEight(h: Harness) -> None:
    """
    A guest whose window was zero from the start, the host closing without
    a byte: the lone FIN, answered with a zero window, is the same orphan.
    """
    transport = h.open(window=0)
    h.host(transport).connectionLost(Failure(ConnectionDone()))
    (fin,) = h.take()
    assert fin.flags & FIN and fin.seq == h.ours
    h.ack(h.ours, window=0)
    outcomes = [finAndAnswer(h) for _ in range(ORPHAN_PROBES + 1)]
    assert outcomes == [False] * ORPHAN_PROBES + [True]
    assert h.nat.connectionCount == 0 and h.nat.timeouts == 1


def test_finOnAZeroWindowRetransmittedWhileHostIsThere(h: Harness) -> None:
    """
    A host that only half-closed is still there: the guest answering our
    FIN with a zero window keeps it, as a zero window is probed for ever.
    """
    transport = h.open(window=0)
    h.host(transport).readConnectionLost()
    (fin,) = h.take()
    h.ack(h.ours, window=0)
    assert not any(finAndAnswer(h) for _ in range(3 * ORPHAN_PROBES))
    assert h.nat.connectionCount == 1 and h.nat.timeouts == 0


def silentGuestOutcomes(h: Harness) -> list[bool]:
    """
    Our FIN's retransmissions to a guest that never answers, until a RST.
    """
    outcomes: list[bool] = []
    while not any(outcomes) and len(outcomes) <= MAX_RETRIES + 1:
        outcomes.append(finAndAnswer(h, window=None))
    return outcomes


def test_finNeverAcknowledgedByAnOrphanIsResetAfterEight(h: Harness) -> None:
    """
    The host closed and its socket is gone; the guest (in FIN-WAIT-1)
    never acknowledges our FIN: it is reset after 8 retransmissions.
    """
    transport = h.open()
    h.host(transport).connectionLost(Failure(ConnectionDone()))
    (fin,) = h.take()
    assert fin.flags & FIN
    assert silentGuestOutcomes(h) == [False] * ORPHAN_PROBES + [True]
    assert h.nat.connectionCount == 0 and h.nat.timeouts == 1


def test_lastAckNeverAcknowledgedIsResetAfterEight(h: Harness) -> None:
    """
    The guest closed first, then the host: the host socket is closed (and
    gone) and our FIN, which the guest never acknowledges (LAST-ACK), is
    retransmitted 8 times, then the guest is reset.
    """
    transport = h.open()
    h.send(ACK | FIN)
    h.seq += 1
    assert transport.writeClosed
    h.take()
    h.host(transport).readConnectionLost()
    (fin,) = h.take()
    assert fin.flags & FIN and not transport.connected
    assert silentGuestOutcomes(h) == [False] * ORPHAN_PROBES + [True]
    assert h.nat.connectionCount == 0 and h.nat.timeouts == 1


def test_finNeverAcknowledgedWhileHostIsThereGivesUpOnRetries(h: Harness) -> None:
    """
    With the host only half-closed, a guest that never acknowledges our FIN
    is given up on after L{MAX_RETRIES} retransmissions, the host aborted.
    """
    transport = h.open()
    h.host(transport).readConnectionLost()
    h.take()
    assert silentGuestOutcomes(h) == [False] * MAX_RETRIES + [True]
    assert h.nat.connectionCount == 0 and h.nat.timeouts == 1
    assert transport.aborted


def test_finAcknowledgedByAnOrphanLingersAMinute(h: Harness) -> None:
    """
    The host gone and our FIN acknowledged, a guest that never sends its
    own (FIN-WAIT-2) has nothing to retransmit to: the connection is
    forgotten L{FIN_WAIT_SECONDS} later, its keep-alives notwithstanding,
    without a RST (as Linux's C{tcp_fin_timeout}); what it sends after
    that is a stray, answered with a RST.
    """
    transport = h.open()
    h.host(transport).connectionLost(Failure(ConnectionDone()))
    (fin,) = h.take()
    h.ours += 1
    h.ack(h.ours)
    for _ in range(int(FIN_WAIT_SECONDS) - 1):
        h.clock.advance(1)
        h.send(ACK, seq=h.seq - 1)
    assert h.nat.connectionCount == 1
    h.clock.advance(1)
    assert h.nat.connectionCount == 0
    assert not any(header.flags & RST for header in h.take())
    assert h.nat.timeouts == 0 and h.nat.resets == 0
    h.data(b"late")
    assert [header.flags & RST for header in h.take()] == [RST]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["stall", "take", "open"]), max_size=40))
def test_orphanProgressRestartsTheCount(answers: list[str]) -> None:
    """
    An orphan with 3 bytes and its FIN left for a guest with a zero window,
    the guest answering each probe or retransmission by stalling (a zero
    window, nothing new acknowledged), taking one more byte or the FIN, or
    opening its window to one byte: the connection is reset on the timer
    that follows 8 answers in a row without progress (new data
    acknowledged, the window opening), never sooner; once the guest has
    taken the FIN it lingers, never reset.
    """
    h = Harness()
    transport = h.open(window=0)
    h.host(transport).dataReceived(b"abc")
    h.host(transport).connectionLost(Failure(ConnectionDone()))
    assert h.take() == []
    acked = count = 0
    window = 0
    for answer in [*answers, *["stall"] * (ORPHAN_PROBES + 1)]:
        segments = nextSegments(h)
        reset = any(header.flags & RST for header, _ in segments)
        assert reset == (count >= ORPHAN_PROBES)
        if reset:
            assert h.nat.connectionCount == 0 and h.nat.timeouts == 1
            return
        count += 1
        if answer == "take":
            acked += 1
            count = 0
        elif answer == "open" and window == 0:
            count = 0
        window = 1 if answer == "open" else 0
        h.ack(h.ours + acked, window=window)
        h.takeAll()
        if acked == 4:
            assert h.nat.connectionCount == 1 and h.nat.timeouts == 0
            return
    raise AssertionError("never reset")
