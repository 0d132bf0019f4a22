"""
The slirp TCP engine when segments go missing or a side cannot keep up:
retransmission on timeouts and duplicate ACKs, zero windows, giving up,
and backpressure on the host's transport.
"""

from __future__ import annotations

import pytest
from slirptcpharness import GUEST_ISN, GUEST_PORT, MASK, SCALE_OPTION, Harness, mssOption
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from vtwisted.wire.tcp import ACK, FIN, RST


@pytest.fixture
def h() -> Harness:
    return Harness()


# Retransmission.

def test_retransmissionOnTimeout(h: Harness) -> None:
    """
    Unacknowledged data is sent again from the oldest byte after the RTO,
    and the RTO doubles.
    """
    transport = h.open(options=mssOption(1000))
    h.host(transport).dataReceived(b"r" * 2000)
    h.take()
    h.clock.advance(0.2)
    again = h.takeAll()
    assert again[0][0].seq == h.ours and again[0][1] == b"r" * 1000
    h.clock.advance(0.39)
    assert h.take() == []
    h.clock.advance(0.01)
    assert h.take()[0].seq == h.ours


def test_fastRetransmitAfterThreeDuplicateAcks(h: Harness) -> None:
    """
    Three duplicate ACKs resend the first unacknowledged segment at once.
    """
    transport = h.open(options=mssOption(1000))
    h.host(transport).dataReceived(b"f" * 4000)
    h.take()
    h.ack(h.ours + 1000)
    h.take()
    h.ack(h.ours + 1000)
    h.ack(h.ours + 1000)
    assert h.take() == []
    h.ack(h.ours + 1000)
    (resent,) = h.takeAll()
    assert resent[0].seq == h.ours + 1000 and len(resent[1]) == 1000


def test_zeroWindowIsProbed(h: Harness) -> None:
    """
    Data held back by a zero window is probed one byte at a time, backing off.
    """
    transport = h.open(window=0)
    h.host(transport).dataReceived(b"p" * 100)
    assert h.take() == []
    h.clock.advance(0.2)
    (probe,) = h.takeAll()
    assert probe[0].seq == h.ours and probe[1] == b"p"
    h.ack(h.ours, window=0)
    h.clock.advance(0.2)
    assert h.take() == []
    h.clock.advance(0.2)
    assert len(h.take()) == 1
    h.ack(h.ours, window=1000)
    assert sum(len(p) for _, p in h.takeAll()) == 100


def test_zeroWindowProbingGoesOnWhileGuestAnswers(h: Harness) -> None:
    """
    A guest that keeps answering probes with a zero window is not given up on.
    """
    transport = h.open(window=0)
    h.host(transport).dataReceived(b"p" * 100)
    for _ in range(30):
        h.clock.advance(60)
        h.ack(h.ours, window=0)
        h.ack(h.ours, window=0)
        h.ack(h.ours, window=0)
    assert h.nat.connectionCount == 1
    assert not transport.aborted
    assert {len(p) for _, p in h.takeAll()} == {1}


def test_finRetransmittedIntoZeroWindow(h: Harness) -> None:
    """
    An unacknowledged FIN is sent again even while the guest's window is zero.
    """
    transport = h.open(window=0)
    h.host(transport).readConnectionLost()
    (fin,) = h.take()
    h.clock.advance(0.2)
    assert [s.flags & FIN for s in h.take()] == [FIN]
    assert fin.flags & FIN


def test_giveUpAfterRepeatedTimeouts(h: Harness) -> None:
    """
    After 12 unanswered retransmissions the guest gets a RST and the host
    connection is aborted.
    """
    transport = h.open()
    h.host(transport).dataReceived(b"g" * 100)
    for _ in range(13):
        h.clock.advance(60)
    assert h.take()[-1].flags == RST | ACK
    assert transport.aborted
    assert h.nat.connectionCount == 0
    assert h.nat.timeouts == 1


# Backpressure.

def test_hostPausedAboveHighWaterAndResumedBelowHalf(h: Harness) -> None:
    """
    A guest that does not keep up pauses the host's reading; its ACKs resume it.
    """
    transport = h.open(options=mssOption(1460), window=1460)
    protocol = h.host(transport)
    for _ in range(300):
        protocol.dataReceived(b"b" * 1024)
    assert transport.producerState == "paused"
    acked = 0
    while transport.producerState == "paused":
        acked += sum(len(p) for _, p in h.takeAll())
        assert 300 * 1024 - acked > 96 * 1024
        h.ack(h.ours + acked, window=16384)
    assert 300 * 1024 - acked <= 128 * 1024


def test_zeroWindowWhileHostTransportPausedAndUpdateOnResume(h: Harness) -> None:
    """
    While the host transport's buffer is full we advertise a zero window;
    its resume sends a window update.
    """
    transport = h.open()
    h.data(b"x" * 100)
    assert transport.producer is not None
    transport.producer.pauseProducing()
    h.turn()
    (ack,) = h.take()
    assert ack.window == 0
    transport.producer.resumeProducing()
    (update,) = h.take()
    assert update.window == 65535 and update.ack == h.seq


