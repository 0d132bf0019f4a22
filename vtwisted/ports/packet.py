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

The port's MTU is the interface's (C{SIOCGIFMTU} when the socket opens, at
most the switch's 9216) unless the spec gives C{mtu=}: frames from other
ports too long for the interface are then C{mtu} drops of the switch, and
so are an offload port's super-frames whose segments are (the kernel
refuses the plain frames, but takes super-frames whatever their
segments).  The port hears of later changes as the kernel announces them
(L{vtwisted.ports.linkwatch}) and follows the interface's new MTU (an
C{mtu=} given stays, with a warning if the interface's is now smaller).
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
from vtwisted.portoptions import MIN_MTU, PortOptions
from vtwisted.ports.linkwatch import LinkWatcher
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
from vtwisted.wire.ethernet import DEFAULT_MTU

log = Logger()
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SIOCGIFFLAGS = 0x8913
SIOCGIFMTU = 0x8921
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
    service: PacketService
    _downCheck: Any = None
    _watcher: LinkWatcher | None = None
    #: The interface's MTU (None: unknown).
    interfaceMtu: int | None = None

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
        self.interfaceMtu = interfaceMtu(self._fileno, self._index)
        self.connected = 1
        self.protocol.makeConnection(self)
        self.offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        if self.uso and linuxAtLeast(6, 2):
            self.offloads |= TUN_F_USO4 | TUN_F_USO6
        self._offloadText = offloadNames(self.offloads)

    @property
    def description(self) -> str:
        """
        The interface, its MTU, the offloads, what was coalesced.
        """
        text = super().description
        if self.interfaceMtu is not None:
            text = text.replace(self.name, f"{self.name} (mtu {self.interfaceMtu})", 1)
        return text

    def plug(self, switch: Any, port: Any) -> None:
        """
        Attach to C{port}, start reading, and listen for changes to the
        interface (its MTU).
        """
        super().plug(switch, port)
        if self._watcher is None:
            try:
                self._watcher = LinkWatcher(self.service.reactor, self._index,
                                            self._interfaceChanged)
            except OSError as e:
                log.warn("{spec}: cannot hear of changes to {name} ({error}); the port "
                         "keeps its MTU of {mtu}", spec=self.service.spec, name=self.name,
                         error=e, mtu=port.mtu)

    def _interfaceChanged(self) -> None:
        """
        The kernel announced a change to the interface: if its MTU changed,
        the port follows it (see L{PacketService.interfaceMtuChanged}).
        """
        mtu = interfaceMtu(self._fileno, self._index)
        if mtu is None or mtu == self.interfaceMtu:
            return
        old, self.interfaceMtu = self.interfaceMtu, mtu
        self.service.interfaceMtuChanged(self, old, mtu)

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
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        super().shut()


def _askInterface(fd: int, index: int, request: int, layout: str) -> int | None:
    """
    One C{ifreq} field (C{layout}, after the name) of the interface with
    index C{index} in the switch's network namespace, asked through socket
    C{fd} with ioctl C{request}; None if there is no such interface.
    """
    try:
        name = socket.if_indextoname(index)
        answer = fcntl.ioctl(fd, request, struct.pack("16s16x", name.encode()))
    except OSError:
        return None
    return int(struct.unpack_from(layout, answer)[0])


def interfaceFlags(fd: int, index: int) -> int | None:
    """
    The flags (C{IFF_UP}, ...) of the interface with index C{index}; None
    if there is no such interface.
    """
    return _askInterface(fd, index, SIOCGIFFLAGS, "16xH")


def interfaceMtu(fd: int, index: int) -> int | None:
    """
    The MTU of the interface with index C{index}; None if there is no such
    interface.
    """
    return _askInterface(fd, index, SIOCGIFMTU, "16xi")


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

    @ivar givenMtu: the spec's C{mtu=} (None: the interface's).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.givenMtu = self.options.mtu

    def bind(self) -> None:
        """
        Open the socket (the error says what to do if that fails), and give
        the port the interface's MTU unless the spec gives one.
        """
        link = PacketLink(self, self.deviceName, self.offload, self.system, self.reactor,
                          self.uso)
        link.open()
        self.link = link
        self.options.mtu = self._portMtu(link.interfaceMtu)

    def interfaceMtuChanged(self, link: PacketLink, old: int | None, mtu: int) -> None:
        """
        The MTU of C{link}'s interface changed from C{old} to C{mtu}: the
        port takes it, unless the spec gives one.
        """
        wanted = self._portMtu(mtu)
        if self.givenMtu is not None:
            return
        self.options.mtu = wanted
        port = link.port
        if port is not None and wanted is not None and port.mtu != wanted:
            port.setMtu(wanted)
        log.info("{spec}: {name}'s MTU is now {mtu} (it was {old}); so is the port's",
                 spec=self.spec, name=self.deviceName, mtu=mtu, old=old)

    def _portMtu(self, mtu: int | None) -> int | None:
        """
        The port's MTU for an interface MTU of C{mtu}: the spec's C{mtu=}
        (with a warning if the interface's is smaller), else the
        interface's within the switch's bounds.
        """
        if self.givenMtu is None:
            return None if mtu is None else max(MIN_MTU, min(mtu, DEFAULT_MTU))
        if mtu is not None and self.givenMtu > mtu:
            log.warn("{spec}: mtu={given} is more than {name}'s MTU of {mtu}: the kernel "
                     "refuses plain frames longer than the interface's MTU (mtu drops)",
                     spec=self.spec, given=self.givenMtu, name=self.deviceName, mtu=mtu)
        return self.givenMtu


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
