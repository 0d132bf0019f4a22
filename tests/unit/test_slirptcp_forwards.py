"""
Host port forwards of the slirp TCP engine: a host connection becomes a SYN
to the guest, relayed once the guest answers; and the handshake corner cases
(SYN options, TIME-WAIT reuse, early host data, window scaling) that
forwards exercise.
"""

from __future__ import annotations

import pytest
from slirptcpharness import (
    GATEWAY,
    GUEST,
    GUEST_ISN,
    SCALE_OPTION,
    Harness,
    HostTransport,
    mssOption,
)
from twisted.logger import capturedLogs, formatEvent

from vtwisted.slirp.tcpconnection import RECEIVE_BUDGET
from vtwisted.wire.tcp import ACK, FIN, OPT_MSS, OPT_WINDOW_SCALE, RST, SYN


@pytest.fixture
def h() -> Harness:
    return Harness()


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
    gateway and the client's port, with MSS, window scale and SACK permitted.
    """
    transport = forward(h)
    assert transport.producerState == "paused"
    ((src, dst, syn, payload, mss),) = h.network.takeTcp()
    assert (src, dst, syn.srcPort, syn.dstPort, syn.flags) == (GATEWAY, GUEST, 5555, 22, SYN)
    assert syn.options == mssOption(1460) + bytes((1, OPT_WINDOW_SCALE, 3, 5, 1, 1, 4, 2))


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


def test_forwardResetOnRst(h: Harness) -> None:
    """
    A guest answering the SYN with RST (nothing listens) resets the host
    client, as a closed port would, rather than closing it cleanly.
    """
    transport = forward(h)
    (syn,) = h.take()
    h.sport, h.dport = 22, 5555
    h.send(RST | ACK, seq=0, ack=syn.seq + 1)
    assert transport.aborted
    assert h.nat.connectionCount == 0
    assert (h.nat.forwardsRefused, h.nat.forwardsUnanswered, h.nat.guestResets) == (1, 0, 0)


def test_forwardFailuresLoggedOnceUntilOneWorks(h: Harness) -> None:
    """
    A guest port that keeps refusing is logged once, however many host
    clients it resets; once a connection to it opens, the next refusal is
    logged again.
    """
    with capturedLogs() as events:
        for port in (5555, 5556):
            forward(h, ("127.0.0.1", port))
            (syn,) = h.take()
            h.sport, h.dport = 22, port
            h.send(RST | ACK, seq=0, ack=syn.seq + 1)
        forward(h, ("127.0.0.1", 5557))
        (syn,) = h.take()
        h.sport, h.dport = 22, 5557
        h.send(SYN | ACK, seq=GUEST_ISN, ack=syn.seq + 1, options=mssOption(1460))
        h.take()
        forward(h, ("127.0.0.1", 5558))
        (syn,) = h.take()
        h.sport, h.dport = 22, 5558
        h.send(RST | ACK, seq=0, ack=syn.seq + 1)
    refusals = [e for e in events if "refused it" in formatEvent(e)]
    assert len(refusals) == 2 and h.nat.forwardsRefused == 3
    assert "TCP forward to 10.0.2.15:22" in formatEvent(refusals[0])


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
    assert transport.aborted
    assert h.nat.connectionCount == 0 and h.nat.forwardsUnanswered == 1


def test_forwardToAGuestThatIsNotThereResetAfterThreeLookups(h: Harness) -> None:
    """
    When the guest's address answers no ARP (or neighbour solicitation),
    the host client is reset after three lookups, not after every SYN
    retransmission; lookups of other addresses do not count.
    """
    transport = forward(h)
    h.nat.neighbourUnanswered(bytes([10, 0, 2, 16]))
    h.nat.neighbourUnanswered(GUEST)
    h.nat.neighbourUnanswered(GUEST)
    assert not transport.aborted
    h.nat.neighbourUnanswered(GUEST)
    assert transport.aborted
    assert h.nat.connectionCount == 0 and h.nat.forwardsUnanswered == 1


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


def test_forwardClientReusingALingeringPortStartsNewConnection(h: Harness) -> None:
    """
    A host client that connects again from the port of a connection still
    lingering in time-wait (a client with a fixed source port) gets a new
    guest connection, not a refusal.
    """
    transport = forward(h)
    (syn,) = h.take()
    h.sport, h.dport, h.dst = 22, 5555, GATEWAY
    h.send(SYN | ACK, seq=GUEST_ISN, ack=syn.seq + 1)
    h.ours = syn.seq + 1
    h.send(ACK | FIN)
    h.seq += 1
    h.host(transport).readConnectionLost()
    fin = h.take()[-1]
    assert fin.flags & FIN
    h.ack(fin.seq + 1)
    assert " time-wait, " in h.nat.describe()[0]
    again = forward(h)
    assert again.connected and again.producerState == "paused"
    (syn,) = h.take()
    assert syn.flags == SYN and h.nat.busy == 0