def test_dataInsidePromisedWindowAcceptedWhilePaused(h: Harness) -> None:
    """
    Pausing never shrinks what we promised: data inside the old window is
    taken, data past it is not.
    """
    transport = h.open()
    assert transport.producer is not None
    transport.producer.pauseProducing()
    h.data(b"y" * 60000)
    assert len(transport.value()) == 60000
    h.send(ACK, payload=b"z" * 10000)
    assert len(transport.value()) == 65535
    (ack,) = h.take()
    assert ack.window == 0 and ack.ack == (h.seq + 5535) & MASK


def test_guestKeepAliveAndZeroWindowProbesAreAnswered(h: Harness) -> None:
    """
    A bare segment one byte before what we expect (Linux's keep-alive, and
    its probe of our zero window) gets an ACK of where we are, else the
    guest gives up on an idle or stalled connection; a plain ACK gets none.
    """
    transport = h.open()
    h.data(b"hello")
    h.turn()
    h.take()
    h.send(ACK)
    h.turn()
    assert h.take() == []
    h.send(ACK, seq=h.seq - 1)
    h.turn()
    (answer,) = h.take()
    assert answer.ack == h.seq & MASK and answer.window == 65535
    assert transport.producer is not None
    transport.producer.pauseProducing()
    h.send(ACK, seq=h.seq - 1)
    h.turn()
    (answer,) = h.take()
    assert answer.ack == h.seq & MASK


def test_acksDuringGoBackNCarryTheHighestSequenceSent(h: Harness) -> None:
    """
    After a retransmission timeout we go back to the oldest unacknowledged
    byte, but our bare ACKs (of the guest's data, window updates) carry the
    highest sequence number sent so far, as BSD's and libslirp's do: a
    guest that already has that data discards a bare segment from before
    where it expects (RFC 9293 3.10.7.4), its acknowledgment with it.
    """
    transport = h.open(options=mssOption(1000))
    h.host(transport).dataReceived(b"r" * 5000)
    h.take()
    h.clock.advance(0.2)
    (again,) = h.take()
    assert again.seq == h.ours
    h.data(b"guest data")
    h.turn()
    (ack,) = h.take()
    assert ack.seq == (h.ours + 5000) & MASK and ack.ack == h.seq & MASK
    h.send(ACK, seq=h.seq + 5, payload=b"later")
    (dup,) = h.take()
    assert dup.seq == (h.ours + 5000) & MASK


def test_fastRetransmitOfSuperSegmentsResendsOnlyWhatWasSent() -> None:
    """
    With super-segments, a fast retransmission resends the first
    unacknowledged data we sent, not a whole super-segment past it (and
    past the guest's window): the guest's acknowledgment of it is then
    taken, where the connection used to stall for good, each ACK of data
    "never sent" ignored.
    """
    h = Harness(maxSegment=65000)
    transport = h.open(options=mssOption(1460), window=10000)
    h.host(transport).dataReceived(b"s" * 150000)
    assert [len(p) for _, p in h.takeAll()] == [10000]
    h.ack(h.ours + 1460, window=10000)
    (new,) = h.takeAll()
    assert new[0].seq == (h.ours + 10000) & MASK and len(new[1]) == 1460
    for _ in range(3):
        h.ack(h.ours + 1460, window=10000)
    (resent,) = h.takeAll()
    assert resent[0].seq == (h.ours + 1460) & MASK and len(resent[1]) == 10000
    h.ack(h.ours + 11460, window=10000)
    (more,) = h.takeAll()
    assert more[0].seq == (h.ours + 11460) & MASK and more[1] == b"s" * len(more[1])


def test_manyConnectionsShareThePortsBudget(h: Harness) -> None:
    """
    The more connections, the less each may buffer (a quarter of the port's
    budget between them): the window it advertises, what its host socket
    buffers before pausing it, and what it holds for a guest that does not
    read; with few connections nothing is cut.
    """
    h.nat.budget = 8 << 20
    h.nat.updateShare()
    transport = h.open(options=mssOption(1460) + SCALE_OPTION)
    assert transport.bufferSize == 1 << 20
    h.data(b"x")
    h.turn()
    assert h.take()[0].window << 5 == 1 << 20
    first = (h.sport, h.seq, h.ours)
    others = []
    for port in range(1, 128):
        h.sport, h.seq = GUEST_PORT + port, GUEST_ISN + 1
        others.append(h.open(options=mssOption(1460) + SCALE_OPTION))
    h.sport, h.seq, h.ours = first
    assert transport.bufferSize == 16384
    h.data(b"y")
    h.turn()
    assert h.take()[0].window << 5 == 16384
    protocol = h.host(transport)
    for _ in range(11):
        protocol.dataReceived(b"z" * 1460)
    assert transport.producerState == "producing"
    protocol.dataReceived(b"z" * 1460)
    assert transport.producerState == "paused"
    for other in others:
        h.host(other).connectionLost(Failure(ConnectionLost()))
    assert transport.bufferSize == 1 << 20
