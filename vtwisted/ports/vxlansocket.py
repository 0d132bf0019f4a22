"""
The UDP socket of C{vxlan:} ports, shared by every port bound to the same
address and port: one VXLAN endpoint per host, many networks (VNIs) on it,
as Linux's vxlan devices share their socket.

Theory of operation
-------------------
A host can bind a UDP port once, but a VXLAN endpoint carries many
networks: C{--port vxlan:vni=10:vlan=10 --port vxlan:vni=20:vlan=20} maps
two VLANs to two VNIs over one socket.  L{socketFor} opens the socket for
the first port with a given (IP version, address, UDP port) and hands the
same L{VxlanSocket} to the next; each port's link registers its VNI, and
every datagram goes to the link whose header it carries (one dictionary
lookup on its first 8 bytes), or, if no link's header matches exactly, to
the link of its VNI (reserved bits set) or the first link, which counts it
as dropped with the reason.  Each group is joined for the port that names
it (once for all the ports of one group); the multicast interface and TTL
are the socket's, so ports sharing a socket must agree on them.  The
socket closes with its last port, before that port's stop returns
(L{vtwisted.sockettools.stopListeningNow}).

L{BatchPort} is Twisted's UDP port reading with C{recvmsg}: a buffer the
kernel merged (C{UDP_GRO}) is cut back into its datagrams, and the
protocol learns when a read batch ends (for TCP coalescing).  A read the
kernel cut short (C{MSG_TRUNC}: more than the 64 KB buffer, which only a
merged read can be, with the underlay's C{gro_max_size} raised for BIG
TCP) hands on the whole datagrams it holds and drops the one cut, counted
as C{oversize} on the port whose header it carries and logged once with
what to do (L{truncationText}); it is never handed on cut short.  A receive
error it does not expect (C{ENOMEM}, say) is counted and logged once per
errno (L{ReadErrors}), and reading goes on: Twisted's own port would close
the socket, and the port would hear nothing more.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from twisted.internet import udp
from twisted.internet.protocol import DatagramProtocol

from vtwisted.ports.datagrams import READ_LATER, ReadErrors, socketName
from vtwisted.ports.vxlanconfig import (
    VxlanConfig,
    bindHint,
    joinGroup,
    joinHint,
    leaveGroup,
    openSocket,
    socketDevice,
    socketKey,
)
from vtwisted.sockettools import listenError, stopListeningNow
from vtwisted.wire import vxlan

#: The largest datagram read: a 64 KB frame and its header.
MAX_DATAGRAM = 65536 + vxlan.HEADER_LENGTH
UDP_GRO = 104
_GRO_CMSG = socket.CMSG_SPACE(4)
_MSG_TRUNC = socket.MSG_TRUNC

#: The open sockets, by reactor and L{socketKey}.
_SOCKETS: dict[tuple[int, tuple[int, str, int]], VxlanSocket] = {}
#: The other bound services on UDP ports this module should know of
#: (C{vxvde:} ports): each has C{reactor}, C{config} and C{spec}.
_OTHERS: set[Any] = set()


def holdUdpPort(service: Any, held: bool) -> None:
    """
    Note (or forget) that C{service} (a C{vxvde:} port) has its UDP port
    bound, for L{holders}.
    """
    if held:
        _OTHERS.add(service)
    else:
        _OTHERS.discard(service)


def holders(reactor: Any, config: VxlanConfig) -> list[str]:
    """
    The specs of this switch's C{vxlan:} and C{vxvde:} ports bound to
    C{config}'s UDP port (and IP version): why it may be in use.
    """
    specs = [link.service.spec for (where, key), shared in _SOCKETS.items()
             if where == id(reactor) and key[0] == config.version
             and key[2] == config.dstport for link in shared.links.values()]
    specs += [other.spec for other in _OTHERS
              if other.reactor is reactor and other.config.version == config.version
              and other.config.dstport == config.dstport]
    return sorted(specs)


class VxlanSocket(DatagramProtocol):
    """
    One bound UDP socket and the links of the VNIs on it.

    @ivar links: each VNI's link.
    @ivar groReads: reads that brought several datagrams the kernel merged.
    @ivar readErrors: the socket's receive errors.
    """

    noisy = False

    def __init__(self, reactor: Any, key: tuple[int, str, int]) -> None:
        self.reactor = reactor
        self.key = key
        self.links: dict[int, Any] = {}
        self._byHeader: dict[bytes, Any] = {}
        self._multicast: tuple[str | None, int] | None = None
        #: How many links joined each (group, interface, local address).
        self._memberships: dict[tuple[str, str | None, str | None], int] = {}
        self.listeningPort: Any = None
        self.socket: socket.socket | None = None
        #: The device the socket is bound to (L{socketDevice}), if any.
        self.device: str | None = None
        self.groReads = 0
        self.readErrors = ReadErrors()

    def attach(self, link: Any) -> None:
        """
        Carry C{link}'s VNI on this socket, joining its group if it has one.

        @raise OSError: the VNI is taken, the multicast settings disagree
            with another port's, or the group cannot be joined; naming the
            spec.
        """
        config: VxlanConfig = link.config
        spec = link.service.spec
        other = self.links.get(config.vni)
        if other is not None:
            raise OSError(errno.EADDRINUSE, f"{spec}: VNI {config.vni} on UDP port "
                          f"{config.dstport} is already {other.service.spec}'s")
        device = socketDevice(config)
        if (device != self.device if config.group is None
                else self.device not in (None, config.interface)):
            bound = f"bound to {self.device}" if self.device else "bound to no device"
            raise OSError(errno.EINVAL, f"{spec}: ports sharing UDP port {config.dstport} "
                          f"must agree on if= (its socket is {bound}: the first "
                          "port's remote= and if=)")
        if config.group is not None:
            wanted = (config.interface, config.ttl)
            if self._multicast not in (None, wanted):
                raise OSError(errno.EINVAL, f"{spec}: ports sharing UDP port {config.dstport} "
                              "must agree on if= and ttl= (the socket's multicast settings)")
            assert self.socket is not None
            membership = (config.group, config.interface, config.local)
            if not self._memberships.get(membership):
                try:
                    joinGroup(self.socket, config)
                except OSError as e:
                    raise OSError(e.errno, f"{spec}: {joinHint(e, config)}") from e
            self._memberships[membership] = self._memberships.get(membership, 0) + 1
            self._multicast = wanted
        self.links[config.vni] = link
        self._byHeader[link.header] = link
        link.useSocket(self)

    def detach(self, link: Any) -> Any:
        """
        Stop carrying C{link}'s VNI; close the socket after the last one.
        """
        config: VxlanConfig = link.config
        header: bytes = link.header
        if self.links.get(config.vni) is not link:
            return None
        del self.links[config.vni]
        self._byHeader.pop(header, None)
        if config.group is not None and self.socket is not None:
            membership = (config.group, config.interface, config.local)
            left = self._memberships.get(membership, 1) - 1
            if left:
                self._memberships[membership] = left
            else:
                self._memberships.pop(membership, None)
                leaveGroup(self.socket, config)
        return self.closeIfUnused()

    def closeIfUnused(self) -> Any:
        """
        Close the socket if no link uses it (any more, or yet: a first port
        that could not attach), at once: its UDP port is free for a port/add
        in the same console batch.
        """
        if self.links:
            return None
        _SOCKETS.pop((id(self.reactor), self.key), None)
        port, self.listeningPort = self.listeningPort, None
        return None if port is None else stopListeningNow(port)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        link = self._byHeader.get(datagram[:8])
        if link is None:
            link = self._linkFor(datagram)
            if link is None:
                return
        link.datagramReceived(datagram, addr)

    def _linkFor(self, datagram: bytes) -> Any:
        """
        The link a datagram without an exact header belongs to, or whose
        port counts it as dropped.
        """
        try:
            vni = vxlan.parse(datagram)
        except ValueError:
            vni = -1
        return self.links.get(vni) or next(iter(self.links.values()), None)

    def readBatchEnded(self) -> None:
        for link in self.links.values():
            link.readBatchEnded()

    def readTruncated(self, datagram: bytes, addr: Any, size: int, merged: bool) -> None:
        """
        A read was cut short: C{datagram} is what is left of the datagram
        cut (see L{truncationText}); count it as an C{oversize} drop of the
        port whose header it carries.
        """
        link = self._byHeader.get(datagram[:8]) or self._linkFor(datagram)
        if link is not None and link.port is not None:
            link.port.dropped("oversize", f"{link.service.spec}: "
                              f"{truncationText(addr, size, merged)}")

    def readFailed(self, where: str, e: OSError) -> None:
        """
        A read of the socket failed unexpectedly: count it, naming every
        port on the socket the first time.
        """
        specs = ", ".join(link.service.spec for link in self.links.values())
        self.readErrors.failed(specs or f"UDP port {self.key[2]}", where, e)


def socketFor(reactor: Any, config: VxlanConfig, spec: str) -> VxlanSocket:
    """
    The shared socket for C{config}'s address and port, opened if need be.

    @raise OSError: naming the spec, with the errno and the likely cause.
    """
    key = socketKey(config)
    shared = _SOCKETS.get((id(reactor), key))
    if shared is not None:
        return shared
    try:
        sock = openSocket(config)
    except OSError as e:
        hint = bindHint(e, config, holders(reactor, config))
        raise OSError(e.errno, f"{spec}: {hint}") from e
    shared = VxlanSocket(reactor, key)
    shared.device = socketDevice(config)
    try:
        family = socket.AF_INET6 if config.version == 6 else socket.AF_INET
        port = BatchPort._fromListeningDescriptor(reactor, sock.fileno(), family, shared,
                                                  maxPacketSize=MAX_DATAGRAM)
        port.startListening()
    except Exception as e:
        raise listenError(f"{spec}: cannot use the socket", e) from e
    finally:
        sock.close()
    shared.listeningPort = port
    shared.socket = port.socket
    _SOCKETS[(id(reactor), key)] = shared
    return shared


class BatchPort(udp.Port):
    """
    Twisted's UDP port, reading with C{recvmsg} so that a buffer the kernel
    coalesced (C{UDP_GRO}: datagrams of one sender, all as long as the
    first but the last) is cut back into its datagrams, and telling its
    protocol when a read batch ends.  An unexpected receive error goes to
    the protocol's C{readFailed(where, error)}, and the socket stays open.
    """

    def doRead(self) -> None:
        protocol = self.protocol
        receive, recvmsg, size = protocol.datagramReceived, self.socket.recvmsg, self.maxPacketSize
        v6 = self.addressFamily == socket.AF_INET6
        read = 0
        try:
            while read < self.maxThroughput:
                try:
                    data, ancillary, flags, addr = recvmsg(size, _GRO_CMSG)
                except OSError as e:
                    if e.errno not in READ_LATER:
                        protocol.readFailed(self._where(), e)
                    return
                read += len(data)
                if v6:
                    addr = addr[:2]
                if flags & _MSG_TRUNC:
                    self._truncated(data, ancillary, addr)
                    continue
                if not ancillary:
                    receive(data, addr)
                    continue
                step = _groSize(ancillary) or len(data) or 1
                protocol.groReads += 1
                for offset in range(0, len(data), step):
                    receive(data[offset:offset + step], addr)
        finally:
            protocol.readBatchEnded()

    def _truncated(self, data: bytes, ancillary: list[tuple[int, int, bytes]],
                   addr: Any) -> None:
        """
        Hand on the whole datagrams of a read the kernel cut short, and have
        the one cut counted as dropped (never handed on cut short).
        """
        step = _groSize(ancillary)
        whole = len(data) - len(data) % step if step else 0
        protocol = self.protocol
        if step:
            protocol.groReads += 1
        for offset in range(0, whole, step or 1):
            protocol.datagramReceived(data[offset:offset + step], addr)
        protocol.readTruncated(data[whole:], addr, self.maxPacketSize, bool(step))

    def _where(self) -> str:
        return socketName(self.socket, f"UDP port {self.port}")


def truncationText(addr: Any, size: int, merged: bool) -> str:
    """
    Why a read from C{addr} of C{size} bytes was cut short, and what to do.

    @param merged: whether the kernel merged datagrams into the read
        (C{UDP_GRO}).
    """
    if merged:
        return (f"from {addr[0]}: datagrams the kernel merged (UDP GRO) past the {size} "
                "bytes read at once (MSG_TRUNC); the one cut there is dropped, and those "
                "after it lost: the underlay interface's gro_max_size or gro_ipv4_max_size "
                "is over 65536 (BIG TCP); set it to 65536")
    return (f"from {addr[0]}: a datagram longer than the {size} bytes read at once "
            "(MSG_TRUNC): its sender sends larger frames than any port takes (the "
            "largest is 9234 bytes, mtu=9216)")


def _groSize(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, value in ancillary:
        if level == socket.SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            return int.from_bytes(value[:4], sys.byteorder)
    return 0
