"""
The ICMP engine of a slirp port: guests' pings to hosts beyond the gateway.

Theory of operation
-------------------
The router answers pings to the gateway and DNS addresses itself; a ping to
any other host is sent from the host, in one of two ways, as libslirp does:

  - an unprivileged ICMP socket (C{SOCK_DGRAM}, C{IPPROTO_ICMP}), allowed
    when C{net.ipv4.ping_group_range} covers the process's group: one per
    guest and echo identifier, since the kernel gives each socket an
    identifier of its own and matches replies to it;
  - else, with C{CAP_NET_RAW}, one raw ICMP socket shared by every guest:
    each guest's (address, identifier) gets a host identifier of its own,
    and replies are matched by peer and identifier.

Either way the reply reaches the guest with the guest's own identifier, from
the address it pinged.  Which way works is found at the first ping beyond
the gateway; with neither, such pings are counted as unsupported and logged
once with what would allow them.  A session idle for two sweeps (10 s) is
forgotten.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from vtwisted.interfaces import IGuestNetwork
from vtwisted.wire import icmp, ipv4

#: Seconds between sweeps for idle sessions.
SWEEP = 5.0
#: Echo sessions at most (guest address and identifier pairs).
MAX_SESSIONS = 1024
_ID = struct.Struct("!H")


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
            hl = (data[0] & 15) * 4 if data else 0
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

    def __init__(self, network: IGuestNetwork, reactor: Any) -> None:
        self.network = network
        self.reactor = reactor
        self.mode: str | None = None
        self.sessions: dict[tuple[bytes, int], Any] = {}
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

    def echoRequest(self, src: bytes, dst: bytes, message: icmp.ICMPMessage) -> None:
        """
        A guest at C{src} pings C{dst}, beyond the gateway.
        """
        mode = self.mode or self._chooseMode()
        if mode == "none":
            return
        ident = _ID.unpack(message.rest[:2])[0]
        key = (src, ident)
        host = socket.inet_ntoa(dst)
        session = self.sessions.get(key)
        if session is None:
            session = self._open(key)
            if session is None:
                return
        self._active.add(key)
        if mode == "ping":
            data, transport = message.pack(), session.port
        else:
            data = message._replace(rest=_ID.pack(session) + message.rest[2:]).pack()
            assert self._raw is not None
            transport = self._raw.port
        try:
            transport.write(data, (host, 0))
            self.sent += 1
        except OSError as e:
            self.network.dropped("peer", f"ping to {host}: {e.strerror} (errno {e.errno})")

    def _chooseMode(self) -> str:
        for kind, mode in ((socket.SOCK_DGRAM, "ping"), (socket.SOCK_RAW, "raw")):
            try:
                probe = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT):
                    raise
                continue
            probe.close()
            self.mode = mode
            return mode
        self.mode = "none"
        self.network.dropped(
            "unsupported", f"pings beyond the gateway need ping sockets "
            f"(sysctl net.ipv4.ping_group_range covering group {os.getgid()}) or CAP_NET_RAW")
        return "none"

    def _open(self, key: tuple[bytes, int]) -> Any:
        if len(self.sessions) >= MAX_SESSIONS:
            self.network.dropped("busy", f"ICMP: {MAX_SESSIONS} ping sessions are open")
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
        sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
        sock.setblocking(False)
        protocol = PingSocket(self, key)
        try:
            protocol.port = self.reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET,
                                                           protocol, 65535)
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
        if len(data) < 8 or data[0] != icmp.ECHO_REPLY:
            return
        session = self._hostIds.get(_ID.unpack_from(data, 4)[0])
        if session is not None:
            self._deliver(data, host, session)

    def _deliver(self, data: bytes, host: str, session: tuple[bytes, int]) -> None:
        try:
            message = icmp.ICMPMessage.parse(data)
        except icmp.ICMPError:
            return
        if message.type != icmp.ECHO_REPLY:
            return
        guest, ident = session
        self._active.add(session)
        self.answered += 1
        reply = message._replace(rest=_ID.pack(ident) + message.rest[2:]).pack()
        self.network.sendIPv4(socket.inet_aton(host), guest, ipv4.PROTO_ICMP, reply)

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
        return [f"ICMP by {self.mode} socket: {len(self.sessions)} sessions, "
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
