"""
The UDP engine of a slirp port: guests' datagrams become host datagrams.

Theory of operation
-------------------
Like libslirp, the engine gives each guest source (address and port) one
host UDP socket of its own, bound to an ephemeral port, and sends each of
that source's datagrams from it to wherever the router maps the destination
(the gateway is the host's loopback, the DNS proxy's port 53 the host's
resolver).  Whatever comes back to that socket, from any sender, goes to the
guest source as a datagram from the sender's guest-side address: an
endpoint-independent ("full cone") mapping, which is what games, STUN and
DNS clients expect.  Answers from a resolver the source asked through the
DNS proxy come from the proxy's address and port 53.  That socket and what
it does per datagram are L{vtwisted.slirp.udpmapping}.

Guests speak IPv4 or IPv6 (4- or 16-byte addresses), and the host side of
either may be of either family: an IPv6 guest's DNS proxy may lead to an
IPv4 resolver.  So the host sockets are dual-stack, bound to C{::} (Linux's
default C{bindv6only=0} lets them reach IPv4 too): an IPv4 destination is
written as C{::ffff:a.b.c.d} and an IPv4 sender is read back from that
form.  An IPv6 guest hears from the IPv6 gateway (for the host's loopback)
and the IPv6 DNS proxy, whatever the family of the host peer.  On a host
without IPv6 (or with C{bindv6only=1}) the sockets fall back to IPv4 and
IPv6 destinations are dropped as C{unsupported}.

A run of one flow's datagrams that a TAP merged into a UDP super-frame
(USO) leaves in one C{sendmsg} with C{UDP_SEGMENT}: the kernel cuts it back
into the same datagrams (if it cannot, the engine says so once and sends
them one by one from then on).  Datagrams for guests are sent at the end
of the reactor turn that read them: a run of one flow's datagrams of one
length then leaves in one UDP super-frame (USO), one write to the guest's
TAP instead of one per datagram.

Each host socket keeps the ICMP errors about its datagrams (port
unreachable, time exceeded...) and the engine relays them to the guest
about its own datagram (L{vtwisted.slirp.hosterrors}); a guest datagram
with a small TTL (traceroute's probes) leaves the host with one less, so
the routers beyond answer as they would to the guest.

A mapping that carried nothing for 240 s is closed, one that only carried
DNS after 10 s.  Instead of a timer per datagram, traffic marks the mapping
and a sweep every L{SWEEP} seconds closes what stayed unmarked long enough.
A new guest source that finds the table full (L{MAX_MAPPINGS}, or fewer
under a small descriptor limit) takes the place of the least useful
mapping, as Linux conntrack's C{early_drop} makes room: first one whose
DNS queries were all answered, then one never answered (a one-shot flow,
or a query given up on), then one with a single exchange, and only then a
stream (answered, and sending again); within each, the one idle for the
most sweeps, then the one not marked since the last sweep, then the
oldest.  So a burst of one-shot flows pushes out its own kind, not a busy
stream, and a new flow, DNS included, is never refused for want of room
(L{vtwisted.slirp.udptable}, which keeps the datagram path as it was: the
work is done only when a full table takes a new source).

Host port forwards (C{hostfwd=udp:...}) work the other way round: a datagram
to the forward's host socket (its own, bound where the forward says) goes to
the guest from the gateway's address and the sender's port, and the guest's
answers to that address and port go back to the sender from the forward's
socket, for as long as either side keeps using that session (one idle for
L{IDLE_SWEEPS} sweeps or more is forgotten; the table is rotated sooner
while it holds more than L{MAX_MAPPINGS}).  Forwards reach IPv4 and IPv6
guests.  A guest's ICMP error about a forward's datagram (port
unreachable...) is counted and logged on the forward, whose clients cannot
be told (L{vtwisted.slirp.udpforward}); one about a datagram a mapping
relayed is counted as ignored.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from vtwisted.interfaces import IGuestNetwork
from vtwisted.slirp import hosterrors
from vtwisted.slirp.addresses import guestEndpoint
from vtwisted.slirp.guesterrors import GuestError, Quote
from vtwisted.slirp.packets import SegmentRun
from vtwisted.slirp.udpforward import ForwardSocket
from vtwisted.slirp.udpmapping import UdpMapping
from vtwisted.slirp.udptable import EvictionOrder
from vtwisted.wire import ipv4

log = Logger()

#: Seconds between two sweeps for idle mappings.
SWEEP = 5.0
#: Sweeps a mapping may stay idle: 240 s, and 10 s for DNS only.
IDLE_SWEEPS = 48
DNS_IDLE_SWEEPS = 2
#: Host sockets at most, one per guest source.
MAX_MAPPINGS = 1024
#: The largest datagram read from a host socket.
MAX_DATAGRAM = 65535
#: The most datagrams, and bytes, one run to a guest holds (Linux's limits
#: for a UDP super-frame).
RUN_DATAGRAMS = 64
RUN_BYTES = 65000
#: Why binding C{::} can fail on a host without IPv6.
_NO_IPV6 = frozenset((errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL))


class UdpNat:
    """
    The UDP engine of one slirp port.

    @ivar mappings: guest source to its host socket.
    @ivar sessions: (guest, guest port, peer, peer port) of forwarded
        datagrams to the forward's socket and the client's address.
    @ivar dualStack: whether host sockets are bound to C{::} and reach both
        families (L{None} until the first one is opened).
    """

    def __init__(self, network: IGuestNetwork, reactor: Any) -> None:
        self.network = network
        self.reactor = reactor
        self.mappings: dict[tuple[bytes, int], UdpMapping] = {}
        self.sessions: dict[tuple[bytes, int, bytes, int], tuple[ForwardSocket, Any]] = {}
        #: The sessions of the sweeps before the last rotation (see L{sweep}).
        self.oldSessions: dict[tuple[bytes, int, bytes, int], tuple[ForwardSocket, Any]] = {}
        self._sessionSweeps = 0
        self.dualStack: bool | None = None
        #: Host sockets at most (the port lowers it under a small descriptor limit).
        self.maxMappings = MAX_MAPPINGS
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = reactor
        self._sweeper.start(SWEEP, now=False)
        self._outgoing: list[tuple[bytes, bytes, int, int, bytes]] = []
        #: Whether the kernel cuts runs of datagrams for us (C{UDP_SEGMENT}).
        self.segmentOffload = True
        self._flushCall: Any = None
        #: Which mapping a full table gives up for a new guest source.
        self.eviction = EvictionOrder(self.mappings)
        #: Whether the table was ever full (that is logged once).
        self.filled = False
        #: ICMP errors from guests about UDP that no forward sent (L{errorReceived}).
        self.errorsIgnored = 0

    def queue(self, src: bytes, dst: bytes, srcPort: int, dstPort: int, data: bytes) -> None:
        """
        Send a datagram to a guest once this reactor turn's reads are done,
        so that a run of one flow's datagrams can leave in one USO packet.
        """
        self._outgoing.append((src, dst, srcPort, dstPort, data))
        if self._flushCall is None:
            self._flushCall = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Send what L{queue} collected: each run of one flow's datagrams of one
        length (the last may be shorter) in one L{IGuestNetwork.sendUdpRun}.
        """
        self._flushCall = None
        items, self._outgoing = self._outgoing, []
        send = self.network.sendUdpRun
        run: list[bytes] = []
        key: tuple[bytes, bytes, int, int] = (b"", b"", 0, 0)
        size = room = 0
        for src, dst, srcPort, dstPort, data in items:
            if (run and (src, dst, srcPort, dstPort) == key and len(run[-1]) == size
                    and len(data) <= min(size, room) and len(run) < RUN_DATAGRAMS):
                run.append(data)
                room -= len(data)
                continue
            if run:
                send(*key, run)
            key, run = (src, dst, srcPort, dstPort), [data]
            size, room = len(data), RUN_BYTES - len(data)
        if run:
            send(*key, run)

    def datagramReceived(self, src: bytes, srcPort: int, dst: bytes, dstPort: int,
                         payload: bytes, packet: bytes) -> None:
        """
        A guest sent C{payload} from C{src}:C{srcPort} to C{dst}:C{dstPort}
        (4-byte IPv4 or 16-byte IPv6 addresses); C{packet} is the whole IP
        packet, for an ICMP error.
        """
        self.datagramsReceived(src, srcPort, dst, dstPort, (payload,), packet)

    def datagramsReceived(self, src: bytes, srcPort: int, dst: bytes, dstPort: int,
                          payloads: Sequence[bytes] | SegmentRun, packet: bytes) -> None:
        """
        L{datagramReceived} for several datagrams of one flow (those of a
        USO packet), looked up once.
        """
        key = (src, srcPort, dst, dstPort)
        session = self.sessions.get(key)
        if session is None and self.oldSessions:
            session = self.oldSessions.pop(key, None)
            if session is not None:
                self.sessions[key] = session
        if session is not None:
            if session[0].transport is not None:
                session[0].answered()
                for payload in payloads:
                    session[0].reply(payload, session[1])
                return
            # Its forward was removed: the answer is one more datagram to
            # the host, as in libslirp.
            del self.sessions[key]
        network = self.network
        host = network.hostAddress(dst, dstPort, ipv4.PROTO_UDP)
        if host is None:
            if not network.restricted:
                network.sendUnreachable(packet, 0)
            return
        mapping = self.mappings.get((src, srcPort))
        if mapping is None:
            mapping = self._open(src, srcPort)
            if mapping is None:
                return
        if dst == (network.nameserver6 if len(dst) == 16 else network.nameserver):
            mapping.addDnsPeer(host)
        else:
            mapping.onlyDns = False
        mapping.send(payloads, host, packet)

    def errorReceived(self, dst: bytes, quote: Quote, error: GuestError) -> None:
        """
        A guest sent C{dst} an ICMP or ICMPv6 C{error} quoting the UDP
        datagram C{quote}: if that is a datagram a host forward sent it (its
        addresses and ports a live session's, sent from C{dst}), the
        forward counts and logs it; any other is counted and ignored
        (L{vtwisted.slirp.guesterrors}).
        """
        key = (quote.dst, quote.dstPort, quote.src, quote.srcPort)
        session = self.sessions.get(key) or self.oldSessions.get(key)
        if session is None or quote.src != dst or session[0].transport is None:
            self.errorsIgnored += 1
            return
        session[0].errorReceived(error, quote.dstPort, session[1])

    def _open(self, src: bytes, srcPort: int) -> UdpMapping | None:
        if len(self.mappings) >= self.maxMappings:
            self._makeRoom()
            if len(self.mappings) >= self.maxMappings:
                self.network.dropped("busy", f"UDP: room for {self.maxMappings} guest sources")
                return None
        try:
            mapping = self._listen((src, srcPort))
        except Exception as e:
            self.network.dropped("busy", f"UDP: cannot open a host socket: {e}")
            return None
        self.mappings[(src, srcPort)] = mapping
        return mapping

    def _listen(self, guest: tuple[bytes, int]) -> UdpMapping:
        """
        A mapping for C{guest} with its host socket: dual-stack if the host
        allows, else IPv4 (and then for good).
        """
        mapping = UdpMapping(self, guest)
        if self.dualStack is False:
            mapping.listeningPort = self._listenUDP(mapping, "")
            return mapping
        try:
            port = self._listenUDP(mapping, "::")
        except CannotListenError as e:
            if getattr(e.socketError, "errno", None) not in _NO_IPV6:
                raise
            reason = f"cannot bind [::]: {e.socketError}"
        else:
            if self.dualStack or not _v6only(port):
                self.dualStack = mapping.mapped = True
                mapping.listeningPort = port
                return mapping
            port.stopListening()
            reason = "IPv6 sockets take no IPv4 here (bindv6only=1)"
        # A fresh protocol: the one of a stopped port loses its transport.
        mapping = UdpMapping(self, guest)
        mapping.listeningPort = self._listenUDP(mapping, "")
        self.dualStack = False
        log.warn("slirp UDP: {reason}; host sockets are IPv4 only, IPv6 destinations "
                 "are dropped", reason=reason)
        return mapping

    def _listenUDP(self, mapping: UdpMapping, interface: str) -> Any:
        """
        A host socket on an ephemeral port that keeps ICMP errors, where the
        reactor is a real one (tests give fakes their own C{listenUDP}).
        """
        if not isinstance(self.reactor, PosixReactorBase):
            return self.reactor.listenUDP(0, mapping, interface, MAX_DATAGRAM)
        port = hosterrors.ErrorQueuePort(0, mapping, interface, MAX_DATAGRAM, self.reactor)
        port.startListening()
        return port

    def forwardSocket(self, guest: bytes, guestPort: int) -> ForwardSocket:
        """
        The protocol for a UDP forward's host socket.
        """
        return ForwardSocket(self, guest, guestPort)

    def sweep(self) -> None:
        """
        Close mappings that stayed idle too long.
        """
        for key, mapping in list(self.mappings.items()):
            if mapping.active:
                mapping.active = False
                mapping.idle = 0
                continue
            mapping.idle += 1
            if mapping.idle >= (DNS_IDLE_SWEEPS if mapping.onlyDns else IDLE_SWEEPS):
                del self.mappings[key]
                mapping.listeningPort.stopListening()
        self.eviction.forget()
        self._sessionSweeps += 1
        if self._sessionSweeps >= IDLE_SWEEPS or len(self.sessions) > MAX_MAPPINGS:
            # Forward sessions used since the last rotation are kept (and
            # come back to the new table when used again); the others go.
            self._sessionSweeps = 0
            self.oldSessions, self.sessions = self.sessions, {}

    def _makeRoom(self) -> None:
        """
        The table is full: close mappings, the least worth keeping first
        (L{vtwisted.slirp.udptable}), until a new one fits.
        """
        if not self.filled:
            self.filled = True
            log.warn("slirp UDP: all {cap} host sockets are in use; from now on each new "
                     "guest source takes the place of the mapping least worth keeping (an "
                     "answered DNS lookup, then one never answered, then the longest idle), "
                     "counted as evicted in slirp/print", cap=self.maxMappings)
        while len(self.mappings) >= self.maxMappings:
            mapping = self.eviction.evictOne()
            if mapping is None:
                return
            mapping.listeningPort.stopListening()

    def summary(self) -> str:
        """
        The table's use and what the engine ignored, in one line for a console.
        """
        return (f"UDP: {len(self.mappings)} of {self.maxMappings} host sockets in use, "
                f"{self.eviction.evicted} evicted for new guest sources; "
                f"{self.errorsIgnored} ICMP errors from guests ignored (about no forward's "
                "datagram)")

    def describe(self) -> list[str]:
        """
        One line per mapping, for a console.
        """
        lines = []
        for (address, port), mapping in sorted(self.mappings.items()):
            local = mapping.listeningPort.getHost().port
            guest = guestEndpoint(address, port)
            lines.append(f"UDP {guest} via host port {local}: "
                         f"{mapping.sent} sent, {mapping.received} received, "
                         f"{mapping.errors} ICMP errors")
        return lines

    def close(self) -> None:
        """
        Close every host socket and stop sweeping.
        """
        if self._sweeper.running:
            self._sweeper.stop()
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall, self._outgoing = None, []
        for mapping in self.mappings.values():
            mapping.listeningPort.stopListening()
        self.mappings.clear()
        self.eviction.forget()
        self.sessions.clear()
        self.oldSessions.clear()


def _v6only(port: Any) -> bool:
    """
    Whether the IPv6 socket of C{port} (a Twisted UDP port, or a fake
    without a socket) refuses IPv4.
    """
    sock = getattr(port, "socket", None)
    if not isinstance(sock, socket.socket):
        return False
    try:
        return bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    except OSError:
        return False
