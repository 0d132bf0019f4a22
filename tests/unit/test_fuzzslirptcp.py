"""
The slirp TCP engine driven through long random sequences of valid but
unusual events by a hypothesis state machine: a guest that opens, sends,
repeats, reorders, acknowledges (with SACK blocks, true or not), shrinks and
closes its window, half-closes and resets; a host that connects, refuses,
sends, pauses, half-closes, closes and aborts; and a clock that jumps through
the retransmission, probe, time-wait and keep-alive timers.

After every step: nothing raised or logged a failure; every segment to the
guest is well-formed, comes from the connection's addresses, carries host
data at the sequence numbers where that data belongs (so no byte goes out
twice at different places, nor out of order), sends new data only inside
the window the guest advertised last (a one-byte zero-window probe aside)
and acknowledges nothing the guest did not send; the host got a prefix of
the guest's stream, each byte once.  At the end, the guest falling silent,
every connection is given up or closes, every host socket is closed or
aborted, and no timer is left.

The examples are few by default; set C{VTWISTED_FUZZ_EXAMPLES} for a long run.
"""

from __future__ import annotations

import os
import random
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from slirpfakes import noFailuresLogged
from slirptcpharness import GATEWAY, GUEST, ipPacket
from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from vtwisted.slirp import tcpconnection
from vtwisted.slirp.tcp import TcpNat
from vtwisted.testing import FakeGuestNetwork
from vtwisted.wire.tcp import (
    ACK,
    FIN,
    OPT_MSS,
    OPT_SACK,
    OPT_SACK_PERMITTED,
    OPT_WINDOW_SCALE,
    PSH,
    RST,
    SYN,
    TCPHeader,
    iterOptions,
)

EXAMPLES = int(os.environ.get("VTWISTED_FUZZ_EXAMPLES", "100"))
STEPS = int(os.environ.get("VTWISTED_FUZZ_STEPS", "40"))
MASK = 0xFFFFFFFF
PORT = 40000
KEEPALIVE = 100.0
WINDOWS = [0, 0, 1, 10, 536, 1460, 4000, 65535]
NO_CONNECTOR: Any = None
PAUSES = [0.0, 0.0, 0.01, 0.05, 0.2, 0.5, 1.0, 3.0, 11.0, 61.0]


def guestBytes(seq: int, size: int) -> bytes:
    """
    The guest's data at sequence numbers C{seq} on: always the same bytes
    there, so a segment of an earlier connection repeated is still part of
    the stream.
    """
    return bytes((((seq + i) & MASK) * 131 + ((seq + i) & MASK) // 251) % 251
                 for i in range(size))


class HostSocket(StringTransport):
    """
    A host TCP transport that closes as Twisted's do, at the next reactor
    turn, and fails the test if written to once closed for writing.
    """

    bufferSize = 1 << 16

    def __init__(self, clock: MemoryReactorClock,
                 peer: tuple[str, int] = ("127.0.0.1", 80)) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", *peer), lenient=True)
        self.clock = clock
        self.writeClosed = False
        self.aborted = False
        self.lost = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        assert not (self.writeClosed or self.disconnecting or self.lost), (
            f"{len(data)} bytes written to a host socket closed for writing")
        super().write(data)

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def loseConnection(self) -> None:
        if not self.disconnecting and not self.lost:
            self.clock.callLater(0, self.connectionLost, ConnectionDone())
        self.disconnecting = True

    def abortConnection(self) -> None:
        if not self.aborted and not self.lost:
            self.clock.callLater(0, self.connectionLost, ConnectionAborted())
        self.aborted = self.disconnecting = True

    def connectionLost(self, reason: Exception) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(reason))


class Guest:
    """
    What the guest knows of its one connection.
    """

    def __init__(self, isn: int, shift: int | None, sack: bool) -> None:
        self.isn = isn
        self.shift = shift
        self.sack = sack
        #: The bytes of its stream it sent so far, and where its FIN is.
        self.sent = 0
        self.finAt: int | None = None
        #: Our ISN once the SYN-ACK came; the host data received in order.
        self.ours: int | None = None
        self.received = 0
        self.finReceived = False
        #: What came past a hole; where our FIN came.
        self.ranges: list[tuple[int, int]] = []
        self.theirFin: int | None = None


