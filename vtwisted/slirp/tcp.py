"""
The TCP engine of a slirp port: guests' TCP connections become host sockets.

Theory of operation
-------------------
The router hands L{TcpNat.segmentReceived} every TCP segment a guest sends.
The engine keeps one L{TcpConnection} per (guest address, guest port,
destination address, destination port) and passes the segment to it; a
SYN for a new connection starts a host C{connect()} to where
L{IGuestNetwork.hostAddress} maps the destination, and the guest gets its
SYN-ACK only once that connect succeeded (a refused connect answers with a
RST, any other failure with ICMP net unreachable if the host has no route,
else host unreachable), as libslirp does.  A
non-SYN segment for no connection is answered with a RST (RFC 9293).

Guests speak IPv4 or IPv6: a connection's family is the length of its
guest-side addresses (4 or 16 bytes), and only its segment sizes depend on
it (L{vtwisted.slirp.tcpstates}).  The host side is whatever
L{IGuestNetwork.hostAddress} names, an IPv4 or IPv6 literal (C{::1} for the
IPv6 gateway), which C{connectTCP} connects to in its own family: the two
sides of a connection need not share one.

Host port forwards work the other way round: L{TcpNat.forwardFactory}
builds the listening side's factory; each accepted host client is paused
while we send the guest a SYN from the client's guest-visible address and
port, and relayed once the guest answers.  Forwards reach IPv4 guests; the
guest sees the client at L{IGuestNetwork.guestAddress} of its address.

The engine does no per-segment logging or timer creation: each connection
owns one timer (L{vtwisted.slirp.tcpsend}), and the ACKs owed for a reactor
turn's worth of segments go out together from one C{callLater(0)}
(L{TcpNat.ackSoon}).  Per-connection states, windows and backpressure are
described in L{vtwisted.slirp.tcpconnection}.  What the connections may
buffer has a budget per port (L{TcpNat.share}): each connection's share
shrinks as they multiply.

Counters, for a console: C{opened} (handshakes completed), C{refused} (host
connects refused, answered with RST), C{unreachable} (other connect
failures, answered with ICMP), C{resets} (RSTs sent to guests for live
connections: host reset, gave up, data for a closed host), C{guestResets}
(RSTs from guests for live connections), C{timeouts} (connections given up on
retransmissions, on a guest silent for C{keepalive=} seconds: see
L{vtwisted.slirp.tcpkeepalive}, or on a guest making no progress, its
window zero or our FIN unacknowledged, once the host is gone:
L{vtwisted.slirp.tcpsend.ORPHAN_PROBES}),
C{unread} (host sockets closed after both sides finished whose peer
read nothing of what was left for it in 60 s, aborted: logged once per
port, L{TcpNat.hostUnread}),
C{busy} (SYNs refused for the connection limit), C{strays} (segments for
no connection, answered with RST), C{tailProbes} (tail loss probes sent,
L{vtwisted.slirp.tcpsack}), and for host port forwards C{forwardsRefused}
(the guest answered our SYN with a RST, or with an ICMP destination
unreachable: a firewall's reject, L{vtwisted.slirp.guesterrors}),
C{forwardsFailed} (it answered with an ICMP time exceeded or parameter
problem) and
C{forwardsUnanswered} (it did not answer, or no guest has the address):
either way the host client is reset (L{vtwisted.slirp.tcpstates}), and the
first failure of a forward's guest port is logged, then none until a
connection to it opens.  C{errorsIgnored} counts the guests' other ICMP
errors about TCP (about an established connection, or quoting no segment
we sent).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.error import ConnectionRefusedError, NoRouteError
from twisted.internet.protocol import ClientFactory, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from vtwisted.interfaces import IGuestNetwork
from vtwisted.slirp.addresses import guestEndpoint, hostEndpoint
from vtwisted.slirp.guesterrors import GuestError, Quote
from vtwisted.slirp.tcpconnection import HOST_CLOSE_GRACE, TcpConnection
from vtwisted.slirp.tcphost import (
    EndpointConnector,
    ForwardFactory,
    GuestForwardTarget,
    HostProtocol,
)
from vtwisted.slirp.tcpkeepalive import KEEPALIVE, KeepAlive
from vtwisted.slirp.tcpsend import FIXED_HEADER, MASK
from vtwisted.slirp.tcpstates import (
    FAILED,
    HEADERS,
    HEADERS6,
    REFUSED,
    SYN_SENT,
    TIME_WAIT,
)
from vtwisted.wire.tcp import ACK, FIN, RST, SYN, TCPError, TCPHeader

__all__ = ["MAX_CONNECTIONS", "GuestForwardTarget", "TcpConnection", "TcpNat"]

log = Logger()

#: Connections at most; further SYNs get a RST.
MAX_CONNECTIONS = 4096
#: Errors of a host socket that could not be had: the process is out of descriptors.
_NO_DESCRIPTOR = (errno.EMFILE, errno.ENFILE)
#: Bytes the connections of a port may buffer together, by default.
BUFFER_BUDGET = 256 << 20
#: What a connection may buffer each way never shrinks below this.
MIN_SHARE = 16 << 10
#: Seconds a host connect may take.
CONNECT_TIMEOUT = 30
#: Failing forward guest ports remembered (so as to log each failure once).
MAX_FAILING = 256

Key = tuple[bytes, int, bytes, int]


class HostConnectFactory(ClientFactory):
    """
    Connects one guest connection to its host destination.
    """

    noisy = False

    def __init__(self, connection: TcpConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> HostProtocol:
        return HostProtocol(self.connection)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        connection = self.connection
        problem = getattr(reason.value, "osError", None)
        if problem in _NO_DESCRIPTOR:
            connection.network.dropped(
                "busy", f"TCP to {connection.hostLabel}: cannot open a host socket: "
                        f"{os.strerror(problem)} (errno {problem})")
            connection.connectFailed(None)
            return
        connection.connectFailed(unreachableCode(reason))


def unreachableCode(reason: Failure) -> int | None:
    """
    How the guest hears of a failed host connect: None for a RST (refused),
    else the ICMP destination unreachable code, net (0) when the host has no
    route (C{ENETUNREACH}), host (1) for anything else (C{EHOSTUNREACH}, a
    timeout), so that the guest's C{connect} fails as the host's did.
    """
    if reason.check(ConnectionRefusedError):
        return None
    if reason.check(NoRouteError) or getattr(reason.value, "osError", None) == errno.ENETUNREACH:
        return 0
    return 1


class TcpNat:
    """
    The TCP engine of one slirp port.

    @ivar network: the router, an L{IGuestNetwork}.
    @ivar reactor: an C{IReactorTCP} and C{IReactorTime}.
    @ivar connections: the live connections by guest-side key.
    """

    def __init__(self, network: IGuestNetwork, reactor: Any, budget: int = BUFFER_BUDGET,
                 keepalive: float = KEEPALIVE) -> None:
        self.network = network
        self.reactor = reactor
        self.connections: dict[Key, TcpConnection] = {}
        #: Gives up connections whose guests went silent (L{vtwisted.slirp.tcpkeepalive}).
        self.keepAlive = KeepAlive(self, reactor, keepalive)
        self.budget = budget
        self.share = self.shareFor(0)
        self.maxConnections = MAX_CONNECTIONS
        self._acking: list[TcpConnection] = []
        self._ackCall: Any = None
        self.opened = self.refused = self.unreachable = self.resets = 0
        self.guestResets = self.timeouts = self.busy = self.strays = 0
        self.tailProbes = 0
        #: Host sockets aborted for a peer that read nothing once closed.
        self.unread = 0
        #: Connections whose host socket is closing (in the table or not).
        self.hostClosing: set[TcpConnection] = set()
        self.forwardsRefused = self.forwardsUnanswered = self.forwardsFailed = 0
        #: ICMP errors from guests that failed no forward (L{errorReceived}).
        self.errorsIgnored = 0
        #: Forwards' guest ports whose failure was logged since one last worked.
        self._failingForwards: set[tuple[bytes, int]] = set()

    @property
    def connectionCount(self) -> int:
        """
        How many connections there are, in any state.
        """
        return len(self.connections)

    def shareFor(self, count: int) -> int:
        """
        What each of C{count} connections may buffer, a power of two: a
        quarter of the port's budget between them (each holds data toward
        the guest, toward the host, past a hole, and a read), at least
        L{MIN_SHARE}.
        """
        share = max(self.budget // (4 * max(count, 1)), MIN_SHARE)
        return 1 << (share.bit_length() - 1)

    def updateShare(self) -> None:
        """
        The number of connections changed: if their share changed, tell
        them (the window they advertise, how much their host socket reads
        and writes before pausing, how much they hold for the guest).
        """
        share = self.shareFor(len(self.connections))
        if share != self.share:
            self.share = share
            for connection in self.connections.values():
                connection.shareChanged(share)

    def describe(self) -> list[str]:
        """
        One line per connection, for a console.
        """
        return [connection.describe() for connection in self.connections.values()]

    def close(self) -> None:
        """
        Abort every host connection, cancel every timer, forget everything.
        """
        for connection in list(self.connections.values()):
            connection.abort(resetGuest=False)
        self.connections.clear()
        for connection in list(self.hostClosing):
            if connection.transport is not None:
                connection.transport.abortConnection()
        self.hostClosing.clear()
        self.keepAlive.stop()
        if self._ackCall is not None and self._ackCall.active():
            self._ackCall.cancel()
        self._ackCall = None
        self._acking = []

    # From the guest.

    def segmentReceived(self, src: bytes, dst: bytes, segment: Any, packet: bytes) -> None:
        """
        Handle one TCP segment (header and payload) a guest sent from
        C{src} to C{dst} (4-byte IPv4 or 16-byte IPv6 addresses);
        C{packet} is the whole IP packet.
        """
        try:
            header = TCPHeader.parse(segment)
        except TCPError as e:
            port = int.from_bytes(segment[:2], "big") if len(segment) >= 2 else 0
            self.network.dropped("malformed", f"TCP from {guestEndpoint(src, port)}: {e}")
            return
        key = (src, header.srcPort, dst, header.dstPort)
        connection = self.connections.get(key)
        flags = header.flags
        if connection is not None:
            if not (flags & SYN and connection.state == TIME_WAIT):
                connection.heard = True
                connection.segmentReceived(header, memoryview(segment)[header.headerLength:])
                return
            connection.forget()
        if flags & RST:
            return
        if flags & (SYN | ACK | FIN) == SYN:
            self.synReceived(key, header, packet)
        else:
            self.strays += 1
            self.resetStray(key, header, len(segment) - header.headerLength)

    def synReceived(self, key: Key, header: TCPHeader, packet: bytes) -> None:
        """
        A guest opens a connection: connect to the host first.
        """
        src, srcPort, dst, dstPort = key
        target = self.network.hostAddress(dst, dstPort, 6)
        if target is None:
            if self.network.restricted:
                self.sendReset(key, 0, (header.seq + 1) & MASK, RST | ACK)
            else:
                self.network.sendUnreachable(packet, 0)
            return
        if len(self.connections) >= self.maxConnections:
            self.busy += 1
            self.network.dropped("busy", f"TCP SYN from {guestEndpoint(src, srcPort)}: "
                                         f"{len(self.connections)} connections already")
            self.sendReset(key, 0, (header.seq + 1) & MASK, RST | ACK)
            return
        if isinstance(target, tuple):
            label = hostEndpoint(*target)
        else:
            label = str(target)
        connection = TcpConnection(self, key, label)
        try:
            connection.guestSyn(header.seq, header.options, bytes(packet))
        except TCPError as e:
            self.network.dropped("malformed", f"TCP SYN from {guestEndpoint(src, srcPort)}: {e}")
            return
        self.connections[key] = connection
        self.updateShare()
        self.keepAlive.watch()
        factory = HostConnectFactory(connection)
        if isinstance(target, tuple):
            connection.connector = self.reactor.connectTCP(
                target[0], target[1], factory, timeout=CONNECT_TIMEOUT)
            return
        connecting = target.endpoint.connect(factory)
        connecting.addCallbacks(target.connected, target.failed)
        connecting.addErrback(lambda failure: connection.connectFailed(unreachableCode(failure)))
        connection.connector = EndpointConnector(connecting)

    def errorReceived(self, dst: bytes, quote: Quote | None, error: GuestError) -> None:
        """
        A guest sent C{dst} an ICMP or ICMPv6 C{error} quoting C{quote}
        (L{None}: no TCP segment, nor UDP datagram): if it quotes the SYN
        of a forward that waits for the guest, fail that forward as a RST
        would, as Linux's C{connect} fails on it (a destination unreachable
        counts as a refusal, a time exceeded or parameter problem as a
        failure); any other is counted and ignored
        (L{vtwisted.slirp.guesterrors}).
        """
        connection = None
        if quote is not None and quote.src == dst:
            connection = self.connections.get(
                (quote.dst, quote.dstPort, quote.src, quote.srcPort))
        if connection is None or connection.state != SYN_SENT or quote is None \
                or quote.seq != connection.iss:
            self.errorsIgnored += 1
            return
        if error.refusal:
            connection.forwardFailed(f"rejected it ({error.name})", REFUSED)
        else:
            connection.forwardFailed(f"answered it with {error.name}", FAILED)

    def resetStray(self, key: Key, header: TCPHeader, length: int) -> None:
        """
        Answer a segment for no connection with a RST (RFC 9293 3.10.7.1).
        """
        if header.flags & ACK:
            self.sendReset(key, header.ack, 0, RST)
        else:
            length += (header.flags & SYN) // SYN + (header.flags & FIN)
            self.sendReset(key, 0, (header.seq + length) & MASK, RST | ACK)

    def sendReset(self, key: Key, seq: int, ack: int, flags: int) -> None:
        """
        Send a RST (a reply to the guest's segment on C{key}) with the given
        sequence and acknowledgment numbers.
        """
        src, srcPort, dst, dstPort = key
        header = FIXED_HEADER.pack(dstPort, srcPort, seq, ack, 5 << 12 | flags, 0, 0, 0)
        headers = HEADERS6 if len(src) == 16 else HEADERS
        self.network.sendTcp(dst, src, header, b"", self.network.mtu - headers)

    # From the host.

    def forwardFactory(self, guest: bytes, guestPort: int) -> ServerFactory:
        """
        The factory for a host port forward: each accepted host connection
        is relayed to C{guest:guestPort}.
        """
        return ForwardFactory(self, guest, guestPort)

    def forwardAccepted(self, transport: Any, guest: bytes, guestPort: int) -> TcpConnection | None:
        """
        A host client connected to a forward: start the guest connection.

        @return: the connection, or L{None} if there can be none.
        """
        peer = transport.getPeer()
        remote = self.network.guestAddress(peer.host, v6=len(guest) == 16)
        key = (guest, guestPort, remote, peer.port)
        label = hostEndpoint(peer.host, peer.port)
        lingering = self.connections.get(key)
        if lingering is not None and lingering.state == TIME_WAIT:
            lingering.forget()
        if key in self.connections or len(self.connections) >= self.maxConnections:
            self.busy += 1
            self.network.dropped("busy", f"TCP forward from {label} to "
                                         f"{guestEndpoint(guest, guestPort)} refused")
            return None
        connection = TcpConnection(self, key, f"{label} (forward)")
        self.connections[key] = connection
        self.updateShare()
        self.keepAlive.watch()
        log.debug("TCP forward from {peer} to {guest}", peer=connection.hostLabel,
                  guest=guestEndpoint(guest, guestPort))
        connection.forwardAccepted(transport)
        return connection

    def forwardFailed(self, key: Key, why: str, outcome: str) -> None:
        """
        A forward's guest refused (C{outcome} L{REFUSED}), failed on an ICMP
        error (L{FAILED}) or did not answer (L{UNANSWERED}) the connection
        C{key}: count it, and log it unless that guest port's failure was
        logged since a connection to it last opened.
        """
        if outcome == REFUSED:
            self.forwardsRefused += 1
        elif outcome == FAILED:
            self.forwardsFailed += 1
        else:
            self.forwardsUnanswered += 1
        target = key[:2]
        if target in self._failingForwards or len(self._failingForwards) >= MAX_FAILING:
            return
        self._failingForwards.add(target)
        log.warn("TCP forward to {guest}: the guest {why}; host clients are reset until "
                 "it accepts one", guest=guestEndpoint(*target), why=why)

    def forwardWorked(self, key: Key) -> None:
        """
        A forward's guest accepted connection C{key}: its next failure is
        logged again.
        """
        if self._failingForwards:
            self._failingForwards.discard(key[:2])

    def neighbourUnanswered(self, address: bytes) -> None:
        """
        Guest C{address} did not answer ARP or neighbour solicitation: the
        forwards' SYNs waiting for it count one unanswered lookup (a
        sweep of the connections, at most once a second per address).
        """
        for connection in list(self.connections.values()):
            if connection.guest == address and connection.state == SYN_SENT:
                connection.neighbourUnanswered()

    # For connections.

    def ackSoon(self, connection: TcpConnection) -> None:
        """
        Have C{connection} send an ACK at the end of this reactor turn,
        unless it sends a segment before.
        """
        if connection.ackPending:
            return
        connection.ackPending = True
        self._acking.append(connection)
        if self._ackCall is None:
            self._ackCall = self.reactor.callLater(0, self._sendAcks)

    def _sendAcks(self) -> None:
        self._ackCall = None
        acking, self._acking = self._acking, []
        for connection in acking:
            connection.sendAck()

    def hostUnread(self) -> None:
        """
        A host socket closed after both sides finished was aborted, its
        peer having read nothing for
        L{vtwisted.slirp.tcpconnection.HOST_CLOSE_GRACE} seconds: counted,
        logged the first time.
        """
        self.unread += 1
        if self.unread == 1:
            log.info("slirp: a host peer read nothing for {grace:g} s of what a guest sent "
                     "before both closed: its socket aborted (slirp/print counts them as "
                     "unread; not logged again)", grace=HOST_CLOSE_GRACE)

    def forget(self, connection: TcpConnection) -> None:
        """
        Drop C{connection}'s entry (it is closed).
        """
        if self.connections.get(connection.key) is connection:
            del self.connections[connection.key]
            self.updateShare()
        connection.ackPending = False
