"""
Linux TAP devices opened by the switch (C{tap:NAME}), with virtio-net
offloads.

Theory of operation
-------------------
L{TapService} opens (or creates) the device in C{privilegedStartService}, so
C{twistd --uid} can drop privileges afterwards; after C{TUNSETIFF} the device
is only ever used through its file descriptor, never by name, so it may be
moved to another network namespace and keep working; C{netns=} has the
switch move it there itself (L{vtwisted.ports.tapnetns}).

The device is opened with C{IFF_VNET_HDR} and C{TUNSETOFFLOAD} (checksum, TSO
for IPv4 and IPv6 with ECN, USO where the kernel has it): every read and
write then starts with a 10-byte virtio-net header, and the kernel hands over
TCP super-frames of up to 64 KB with their checksum left for later.  The link
gives those packets to L{vtwisted.switch.Switch.vnetPacketReceived}
untouched: the switch passes them whole to other offload ports and resolves
them into ordinary frames for the rest (see L{vtwisted.wire.vnet}).  Plain
frames from other ports are written behind an all-zero header with one
C{writev}.  With C{offload=off} the device is opened without the header and
carries ordinary frames.  C{port/print} tells the two apart: C{offload=off}
when asked, C{offload=none (refused by the kernel)} when the header is on
but the kernel took no offload (frames then stay small).

Cutting super-frames costs Python per segment, and the kernel does it in C.
So with C{offload=auto} (the default) the offloads follow the switch's other
ports (L{TapLink.superFramesTaken}): on while one of them takes virtio-net
packets whole, off (C{TUNSETOFFLOAD} of nothing, the header kept) while none
does.

Reads are drained in batches per reactor wake-up.  With USO negotiated,
runs of UDP datagrams of one flow within a batch reach the switch merged
into USO packets (L{vtwisted.wire.udpgro}; C{coalesce=off} turns it off),
unless the switch says they would only be cut apart again.  A write the
device cannot take now (its queue is full) is dropped and counted, never
buffered.  If the device disappears the port goes down and says so; nothing
else stops.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

from twisted.logger import Logger
from twisted.pair.ethernet import EthernetProtocol
from twisted.pair.tuntap import TunnelFlags, TuntapPort
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.interfaces import ILink, IRevivablePortService
from vtwisted.polling import pollerFor
from vtwisted.portoptions import PortOptions
from vtwisted.ports import tapnetns
from vtwisted.ports.singlelink import SingleLinkService
from vtwisted.ports.tapdevice import (
    IFNAMSIZ,
    TUNSETIFF,
    RealTapSystem,
    checkName,
    openError,
)
from vtwisted.ports.tapoffloads import TapOffloads
from vtwisted.spec import PortSpec
from vtwisted.wire import udpgro, vnet

log = Logger()

#: Largest read: a 64 KB super-frame, its header and a VLAN tag.
MAX_READ = 65536 + vnet.HEADER_LENGTH + 4 + 64
#: Seconds to keep polling the TAP devices after the last packet (see BusyPoller).
#: Off by default: on the two-core machine this was measured on, polling
#: gained no TCP throughput and cost 7 % of the 64-byte UDP packet rate, the
#: CPU it burns being taken from the namespaces' own stacks.
DEFAULT_BUSY_POLL = 0.0
#: Bytes read per wake-up before yielding to other ports.
READ_BUDGET = 1024 * 1024
_GRO_CANDIDATES = udpgro.CANDIDATES
_PARTIAL = udpgro.PARTIAL
_GONE = (errno.EBADFD, errno.EBADF, errno.ENODEV, errno.ENXIO)
#: A read fails with EIO while the device is being unregistered.
_READ_GONE = (*_GONE, errno.EIO)


@implementer(ILink)
class TapLink(TapOffloads, TuntapPort):
    """
    One TAP device plugged into a switch port.
    """

    module = "tuntap"
    uid = None
    linkId = 0

    def __init__(
        self,
        service: TapService,
        name: str,
        offload: bool,
        system: Any,
        reactor: Any,
        uso: bool = True,
        auto: bool = False,
    ) -> None:
        super().__init__(name.encode(), EthernetProtocol(), MAX_READ, reactor, system)
        self._mode = TunnelFlags.IFF_TAP
        if offload:
            self._mode |= TunnelFlags.IFF_VNET_HDR
        self.vnetHeader = offload
        self.uso = uso
        self.service = service
        self.name = name
        self.offloads = 0
        #: Offloads follow the other ports (C{offload=auto}).
        self.auto = auto and offload
        #: What the kernel agreed to when asked for everything.
        self.supported = 0
        self.switch: Any = None
        self.port: Any = None
        self._receive: Any = None
        self._warnedGone = False
        self.poller = pollerFor(service.switch)
        self._closing = False
        self.busyPoll: float = getattr(service, "busyPoll", DEFAULT_BUSY_POLL)
        self.coalesce: bool = getattr(service, "coalesce", True)
        self._gro: udpgro.UdpCoalescer | None = None
        self._offloadText = ""
        self._forgetDescriptor: Any = _nothing

    def open(self) -> None:
        """
        Open the device and negotiate offloads.

        @raise OSError: with a message saying what to do.
        """
        try:
            self.startListening()
        except Exception as e:
            raise openError(self.service.spec, self.name, e) from None
        self.stopReading()
        if not self.vnetHeader:
            self._offloadText = "off"  # as asked: no header, no offloads
            return
        self.offloads = self.supported = self._negotiate()
        self._describeOffloads()

    def plug(self, switch: Any, port: Any) -> None:
        """
        Attach to C{port} and start reading.
        """
        self.port = port
        self.switch = switch
        self.poller.links.append(self)
        self.poller.updateSpin()
        self._makeSenders()
        if self.vnetHeader:
            self._receive = switch.vnetPacketReceived
        else:
            self._receive = switch.frameReceived
        self._makeCoalescer()
        if self.auto and self.supported:
            switch.watchSuperFrames(port, self.superFramesTaken)
        switch.attach(port, self)
        self.startReading()

    def doRead(self) -> None:
        """
        Hand every packet waiting (up to a budget) to the switch, then keep
        polling if busy polling is on (see L{BusyPoller}).
        """
        self.readBatch()
        self.poller.run()

    def readBatch(self) -> bool:
        """
        Read what is waiting, up to L{READ_BUDGET} bytes.

        @return: whether anything was read.
        """
        read = self._system.read
        fd = self._fileno
        receive = self._receive
        port = self.port
        budget = READ_BUDGET
        gro = self._gro
        if gro is not None and gro.resting():
            gro = None
        held = False
        while budget > 0:
            try:
                data = read(fd, MAX_READ)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if held:  # hand them on while the port is still plugged in
                    held = False
                    self._flushHeld(gro)
                self._readFailed(e)
                break
            budget -= len(data) + 1500
            try:
                if gro is not None:
                    if data[6:10] in _GRO_CANDIDATES and data[:2] == _PARTIAL:
                        held = True
                        gro.add(data)
                        continue
                    if held:
                        held = False
                        gro.flush()
                receive(port, data)
            except Exception:
                log.failure("{spec}: the switch failed on a frame", spec=self.service.spec)
        if held:
            self._flushHeld(gro)
        return budget != READ_BUDGET

    def _readFailed(self, e: OSError) -> None:
        """
        A read failed: the device is gone (the port goes down), or the kernel
        could not hand over one packet (C{EINVAL} for a packet the
        virtio-net header cannot describe, "unexpected GSO type"), which it
        has dropped: count it and read on at the next wake-up.
        """
        if e.errno in _READ_GONE:
            self._failed("reading", e)
        else:
            self.port.dropped(
                "malformed",
                f"{self.service.spec}: reading {self.name} failed: {e.strerror} "
                f"(errno {e.errno}); the kernel dropped that packet",
            )

    def _flushHeld(self, gro: udpgro.UdpCoalescer | None) -> None:
        """
        End the coalescer's batch: hand on what it holds (the batch's
        coalescer, even if the offloads changed within it).
        """
        if gro is None:
            return
        try:
            gro.finish()
        except Exception:
            log.failure("{spec}: the switch failed on a frame", spec=self.service.spec)

    def _receiveOne(self, packet: bytes) -> None:
        """
        Hand one packet from the coalescer to the switch.
        """
        try:
            self._receive(self.port, packet)
        except Exception:
            log.failure("{spec}: the switch failed on a frame", spec=self.service.spec)

    @property
    def description(self) -> str:
        """
        The device, its offloads, and how many datagrams were coalesced.
        """
        name = self.name
        netns = getattr(self.service, "netns", None)
        if netns is not None:
            name += f" in netns {netns.text}"
        if not self._offloadText:
            return name
        text = f"{name} offload={self._offloadText}"
        gro = self._gro
        if gro is not None:
            text += f" coalesced {gro.datagrams} datagrams into {gro.packets}"
        return text

    def _makeSenders(self) -> None:
        """
        Bind L{sendFrame} and L{sendVnetPacket} as closures over the
        descriptor: they run once per frame, so every attribute lookup saved
        there counts.
        """
        fd = self._fileno
        write = self._system.write
        writev = self._system.writev
        failed = self._writeFailed
        plainHeader = (vnet.PLAIN_HEADER,)

        def sendVnetPacket(packet: bytes) -> None:
            try:
                write(fd, packet)
            except OSError as e:
                failed(e)

        def sendFrame(frame: bytes) -> None:
            try:
                writev(fd, (*plainHeader, frame))
            except OSError as e:
                failed(e)

        def forget() -> None:
            # after the descriptor closes its number may be reused: a sender still
            # held somewhere then fails with EBADF instead of writing to another file
            nonlocal fd
            fd = -1

        self._forgetDescriptor = forget
        self.sendVnetPacket = sendVnetPacket  # type: ignore[method-assign]
        # without the header, a plain frame is written as it is
        self.sendFrame = sendFrame if self.vnetHeader else sendVnetPacket  # type: ignore[method-assign,assignment]

    def sendFrame(self, frame: bytes) -> None:
        """
        Write one plain frame (behind an empty header if offloads are on).
        Replaced per device by L{_makeSenders}.
        """
        raise ConnectionError(f"{self.name} is not open")

    def sendVnetPacket(self, packet: bytes) -> None:
        """
        Write one virtio-net packet as it is.  Replaced per device by
        L{_makeSenders}.
        """
        raise ConnectionError(f"{self.name} is not open")

    def _writeFailed(self, e: OSError) -> None:
        if e.errno in (errno.EAGAIN, errno.ENOBUFS):
            self.port.dropped("busy", f"{self.name}: device queue full")
        elif e.errno == errno.EIO:
            self.port.dropped("down", f"{self.name}: the interface is down (EIO)")
        elif e.errno == errno.EINVAL:
            self.port.dropped("malformed", f"{self.name}: the kernel refused a frame (EINVAL)")
        elif e.errno in _GONE:
            self._failed("writing", e)
        else:
            self.port.dropped("peer", f"{self.name}: {e.strerror} (errno {e.errno})")

    def _failed(self, doing: str, e: OSError) -> None:
        """
        The device went away: take the port down and say so.
        """
        if not self._warnedGone:
            self._warnedGone = True
            log.error(
                "{spec}: {doing} {name} failed: {error} (errno {errno}); the device is "
                "gone, the port goes down",
                spec=self.service.spec,
                doing=doing,
                name=self.name,
                error=e.strerror,
                errno=e.errno,
            )
        self.service.linkGone(self)

    def close(self) -> None:
        """
        Unplug and close the device.
        """
        self.service.linkGone(self)

    def shut(self) -> None:
        """
        Stop reading and close the file descriptor.
        """
        self._closing = True
        if self.switch is not None:
            self.switch.unwatchSuperFrames(self.port, self.superFramesTaken)
        self._forgetDescriptor()
        if self in self.poller.links:
            self.poller.links.remove(self)
            self.poller.updateSpin()
        if self.connected:
            self.stopReading()
            self.connectionLost(Failure(ConnectionError("closed")))

    def connectionLost(self, reason: Any = None) -> None:
        """
        The descriptor is closing: by us, or because the reactor saw it fail
        (the device was deleted), in which case the port goes down.
        """
        if not self._closing and self.port is not None and self in self.port.links:
            self._failed("watching", OSError(errno.ENODEV, "the device was deleted"))
        if self.connected:
            super().connectionLost(reason)

    def _openTunnel(self, name: bytes, mode: Any) -> tuple[int, bytes]:
        """
        Open C{/dev/net/tun} and attach it to the device, closing the
        descriptor again if the device cannot be had (Twisted's leaks it).
        """
        system = self._system
        fileno = system.open(b"/dev/net/tun", system.O_RDWR | system.O_CLOEXEC | system.O_NONBLOCK)
        try:
            result = system.ioctl(fileno, TUNSETIFF, struct.pack("16sH", name, mode.value))
        except BaseException:
            system.close(fileno)
            raise
        return fileno, result[:IFNAMSIZ].strip(b"\0")


def _nothing() -> None:
    """
    What L{TapLink._forgetDescriptor} is before the senders are made.
    """


@implementer(IRevivablePortService)
class TapService(SingleLinkService):
    """
    The service of one C{tap:NAME} spec.
    """

    def __init__(
        self,
        switch: Any,
        reactor: Any,
        name: str,
        offload: bool | str = True,
        options: PortOptions | None = None,
        spec: str = "",
        system: Any = None,
        busyPoll: float = DEFAULT_BUSY_POLL,
        uso: bool = True,
        coalesce: bool = True,
        netns: tapnetns.Namespace | None = None,
    ) -> None:
        super().__init__(switch, reactor, options, spec or f"tap:{name}")
        #: The namespace to move the device into, if any.
        self.netns = netns
        #: Moves a device into a namespace (replaceable in tests).
        self.mover: Any = tapnetns.moveDevice
        self.uso = uso
        self.coalesce = coalesce
        self.busyPoll = busyPoll
        self.deviceName = name
        #: The header is on (C{offload=on} or C{auto}).
        self.offload = offload in (True, "on", "auto")
        #: Offloads follow the other ports (see L{TapLink.superFramesTaken}).
        self.autoOffload = offload == "auto"
        self.system = system if system is not None else RealTapSystem()
        self.link: TapLink | None = None

    def bound(self) -> bool:
        return self.link is not None

    def bind(self) -> None:
        """
        Open the device, and move it into its namespace if C{netns=} names
        one (the error says what to do if that fails).
        """
        if self.netns is None:
            self.link = self._open()
        else:
            self.link = self.netns.openInto(self.spec, self.deviceName, self._open,
                                            TapLink.shut, self.mover)

    def _open(self) -> TapLink:
        link = TapLink(self, self.deviceName, self.offload, self.system, self.reactor, self.uso,
                       self.autoOffload)
        link.open()
        return link

    def linkGone(self, link: TapLink) -> None:
        """
        Unplug C{link} and close its device.
        """
        if link.port is not None:
            self.switch.detach(link.port, link)
        link.shut()
        if link is self.link:
            self.link = None

    def stopService(self) -> None:
        super().stopService()
        if self.link is not None:
            self.linkGone(self.link)


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> TapService:
    """
    Build the service for
    C{tap:NAME[:offload=auto|on|off][:uso=on|off][:coalesce=on|off][:busypoll=USEC]
    [:netns=NS[:up=on|off]]} and the common options.  C{netns=} moves the
    device into the network namespace C{NS} (an C{ip netns} name or a path)
    and brings it up there unless C{up=off} (see L{vtwisted.ports.tapnetns}).  C{uso=off} leaves UDP
    segmentation offload out of the offloads asked for: UDP GSO senders then
    send ordinary datagrams
    (for a kernel or a peer that mishandles them; TCP ran level with and
    without it), and nothing is coalesced.  C{coalesce=off} hands every
    datagram read to the switch as it came instead of merging runs of one
    flow into USO packets (see L{vtwisted.wire.udpgro}).
    """
    (name,) = spec.positional(["device name"], 1)
    name = checkName(spec, name)
    offload = spec.choice("offload", ("auto", "on", "off"), "auto")
    uso = spec.boolean("uso", True)
    coalesce = spec.boolean("coalesce", True)
    busyPoll = spec.integer("busypoll", round(DEFAULT_BUSY_POLL * 1e6), 0, 10000)
    netns = tapnetns.Namespace.fromSpec(spec)
    options = PortOptions.fromSpec(spec)
    spec.checkKeywords()
    assert busyPoll is not None
    return TapService(
        switch, reactor, name, offload, options, spec.text, busyPoll=busyPoll / 1e6, uso=uso,
        coalesce=coalesce, netns=netns,
    )
