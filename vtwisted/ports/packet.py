"""
Any Ethernet interface as a switch port (C{packet:IFACE}), through a Linux
packet socket: what C{vde_pcapplug} does with libpcap, with offloads.

Theory of operation
-------------------
The switch opens an C{AF_PACKET} raw socket bound to the interface in
C{privilegedStartService} (it needs C{CAP_NET_RAW}), puts the interface in
promiscuous mode for as long as the socket is open, and from then on uses
the socket alone: the interface may be a veth whose other end is in
another namespace, a bridge's port, or a network card.  Frames the
interface receives come to the switch; frames the switch sends leave
through it.  Frames this host's own stack sends out through the interface
are not read (C{PACKET_IGNORE_OUTGOING}), as a bridge port would not see
them.

The socket always speaks the TAP port's virtio-net header both ways
(C{PACKET_VNET_HDR}): without it a packet socket still sees what a local
stack sends through a veth as unfinished super-frames, 64 KB long and with
their checksums left to do, with nothing to tell how to finish them (this
is why C{vde_pcapplug} needs offloads turned off on the interface's peer).
The socket is then driven by
L{vtwisted.ports.tap.TapLink} itself: TCP super-frames a veth peer's stack
sends arrive whole, super-frames from offload ports leave whole (the kernel
cuts them for the wire if the interface cannot), runs of UDP datagrams are
coalesced, and the rest is counted and dropped as for a TAP.  Interfaces
that strip VLAN tags on receipt (C{rx-vlan-offload}) hand the tag over
beside the frame (C{PACKET_AUXDATA}); it is put back in the frame, so
tagged traffic crosses as it came.

An interface taken down makes the kernel report C{ENETDOWN} on the socket
once: the port stays (frames sent meanwhile are C{down} drops) and the
kernel hooks the socket back in when the interface is up.  While it is
down the kernel would say nothing if it were deleted, so the port looks
for its index once a second (L{DOWN_CHECK}, on the injected clock) until
it is up again, and goes down if it is gone.  A frame longer than the
interface's MTU (C{EMSGSIZE}) is an C{mtu} drop; a packet too long to read
whole (C{MSG_TRUNC}: a super-frame over 64 KB, made with BIG TCP) is an
C{oversize} drop, never handed on cut short.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import sys
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.interfaces import IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.tap import DEFAULT_BUSY_POLL, TapLink, TapService
from vtwisted.ports.tapdevice import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    TUN_F_USO4,
    TUN_F_USO6,
    RealTapSystem,
    checkName,
    offloadNames,
)
from vtwisted.sockettools import linuxAtLeast
from vtwisted.spec import PortSpec
from vtwisted.wire import vnet

log = Logger()
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
#: Seconds between checks that an interface taken down is still there (the
#: kernel says nothing on the socket when a down interface is deleted).
DOWN_CHECK = 1.0
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
#: struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid.
_AUXDATA = struct.Struct("@IIIHHHH")
_AUX_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
_TPID_8021Q = 0x8100
#: Where the status word's low byte (TP_STATUS_VLAN_VALID's) is.
_STATUS_LOW = 0 if sys.byteorder == "little" else 3
_MSG_TRUNC = socket.MSG_TRUNC


class TruncatedPacket(OSError):
    """
    A packet longer than the read buffer, which the kernel cut short
    (C{MSG_TRUNC}): a super-frame over 64 KB (BIG TCP).
    """


def withTag(packet: bytes, auxdata: bytes) -> bytes:
    """
    C{packet} (a virtio-net header and a frame) with the VLAN tag that
    C{auxdata} (a C{tpacket_auxdata}) says the interface stripped put back
    after the source MAC address; C{packet} itself if none was stripped.

    @raise vnet.VnetError: the packet is too short or its offsets overflow.
    """
    if len(auxdata) < _AUXDATA.size:
        return packet
    status, _, _, _, _, tci, tpid = _AUXDATA.unpack_from(auxdata)
    if not status & TP_STATUS_VLAN_VALID:
        return packet
    tagged = vnet.insertTag(packet, tci)
    if not status & TP_STATUS_VLAN_TPID_VALID or tpid in (0, _TPID_8021Q):
        return tagged
    cut = vnet.HEADER_LENGTH + 12
    return tagged[:cut] + tpid.to_bytes(2, "big") + tagged[cut + 2:]


class PacketSystem(RealTapSystem):
    """
    The system calls of a packet socket port: reads are C{recvmsg}, which
    also brings a stripped VLAN tag back; the rest are a TAP's.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._recvmsg = sock.recvmsg

    def read(self, fd: int, size: int) -> bytes:
        data, ancillary, flags, _ = self._recvmsg(size, _AUX_SPACE)
        if flags & _MSG_TRUNC:
            raise TruncatedPacket(errno.EMSGSIZE, f"a packet longer than the {size} bytes "
                                  "read at once")
        for level, kind, value in ancillary:
            if len(value) > 3 and value[_STATUS_LOW] & TP_STATUS_VLAN_VALID \
                    and kind == PACKET_AUXDATA \
                    and level == SOL_PACKET:
                return withTag(data, value)
        return data

    def close(self, fd: int) -> None:
        self.sock.close()


