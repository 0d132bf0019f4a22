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

A mapping that carried nothing for 240 s is closed, one that only carried
DNS after 10 s.  Instead of a timer per datagram, traffic marks the mapping
and a sweep every L{SWEEP} seconds closes what stayed unmarked long enough.

Host port forwards (C{hostfwd=udp:...}) work the other way round: a datagram
to the forward's host socket goes to the guest from the gateway's address
and the sender's port, and the guest's answers to that address and port go
back to the sender from the forward's socket.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from vtwisted.interfaces import IGuestNetwork
from vtwisted.slirp.router import udpDatagram
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


class UdpMapping(DatagramProtocol):
    """
    The host socket of one guest source.

    @ivar guest: the guest's address and port.
    @ivar dnsPeers: resolvers asked through the DNS proxy.
    """

    noisy = False

    def __init__(self, engine: UdpNat, guest: tuple[bytes, int]) -> None:
        self.engine = engine
        self.guest = guest
        self.dnsPeers: set[tuple[str, int]] = set()
        self.active = True
        self.idle = 0
        self.onlyDns = True
        self.sent = 0
        self.received = 0
        self.listeningPort: Any = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.active = True
        self.received += 1
        network = self.engine.network
        peer = (addr[0], addr[1])
        if peer in self.dnsPeers:
            src, port = network.nameserver, 53
        else:
            src, port = network.guestAddress(addr[0]), addr[1]
        guest, guestPort = self.guest
        network.sendIPv4(src, guest, ipv4.PROTO_UDP,
                         udpDatagram(src, guest, port, guestPort, data))

    def send(self, payload: bytes, host: tuple[str, int], packet: bytes) -> None:
        """
        Send a guest's datagram to C{host}.
        """
        self.active = True
        self.sent += 1
        try:
            self.transport.write(payload, host)  # type: ignore[union-attr]
        except OSError as e:
            self.engine.network.dropped(
                "peer", f"UDP to {host[0]}:{host[1]}: {e.strerror} (errno {e.errno})")
            self.engine.network.sendUnreachable(packet, 0)


class ForwardSocket(DatagramProtocol):
    """
    The host socket of one UDP port forward.
    """

    noisy = False

    def __init__(self, engine: UdpNat, guest: bytes, guestPort: int) -> None:
        self.engine = engine
        self.guest = guest
        self.guestPort = guestPort

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        network = self.engine.network
        src = network.guestAddress(addr[0])
        self.engine.sessions[(self.guest, self.guestPort, src, addr[1])] = (self, addr)
        network.sendIPv4(src, self.guest, ipv4.PROTO_UDP,
                         udpDatagram(src, self.guest, addr[1], self.guestPort, data))

    def reply(self, payload: bytes, addr: Any) -> None:
        """
        Send the guest's answer back to the forward's client.
        """
        try:
            self.transport.write(payload, addr)  # type: ignore[union-attr]
        except OSError as e:
            self.engine.network.dropped(
                "peer", f"UDP forward to {addr[0]}:{addr[1]}: {e.strerror} (errno {e.errno})")


class UdpNat:
    """
    The UDP engine of one slirp port.

    @ivar mappings: guest source to its host socket.
    @ivar sessions: (guest, guest port, peer, peer port) of forwarded
        datagrams to the forward's socket and the client's address.
    """

    def __init__(self, network: IGuestNetwork, reactor: Any) -> None:
        self.network = network
        self.reactor = reactor
        self.mappings: dict[tuple[bytes, int], UdpMapping] = {}
        self.sessions: dict[tuple[bytes, int, bytes, int], tuple[ForwardSocket, Any]] = {}
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = reactor
        self._sweeper.start(SWEEP, now=False)

    def datagramReceived(self, src: bytes, srcPort: int, dst: bytes, dstPort: int,
                         payload: bytes, packet: bytes) -> None:
        """
        A guest sent C{payload} from C{src}:C{srcPort} to C{dst}:C{dstPort}.
        """
        key = (src, srcPort, dst, dstPort)
        session = self.sessions.get(key)
        if session is not None:
            if session[0].transport is not None:
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
        if dst == network.nameserver:
            mapping.dnsPeers.add(host)
        else:
            mapping.onlyDns = False
        mapping.send(payload, host, packet)

    def _open(self, src: bytes, srcPort: int) -> UdpMapping | None:
        if len(self.mappings) >= MAX_MAPPINGS:
            self.network.dropped("busy", f"UDP: {MAX_MAPPINGS} guest sources have sockets")
            return None
        mapping = UdpMapping(self, (src, srcPort))
        try:
            mapping.listeningPort = self.reactor.listenUDP(0, mapping, "", MAX_DATAGRAM)
        except Exception as e:
            self.network.dropped("busy", f"UDP: cannot open a host socket: {e}")
            return None
        self.mappings[(src, srcPort)] = mapping
        return mapping

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
        if len(self.sessions) > MAX_MAPPINGS:
            self.sessions.clear()

    def describe(self) -> list[str]:
        """
        One line per mapping, for a console.
        """
        lines = []
        for (address, port), mapping in sorted(self.mappings.items()):
            local = mapping.listeningPort.getHost().port
            guest = ".".join(str(b) for b in address)
            lines.append(f"UDP {guest}:{port} via host port {local}: "
                         f"{mapping.sent} sent, {mapping.received} received")
        return lines

    def close(self) -> None:
        """
        Close every host socket and stop sweeping.
        """
        if self._sweeper.running:
            self._sweeper.stop()
        mappings, self.mappings = self.mappings, {}
        for mapping in mappings.values():
            mapping.listeningPort.stopListening()
        self.sessions.clear()
