"""
vdeplug4's switchless networks (C{vxvde:}): the switch as one more member
of a C{vxvde://} network, beside C{vde_plug vxvde://} plugs and QEMU guests
started with C{-netdev vde,sock=vxvde://} (QEMU's VDE backend is vdeplug4).

Theory of operation
-------------------
A vxvde network has no switch: every member joins one multicast group on
UDP port 14789 (any number of members per host: the group's socket is
shared with C{SO_REUSEADDR}, and multicast loopback is on), and sends from
a unicast socket of its own on an ephemeral port.  A frame is one datagram
with the VXLAN header of the network's VNI (L{vtwisted.wire.vxlan}); a
broadcast or a frame for an unknown MAC goes to the group, a frame for a
MAC learned from a member goes to that member's own address and port.  A
member leaving sends the bare header to the group, and the others forget
it.  The switch is a member whose whole network is one port: the
L{vtwisted.ports.vxlan.VxlanLink} machinery (learning with expiry, cutting
and sending super-frames with C{UDP_SEGMENT}, merging TCP segments) with
members told apart by address and port, and its own multicast echo
recognised by its unicast port on a local address and dropped.

That test is exact, though the address the echo shows is the kernel's
choice: the member's socket binds its port on every address of the host
(no C{SO_REUSEADDR}, no C{SO_REUSEPORT}), so nothing else here can send
from that port.  The C{mcast:} port's way (connecting its sending socket
to the group, which fixes the source address) does not fit: the member's
socket must also read the unicast the other members send it, which a
connected UDP socket would refuse, and it must send both kinds from one
address and port, since members learn where to send from a datagram's
source.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from vtwisted.interfaces import IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.datagrams import ReadErrors
from vtwisted.ports.vxlan import VxlanLink, VxlanService
from vtwisted.ports.vxlanconfig import (
    VxlanConfig,
    bindHint,
    configFromSpec,
    joinGroup,
    joinHint,
    sendMulticast,
    tuneSocket,
)
from vtwisted.ports.vxlansocket import (
    MAX_DATAGRAM,
    BatchPort,
    holders,
    holdUdpPort,
    truncationText,
)
from vtwisted.sockettools import listenError, stopListeningNow
from vtwisted.spec import PortSpec

#: vdeplug4's vxvde port.
DEFAULT_PORT = 14789


class VxvdeLink(VxlanLink):
    """
    The vxvde network, as the one link of one port.
    """

    module = "vxvde"
    transportName = "vxvde"
    learnsPorts = True

    def __init__(self, service: Any) -> None:
        super().__init__(service)
        self.heard = None
        self.ownPort = 0
        self.groReads = 0
        self.readErrors = ReadErrors()
        self._local: dict[str, bool] = {}

    @property
    def description(self) -> str:
        members = len(set(self.where.values()))
        text = (f"vxvde vni {self.config.vni} group {self.config.where()[6:]}, "
                f"{len(self.where)} MACs behind {members} members")
        if self.gro is not None:
            text += f", coalesced {self.gro.segments} segments into {self.gro.packets}"
        return text + self.readErrors.describe()

    def useSockets(self, unicast: socket.socket) -> None:
        """
        Send from C{unicast}, and recognise what comes back from it.
        """
        self.ownPort = unicast.getsockname()[1]
        self.linkId = unicast.fileno()
        self._makeSenders(unicast)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if addr[1] == self.ownPort and self._isLocal(addr[0]):
            return
        if len(datagram) == 8 and datagram == self.header:
            self._forget((addr[0], addr[1]))
            return
        super().datagramReceived(datagram, addr)

    def _isLocal(self, host: str) -> bool:
        """
        Whether C{host} is an address of this host (it can be bound to).
        """
        known = self._local.get(host)
        if known is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((host, 0))
                    known = True
                except OSError:
                    known = False
            if len(self._local) < 256:
                self._local[host] = known
        return known

    def _forget(self, member: tuple[str, int]) -> None:
        """
        A member left: forget every address behind it.
        """
        for mac in [mac for mac, where in self.where.items() if where == member]:
            del self.where[mac]
            self.seen.pop(mac, None)


class _Reader(DatagramProtocol):
    """
    What one of the member's two sockets reads, handed to the link.
    """

    noisy = False

    def __init__(self, link: VxvdeLink) -> None:
        self.link = link
        self.datagramReceived = link.datagramReceived  # type: ignore[method-assign]

    @property
    def groReads(self) -> int:
        return self.link.groReads

    @groReads.setter
    def groReads(self, value: int) -> None:
        self.link.groReads = value

    def readBatchEnded(self) -> None:
        self.link.readBatchEnded()

    def readFailed(self, where: str, e: OSError) -> None:
        self.link.readErrors.failed(self.link.service.spec, where, e)

    def readTruncated(self, datagram: bytes, addr: Any, size: int, merged: bool) -> None:
        """
        A read was cut short: count an C{oversize} drop (see
        L{vtwisted.ports.vxlansocket.truncationText}).
        """
        port = self.link.port
        if port is not None:
            port.dropped("oversize", f"{self.link.service.spec}: "
                         f"{truncationText(addr, size, merged)}")


@implementer(IPortService)
class VxvdeService(VxlanService):
    """
    The service of one C{vxvde:} spec: the group's socket, the member's own
    socket, one port, the expiry timer.
    """

    def __init__(self, switch: Any, reactor: Any, config: VxlanConfig, options: PortOptions,
                 spec: str) -> None:
        super().__init__(switch, reactor, config, options, spec)
        self.ports: list[Any] = []

    def bind(self) -> None:
        link = VxvdeLink(self)
        family = socket.AF_INET6 if self.config.version == 6 else socket.AF_INET
        try:
            group, unicast = _openSockets(self.config)
        except OSError as e:
            hint = (joinHint(e, self.config) if e.errno == errno.ENODEV
                    else bindHint(e, self.config, holders(self.reactor, self.config)))
            raise OSError(e.errno, f"{self.spec}: {hint}") from e
        try:
            for sock in (group, unicast):
                port = BatchPort._fromListeningDescriptor(self.reactor, sock.fileno(), family,
                                                          _Reader(link),
                                                          maxPacketSize=MAX_DATAGRAM)
                port.startListening()
                self.ports.append(port)
        except Exception as e:
            self._closePorts()
            raise listenError(f"{self.spec}: cannot use the sockets", e) from e
        finally:
            group.close()
            unicast.close()
        link.useSockets(self.ports[1].socket)
        self.link = link
        holdUdpPort(self, True)

    def stopService(self) -> Any:
        """
        Tell the other members this one leaves (the bare header to the
        group, as vdeplug4 does), then close both sockets.
        """
        link = self.link
        if link is not None and len(self.ports) == 2:
            try:
                self.ports[1].socket.sendto(link.header, (self.config.group,
                                                          self.config.dstport))
            except OSError:
                pass
        super().stopService()
        self._closePorts()
        return None

    def _closePorts(self) -> None:
        holdUdpPort(self, False)
        ports, self.ports = self.ports, []
        for port in ports:
            stopListeningNow(port)  # the UDP port free for a port/add in the same batch


def _openSockets(config: VxlanConfig) -> tuple[socket.socket, socket.socket]:
    """
    The group's socket (bound to GROUP:PORT, shared) and the member's own
    (an ephemeral port, sending multicast with the TTL through the
    interface, looped back to this host's other members), both
    non-blocking.
    """
    family = socket.AF_INET6 if config.version == 6 else socket.AF_INET
    group = socket.socket(family, socket.SOCK_DGRAM)
    unicast = socket.socket(family, socket.SOCK_DGRAM)
    try:
        group.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.version == 6:
            group.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            unicast.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        else:
            # as vdeplug4: unicast to members stays on the link too
            unicast.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, max(config.ttl, 1))
        assert config.group is not None
        group.bind((config.group, config.dstport))
        joinGroup(group, config)
        sendMulticast(unicast, config, loop=True)
        unicast.bind(("::" if config.version == 6 else "0.0.0.0", 0))
        for sock in (group, unicast):
            tuneSocket(sock, config.version)
    except BaseException:
        group.close()
        unicast.close()
        raise
    return group, unicast


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> VxvdeService:
    """
    Build the service for C{vxvde:[GROUP|v6][:vni=N][:dstport=14789][:if=NAME]
    [:ttl=1][:expire=128][:coalesce=on]} and the common options.
    """
    config = configFromSpec(spec, DEFAULT_PORT, unicast=False)
    options = PortOptions.fromSpec(spec)
    spec.checkKeywords()
    return VxvdeService(switch, reactor, config, options, spec.text)