class PacketLink(TapLink):
    """
    One interface, through a packet socket, plugged into a switch port.
    """

    module = "packet"
    _downCheck: Any = None

    def open(self) -> None:
        """
        Open and bind the socket.

        @raise OSError: naming the spec, the interface, the errno and what
            to do.
        """
        try:
            sock = openSocket(self.name)
        except OSError as e:
            raise openError(self.service.spec, self.name, e) from None
        self._system = PacketSystem(sock)
        self._index = socket.if_nametoindex(self.name)
        self._fileno = sock.fileno()
        self.connected = 1
        self.protocol.makeConnection(self)
        self.offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        if self.uso and linuxAtLeast(6, 2):
            self.offloads |= TUN_F_USO4 | TUN_F_USO6
        self._offloadText = offloadNames(self.offloads)

    def _readFailed(self, e: OSError) -> None:
        """
        A packet too long to read whole is an C{oversize} drop, never handed
        on cut short: a super-frame over 64 KB, which the interface's peer
        makes with BIG TCP (its C{gso_max_size} over 65536), or the
        interface itself (its C{gro_max_size}).
        """
        if isinstance(e, TruncatedPacket):
            self.port.dropped("oversize", f"{self.name}: {e.strerror} (a super-frame over "
                              "64 KB: BIG TCP; set gso_max_size and gro_max_size to 65536 "
                              "on the interface and its peer)")
            return
        super()._readFailed(e)

    def _writeFailed(self, e: OSError) -> None:
        if e.errno == errno.ENETDOWN:
            self.port.dropped("down", f"{self.name}: the interface is down (ENETDOWN)")
            return
        if e.errno == errno.EMSGSIZE:
            self.port.dropped("mtu", f"{self.name}: longer than the interface's MTU "
                              "(EMSGSIZE)")
            return
        super()._writeFailed(e)

    def _failed(self, doing: str, e: OSError) -> None:
        """
        A read or write failed: if the interface was only taken down (it
        is still there, ENETDOWN), the port stays (see L{_wentDown}); if
        it is gone, the port goes down as a TAP's does.
        """
        if e.errno == errno.ENETDOWN and self._stillThere():
            self._wentDown()
            return
        super()._failed(doing, e)

    def connectionLost(self, reason: Any = None) -> None:
        """
        The reactor saw the socket fail (the kernel reports an interface
        going down as a socket error): if the interface is still there,
        the port stays (see L{_wentDown}); else it goes down.
        """
        if not self._closing and self.connected and self._stillThere():
            self._wentDown()
            self.startReading()
            return
        super().connectionLost(reason)

    def _wentDown(self) -> None:
        """
        The interface went down but is still there: clear the socket's
        error and carry on (the kernel hooks the socket back in when the
        interface comes up; frames sent meanwhile are counted as C{down}),
        checking every L{DOWN_CHECK} seconds until it is up that it was not
        deleted meanwhile (the kernel would not say).
        """
        try:
            self._system.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            pass
        log.info("{spec}: {name} went down (ENETDOWN); the port stays and carries on "
                 "when it is up again", spec=self.service.spec, name=self.name)
        if self._downCheck is None:
            self._downCheck = self.service.reactor.callLater(DOWN_CHECK, self._checkDown)

    def _checkDown(self) -> None:
        """
        Once a second while the interface is down: the port goes down if
        it was deleted; the checks end when it is up again.
        """
        self._downCheck = None
        flags = interfaceFlags(self._fileno, self._index)
        if flags is None:
            super()._failed("watching", OSError(errno.ENODEV, "the interface was deleted"))
        elif flags & IFF_UP:
            log.info("{spec}: {name} is up again", spec=self.service.spec, name=self.name)
        else:
            self._downCheck = self.service.reactor.callLater(DOWN_CHECK, self._checkDown)

    def _stillThere(self) -> bool:
        """
        Whether the interface the socket is bound to still exists (by its
        index, which the socket is bound to: it may have been renamed).
        """
        return interfaceFlags(self._fileno, self._index) is not None

    def shut(self) -> None:
        """
        Stop checking on the interface, and close the socket.
        """
        check, self._downCheck = self._downCheck, None
        if check is not None and check.active():
            check.cancel()
        super().shut()


