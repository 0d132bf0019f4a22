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
DNS proxy come from the proxy's address and port 53.

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
DNS after 10 s, or at once when the table is full and every query it sent
was answered.  Instead of a timer per datagram, traffic marks the mapping
and a sweep every L{SWEEP} seconds closes what stayed unmarked long enough.

Host port forwards (C{hostfwd=udp:...}) work the other way round: a datagram
to the forward's host socket (its own, bound where the forward says) goes to
the guest from the gateway's address and the sender's port, and the guest's
answers to that address and port go back to the sender from the forward's
socket, for as long as either side keeps using that session (one idle for
L{IDLE_SWEEPS} sweeps or more is forgotten; the table is rotated sooner
while it holds more than L{MAX_MAPPINGS}).  Forwards reach IPv4 and IPv6
guests.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from vtwisted.interfaces import IGuestNetwork
from vtwisted.slirp import hosterrors
from vtwisted.slirp.addresses import guestEndpoint, hostEndpoint, unmapped
from vtwisted.slirp.packets import SegmentRun
from vtwisted.slirp.udpforward import ForwardSocket
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
#: Errors of a send that would block: the datagram is dropped, as a full
#: queue on a real link would.
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
#: The most datagrams, and bytes, one run to a guest holds (Linux's limits
#: for a UDP super-frame).
RUN_DATAGRAMS = 64
RUN_BYTES = 65000
#: The socket option that lets the kernel cut one send into datagrams
#: (C{linux/udp.h}), and the errors saying it cannot.
UDP_SEGMENT = 103
_NO_SEGMENTS = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
_U16 = struct.Struct("=H")
#: Peers whose guest-side address a mapping remembers.
MAX_PEERS = 256
#: Why binding C{::} can fail on a host without IPv6.
_NO_IPV6 = frozenset((errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL))
#: Guest datagrams with at most this TTL (traceroute's probes) carry it,
#: less one, to the host; others leave with the host's default.
CARRIED_TTL = 32
_INT = struct.Struct("i")


