"""
How the slirp TCP engine ends connections: FINs both ways, resets, limits,
unknown connections, malformed segments, and closing the engine.
"""

from __future__ import annotations

import pytest
from slirptcpharness import (
    GATEWAY,
    GUEST,
    GUEST_ISN,
    GUEST_PORT,
    Harness,
    HostTransport,
    mssOption,
)
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
)
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from vtwisted.slirp.tcpconnection import HOST_CLOSE_GRACE
from vtwisted.wire.tcp import ACK, FIN, RST, SYN, TCPHeader


@pytest.fixture
def h() -> Harness:
    return Harness()


# Closing.

def test_guestFinHalfClosesHost(h: Harness) -> None:
    """
    The guest's FIN is acknowledged and half-closes the host socket.
    """
    transport = h.open()
    h.send(ACK | FIN, payload=b"bye")
    assert transport.value() == b"bye"
    assert transport.writeClosed
    (ack,) = h.take()
    assert ack.ack == h.seq + 4
    h.host(transport).dataReceived(b"still talking")
    assert h.takeAll()[0][1] == b"still talking"


def test_hostHalfCloseSendsFinAfterData(h: Harness) -> None:
    """
    The host's EOF becomes a FIN on the last data segment.
    """
    transport = h.open()
    protocol = h.host(transport)
    protocol.dataReceived(b"last words")
    h.take()
    h.ack(h.ours + 5)
    protocol.readConnectionLost()
    (fin,) = h.takeAll()
    assert fin[0].flags & FIN and fin[1] == b""
    assert fin[0].seq == h.ours + 10


def test_finRidesOnBufferedData(h: Harness) -> None:
    """
    An EOF while data waits for the window sends the FIN after that data.
    """
    transport = h.open(options=mssOption(1000), window=1000)
    protocol = h.host(transport)
    protocol.dataReceived(b"d" * 1500)
    protocol.readConnectionLost()
    assert [s.flags & FIN for s in h.take()] == [0]
    h.ack(h.ours + 1000, window=1000)
    (last,) = h.take()
    assert last.flags & FIN and last.seq == h.ours + 1000


def test_bothClosedLingerThenForgotten(h: Harness) -> None:
    """
    Once both sides closed and our FIN is acknowledged, a retransmitted FIN
    is acknowledged again for 2 s; then the connection is gone.
    """
    transport = h.open()
    h.send(ACK | FIN)
    h.seq += 1
    h.host(transport).readConnectionLost()
    assert not transport.connected
    h.take()
    h.ack(h.ours + 1)
    assert h.nat.describe()[0].split()[3] == "time-wait,"
    h.send(ACK | FIN, seq=h.seq - 1, ack=h.ours + 1)
    (again,) = h.take()
    assert again.ack == h.seq
    h.clock.advance(2)
    assert h.nat.connectionCount == 0


def test_hostResetSendsRst(h: Harness) -> None:
    """
    A host connection lost with an error resets the guest's connection.
    """
    transport = h.open()
    h.host(transport).connectionLost(Failure(ConnectionLost()))
    (rst,) = h.take()
    assert rst.flags & RST and rst.seq == h.ours
    assert h.nat.connectionCount == 0 and h.nat.resets == 1


def test_hostCleanCloseSendsFinAndDataAfterIsReset(h: Harness) -> None:
    """
    A host connection closed cleanly sends a FIN; guest data after that
    has nowhere to go and is answered with a RST.
    """
    transport = h.open()
    h.host(transport).connectionLost(Failure(ConnectionDone()))
    assert [s.flags & FIN for s in h.take()] == [FIN]
    h.data(b"too late")
    assert h.take()[-1].flags & RST
    assert h.nat.connectionCount == 0


def test_guestRstAbortsHost(h: Harness) -> None:
    """
    A RST from the guest aborts the host connection and forgets ours.
    """
    transport = h.open()
    h.send(RST)
    assert transport.aborted
    assert h.nat.connectionCount == 0 and h.nat.guestResets == 1
    assert h.take() == []


class FlushingHostTransport(HostTransport):
    """
    A host transport that closes as Twisted's do: only once what was
    written is flushed (L{flush}), a reactor turn or more later.
    """

    def loseConnection(self) -> None:
        self.disconnecting = True

    def flush(self) -> None:
        if self.disconnecting:
            super().loseConnection()


def test_guestRstInTimeWaitLetsTheHostHaveTheLastWords(h: Harness) -> None:
    """
    A RST from a guest that closed, answering our second ACK of its FIN (a
    Linux guest sends its FIN again as a tail loss probe), comes in time-wait
    and may come in the reactor turn that wrote the guest's last bytes to
    the host: those bytes and the host's clean close are kept, not aborted.
    """
    transport = FlushingHostTransport()
    h.open(transport=transport)
    h.host(transport).readConnectionLost()
    (fin,) = h.take()
    h.ack(fin.seq + 1)
    h.send(ACK | FIN, payload=b"answer", ack=fin.seq + 1)
    h.seq += len(b"answer") + 1
    h.send(ACK | FIN, seq=h.seq - 1, ack=fin.seq + 1)
    assert [ack.ack for ack in h.take()] == [h.seq, h.seq]
    h.send(RST, ack=0)
    assert not transport.aborted
    assert transport.disconnecting and transport.value() == b"answer"
    transport.flush()
    assert not transport.connected
    assert h.nat.connectionCount == 0 and h.nat.guestResets == 0
    assert h.take() == []