def interfaceFlags(fd: int, index: int) -> int | None:
    """
    The flags (C{IFF_UP}, ...) of the interface with index C{index} in the
    switch's network namespace (asked through socket C{fd}); None if there
    is no such interface.
    """
    try:
        name = socket.if_indextoname(index)
        answer = fcntl.ioctl(fd, SIOCGIFFLAGS, struct.pack("16s16x", name.encode()))
    except OSError:
        return None
    return int(struct.unpack_from("16xH", answer)[0])


def openSocket(name: str) -> socket.socket:
    """
    A non-blocking packet socket bound to interface C{name}, promiscuous,
    not reading what this host sends, with the virtio-net header.

    @raise OSError: from the system, its errno intact.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                         | socket.SOCK_CLOEXEC, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((name, ETH_P_ALL))
        index = socket.if_nametoindex(name)
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                        struct.pack("@iHH8s", index, PACKET_MR_PROMISC, 0, b""))
    except BaseException:
        sock.close()
        raise
    return sock


def openError(spec: str, name: str, e: OSError) -> OSError:
    """
    The error for an interface that could not be opened: the spec, the
    interface, the errno and what to do about it.
    """
    code = e.errno or errno.EIO
    advice = ""
    if code == errno.EPERM:
        advice = "; a packet socket needs CAP_NET_RAW (run the switch as root)"
    elif code in (errno.ENODEV, errno.ENXIO):
        advice = f"; there is no interface {name} in this network namespace"
    return OSError(code, f"{spec}: cannot open interface {name}: "
                         f"{e.strerror or os.strerror(code)} (errno {code}){advice}")


@implementer(IPortService)
class PacketService(TapService):
    """
    The service of one C{packet:IFACE} spec.
    """

    def bind(self) -> None:
        """
        Open the socket (the error says what to do if that fails).
        """
        link = PacketLink(self, self.deviceName, self.offload, self.system, self.reactor,
                          self.uso)
        link.open()
        self.link = link


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> PacketService:
    """
    Build the service for C{packet:IFACE[:uso=on|off][:coalesce=on|off]}
    and the common options.
    """
    (name,) = spec.positional(["interface name"], 1)
    name = checkName(spec, name, "interface")
    uso = spec.boolean("uso", True)
    coalesce = spec.boolean("coalesce", True)
    options = PortOptions.fromSpec(spec)
    spec.checkKeywords()
    return PacketService(switch, reactor, name, True, options, spec.text,
                         busyPoll=DEFAULT_BUSY_POLL, uso=uso, coalesce=coalesce)
