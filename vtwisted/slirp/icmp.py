"""
The ICMP engine of a slirp port: guests' pings to hosts beyond the gateway,
over IPv4 or (unlike libslirp) IPv6, one engine per family.

Theory of operation
-------------------
The router answers pings to the gateway and DNS addresses itself; a ping to
any other host is sent from the host, in one of two ways, as libslirp does
for IPv4:

  - an unprivileged ICMP socket (C{SOCK_DGRAM}, C{IPPROTO_ICMP}), allowed
    when C{net.ipv4.ping_group_range} covers the process's group: one per
    guest and echo identifier, since the kernel gives each socket an
    identifier of its own and matches replies to it;
  - else, with C{CAP_NET_RAW}, one raw ICMP socket shared by every guest:
    each guest's (address, identifier) gets a host identifier of its own,
    and replies are matched by peer and identifier.  A raw IPv4 socket reads
    the IP header too, a raw ICMPv6 one does not; for ICMPv6 the kernel
    computes the checksum of what is sent either way.

Either way the reply reaches the guest with the guest's own identifier, from
the address it pinged.  Which way works is found at the first ping beyond
the gateway; with neither, such pings are counted as unsupported and logged
once with what would allow them.  A session idle for two sweeps (10 s) is
forgotten.  Sockets open and close without Twisted's log lines
(L{vtwisted.slirp.hosterrors.QuietPort}), as the UDP engine's do.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any, NamedTuple

from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from vtwisted.interfaces import IGuestNetwork
from vtwisted.slirp.hosterrors import QuietPort
from vtwisted.wire import icmp, icmpv6, ipv4

#: Seconds between sweeps for idle sessions.
SWEEP = 5.0
#: Echo sessions at most (guest address and identifier pairs).
MAX_SESSIONS = 1024
_ID = struct.Struct("!H")


class Family(NamedTuple):
    """
    What differs between ICMP and ICMPv6 pings.
    """

    name: str
    domain: int
    protocol: int
    request: int
    reply: int
    rawHasIpHeader: bool


IPV4 = Family("IPv4", socket.AF_INET, socket.IPPROTO_ICMP, icmp.ECHO_REQUEST, icmp.ECHO_REPLY,
              True)
IPV6 = Family("IPv6", socket.AF_INET6, socket.IPPROTO_ICMPV6, icmpv6.ECHO_REQUEST,
              icmpv6.ECHO_REPLY, False)


class PingSocket(DatagramProtocol):
    """
    A host ICMP socket: unprivileged for one guest session, or the shared
    raw one.
    """

    noisy = False

    def __init__(self, engine: IcmpNat, session: tuple[bytes, int] | None) -> None:
        self.engine = engine
        self.session = session
        self.port: Any = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.session is None:
            hl = (data[0] & 15) * 4 if data and self.engine.family.rawHasIpHeader else 0
            self.engine.rawReplyReceived(data[hl:], addr[0])
        else:
            self.engine.replyReceived(data, addr[0], self.session)


class IcmpNat:
    """
    The ICMP engine of one slirp port.

    @ivar mode: C{"ping"}, C{"raw"}, C{"none"}, or L{None} before the first ping.
    @ivar sessions: guest (address, identifier) to its ping socket (ping
        mode) or host identifier (raw mode).
    """

    def __init__(self, network: IGuestNetwork, reactor: Any, family: Family = IPV4) -> None:
        self.network = network
        self.reactor = reactor
        self.family = family
        self.mode: str | None = None
        self.sessions: dict[tuple[bytes, int], Any] = {}
        #: Sessions at most (the port lowers it under a small descriptor limit).
        self.maxSessions = MAX_SESSIONS
        self._hostIds: dict[int, tuple[bytes, int]] = {}
        self._active: set[tuple[bytes, int]] = set()
        self._idle: set[tuple[bytes, int]] = set()
        self._raw: PingSocket | None = None
        self._nextId = int.from_bytes(os.urandom(2), "big")
        self.sent = 0
        self.answered = 0
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = reactor
        self._sweeper.start(SWEEP, now=False)

    def echoRequest(self, src: bytes, dst: bytes, ident: int, sequence: int,
                    data: bytes) -> None:
        """
        A guest at C{src} pings C{dst}, beyond the gateway, with echo
        identifier C{ident}, C{sequence} number and C{data}.
        """
        mode = self.mode or self._chooseMode()
        if mode == "none":
            return
        key = (src, ident)
        host = socket.inet_ntop(self.family.domain, dst)
        session = self.sessions.get(key)
        if session is None:
            session = self._open(key)
            if session is None:
                return
        self._active.add(key)
        if mode == "ping":
            transport = session.port
        else:
            ident = session
            assert self._raw is not None
            transport = self._raw.port
        request = self._echo(self.family.request, ident, sequence, data)
        try:
            transport.write(request, (host, 0))
            self.sent += 1
        except OSError as e:
            self.network.dropped("peer", f"ping to {host}: {e.strerror} (errno {e.errno})")

    def _echo(self, kind: int, ident: int, sequence: int, data: bytes) -> bytes:
        rest = _ID.pack(ident) + _ID.pack(sequence)
        if self.family is IPV6:
            # no checksum: the kernel computes ICMPv6 checksums itself
            return bytes((kind, 0, 0, 0)) + rest + data
        return icmp.ICMPMessage(kind, 0, 0, rest, data).pack()

    def _chooseMode(self) -> str:
        family = self.family
        for kind, mode in ((socket.SOCK_DGRAM, "ping"), (socket.SOCK_RAW, "raw")):
            try:
                probe = socket.socket(family.domain, kind, family.protocol)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT):
                    raise
                continue
            probe.close()
            self.mode = mode
            return mode
        self.mode = "none"
        self.network.dropped(
            "unsupported", f"{family.name} pings beyond the gateway need ping sockets "
            f"(sysctl net.ipv4.ping_group_range covering group {os.getgid()}) or CAP_NET_RAW")
        return "none"

    def _open(self, key: tuple[bytes, int]) -> Any:
        if len(self.sessions) >= self.maxSessions:
            self.network.dropped("busy", f"ICMP: {self.maxSessions} ping sessions are open")
            return None
        if self.mode == "ping":
            session: Any = self._adopt(socket.SOCK_DGRAM, key)
        else:
            if self._raw is None:
                self._raw = self._adopt(socket.SOCK_RAW, None)
            session = self._freeId()
            self._hostIds[session] = key
        self.sessions[key] = session
        return session

    def _adopt(self, kind: int, key: tuple[bytes, int] | None) -> PingSocket:
        domain = self.family.domain
        sock = socket.socket(domain, kind, self.family.protocol)
        sock.setblocking(False)
        protocol = PingSocket(self, key)
        try:
            protocol.port = QuietPort.adopt(self.reactor, sock, protocol, 65535)
        finally:
            sock.close()
        return protocol

    def _freeId(self) -> int:
        while True:
            self._nextId = (self._nextId + 1) & 0xFFFF
            if self._nextId not in self._hostIds:
                return self._nextId

    def replyReceived(self, data: bytes, host: str, session: tuple[bytes, int]) -> None:
        """
        An unprivileged socket read an ICMP message from C{host}.
        """
        self._deliver(data, host, session)

    def rawReplyReceived(self, data: bytes, host: str) -> None:
        """
        The raw socket read an ICMP message from C{host} (any, not only ours).
        """
        if len(data) < 8 or data[0] != self.family.reply:
            return
        session = self._hostIds.get(_ID.unpack_from(data, 4)[0])
        if session is not None:
            self._deliver(data, host, session)

    def _deliver(self, data: bytes, host: str, session: tuple[bytes, int]) -> None:
        if len(data) < 8 or data[0] != self.family.reply:
            return
        guest, ident = session
        self._active.add(session)
        self.answered += 1
        sequence = _ID.unpack_from(data, 6)[0]
        peer = socket.inet_pton(self.family.domain, host.split("%")[0])
        if self.family is IPV6:
            message = icmpv6.ICMPv6Message(icmpv6.ECHO_REPLY, 0, 0,
                                           _ID.pack(ident) + data[6:]).pack(peer, guest)
            self.network.sendIP(peer, guest, icmpv6.NEXT_HEADER, message)
        else:
            message = self._echo(icmp.ECHO_REPLY, ident, sequence, data[8:])
            self.network.sendIP(peer, guest, ipv4.PROTO_ICMP, message)

    def sweep(self) -> None:
        """
        Forget sessions idle for a whole sweep period.
        """
        for key in self._idle - self._active:
            self._close(key)
        self._idle = set(self.sessions)
        self._active.clear()

    def _close(self, key: tuple[bytes, int]) -> None:
        session = self.sessions.pop(key, None)
        if isinstance(session, PingSocket):
            session.port.stopListening()
        elif session is not None:
            self._hostIds.pop(session, None)

    def describe(self) -> list[str]:
        """
        One line for a console.
        """
        if self.mode is None:
            return []
        if self.mode == "none":
            return [f"{self.family.name} pings beyond the gateway: not relayed "
                    "(neither ping sockets nor CAP_NET_RAW)"]
        return [f"{self.family.name} pings by {self.mode} socket: {len(self.sessions)} sessions, "
                f"{self.sent} pings sent, {self.answered} answered"]

    def close(self) -> None:
        """
        Close every socket and stop sweeping.
        """
        if self._sweeper.running:
            self._sweeper.stop()
        for key in list(self.sessions):
            self._close(key)
        if self._raw is not None:
            self._raw.port.stopListening()
            self._raw = None
