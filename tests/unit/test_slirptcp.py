"""
The TCP engine of slirp ports (L{vtwisted.slirp.tcp}): handshakes and data
both ways, against a L{FakeGuestNetwork} and a memory reactor
(L{slirptcpharness}).  Retransmission and backpressure are in
test_slirptcp_flow.py, closing in test_slirptcp_closing.py, host port
forwards in test_slirptcp_forwards.py, the property tests over lossy
channels in test_slirptcp_lossy.py, the real-socket tests in
test_slirptcp_sockets.py.
"""

from __future__ import annotations

import struct

import pytest
from slirptcpharness import (
    DNS,
    GATEWAY,
    GUEST,
    GUEST_ISN,
    GUEST_PORT,
    MASK,
    SCALE_OPTION,
    Harness,
    mssOption,
)
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    NoRouteError,
    TimeoutError,
)
from twisted.python.failure import Failure

from vtwisted.slirp.tcpconnection import RECEIVE_BUDGET
from vtwisted.wire.tcp import ACK, FIN, PSH, RST, SYN


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


def test_connectWithoutADescriptorAnswersRst(h: Harness) -> None:
    """
    A host connect that found the process out of descriptors (EMFILE) is
    refused with a RST and counted as busy, not passed off as an
    unreachable host.
    """
    from twisted.internet.error import ConnectBindError

    h.syn()
    factory = h.clock.tcpClients[-1][2]
    factory.clientConnectionFailed(h.clock.connectors[-1],
                                   Failure(ConnectBindError(24, "Too many open files")))
    (rst,) = h.take()
    assert rst.flags == RST | ACK and rst.ack == GUEST_ISN + 1
    assert h.network.unreachable == [] and h.nat.connectionCount == 0
    assert [reason for reason, _ in h.network.drops] == ["busy"]
    assert "Too many open files (errno 24)" in h.network.drops[0][1]


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


def test_segmentsPastAHoleAreKeptUntilItIsFilled(h: Harness) -> None:
    """
    Segments past a lost one (sent again, arriving in any order) are kept:
    the one retransmission that fills the hole brings all of them to the
    host, in order and once, the guest's FIN with them, acknowledged at once.
    """
    transport = h.open()
    h.send(ACK, seq=h.seq + 20, payload=b"third ")
    h.send(ACK, seq=h.seq + 10, payload=b"second ...")
    h.send(ACK, seq=h.seq + 20, payload=b"third ")
    h.send(ACK | FIN, seq=h.seq + 26, payload=b"end")
    assert [s.ack for s in h.take()] == [h.seq] * 4
    assert transport.value() == b""
    h.send(ACK, payload=b"first ....")
    assert transport.value() == b"first ....second ...third end"
    assert transport.writeClosed
    (ack,) = h.take()
    assert ack.ack == (h.seq + 30) & MASK


def test_guestThatTakesSackHearsWhatWasKept(h: Harness) -> None:
    """
    A guest whose SYN permits SACK gets it permitted back, and the ACKs
    of segments past a hole name what we keep (RFC 2018), so it resends
    only the holes; a guest that does not is not sent SACK options.
    """
    h.syn(options=mssOption(1000) + bytes((1, 1, 4, 2)))
    transport = h.connectHost()
    (synAck,) = h.take()
    assert synAck.options.endswith(bytes((1, 1, 4, 2)))
    h.ours = (synAck.seq + 1) & MASK
    h.send(ACK)
    start = h.seq
    h.send(ACK, seq=start + 1000, payload=b"b" * 1000)
    h.send(ACK, seq=start + 3000, payload=b"d" * 1000)
    first, dup = h.take()
    assert first.options == bytes((1, 1, 5, 10)) + struct.pack("!2I", start + 1000, start + 2000)
    assert dup.ack == start and dup.options == bytes((1, 1, 5, 18)) + struct.pack(
        "!4I", start + 3000, start + 4000, start + 1000, start + 2000)
    h.send(ACK, payload=b"a" * 1000)
    (partial,) = h.take()
    assert partial.ack == start + 2000
    assert partial.options == bytes((1, 1, 5, 10)) + struct.pack("!2I", start + 3000, start + 4000)
    h.send(ACK, seq=start + 2000, payload=b"c" * 1000)
    (full,) = h.take()
    assert full.ack == start + 4000 and full.options == b""
    assert transport.value() == b"a" * 1000 + b"b" * 1000 + b"c" * 1000 + b"d" * 1000
    h.dport += 1
    h.syn(options=mssOption(1000))
    h.connectHost()
    (plain,) = h.take()
    assert plain.options == mssOption(1460)


def test_segmentsPastAHoleAreKeptOnlyInsideTheWindow(h: Harness) -> None:
    """
    What the guest sends past the window we advertised is not kept.
    """
    transport = h.open()
    h.send(ACK, seq=h.seq + 60000, payload=b"x" * 10000)
    h.send(ACK, payload=b"y" * 60000)
    assert transport.value() == b"y" * 60000 + b"x" * 5535


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


def test_aWindowSmallerThanASuperSegmentIsFilled() -> None:
    """
    A congestion window under a super-segment (after losses) still has
    whole segments in flight, not one piece per round trip: so the guest
    can send the three duplicate ACKs that repair a loss without a timeout.
    """
    h = Harness(maxSegment=65000)
    transport = h.open(options=mssOption(1460) + SCALE_OPTION, window=1024)
    connection = next(iter(h.nat.connections.values()))
    connection.cwnd = 6000
    h.host(transport).dataReceived(b"s" * 150000)
    assert [len(payload) for _, payload in h.takeAll()] == [6000]
    h.ack(h.ours + 1460, window=1024)
    assert [len(payload) for _, payload in h.takeAll()] == [2920]


def test_superSegmentsWhenMaxSegmentExceedsMss() -> None:
    """
    A router taking super-segments gets payloads of whole MSS multiples up
    to maxSegment, with the guest's MSS for cutting; what is left of the
    window (131072 bytes) goes in whole segments too.
    """
    h = Harness(maxSegment=65000)
    transport = h.open(options=mssOption(1460) + SCALE_OPTION, window=1024)
    h.host(transport).dataReceived(b"s" * 150000)
    sent = h.network.takeTcp()
    assert [len(payload) for *_, payload, _ in sent] == [64240, 64240, 1460]
    assert {mss for *_, mss in sent} == {1460}
    h.ack(h.ours + 128480, window=1024)
    assert [len(p) for _, p in h.takeAll()] == [150000 - 128480 - 1460]


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