class SlirpTcpMachine(RuleBasedStateMachine):
    """
    One guest port talking to the gateway's port 80 through a L{TcpNat}.
    """

    @initialize(seed=st.integers(0, MASK))
    def start(self, seed: int = 0) -> None:
        self.failures = noFailuresLogged()
        self.failures.__enter__()
        #: Our initial sequence numbers and the host's data, repeatable.
        self.random = random.Random(seed)
        self.urandom = tcpconnection.os
        tcpconnection.os = SimpleNamespace(urandom=self.random.randbytes)  # type: ignore[assignment]
        self.clock = MemoryReactorClock()
        self.network = FakeGuestNetwork()
        self.nat = TcpNat(self.network, self.clock, keepalive=KEEPALIVE)
        self.guest: Guest | None = None
        self.sockets: list[HostSocket] = []
        self.connected = 0
        #: All the host has sent, per connection (the latest one's).
        self.hostStream = b""
        self.hostEof = False
        #: What the guest advertised: the latest ACK it sent and the right
        #: edge of its window then.
        self.lastAck = 0
        self.edge = 0
        self.windowZero = False
        #: Our highest sequence number sent, relative to our ISN.
        self.sndMax = 1
        self.pending: list[tuple[TCPHeader, bytes]] = []
        self.key = (GUEST, PORT, GATEWAY, 80)
        #: Segments the guest sent, for repeating them.
        self.history: list[tuple[int, int, int, int, bytes, bytes]] = []
        self.firstSocket = 0

    def teardown(self) -> None:
        try:
            if hasattr(self, "clock"):
                self.finish()
        finally:
            if hasattr(self, "urandom"):
                tcpconnection.os = self.urandom
            if hasattr(self, "failures"):
                self.failures.__exit__(None, None, None)

    # Sending from the guest.

    def send(self, flags: int, seq: int, ack: int, payload: bytes = b"", window: int = 65535,
             options: bytes = b"", record: bool = True) -> None:
        header = TCPHeader(PORT, 80, seq & MASK, ack & MASK, flags, window, 0, 0, options)
        segment = header.pack() + payload
        if record:
            self.history.append((flags, seq, ack, window, options, payload))
        guest = self.guest
        if guest is not None and not flags & (SYN | RST):
            offset = ((seq - guest.isn - 1 + (1 << 31)) & MASK) - (1 << 31)
            if -(1 << 30) < offset < 1 << 30 and offset + len(payload) >= 0:
                guest.sent = max(guest.sent, offset + len(payload))
                if flags & FIN and guest.finAt is None:
                    guest.finAt = offset + len(payload)
        if flags & (ACK | SYN | RST) == ACK and guest is not None and guest.ours is not None:
            self.guestWindow(ack, window)
        before = self.connection()
        self.nat.segmentReceived(GUEST, GATEWAY, segment, ipPacket(GUEST, GATEWAY, segment))
        after = self.connection()
        if after is not None and after is not before:
            self.opened(header)
        self.check()

    def opened(self, syn: TCPHeader) -> None:
        """
        The guest's SYN made a new connection: start over.
        """
        shift = sack = None
        for kind, value in iterOptions(syn.options):
            if kind == OPT_WINDOW_SCALE:
                shift = min(value[0], 14)
            elif kind == OPT_SACK_PERMITTED:
                sack = True
        self.guest = Guest(syn.seq, shift, bool(sack))
        self.resetModel()

    def resetModel(self) -> None:
        self.hostStream, self.hostEof = b"", False
        self.lastAck, self.edge, self.windowZero, self.sndMax = 0, 0, False, 1
        self.pending = []
        self.firstSocket = len(self.sockets)

    def live(self) -> bool:
        current = self.connection()
        return current is not None and current.state != "time-wait"

    def guestWindow(self, ack: int, window: int) -> None:
        """
        Follow the window the engine takes: the one of the latest ACK that
        acknowledges at least as much as any before.
        """
        assert self.guest is not None and self.guest.ours is not None
        relative = (ack - self.guest.ours) & MASK
        if relative > self.sndMax or relative < self.lastAck:
            return
        self.lastAck = relative
        scaled = window << (self.guest.shift or 0)
        self.edge = relative + scaled
        self.windowZero = scaled == 0

    def guestAckField(self) -> int:
        assert self.guest is not None
        if self.guest.ours is None:
            return 0
        return self.guest.ours + 1 + self.guest.received + self.guest.finReceived

    def connection(self) -> Any:
        return self.nat.connections.get(self.key)

    # Rules: the guest.

    @rule(isn=st.integers(0, MASK), mss=st.sampled_from([None, 64, 536, 1460, 9000]),
          shift=st.sampled_from([None, 0, 2, 7, 14]), sack=st.booleans(),
          window=st.sampled_from(WINDOWS))
    def syn(self, isn: int, mss: int | None, shift: int | None, sack: bool, window: int) -> None:
        options = b""
        if mss is not None:
            options += bytes((OPT_MSS, 4)) + mss.to_bytes(2, "big")
        if shift is not None:
            options += bytes((1, OPT_WINDOW_SCALE, 3, shift))
        if sack:
            options += bytes((1, 1, OPT_SACK_PERMITTED, 2))
        isn = self.guest.isn if self.guest is not None and self.live() else isn
        self.send(SYN, isn, 0, window=window, options=options)

    @precondition(lambda self: not self.live() and len(self.clock.tcpClients) == self.connected)
    @rule(isn=st.integers(0, MASK), mss=st.sampled_from([None, 536, 1460]),
          shift=st.sampled_from([None, 0, 7]), sack=st.booleans(),
          window=st.sampled_from([4000, 65535]))
    def handshake(self, isn: int, mss: int | None, shift: int | None, sack: bool,
                  window: int) -> None:
        """
        Open a connection: SYN, host connect, SYN-ACK, ACK.
        """
        self.syn(isn, mss, shift, sack, window)
        if len(self.clock.tcpClients) > self.connected:
            self.hostConnect("connect")
            self.receive([True])
            if self.guest is not None and self.guest.ours is not None:
                self.send(ACK, isn + 1, self.guestAckField(), window=window)

    @precondition(lambda self: self.guest is not None)
    @rule(start=st.integers(-3000, 3000), size=st.integers(0, 3000), fin=st.booleans(),
          window=st.sampled_from(WINDOWS), stale=st.booleans())
    def data(self, start: int, size: int, fin: bool, window: int, stale: bool) -> None:
        """
        Send part of the stream around what the engine acknowledged, new
        data past it, and maybe the FIN after it.
        """
        guest = self.guest
        assert guest is not None
        start = max(0, min(guest.sent, self.acked() + start))
        end = start + size
        if guest.finAt is not None:
            end = min(end, guest.finAt)
            start = min(start, end)
        flags = ACK | PSH
        if fin and (guest.finAt is None or guest.finAt == end) and end >= guest.sent:
            flags |= FIN
        ack = self.guestAckField()
        if stale and guest.ours is not None:
            ack = guest.ours + 1
        seq = guest.isn + 1 + start
        self.send(flags, seq, ack, guestBytes(seq, end - start), window)

    def acked(self) -> int:
        """
        What the engine acknowledged of the guest's stream so far.
        """
        if len(self.sockets) > self.firstSocket:
            return len(self.sockets[-1].value())
        return 0

    @precondition(lambda self: self.guest is not None and self.guest.ours is not None)
    @rule(window=st.sampled_from([*WINDOWS, -1, -2]), back=st.sampled_from([0, 0, 0, 1, 1000]),
          blocks=st.lists(st.tuples(st.integers(-2000, 70000), st.integers(0, 5000)),
                          max_size=4))
    def ack(self, window: int, back: int, blocks: list[tuple[int, int]]) -> None:
        """
        Acknowledge what came in order (or a little before it), with a new,
        the same (-1) or a halved (-2) window, and perhaps SACK blocks
        relative to it.
        """
        guest = self.guest
        assert guest is not None and guest.ours is not None
        if window == -1:
            window = max(0, (self.edge - self.lastAck) >> (guest.shift or 0))
        elif window == -2:
            window = max(0, (self.edge - self.lastAck) >> (guest.shift or 0)) // 2
        window = min(window, 0xFFFF)
        ack = self.guestAckField() - back
        options = b""
        if blocks:
            edges = b"".join(((ack + left) & MASK).to_bytes(4, "big")
                             + ((ack + left + size) & MASK).to_bytes(4, "big")
                             for left, size in blocks)
            options = bytes((1, 1, OPT_SACK, 2 + len(edges))) + edges
        seq = guest.isn + 1 + self.acked() + (guest.finAt is not None and
                                              self.acked() == guest.finAt)
        self.send(ACK, seq, ack, window=window, options=options)

    @precondition(lambda self: self.history)
    @rule(which=st.integers(0, 1000))
    def repeat(self, which: int) -> None:
        """
        A duplicate, or a segment overtaken by later ones.
        """
        flags, seq, ack, window, options, payload = self.history[which % len(self.history)]
        self.send(flags, seq, ack, payload, window, options, record=False)

    @precondition(lambda self: self.guest is not None)
    @rule(where=st.sampled_from([0, 0, 1, -1, 100000, 1 << 31]), withAck=st.booleans())
    def reset(self, where: int, withAck: bool) -> None:
        guest = self.guest
        assert guest is not None
        seq = guest.isn + 1 + self.acked() + where
        self.send(RST | (ACK if withAck else 0), seq, self.guestAckField() if withAck else 0,
                  window=0)

    @precondition(lambda self: self.pending)
    @rule(keep=st.lists(st.booleans(), min_size=1, max_size=40))
    def receive(self, keep: list[bool]) -> None:
        """
        Take in what the engine sent, losing some: data in order is
        received, a FIN in order ends the stream.
        """
        guest = self.guest
        assert guest is not None
        pending, self.pending = self.pending, []
        for i, (header, payload) in enumerate(pending):
            if not keep[i % len(keep)] or guest.ours is None:
                continue
            offset = (header.seq - guest.ours - 1) & MASK
            end = offset + len(payload)
            if header.flags & SYN or offset >= 1 << 30:
                continue
            if header.flags & FIN and self.hostEof:
                guest.theirFin = end
            if offset > guest.received and payload:
                guest.ranges.append((offset, end))
            elif end > guest.received:
                guest.received = end
            for start, stop in sorted(guest.ranges):
                if start <= guest.received:
                    guest.received = max(guest.received, stop)
            guest.ranges = [(a, b) for a, b in guest.ranges if b > guest.received]
            if guest.theirFin == guest.received:
                guest.finReceived = True

    @precondition(lambda self: self.pending and self.guest is not None
                  and self.guest.ours is not None)
    @rule(keep=st.lists(st.booleans(), min_size=1, max_size=40),
          window=st.sampled_from([0, 1000, 8000, 65535]))
    def exchange(self, keep: list[bool], window: int) -> None:
        """
        Receive what came (losing some) and acknowledge it as a guest does,
        with SACK blocks naming what came past a hole.
        """
        self.receive(keep)
        guest = self.guest
        assert guest is not None and guest.ours is not None
        blocks = [(a - guest.received, b - a) for a, b in sorted(guest.ranges)[-3:]]
        self.ack(window, 0, blocks if guest.sack else [])

    # Rules: a host port forward.

    @rule(isn=st.integers(0, MASK))
    def forward(self, isn: int) -> None:
        """
        A host client connects to a port forward to the guest's port.
        """
        socket = HostSocket(self.clock, ("127.0.0.1", 80))
        protocol: Any = self.nat.forwardFactory(GUEST, PORT).buildProtocol(socket.getPeer())
        socket.protocol = protocol
        before = self.connection()
        fresh = before is None or before.state == "time-wait"
        if fresh:
            self.guest = Guest(isn, None, False)
            self.resetModel()
        self.sockets.append(socket)
        protocol.makeConnection(socket)
        if fresh and self.connection() is None:
            self.guest = None
        self.check()

    @precondition(lambda self: self.connection() is not None
                  and self.connection().state == "syn-sent")
    @rule(shift=st.sampled_from([None, 0, 7, 14]), sack=st.booleans(),
          window=st.sampled_from(WINDOWS), good=st.booleans())
    def synAck(self, shift: int | None, sack: bool, window: int, good: bool) -> None:
        """
        The guest answers a forward's SYN, perhaps acknowledging the wrong number.
        """
        guest = self.guest
        assert guest is not None and guest.ours is not None
        options = b""
        if shift is not None:
            options += bytes((1, OPT_WINDOW_SCALE, 3, shift))
        if sack:
            options += bytes((1, 1, OPT_SACK_PERMITTED, 2))
        guest.shift, guest.sack = shift, sack
        ack = guest.ours + 1 if good else guest.ours + 7
        if good:
            self.lastAck, self.edge, self.windowZero = 1, 1 + window, window == 0
        self.send(SYN | ACK, guest.isn, ack, window=window, options=options)

    # Rules: the host.

    @precondition(lambda self: len(self.clock.tcpClients) > self.connected)
    @rule(how=st.sampled_from(["connect", "connect", "connect", "refused", "timeout"]))
    def hostConnect(self, how: str) -> None:
        factory = self.clock.tcpClients[self.connected][2]
        self.connected += 1
        if how == "connect":
            socket = HostSocket(self.clock)
            protocol: Any = factory.buildProtocol(socket.getPeer())
            socket.protocol = protocol
            self.sockets.append(socket)
            protocol.makeConnection(socket)
        else:
            reason = ConnectionRefusedError() if how == "refused" else TimeoutError()
            factory.clientConnectionFailed(NO_CONNECTOR, Failure(reason))
        self.check()

    def liveSocket(self) -> HostSocket | None:
        """
        The host socket of the current connection, while it is open.
        """
        current = self.connection()
        if (self.sockets and not self.sockets[-1].lost and current is not None
                and self.sockets[-1].protocol.connection is current):
            return self.sockets[-1]
        return None

    @precondition(lambda self: self.liveSocket() is not None)
    @rule(size=st.sampled_from([1, 100, 1460, 5000, 70000, 300000]))
    def hostData(self, size: int) -> None:
        socket = self.liveSocket()
        assert socket is not None
        if self.hostEof:
            return
        data = self.random.randbytes(size)
        self.hostStream += data
        socket.protocol.dataReceived(data)
        self.check()

    @precondition(lambda self: self.liveSocket() is not None)
    @rule(how=st.sampled_from(["eof", "close", "lost", "pause", "resume"]))
    def hostEvent(self, how: str) -> None:
        socket = self.liveSocket()
        assert socket is not None
        if how == "pause":
            if socket.producer is not None:
                socket.producer.pauseProducing()
        elif how == "resume":
            if socket.producer is not None:
                socket.producer.resumeProducing()
        elif how == "eof":
            if not self.hostEof:
                self.hostEof = True
                socket.protocol.readConnectionLost()
        else:
            self.hostEof = True
            socket.connectionLost(ConnectionDone() if how == "close" else ConnectionLost())
        self.check()

    @rule(seconds=st.sampled_from(PAUSES))
    def pause(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.check()

    # Checks.

    def check(self) -> None:
        for src, dst, header, payload, mss in self.network.takeTcp():
            self.checkSegment(src, dst, header, payload, mss)
            self.pending.append((header, payload))
        guest = self.guest
        for socket in self.sockets[self.firstSocket:]:
            assert guest is not None
            written = socket.value()
            assert written == guestBytes(guest.isn + 1, len(written)), (
                "the host got bytes out of order")
            assert len(written) <= guest.sent

    def checkSegment(self, src: bytes, dst: bytes, header: TCPHeader, payload: bytes,
                     mss: int) -> None:
        guest = self.guest
        assert guest is not None
        assert (src, header.srcPort, dst, header.dstPort) == (GATEWAY, 80, GUEST, PORT)
        flags = header.flags
        assert flags & ~(SYN | ACK | FIN | RST | PSH) == 0, hex(flags)
        assert not (flags & SYN and flags & (FIN | RST))
        assert header.headerLength == 20 + len(header.options)
        list(iterOptions(header.options))
        if flags & RST:
            assert not payload
            return
        assert flags & ACK or flags == SYN, f"{flags:#x} without ACK"
        ack = (header.ack - guest.isn - 1) & MASK
        assert not flags & ACK or ack <= guest.sent + (guest.finAt is not None), (
            f"ACK of {ack} bytes, the guest sent {guest.sent}")
        if flags & SYN:
            assert not payload
            if guest.ours is None:
                guest.ours = header.seq
            assert header.seq == guest.ours, "a second SYN-ACK with another ISN"
            return
        assert guest.ours is not None, "a segment before the SYN-ACK"
        offset = (header.seq - guest.ours - 1) & MASK
        if not payload and not flags & FIN:
            # An ACK, a window update or a keep-alive probe (one byte back).
            assert offset == MASK or offset + 1 <= self.sndMax, f"bare segment at {offset}"
            return
        end = offset + len(payload)
        assert end <= len(self.hostStream), f"data past the host's {len(self.hostStream)}"
        assert payload == self.hostStream[offset:end], (
            f"bytes {offset}-{end} are not the host's bytes there")
        if flags & FIN:
            assert self.hostEof and end == len(self.hostStream), "a FIN before the host's EOF"
        new = 1 + end - self.sndMax
        if payload and new > 0:
            probe = self.windowZero and len(payload) == 1 and offset == self.lastAck - 1
            assert probe or 1 + end <= self.edge, (
                f"new data to {1 + end}, past the guest's window edge {self.edge}"
                f" (acked {self.lastAck})")
        self.sndMax = max(self.sndMax, 1 + end + (flags & FIN))

    # The end.

    def finish(self) -> None:
        """
        The guest falls silent; pending host connects time out: every
        connection ends, every host socket is closed, no timer is left.
        """
        for _, _, factory, _, _ in self.clock.tcpClients[self.connected:]:
            factory.clientConnectionFailed(NO_CONNECTOR, Failure(TimeoutError()))
        self.connected = len(self.clock.tcpClients)
        for _ in range(2000):
            if not self.nat.connections and not self.clock.getDelayedCalls():
                break
            self.clock.advance(5)
            self.check()
        assert not self.nat.connections, self.nat.describe()
        assert not self.clock.getDelayedCalls(), self.clock.getDelayedCalls()
        for socket in self.sockets:
            assert socket.lost or socket.disconnecting, "a host socket left open"


SlirpTcpMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_slirpTcpStateMachine = SlirpTcpMachine.TestCase
