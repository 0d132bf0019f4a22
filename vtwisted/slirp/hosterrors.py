"""
ICMP errors that reach the slirp port's host UDP sockets, relayed to guests.

Theory of operation
-------------------
A guest's datagram leaves the host from an ordinary UDP socket; when the
destination port is closed, or a router on the way drops the datagram
(time exceeded: the guest runs traceroute), the ICMP error comes back to
the host, not to the guest.  With C{IP_RECVERR} (C{IPV6_RECVERR} on a
dual-stack socket) Linux keeps such errors in the socket's I{error queue}:
the payload of the datagram that failed, the address it was sent to, and a
C{sock_extended_err} record with the ICMP type and code and the address of
the router that reported it.  L{ErrorQueuePort} reads that queue and hands
each L{HostError} to its protocol's C{hostErrorReceived}; the UDP engine
turns it into the same ICMP error, about the guest's own datagram, from the
guest-side address of whoever reported it.  libslirp relays these errors
too; it cannot show the routers along the way, which the guest's TTL,
carried to the host datagram, makes possible here.

An error queue alone makes the socket report C{EPOLLERR} without
C{EPOLLIN}, which Twisted's poll reactors take for a lost connection: they
stop reading it and call C{readConnectionLost} if the descriptor can be
half-closed.  L{ErrorQueuePort} is such a descriptor: it drains the queue
there and starts reading again, so the socket stays open.

An error reported in the other family than the guest's (an IPv4 guest
asking an IPv6 resolver through the DNS proxy) is translated as a NAT64
translator would (RFC 7915): port unreachable stays port unreachable, a
packet too big becomes fragmentation needed with 20 bytes less, and so on.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from twisted.internet import udp
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.slirp.addresses import unmapped
from vtwisted.slirp.packets import udpDatagram
from vtwisted.wire import ipv4, ipv6

log = Logger()

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
#: C{sock_extended_err.ee_origin} of errors from ICMP and ICMPv6.
ORIGIN_ICMP = 2
ORIGIN_ICMP6 = 3
_EXTENDED = struct.Struct("=IBBBBII")
_FAMILY = struct.Struct("=H")
#: The most errors drained at once.
DRAIN = 64

#: ICMPv4 (type, code) to ICMPv6 (type, code); a missing code means any.
_TO_V6 = {
    (3, 0): (1, 0), (3, 1): (1, 3), (3, 3): (1, 4), (3, 4): (2, 0),
    (3, 9): (1, 1), (3, 10): (1, 1), (3, 13): (1, 1),
    (11, 0): (3, 0), (11, 1): (3, 1),
}
_TO_V4 = {
    (1, 0): (3, 0), (1, 1): (3, 13), (1, 3): (3, 1), (1, 4): (3, 3),
    (2, 0): (3, 4), (3, 0): (11, 0), (3, 1): (11, 1),
}


@dataclass(frozen=True)
class HostError:
    """
    One ICMP error about a datagram a host socket sent.

    @ivar destination: where the datagram went (host, port); an IPv4 host
        in dotted form even on a dual-stack socket.
    @ivar payload: the datagram's payload, as sent.
    @ivar family: 4 if the error came as ICMP, 6 if as ICMPv6.
    @ivar info: the next-hop MTU of a "too big" error.
    @ivar reporter: the address of the host or router that sent the error.
    """

    destination: tuple[str, int]
    payload: bytes
    family: int
    type: int
    code: int
    info: int
    reporter: str | None


def parseError(payload: bytes, ancillary: list[tuple[int, int, bytes]],
               address: Any) -> HostError | None:
    """
    The L{HostError} in one C{recvmsg(MSG_ERRQUEUE)} result, or L{None} for
    errors that did not come from ICMP (the host's own, such as C{EMSGSIZE}).
    """
    for level, kind, data in ancillary:
        if (level, kind) not in ((socket.IPPROTO_IP, IP_RECVERR),
                                 (socket.IPPROTO_IPV6, IPV6_RECVERR)):
            continue
        if len(data) < _EXTENDED.size or not address:
            return None
        _, origin, kind_, code, _, info, _ = _EXTENDED.unpack_from(data)
        if origin not in (ORIGIN_ICMP, ORIGIN_ICMP6):
            return None
        return HostError((unmapped(address[0]), address[1]), payload,
                         4 if origin == ORIGIN_ICMP else 6, kind_, code, info,
                         _sockaddrHost(data[_EXTENDED.size:]))
    return None


def _sockaddrHost(raw: bytes) -> str | None:
    """
    The address in a C{struct sockaddr} (C{SO_EE_OFFENDER}).
    """
    if len(raw) < 8:
        return None
    family = _FAMILY.unpack_from(raw)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6 and len(raw) >= 24:
        return unmapped(socket.inet_ntop(socket.AF_INET6, raw[8:24]))
    return None


def forGuest(error: HostError, v6: bool) -> tuple[int, int, int] | None:
    """
    The ICMP (or, for an IPv6 guest, ICMPv6) type, code and MTU that tell
    the guest about C{error}; L{None} if it has no counterpart there.
    """
    mtu = error.info
    if (error.family == 6) == v6:
        return error.type, error.code, mtu
    table = _TO_V6 if v6 else _TO_V4
    mapped = table.get((error.type, error.code))
    if mapped is None:
        return None
    if mapped in ((2, 0), (3, 4)):
        mtu = mtu + 20 if v6 else max(mtu - 20, 68)
    return mapped[0], mapped[1], mtu


def guestDatagram(src: bytes, srcPort: int, dst: bytes, dstPort: int, payload: bytes) -> bytes:
    """
    The guest's datagram an error is about, as the guest sent it (but for
    the TTL and identification, which it does not need to match), for the
    error to quote.
    """
    datagram = udpDatagram(src, dst, srcPort, dstPort, payload[:512])
    if len(src) == 16:
        header = ipv6.IPv6Header(0, 0, len(datagram), ipv4.PROTO_UDP, 64, src, dst)
        return header.pack() + datagram
    return ipv4.packPlainHeader(0, src, dst, ipv4.PROTO_UDP, 20 + len(datagram), 64,
                                0x4000) + datagram


def enableErrorQueue(sock: socket.socket) -> None:
    """
    Ask the kernel to keep ICMP errors about C{sock}'s datagrams.
    """
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)


class QuietPort(udp.Port):
    """
    A Twisted datagram port without the lines Twisted logs when it starts
    and closes: a slirp port opens one host socket per guest source (every
    DNS lookup from a fresh port) and per guest's ping session, which would
    be two log lines each.
    """

    @classmethod
    def adopt(cls, reactor: Any, sock: socket.socket, protocol: Any,
              maxPacketSize: int) -> QuietPort:
        """
        Start a port on a copy of C{sock} (a datagram, ICMP or raw socket),
        as the reactor's C{adoptDatagramPort} does; the caller closes C{sock}.
        """
        port = cls._fromListeningDescriptor(reactor, sock.fileno(), sock.family, protocol,
                                            maxPacketSize)
        port.startListening()
        return port

    def _bindSocket(self) -> None:
        """
        Bind (or adopt) as Twisted's port does, without its "starting on" line.
        """
        with _withoutLogLines():
            super()._bindSocket()

    def connectionLost(self, reason: Any = None) -> None:
        """
        Close as Twisted's port does, without its "(UDP Port N Closed)" line.
        """
        with _withoutLogLines():
            super().connectionLost(reason)


@implementer(IHalfCloseableDescriptor)
class ErrorQueuePort(QuietPort):
    """
    A Twisted UDP port that also reads its socket's error queue and gives
    each error to C{protocol.hostErrorReceived(error)}.
    """

    def startListening(self) -> None:
        super().startListening()
        enableErrorQueue(self.socket)

    def doRead(self) -> None:
        """
        Read datagrams as Twisted's port does; a pending error, reported by
        C{recvfrom}, sends us to the error queue instead of closing.
        """
        sock, protocol, size = self.socket, self.protocol, self.maxPacketSize
        read = errors = 0
        while read < self.maxThroughput and errors < DRAIN:
            try:
                data, addr = sock.recvfrom(size)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                errors += 1
                self.drainErrors()
                continue
            read += len(data)
            try:
                protocol.datagramReceived(data, addr[:2])
            except Exception:
                log.failure("slirp UDP: a host datagram could not be handled")

    def readConnectionLost(self, reason: Any) -> None:
        """
        The reactor saw only an error condition: errors wait in the queue,
        the socket is fine.  Read them and go on reading.
        """
        self.drainErrors()
        if self.connected:
            self.startReading()

    def writeConnectionLost(self, reason: Any) -> None:
        """
        Nothing to do: datagrams are never queued for writing.
        """

    def drainErrors(self) -> None:
        """
        Hand every queued error to the protocol.
        """
        handler = getattr(self.protocol, "hostErrorReceived", None)
        for _ in range(DRAIN):
            try:
                payload, ancillary, _, address = self.socket.recvmsg(
                    self.maxPacketSize, 512, socket.MSG_ERRQUEUE)
            except OSError:
                return
            error = parseError(payload, ancillary, address)
            if error is not None and handler is not None:
                try:
                    handler(error)
                except Exception:
                    log.failure("slirp UDP: an ICMP error could not be relayed")


class _Silent:
    """
    Stands in for L{twisted.python.log} in L{twisted.internet.udp} while a
    port binds or closes: Twisted's lines for those go nowhere.
    """

    @staticmethod
    def msg(*args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def _withoutLogLines() -> Iterator[None]:
    """
    Run a L{udp.Port} method without the lines it logs (it logs through
    the module's C{log}, with no switch to turn them off).
    """
    saved = udp.log
    udp.log = _Silent  # type: ignore[assignment]
    try:
        yield
    finally:
        udp.log = saved