def test_guestRstOutsideWindowIgnored(h: Harness) -> None:
    """
    A RST with a sequence number outside our window changes nothing.
    """
    transport = h.open()
    h.send(RST, seq=h.seq + 100000)
    assert not transport.aborted and h.nat.connectionCount == 1


def test_guestRstWhileConnectingStopsConnect(h: Harness) -> None:
    """
    A RST from the guest while the host connect runs stops it.
    """
    h.syn()
    h.send(RST, seq=GUEST_ISN + 1)
    assert h.clock.connectors[-1].stoppedConnecting
    assert h.nat.connectionCount == 0


def test_unknownConnectionGetsRst(h: Harness) -> None:
    """
    A segment for no connection gets a RST as RFC 9293 says; a RST gets nothing.
    """
    h.send(ACK, seq=5, ack=777)
    h.send(FIN, seq=5, ack=0, payload=b"ab")
    h.send(RST | ACK, seq=5, ack=777)
    first, second = h.take()
    assert (first.flags, first.seq) == (RST, 777)
    assert (second.flags, second.seq, second.ack) == (RST | ACK, 0, 8)
    assert h.nat.strays == 2


def test_connectionLimitAnswersRst(h: Harness) -> None:
    """
    A SYN over the connection limit gets a RST and counts as busy.
    """
    h.nat.maxConnections = 1
    h.syn()
    h.syn(dport=81)
    (rst,) = h.take()
    assert rst.flags == RST | ACK
    assert [reason for reason, _ in h.network.drops] == ["busy"]
    assert len(h.clock.tcpClients) == 1


def test_malformedSegmentsCounted(h: Harness) -> None:
    """
    Truncated headers and data offsets past the segment are dropped as
    malformed, naming the guest, and answered with nothing.
    """
    h.nat.segmentReceived(GUEST, GATEWAY, b"\x9c\x40\x00", b"")
    bad = bytearray(TCPHeader(GUEST_PORT, 80, 1, 0, SYN, 1, 0, 0).pack())
    bad[12] = 0xF0
    h.nat.segmentReceived(GUEST, GATEWAY, bytes(bad), b"")
    assert [reason for reason, _ in h.network.drops] == ["malformed", "malformed"]
    assert all("10.0.2.15:40000" in message for _, message in h.network.drops)
    assert h.network.tcp == [] and h.clock.tcpClients == []


def test_closeAbortsEverything(h: Harness) -> None:
    """
    close() aborts host connections and stops connects and timers.
    """
    transport = h.open()
    h.host(transport).dataReceived(b"pending")
    h.syn(dport=81)
    h.nat.close()
    assert transport.aborted
    assert h.clock.connectors[-1].stoppedConnecting
    assert h.nat.connectionCount == 0
    h.take()
    h.clock.advance(100)
    assert h.take() == []


def test_describeListsConnections(h: Harness) -> None:
    """
    describe() gives one line per connection with addresses, state and bytes.
    """
    transport = h.open()
    h.data(b"12345")
    h.host(transport).dataReceived(b"abc")
    h.ack(h.ours + 3)
    (line,) = h.nat.describe()
    assert line == ("10.0.2.15:40000 -> 127.0.0.1:80 established, 5 bytes to host, "
                    "3 to guest")


class UnreadHostTransport(FlushingHostTransport):
    """
    A host transport whose peer reads nothing: closing never flushes, an
    abort loses the connection, as Twisted's does.
    """

    def abortConnection(self) -> None:
        self.aborted = True
        StringTransportWithDisconnection.loseConnection(self)


def test_aClosedHostSocketWhosePeerReadsNothingIsAbortedAfterAMinute(h: Harness) -> None:
    """
    Both sides finished (the host half-closed, the guest sent its last
    words and FIN): the host socket is closed, and the connection forgotten
    after time-wait, but a host peer that reads nothing never lets it
    flush.  60 s later it is aborted, counted as unread and logged once;
    a second such socket is counted, not logged again.
    """
    sockets = []
    with capturedLogs() as events:
        for sport in (GUEST_PORT, GUEST_PORT + 1):
            h.sport, h.seq = sport, GUEST_ISN + 1
            transport = UnreadHostTransport()
            h.open(transport=transport)
            h.host(transport).readConnectionLost()
            (fin,) = h.take()
            h.ack(fin.seq + 1)
            h.send(ACK | FIN, payload=b"never read", ack=fin.seq + 1)
            h.take()
            assert transport.disconnecting and transport.value() == b"never read"
            sockets.append(transport)
        h.clock.advance(2)
        assert h.nat.connectionCount == 0, "forgotten after time-wait"
        assert not any(t.aborted for t in sockets)
        h.clock.advance(HOST_CLOSE_GRACE - 2.1)
        assert not any(t.aborted for t in sockets)
        h.clock.advance(0.1)
    assert all(t.aborted for t in sockets) and h.nat.unread == 2
    assert len([e for e in events if "read nothing" in e.get("log_format", "")]) == 1
    assert not h.nat.hostClosing


def test_closeAbortsHostSocketsStillClosing(h: Harness) -> None:
    """
    The port stops while a forgotten connection's host socket still waits
    for its peer to read: it is aborted at once, and its timer goes.
    """
    transport = UnreadHostTransport()
    h.open(transport=transport)
    h.host(transport).readConnectionLost()
    (fin,) = h.take()
    h.send(ACK | FIN, payload=b"never read", ack=fin.seq + 1)
    h.clock.advance(2)
    assert h.nat.connectionCount == 0 and not transport.aborted
    h.nat.close()
    assert transport.aborted and not h.clock.getDelayedCalls() and h.nat.unread == 0