class UdpMapping(DatagramProtocol):
    """
    The host socket of one guest source.

    @ivar guest: the guest's address and port.
    @ivar v6: whether the guest speaks IPv6.
    @ivar mapped: whether the socket is dual-stack (IPv4 peers written and
        read as C{::ffff:a.b.c.d}); if not, it is IPv4 only.
    @ivar proxy: the DNS proxy's address in the guest's family.
    @ivar dnsPeers: resolvers asked through the DNS proxy, as (host, port)
        with IPv4 hosts unmapped and IPv6 hosts in their short form.
    """

    noisy = False

    def __init__(self, engine: UdpNat, guest: tuple[bytes, int]) -> None:
        self.engine = engine
        self.guest = guest
        self.v6 = len(guest[0]) == 16
        network = engine.network
        self.proxy = (network.nameserver6 if self.v6 else network.nameserver) or b""
        self.mapped = False
        self.dnsPeers: set[tuple[str, int]] = set()
        #: Host-side peers to the addresses the guest sees them at.
        self.peers: dict[str, bytes] = {}
        self._sendto: Any = None
        self.active = True
        self.idle = 0
        self.onlyDns = True
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.listeningPort: Any = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.active = True
        self.received += 1
        network = self.engine.network
        host = addr[0]
        if self.mapped and host.startswith("::ffff:"):
            host = host[7:]
        guest, guestPort = self.guest
        if (host, addr[1]) in self.dnsPeers:
            self.engine.dnsAnswered = True
            self.engine.queue(self.proxy, guest, 53, guestPort, data)
            return
        src = self.peers.get(host)
        if src is None:
            if len(self.peers) >= MAX_PEERS:
                self.peers.clear()
            src = self.peers[host] = network.guestAddress(host, self.v6)
        self.engine.queue(src, guest, addr[1], guestPort, data)

    def hostErrorReceived(self, error: hosterrors.HostError) -> None:
        """
        The host got an ICMP error about one of this source's datagrams:
        send the guest the same error about the datagram it sent, from the
        guest-side address of the host or router that reported it.
        """
        self.errors += 1
        mapped = hosterrors.forGuest(error, self.v6)
        if mapped is None:
            return
        network = self.engine.network
        host, port = error.destination
        if (host, port) in self.dnsPeers:
            dst, port = self.proxy, 53
        else:
            dst = network.guestAddress(host, self.v6)
        reporter = dst if error.reporter in (None, host) \
            else network.guestAddress(error.reporter, self.v6)
        src, srcPort = self.guest
        original = hosterrors.guestDatagram(src, srcPort, dst, port, error.payload)
        network.sendIcmpError(original, *mapped, reporter)

    def _sendSegments(self, run: SegmentRun, host: tuple[str, int], packet: bytes) -> bool:
        """
        Send a run of datagrams in one system call, letting the kernel cut
        them (C{UDP_SEGMENT}, Linux 4.18 and later).

        @return: whether it was sent (or dropped for good); if not, the
            caller sends the datagrams one by one.
        """
        sock = getattr(self.transport, "socket", None)
        if sock is None:
            return False
        try:
            sock.sendmsg([run.data], [(socket.SOL_UDP, UDP_SEGMENT, _U16.pack(run.size))], 0,
                           host)
        except OSError as e:
            if e.errno in _NO_SEGMENTS:
                self.engine.segmentOffload = False
                log.info("UDP: the kernel does not segment for us ({error}); datagrams "
                         "leave one by one", error=e.strerror)
                return False
            self._sendFailed(e, host, packet)
        return True

    def _sendFailed(self, e: OSError, host: tuple[str, int], packet: bytes) -> None:
        """
        A send to C{host} failed: a full socket buffer drops the datagrams
        (counted as C{busy}); anything else is counted and answered with an
        ICMP unreachable.
        """
        network = self.engine.network
        where = f"UDP to {hostEndpoint(unmapped(host[0]), host[1])}"
        if e.errno in _BUSY:
            network.dropped("busy", f"{where}: {e.strerror}")
            return
        network.dropped("peer", f"{where}: {e.strerror} (errno {e.errno})")
        network.sendUnreachable(packet, 0)

    def addDnsPeer(self, host: tuple[str, int]) -> None:
        """
        Remember that C{host} is a resolver this source asked through the
        DNS proxy.
        """
        if ":" in host[0]:
            host = (str(ipaddress.ip_address(host[0])), host[1])
        self.dnsPeers.add(host)

    def send(self, payloads: Sequence[bytes] | SegmentRun, host: tuple[str, int],
             packet: bytes) -> None:
        """
        Send a guest's datagrams to C{host}; C{packet} is the guest's IP
        packet (of the first, if several).
        """
        self.active = True
        self.sent += len(payloads)
        address = host[0]
        if ":" in address:
            if not self.mapped:
                self.engine.network.dropped(
                    "unsupported", f"UDP to {hostEndpoint(*host)}: no IPv6 on the host")
                self.engine.network.sendUnreachable(packet, 0)
                return
        elif self.mapped:
            host = ("::ffff:" + address, host[1])
        if len(packet) >= 20:
            ttl = packet[8] if packet[0] >> 4 == 4 else packet[7]
            if ttl <= CARRIED_TTL:
                self._sendWithTtl(payloads, host, packet, max(ttl - 1, 1))
                return
        if isinstance(payloads, SegmentRun) and self.engine.segmentOffload:
            if self._sendSegments(payloads, host, packet):
                return
        sendto = self._sendto
        if sendto is None:
            # The socket itself: Twisted's write checks the address anew
            # for every datagram, which costs more than the system call.
            sock = getattr(self.transport, "socket", None)
            sendto = self._sendto = sock.sendto if sock is not None \
                else self.transport.write  # type: ignore[union-attr]
        try:
            for payload in payloads:
                sendto(payload, host)
        except OSError as e:
            self._sendFailed(e, host, packet)


    def _sendWithTtl(self, payloads: Sequence[bytes] | SegmentRun, host: tuple[str, int],
                     packet: bytes, ttl: int) -> None:
        """
        Send datagrams whose TTL the guest chose (traceroute's probes).
        """
        sock = getattr(self.transport, "socket", None)
        if sock is None:
            return
        if ":" in host[0] and not host[0].startswith("::ffff:"):
            option = (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, _INT.pack(ttl))
        else:
            option = (socket.IPPROTO_IP, socket.IP_TTL, _INT.pack(ttl))
        try:
            for payload in payloads:
                sock.sendmsg([payload], [option], 0, host)
        except OSError as e:
            self._sendFailed(e, host, packet)


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
        #: Whether a DNS answer came since the last L{reclaim}.
        self.dnsAnswered = False

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

    def _open(self, src: bytes, srcPort: int) -> UdpMapping | None:
        if len(self.mappings) >= self.maxMappings and self.dnsAnswered:
            self.reclaim()
        if len(self.mappings) >= self.maxMappings:
            self.network.dropped("busy", f"UDP: {self.maxMappings} guest sources have sockets")
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
        self._sessionSweeps += 1
        if self._sessionSweeps >= IDLE_SWEEPS or len(self.sessions) > MAX_MAPPINGS:
            # Forward sessions used since the last rotation are kept (and
            # come back to the new table when used again); the others go.
            self._sessionSweeps = 0
            self.oldSessions, self.sessions = self.sessions, {}

    def reclaim(self) -> None:
        """
        Close the mappings that only asked the DNS proxy and got as many
        answers as they sent queries, to make room in a full table: a
        resolver's query from a fresh source port each time (as glibc's)
        would otherwise fill it for 10 s with sockets nothing will use.
        """
        self.dnsAnswered = False
        for key, mapping in list(self.mappings.items()):
            if mapping.onlyDns and mapping.received >= mapping.sent:
                del self.mappings[key]
                mapping.listeningPort.stopListening()

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
        mappings, self.mappings = self.mappings, {}
        for mapping in mappings.values():
            mapping.listeningPort.stopListening()
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
