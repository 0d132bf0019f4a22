"""
VXLAN (C{vxlan:}): the switch as a VXLAN tunnel endpoint (VTEP), sharing a
LAN with Linux C{vxlan} devices, vdeplug4's C{vxlan://} plugs and other
vtwisted switches on other hosts.

Theory of operation
-------------------
A VXLAN network is a LAN of tunnel endpoints: each wraps every frame in an
8-byte header naming the network (the VNI, L{vtwisted.wire.vxlan}) and
sends it in a UDP datagram to destination port 4789.  The whole network is
one port of the switch, where the switch learns the addresses of every host
behind every endpoint; the link itself remembers which endpoint (IP
address) each source MAC came from, as Linux's devices and vdeplug4 do, so
that a frame to a known MAC goes as one datagram to that endpoint alone.
Broadcasts and unknown destinations are flooded: to a multicast group
(C{vxlan:GROUP}, 239.0.0.1 by default as in vdeplug4, joined on C{if=}), or,
with C{remote=A,B}, once to each listed endpoint (Linux's unicast mode and
head-end replication).  In the unicast mode only the listed endpoints are
heard; anyone else's datagram is counted as a C{peer} drop.  There, C{if=}
binds the socket to that device (L{vxlanconfig.socketDevice}).

The port takes the virtio-net header (it is a "vnet" port, like an offload
TAP or a cable), so the switch hands it an offload TAP's 64 KB TCP and UDP
super-frames whole: the port cuts them into the frames they stand for
(L{vtwisted.wire.vnet.toFrames}) and sends those in one or two C{sendmsg}
calls with C{UDP_SEGMENT}, the kernel cutting the buffer back into one
datagram per frame.  Frames arrive one per datagram, or several in one
read where the kernel merged them (C{UDP_GRO}, when the underlay's device
does GRO, as network cards do); consecutive TCP
segments of a flow in one read batch are merged back into a super-frame
(L{vtwisted.wire.tcpgro}, C{coalesce=off} to turn it off) when the switch
would deliver them to a port with the header, so a Linux host's TCP
reaches an offload TAP as 64 KB writes, not 1500-byte ones.

Entries expire C{expire=} seconds (128, vdeplug4's default) after their
MAC was last heard; the table holds at most L{MAX_LEARNED} of them.
Datagrams of another VNI (counted as C{vlan} drops), or without the I flag
(C{malformed}), are dropped.  The ports of different VNIs on one UDP port
share its socket (L{vtwisted.ports.vxlansocket}), which hands each link
its datagrams.  Multicast loopback is off, as in vdeplug4: one endpoint
per host and UDP port.
Datagrams leave with fragmentation allowed (Linux's devices' default, "df
unset"), so full-sized frames cross an underlay whose MTU has no room for
the 50 bytes of encapsulation, at a cost; give the port C{mtu=} 50 less
than the underlay's to avoid that.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.interfaces import ILink, IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.datagrams import PlainDatagramLink
from vtwisted.ports.singlelink import SingleLinkService
from vtwisted.ports.vxlanconfig import VxlanConfig, configFromSpec
from vtwisted.ports.vxlansocket import VxlanSocket, socketFor
from vtwisted.spec import PortSpec
from vtwisted.wire import tcpgro, vnet, vxlan
from vtwisted.wire.ethernet import formatMac

log = Logger()

#: The most MAC addresses whose endpoint is remembered.
MAX_LEARNED = 65536
#: Expiry checks per expiry time: an entry lives at most 1/4 longer.
TICKS = 4

#: Datagrams in one C{UDP_SEGMENT} send, and their total size (an IPv4
#: datagram's largest payload).
MAX_SEGMENTS = 64
MAX_GSO_PAYLOAD = 65507
UDP_SEGMENT = 103
_NO_GSO = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE)


@implementer(ILink)
class VxlanLink(PlainDatagramLink):
    """
    The VXLAN network, as the one link of one port.

    @ivar where: the endpoint each learned source MAC was last heard from,
        as the address frames to it are sent to.
    """

    vnetHeader = True
    uid = None
    linkId = 0
    module = "vxlan"
    transportName = "VXLAN"
    #: Whether an endpoint is its address and port (a vxvde member's own
    #: port), not its address alone (a VXLAN endpoint, on C{dstport}).
    learnsPorts = False

    def __init__(self, service: VxlanService) -> None:
        config = service.config
        self.service = service
        self.config = config
        self.port: Any = None
        self.header = vxlan.header(config.vni)
        self.where: dict[bytes, tuple[str, int]] = {}
        self.seen: dict[bytes, int] = {}
        self.tick = 0
        self.flood = ([(config.group, config.dstport)] if config.group is not None
                      else [(remote, config.dstport) for remote in config.remotes])
        self.heard = None if config.group is not None else frozenset(config.remotes)
        self.gro: tcpgro.TcpCoalescer | None = None
        self.shared: VxlanSocket | None = None

    @property
    def description(self) -> str:
        endpoints = len(set(self.where.values()))
        text = (f"vni {self.config.vni} {self.config.where()}, "
                f"{len(self.where)} MACs behind {endpoints} endpoints")
        if self.gro is not None:
            text += f", coalesced {self.gro.segments} segments into {self.gro.packets}"
        if self.shared is not None:
            if self.shared.groReads:
                text += f", {self.shared.groReads} reads merged by the kernel"
            text += self.shared.readErrors.describe()
        return text

    def useSocket(self, shared: VxlanSocket) -> None:
        """
        Send through C{shared}'s socket (it hands this link its datagrams).
        """
        sock = shared.socket
        assert sock is not None
        self.shared = shared
        self.linkId = sock.fileno()
        self._makeSenders(sock)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if (datagram[:8] != self.header or len(datagram) < 22) and not self._acceptable(
                datagram, addr):
            return
        host = addr[0]
        if self.heard is not None and host not in self.heard:
            self._stranger(host)
            return
        if not datagram[14] & 1:
            src = datagram[14:20]
            known = self.where.get(src)
            if (known is not None and known[0] == host
                    and (not self.learnsPorts or known[1] == addr[1])) or self._learn(src, addr):
                self.seen[src] = self.tick
        self.add(datagram[8:])

    def add(self, frame: bytes) -> None:
        """
        Take one frame read from the network: to the coalescer while
        plugged in with C{coalesce=on} (replaced in L{plug}), else to the
        switch.
        """
        self.deliver(frame)

    def plug(self, switch: Any, port: Any) -> None:
        super().plug(switch, port)
        if not self.config.coalesce:
            return
        receivePacket = switch.vnetPacketReceived
        spec = self.service.spec

        def deliverPacket(packet: bytes) -> None:
            try:
                receivePacket(port, packet)
            except Exception:
                log.failure("{spec}: the switch failed on a packet", spec=spec)

        self.gro = tcpgro.TcpCoalescer(self.deliver, deliverPacket,
                                       lambda frame: switch.vnetBehind(port, frame[:6]))
        self.add = self.gro.add  # type: ignore[method-assign]

    def readBatchEnded(self) -> None:
        """
        The socket has no more datagrams for now: hand on what the
        coalescer holds.
        """
        if self.gro is not None:
            self.gro.flush()

    def _acceptable(self, datagram: bytes, addr: Any) -> bool:
        """
        Whether a datagram whose header is not exactly ours is still one of
        this network's frames; count it as dropped if not.
        """
        try:
            vni = vxlan.parse(datagram)
        except ValueError as e:
            if self.port is not None:
                self.port.dropped("malformed", f"{self.service.spec}: from {addr[0]}: {e}")
            return False
        if vni == self.config.vni:
            return True
        if self.port is not None:
            self.port.dropped("vlan", f"{self.service.spec}: a datagram for VNI {vni} "
                              f"from {addr[0]} (this port is VNI {self.config.vni})")
        return False

    def _stranger(self, host: str) -> None:
        if self.port is not None:
            self.port.dropped("peer", f"{self.service.spec}: a datagram from {host}, "
                              f"which is not one of the remote endpoints")

    def _learn(self, src: bytes, addr: Any) -> bool:
        """
        Remember that C{src} is behind the endpoint at C{addr}, unless the
        table is full.
        """
        if src not in self.where and len(self.where) >= MAX_LEARNED:
            return False
        self.where[src] = (addr[0], addr[1] if self.learnsPorts else self.config.dstport)
        return True

    def expire(self) -> None:
        """
        Advance the clock by one tick and forget the MACs not heard for
        C{TICKS} ticks.
        """
        self.tick += 1
        oldest = self.tick - TICKS
        old = [mac for mac, tick in self.seen.items() if tick < oldest]
        for mac in old:
            del self.seen[mac]
            self.where.pop(mac, None)

    # ILink

    def sendFrame(self, frame: bytes) -> None:
        """
        Send one frame into the network.  Replaced per link by a closure
        from L{_makeSenders}.
        """

    def sendVnetPacket(self, packet: bytes) -> None:
        """
        Send the frames a virtio-net packet stands for.  Replaced per link
        by a closure from L{_makeSenders}.
        """

    def _makeSenders(self, sock: Any) -> None:
        """
        Make L{sendFrame} and L{sendVnetPacket} for C{sock}.

        A packet with GSO is cut into frames here, and the frames leave in
        as few C{sendmsg} calls as C{UDP_SEGMENT} allows (each datagram one
        header and one frame, at most 64 of them and 64 KB in all), so a
        TAP's 64 KB super-frame costs two system calls, not 45.  Where the
        kernel refuses that (datagrams over the path's MTU need
        fragmenting, which GSO does not do), frames of that size go one by
        one from then on.  A destination that fails (no route to it) costs
        the others nothing: each is sent to, and counted, on its own.
        """
        header, where, flood, failed = self.header, self.where, self.flood, self._sendFailed
        sendto, sendmsg, toFrames = sock.sendto, sock.sendmsg, vnet.toFrames
        gso = [MAX_GSO_PAYLOAD]

        def destinations(mac: Any) -> Any:
            if not mac[0] & 1:
                dest = where.get(bytes(mac))
                if dest is not None:
                    return (dest,)
            return flood

        def sendFrame(frame: Any) -> None:
            datagram = header + frame
            for dest in destinations(frame[:6]):
                try:
                    sendto(datagram, dest)
                except OSError as e:
                    failed(e, dest)

        def sendVnetPacket(packet: Any) -> None:
            if not packet[0] and not packet[1]:
                sendFrame(memoryview(packet)[vnet.HEADER_LENGTH:])
                return
            try:
                frames = toFrames(packet)
            except vnet.VnetError as e:
                self._malformed(e)
                return
            size = len(frames[0]) + vxlan.HEADER_LENGTH
            if len(frames) == 1 or size > gso[0]:
                for frame in frames:
                    sendFrame(frame)
                return
            step = min(MAX_SEGMENTS, MAX_GSO_PAYLOAD // size)
            control = [(socket.SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))]
            for dest in destinations(frames[0][:6]):
                first = 0
                try:
                    for first in range(0, len(frames), step):
                        sendmsg([header + header.join(frames[first:first + step])], control,
                                0, dest)
                except OSError as e:
                    if e.errno not in _NO_GSO:
                        failed(e, dest)
                        continue
                    gso[0] = size - 1
                    sendEach(frames[first:], dest)

        def sendEach(frames: list[bytes], dest: tuple[str, int]) -> None:
            # what UDP_SEGMENT refused: one datagram per frame, to this endpoint
            try:
                for frame in frames:
                    sendto(header + frame, dest)
            except OSError as e:
                failed(e, dest)

        self.sendFrame = sendFrame  # type: ignore[method-assign]
        self.sendVnetPacket = sendVnetPacket  # type: ignore[method-assign]

    def _malformed(self, e: Exception) -> None:
        if self.port is not None:
            self.port.dropped("malformed", f"{self.service.spec}: {e}")

    def _sendFailed(self, e: OSError, dest: tuple[str, int]) -> None:
        self.sendFailed(e, f"{self.service.spec}: to {dest[0]}",
                        "is there a route to that endpoint?")


@implementer(IPortService)
class VxlanService(SingleLinkService):
    """
    The service of one C{vxlan:} spec: one socket, one port, the expiry
    timer.
    """

    def __init__(self, switch: Any, reactor: Any, config: VxlanConfig, options: PortOptions,
                 spec: str) -> None:
        super().__init__(switch, reactor, options, spec)
        self.config = config
        self.link: VxlanLink | None = None
        self._expiry: LoopingCall | None = None

    def bound(self) -> bool:
        return self.link is not None

    def bind(self) -> None:
        link = VxlanLink(self)
        shared = socketFor(self.reactor, self.config, self.spec)
        try:
            shared.attach(link)
        except BaseException:
            shared.closeIfUnused()
            raise
        self.link = link

    def startService(self) -> None:
        super().startService()
        link = self.link
        assert link is not None
        self._expiry = LoopingCall(link.expire)
        self._expiry.clock = self.reactor
        self._expiry.start(max(self.config.expire / TICKS, 0.25), now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        self._expiry = None
        self.unplug()
        link, self.link = self.link, None
        if link is None or link.shared is None:
            return None
        return link.shared.detach(link)


def printVxlan(ctx: Any, arg: str) -> list[str]:
    """
    The console's C{vxlan/print}: each VXLAN port, its network, and the
    endpoint each learned MAC address is behind.
    """
    lines = []
    for service in ctx.ops.service.specs.values():
        link = getattr(service, "link", None)
        if isinstance(service, VxlanService) and link is not None:
            number = link.port.number if link.port is not None else None
            lines.append(f"VXLAN {f'port {number:04d}' if number is not None else 'unplugged'}"
                         f": {service.spec}")
            lines.append(f" {link.description}")
            for mac, (host, number) in sorted(link.where.items()):
                where = f"{host} port {number}" if link.learnsPorts else host
                lines.append(f" {formatMac(mac)} via {where}")
    return lines


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> VxlanService:
    """
    Build the service for a C{vxlan:} spec, with the common port options.
    """
    config = configFromSpec(spec)
    options = PortOptions.fromSpec(spec)
    spec.checkKeywords()
    return VxlanService(switch, reactor, config, options, spec.text)
