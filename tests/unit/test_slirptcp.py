"""
The TCP engine of slirp ports (L{vtwisted.slirp.tcp}): handshakes, data
both ways, windows, retransmission, backpressure, closing and host port
forwards, against a L{FakeGuestNetwork} and a memory reactor.  The
property tests over lossy channels are in test_slirptcp_lossy.py, the
real-socket tests in test_slirptcp_sockets.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    NoRouteError,
    TimeoutError,
)
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure

from vtwisted.slirp.tcp import TcpNat
from vtwisted.slirp.tcpconnection import RECEIVE_BUDGET
from vtwisted.testing import FakeGuestNetwork
from vtwisted.wire.ipv4 import IPv4Header
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.tcp import ACK, FIN, OPT_MSS, OPT_WINDOW_SCALE, PSH, RST, SYN, TCPHeader

GUEST = bytes([10, 0, 2, 15])
GATEWAY = bytes([10, 0, 2, 2])
DNS = bytes([10, 0, 2, 3])
REMOTE = bytes([192, 0, 2, 7])
GUEST_PORT = 40000
GUEST_ISN = 1000
MASK = 0xFFFFFFFF


class HostTransport(StringTransportWithDisconnection):
    """
    A host TCP transport: records writes, half-closes, pauses and aborts.
    """

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 80)) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", *peer), lenient=True)
        self.writeClosed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def mssOption(mss: int) -> bytes:
    return bytes((OPT_MSS, 4)) + mss.to_bytes(2, "big")


SCALE_OPTION = bytes((1, OPT_WINDOW_SCALE, 3, 7))


def ipPacket(src: bytes, dst: bytes, segment: bytes) -> bytes:
    """
    An IPv4 or IPv6 packet (by the address length) carrying C{segment}.
    """
    if len(src) == 16:
        return IPv6Header(0, 0, len(segment), 6, 64, src, dst).pack() + segment
    return IPv4Header(0, 20 + len(segment), 1, 2, 0, 64, 6, 0, src, dst).pack() + segment


class Harness:
    """
    A L{TcpNat} with a fake router and reactor, and a scripted guest.
    """

    def __init__(self, guest: bytes = GUEST, dst: bytes = GATEWAY, **network: Any) -> None:
        self.clock = MemoryReactorClock()
        self.network = FakeGuestNetwork(**network)
        self.nat = TcpNat(self.network, self.clock)
        self.guest = guest
        self.dst = dst
        self.dport = 80
        self.sport = GUEST_PORT
        self.seq = GUEST_ISN + 1
        self.ours = 0

    def send(self, flags: int, seq: int | None = None, ack: int | None = None,
             payload: bytes = b"", window: int = 65535, options: bytes = b"",
             dst: bytes | None = None, dport: int | None = None) -> bytes:
        """
        Send a segment from the guest; sequence and ack default to the
        guest's current ones.
        """
        header = TCPHeader(
            self.sport, self.dport if dport is None else dport,
            (self.seq if seq is None else seq) & MASK,
            (self.ours if ack is None else ack) & MASK, flags, window, 0, 0, options)
        segment = header.pack() + payload
        packet = ipPacket(self.guest, dst or self.dst, segment)
        self.nat.segmentReceived(self.guest, dst or self.dst, segment, packet)
        return packet

    def data(self, payload: bytes, window: int = 65535) -> None:
        """
        Send in-order data from the guest and advance its sequence number.
        """
        self.send(ACK | PSH, payload=payload, window=window)
        self.seq += len(payload)

    def syn(self, options: bytes = b"", dst: bytes | None = None, dport: int | None = None,
            window: int = 65535) -> bytes:
        return self.send(SYN, seq=GUEST_ISN, ack=0, options=options, dst=dst, dport=dport,
                         window=window)

    def connectHost(self, transport: HostTransport | None = None) -> HostTransport:
        """
        Complete the host connect the engine started last.
        """
        factory = self.clock.tcpClients[-1][2]
        transport = transport or HostTransport()
        protocol = factory.buildProtocol(transport.getPeer())
        assert protocol is not None
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def open(self, options: bytes = b"", window: int = 65535) -> HostTransport:
        """
        A full handshake; returns the host transport.
        """
        self.syn(options, window=window)
        transport = self.connectHost()
        (synAck,) = self.take()
        self.ours = (synAck.seq + 1) & MASK
        self.send(ACK, window=window)
        return transport

    def take(self) -> list[TCPHeader]:
        return [header for _, _, header, _, _ in self.network.takeTcp()]

    def takeAll(self) -> list[tuple[TCPHeader, bytes]]:
        return [(header, payload) for _, _, header, payload, _ in self.network.takeTcp()]

    def turn(self) -> None:
        """
        Let the reactor turn end (callLater(0) calls run).
        """
        self.clock.advance(0)

    def ack(self, upTo: int, window: int = 65535) -> None:
        self.send(ACK, ack=upTo, window=window)

    def host(self, transport: HostTransport) -> Any:
        return transport.protocol


@pytest.fixture
def h() -> Harness:
    return Harness()


# Opening.

def test_synAckOnlyAfterHostConnects(h: Harness) -> None:
    """
    The guest's SYN gets no answer until the host connect succeeds.
    """
    h.syn()
    h.turn()
    assert h.network.tcp == []
    h.connectHost()
    (synAck,) = h.take()
    assert synAck.flags == SYN | ACK
    assert synAck.ack == GUEST_ISN + 1
    assert (synAck.srcPort, synAck.dstPort) == (80, GUEST_PORT)


def test_connectGoesWhereHostAddressSays(h: Harness) -> None:
    """
    The gateway is the host's loopback and DNS port 53 the host's resolver,
    with a 30 s connect timeout.
    """
    h.syn()
    h.syn(dst=DNS, dport=53)
    assert [(*c[:2], c[3]) for c in h.clock.tcpClients] == [
        ("127.0.0.1", 80, 30), ("127.0.0.53", 53, 30)]


def test_retransmittedSynWhileConnectingIsIgnored(h: Harness) -> None:
    """
    A SYN again while the host connect runs starts nothing and gets nothing.
    """
    h.syn()
    h.syn()
    assert len(h.clock.tcpClients) == 1
    assert h.network.tcp == []


def test_retransmittedSynAfterSynAckGetsSynAckAgain(h: Harness) -> None:
    """
    Once the SYN-ACK is out, a retransmitted SYN gets it again.
    """
    h.syn()
    h.connectHost()
    (first,) = h.take()
    h.syn()
    (again,) = h.take()
    assert again == first


def test_synAckRetransmittedOnTimer(h: Harness) -> None:
    """
    An unanswered SYN-ACK is sent again after 1 s, then 2 s.
    """
    h.syn()
    h.connectHost()
    h.take()
    h.clock.advance(1.0)
    assert [s.flags for s in h.take()] == [SYN | ACK]
    h.clock.advance(1.9)
    assert h.take() == []
    h.clock.advance(0.1)
    assert [s.flags for s in h.take()] == [SYN | ACK]


def test_refusedConnectAnswersRst(h: Harness) -> None:
    """
    A refused host connect becomes a RST|ACK acknowledging the SYN.
    """
    h.syn()
    factory = h.clock.tcpClients[-1][2]
    factory.clientConnectionFailed(h.clock.connectors[-1], Failure(ConnectionRefusedError()))
    (rst,) = h.take()
    assert rst.flags == RST | ACK
    assert (rst.seq, rst.ack) == (0, GUEST_ISN + 1)
    assert h.nat.refused == 1
    assert h.nat.connectionCount == 0


def test_otherConnectFailureAnswersHostUnreachable(h: Harness) -> None:
    """
    A connect that times out becomes ICMP host unreachable for the SYN's packet.
    """
    packet = h.syn()
    factory = h.clock.tcpClients[-1][2]
    factory.clientConnectionFailed(h.clock.connectors[-1], Failure(TimeoutError()))
    assert h.network.unreachable == [(packet, 1)]
    assert h.network.tcp == []
    assert h.nat.connectionCount == 0


@pytest.mark.parametrize(("failure", "code"), [
    (NoRouteError(), 0),
    (ConnectError(osError=101), 0),  # ENETUNREACH from an endpoint
    (ConnectError(osError=113), 1),  # EHOSTUNREACH
])
def test_noRouteIsNetUnreachableNoHostIsHostUnreachable(
        h: Harness, failure: Exception, code: int) -> None:
    """
    The guest's connect fails as the host's did: no route on the host
    becomes ICMP net unreachable (the guest's ENETUNREACH), an unreachable
    host ICMP host unreachable (EHOSTUNREACH).
    """
    packet = h.syn()
    factory = h.clock.tcpClients[-1][2]
    factory.clientConnectionFailed(h.clock.connectors[-1], Failure(failure))
    assert h.network.unreachable == [(packet, code)]
    assert h.nat.unreachable == 1 and h.nat.connectionCount == 0


def test_restrictedAnswersRst() -> None:
    """
    With restrict=on, a SYN to anywhere gets a RST and no host connect.
    """
    h = Harness(restricted=True)
    h.syn()
    (rst,) = h.take()
    assert rst.flags == RST | ACK and rst.ack == GUEST_ISN + 1
    assert h.clock.tcpClients == []


def test_dnsProxyOtherPortIsNetUnreachable(h: Harness) -> None:
    """
    A SYN to a DNS proxy port other than 53 gets ICMP net unreachable.
    """
    packet = h.syn(dst=DNS, dport=80)
    assert h.network.unreachable == [(packet, 0)]
    assert h.clock.tcpClients == []


def test_synAckOffersMssWithoutScaleUnlessGuestScales(h: Harness) -> None:
    """
    Our SYN-ACK carries MSS mtu-40, and no window scale if the guest had none.
    """
    h.syn(options=mssOption(1460))
    h.connectHost()
    (synAck,) = h.take()
    assert synAck.options == mssOption(1460)
    assert synAck.window == 65535


def test_windowScaleNegotiated(h: Harness) -> None:
    """
    A guest offering window scaling gets shift 5, our windows are scaled
    by 5 after the handshake, and the guest's by its own shift.
    """
    h.network.maxSegment = 1460
    transport = h.open(options=mssOption(1460) + SCALE_OPTION, window=2)
    h.clock.advance(0)
    h.host(transport).dataReceived(b"x" * 1000)
    (segment,) = h.take()
    assert segment.window == RECEIVE_BUDGET >> 5
    h.ack(h.ours, window=0)
    h.host(transport).dataReceived(b"y" * 300)
    assert h.take() == []


def test_scaledGuestWindowLimitsSending(h: Harness) -> None:
    """
    A guest window field of 2 with shift 7 allows 256 bytes in flight.
    """
    transport = h.open(options=mssOption(128) + SCALE_OPTION, window=2)
    h.host(transport).dataReceived(b"z" * 1000)
    assert sum(len(p) for _, p in h.takeAll()) == 256


# Guest to host.

def test_inOrderDataReachesHost(h: Harness) -> None:
    """
    In-order guest data is written to the host transport.
    """
    transport = h.open()
    h.data(b"hello ")
    h.data(b"world")
    assert transport.value() == b"hello world"


def test_outOfOrderDataGetsDuplicateAckAndIsNotWritten(h: Harness) -> None:
    """
    A segment past a hole is not written and is answered at once.
    """
    transport = h.open()
    h.send(ACK, seq=h.seq + 10, payload=b"later")
    assert transport.value() == b""
    (dup,) = h.take()
    assert dup.ack == h.seq


def test_oldDuplicateGetsAck(h: Harness) -> None:
    """
    A segment received before is not written again and gets an ACK at once.
    """
    transport = h.open()
    h.data(b"abc")
    h.turn()
    h.take()
    h.send(ACK, seq=h.seq - 3, payload=b"abc")
    assert transport.value() == b"abc"
    assert [s.ack for s in h.take()] == [h.seq]


def test_partlyOldSegmentIsTrimmed(h: Harness) -> None:
    """
    Only the new end of a partly received segment is written.
    """
    transport = h.open()
    h.data(b"abc")
    h.send(ACK, seq=h.seq - 2, payload=b"bcdef")
    assert transport.value() == b"abcdef"


def test_acksAreCoalescedPerReactorTurn(h: Harness) -> None:
    """
    Three segments in one turn cost one ACK, sent when the turn ends.
    """
    h.open()
    for chunk in (b"a" * 100, b"b" * 100, b"c" * 100):
        h.data(chunk)
    assert h.take() == []
    h.turn()
    (ack,) = h.take()
    assert ack.ack == h.seq
    assert ack.flags == ACK


def test_dataToGuestCarriesThePendingAck(h: Harness) -> None:
    """
    A data segment sent in the same turn makes the pending ACK unnecessary.
    """
    transport = h.open()
    h.data(b"request")
    h.host(transport).dataReceived(b"response")
    (segment,) = h.take()
    assert segment.ack == h.seq
    h.turn()
    assert h.take() == []


# Host to guest.

def test_hostDataSegmentedAtMssWithPsh() -> None:
    """
    Host data goes out in segments of the guest's MSS, in sequence, PSH on the last.
    """
    h = Harness()
    transport = h.open(options=mssOption(1000))
    h.host(transport).dataReceived(bytes(range(256)) * 10)
    sent = h.network.takeTcp()
    assert [len(payload) for *_, payload, _ in sent] == [1000, 1000, 560]
    assert [header.seq for _, _, header, _, _ in sent] == [h.ours, h.ours + 1000, h.ours + 2000]
    assert [header.flags for _, _, header, _, _ in sent] == [ACK, ACK, ACK | PSH]
    assert {mss for *_, mss in sent} == {1000}
    assert b"".join(payload for *_, payload, _ in sent) == bytes(range(256)) * 10
    assert {(src, dst) for src, dst, *_ in sent} == {(GATEWAY, GUEST)}


def test_guestMssDefaultsTo536(h: Harness) -> None:
    """
    A SYN without MSS option means 536-byte segments.
    """
    transport = h.open()
    h.host(transport).dataReceived(b"q" * 600)
    assert [len(p) for _, p in h.takeAll()] == [536, 64]


def test_superSegmentsWhenMaxSegmentExceedsMss() -> None:
    """
    A router taking super-segments gets payloads of whole MSS multiples up
    to maxSegment, with the guest's MSS for cutting.
    """
    h = Harness(maxSegment=65000)
    transport = h.open(options=mssOption(1460) + SCALE_OPTION, window=1024)
    h.host(transport).dataReceived(b"s" * 150000)
    sent = h.network.takeTcp()
    assert [len(payload) for *_, payload, _ in sent] == [64240, 64240]
    assert {mss for *_, mss in sent} == {1460}
    h.ack(h.ours + 128480, window=1024)
    assert [len(p) for _, p in h.takeAll()] == [150000 - 128480]


def test_guestWindowRespected(h: Harness) -> None:
    """
    No more than the guest's window is in flight; an ACK lets more out.
    """
    transport = h.open(options=mssOption(1000), window=2500)
    h.host(transport).dataReceived(b"w" * 5000)
    first = h.takeAll()
    assert [len(p) for _, p in first] == [1000, 1000]
    h.ack(h.ours + 1000, window=2500)
    assert [len(p) for _, p in h.takeAll()] == [1000]
    h.ack(h.ours + 3000, window=2500)
    assert [len(p) for _, p in h.takeAll()] == [1000, 1000]


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


# Host port forwards.

def forward(h: Harness, peer: tuple[str, int] = ("127.0.0.1", 5555)) -> HostTransport:
    factory = h.nat.forwardFactory(GUEST, 22)
    transport = HostTransport(peer)
    protocol = factory.buildProtocol(transport.getPeer())
    assert protocol is not None
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return transport


def test_forwardSendsSynAndPausesHost(h: Harness) -> None:
    """
    An accepted host client is paused and the guest gets a SYN from the
    gateway and the client's port, with MSS and window scale.
    """
    transport = forward(h)
    assert transport.producerState == "paused"
    ((src, dst, syn, payload, mss),) = h.network.takeTcp()
    assert (src, dst, syn.srcPort, syn.dstPort, syn.flags) == (GATEWAY, GUEST, 5555, 22, SYN)
    assert syn.options == mssOption(1460) + bytes((1, OPT_WINDOW_SCALE, 3, 5))


def test_forwardRelaysAfterSynAck(h: Harness) -> None:
    """
    The guest's SYN-ACK is acknowledged, the host resumed, and data flows.
    """
    transport = forward(h)
    (syn,) = h.take()
    h.sport, h.dport = 22, 5555
    h.dst = GATEWAY
    h.send(SYN | ACK, seq=GUEST_ISN, ack=syn.seq + 1, options=mssOption(1460))
    (ack,) = h.take()
    assert ack.flags == ACK and ack.ack == GUEST_ISN + 1
    assert transport.producerState == "producing"
    h.ours = syn.seq + 1
    h.data(b"SSH-2.0-guest\r\n")
    assert transport.value() == b"SSH-2.0-guest\r\n"
    transport.protocol.dataReceived(b"SSH-2.0-host\r\n")
    assert h.takeAll()[0][1] == b"SSH-2.0-host\r\n"


def test_forwardClosedOnRst(h: Harness) -> None:
    """
    A guest answering the SYN with RST closes the host client.
    """
    transport = forward(h)
    (syn,) = h.take()
    h.sport, h.dport = 22, 5555
    h.send(RST | ACK, seq=0, ack=syn.seq + 1)
    assert not transport.connected
    assert h.nat.connectionCount == 0


def test_forwardSynRetriedThenClosed(h: Harness) -> None:
    """
    The SYN is sent again after 1, 2, 4 and 8 s; then the host client is closed.
    """
    transport = forward(h)
    h.take()
    times = []
    for tick in range(40):
        h.clock.advance(1)
        if h.take():
            times.append(tick + 1)
    assert times == [1, 3, 7, 15]
    assert not transport.connected
    assert h.nat.connectionCount == 0


def test_forwardRemotePeerKeepsItsAddress(h: Harness) -> None:
    """
    A client from another host appears to the guest with its own address.
    """
    forward(h, ("192.0.2.9", 6000))
    ((src, *_),) = h.network.takeTcp()
    assert src == bytes([192, 0, 2, 9])


def test_malformedSynOptionsCounted(h: Harness) -> None:
    """
    A SYN whose options run past the header is dropped as malformed.
    """
    h.syn(options=bytes((OPT_MSS, 9, 0, 0)))
    assert [reason for reason, _ in h.network.drops] == ["malformed"]
    assert h.clock.tcpClients == [] and h.nat.connectionCount == 0


def test_synReusingTimeWaitPortStartsNewConnection(h: Harness) -> None:
    """
    A new SYN from a port whose old connection lingers starts afresh.
    """
    transport = h.open()
    h.send(ACK | FIN)
    h.seq += 1
    h.host(transport).readConnectionLost()
    h.take()
    h.ack(h.ours + 1)
    h.syn()
    assert len(h.clock.tcpClients) == 2
    assert h.nat.describe()[0].split()[3] == "connecting,"


def test_hostDataBeforeHandshakeEndsWaitsForIt(h: Harness) -> None:
    """
    A host that speaks first (an SSH banner) is heard once the guest's ACK
    completes the handshake.
    """
    h.syn()
    transport = h.connectHost()
    (synAck,) = h.take()
    h.host(transport).dataReceived(b"SSH-2.0-host\r\n")
    assert h.take() == []
    h.ours = synAck.seq + 1
    h.ack(h.ours)
    (banner,) = h.takeAll()
    assert banner[0].seq == h.ours and banner[1] == b"SSH-2.0-host\r\n"


def test_forwardScalesWindowsWhenGuestDoes(h: Harness) -> None:
    """
    A guest SYN-ACK with window scaling makes both directions scale.
    """
    transport = forward(h)
    (syn,) = h.take()
    h.sport, h.dport = 22, 5555
    h.send(SYN | ACK, seq=GUEST_ISN, ack=syn.seq + 1, options=SCALE_OPTION, window=100)
    (ack,) = h.take()
    assert ack.window == RECEIVE_BUDGET >> 5
    h.ours = syn.seq + 1
    h.ack(h.ours, window=1)
    transport.protocol.dataReceived(b"k" * 1000)
    assert sum(len(p) for _, p in h.takeAll()) == 128
