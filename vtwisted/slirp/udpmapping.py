"""
The host socket of one guest source of a slirp port's UDP engine
(L{vtwisted.slirp.udp}).

Theory of operation: a L{UdpMapping} is the Twisted datagram protocol of
one host UDP socket.  What arrives on it, from any sender, is queued to the
guest source as a datagram from the sender's guest-side address (or from
the DNS proxy, for a resolver the source asked through it).  What the guest
source sends leaves from it: a run of datagrams a TAP merged (USO) in one
C{sendmsg} with C{UDP_SEGMENT}, a probe with a small TTL (traceroute's)
with one less, anything else with plain C{sendto}.  A send that would
block drops the datagrams (C{busy}); other failures are counted and
answered with ICMP unreachable.  ICMP errors the host got about the
source's datagrams (L{vtwisted.slirp.hosterrors}) go to the guest about
its own datagram.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from vtwisted.slirp import hosterrors
from vtwisted.slirp.addresses import hostEndpoint, unmapped
from vtwisted.slirp.packets import SegmentRun

if TYPE_CHECKING:
    from vtwisted.slirp.udp import UdpNat

log = Logger()

#: Errors of a send that would block: the datagram is dropped, as a full
#: queue on a real link would.
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
#: The socket option that lets the kernel cut one send into datagrams
#: (C{linux/udp.h}), and the errors saying it cannot.
UDP_SEGMENT = 103
_NO_SEGMENTS = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
_U16 = struct.Struct("=H")
#: Peers whose guest-side address a mapping remembers.
MAX_PEERS = 256
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
