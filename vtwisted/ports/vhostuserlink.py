"""
One vhost-user front-end (a QEMU guest's NIC) on one switch port: the
protocol over the Unix socket, and the frames to and from the guest's rings.

Theory of operation
-------------------
L{VhostUserLink} reads messages (L{vtwisted.wire.vhostuser}) and the file
descriptors that come with them, and hands each to its handler in
L{_HANDLERS}: feature negotiation, the memory table it maps (counted
against the switch's address space, L{vtwisted.ports.addressspace}), the
dirty log of a migration, and each ring's size, start, addresses and
eventfds (L{vtwisted.ports.vhostrings}).  A message it cannot take fails
the connection, logged once (a connection the switch closes is aborted
if QEMU reads none of its replies: L{vtwisted.closing}).  As an L{ILink}
it writes each frame for the guest to a receive ring, picked by a hash of
the flow when the guest has several (L{flowHash}), and hands the switch
what the guest's transmit rings bring.  See L{vtwisted.ports.vhostuser} for the whole picture.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.closing import GracefulClose
from vtwisted.impair import ALL_KEYWORDS as IMPAIRMENTS
from vtwisted.interfaces import ILink
from vtwisted.ports.addressspace import SHARED, AddressSpace
from vtwisted.ports.eventfds import checkEventfd
from vtwisted.ports.vhostrings import Ring
from vtwisted.ports.virtqueue import DirtyLog, GuestMemory, VirtqueueError
from vtwisted.sockettools import describePeer, socketOf
from vtwisted.wire import arp, vnet
from vtwisted.wire import vhostuser as vu
from vtwisted.wire.vhostuser import VhostUserError

log = Logger()

#: The device's features (QEMU serves the control queue, C{F_CTRL_VQ}).
OFFERED = sum(1 << bit for bit in (
    vu.F_CSUM, vu.F_GUEST_CSUM, vu.F_GUEST_TSO4, vu.F_GUEST_TSO6, vu.F_GUEST_ECN,
    vu.F_HOST_TSO4, vu.F_HOST_TSO6, vu.F_HOST_ECN, vu.F_MRG_RXBUF, vu.F_CTRL_VQ, vu.F_MQ,
    vu.F_LOG_ALL, vu.F_INDIRECT_DESC, vu.F_EVENT_IDX, vu.F_PROTOCOL_FEATURES, vu.F_VERSION_1))
#: With C{packed=on}: packed rings too (they do not survive reconnects).
PACKED_OFFERED = OFFERED | 1 << vu.F_RING_PACKED
PROTOCOL_OFFERED = 1 << vu.P_MQ | 1 << vu.P_LOG_SHMFD | 1 << vu.P_RARP | 1 << vu.P_REPLY_ACK
#: What a guest must take for super-frames to be passed to it whole.
SUPER_FRAMES = sum(1 << bit for bit in (
    vu.F_GUEST_CSUM, vu.F_GUEST_TSO4, vu.F_GUEST_TSO6, vu.F_GUEST_ECN))
#: Keywords of a spec that configure the switch port, not the endpoint.
PORT_KEYWORDS = ("vlan", "trunk", "mtu", *IMPAIRMENTS)
#: Queue pairs a guest may use (C{-netdev vhost-user,queues=N}).
MAX_QUEUE_PAIRS = 8
#: GSO types a guest with L{SUPER_FRAMES} takes whole (not UDP GSO).
_WHOLE = frozenset((vnet.GSO_NONE, vnet.GSO_TCPV4, vnet.GSO_TCPV6,
                    vnet.GSO_TCPV4 | vnet.GSO_ECN, vnet.GSO_TCPV6 | vnet.GSO_ECN))


def trustedPeer(uid: int | None) -> bool:
    """
    Whether a front-end running as C{uid} may share memory not sealed
    against shrinking, or in huge pages (L{vtwisted.ports.sharedmemory}):
    it runs as root or as the switch's user, so it could kill the switch
    anyway.
    """
    return uid is not None and uid in (0, os.geteuid())


@implementer(ILink, IFileDescriptorReceiver)
class VhostUserLink(Protocol):
    """
    One guest's vhost-user connection, plugged into a switch port.
    """

    module = "vhost-user"
    vnetHeader = False

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.port: Any = None
        self.uid: int | None = None
        #: The front-end runs as the switch's user or as root: it may share
        #: memory not sealed against shrinking (QEMU's memory-backend-file)
        #: or in huge pages (hugetlb=on).
        self.trusted = False
        self.linkId = 0
        self.description = self.peer = ""
        self.features = 0
        self.protocolFeatures = 0
        self.memory: GuestMemory | None = None
        #: Where the pages written are logged while the guest migrates.
        self.dirtyLog: DirtyLog | None = None
        #: Whether writes are logged now (C{F_LOG_ALL} and a log).
        self.logging = False
        self.rings = [Ring(self, index) for index in range(2 * MAX_QUEUE_PAIRS)]
        #: The receive rings frames for the guest can go to now.
        self.receiving: list[Ring] = []
        self.headerLength = vnet.HEADER_LENGTH
        self.mergeable = self.eventIndex = self.packed = False
        self._receive: Any = None
        self._buffer = b""
        self._fds: deque[int] = deque()
        self._broken = False
        #: Closed by the switch: aborted if QEMU reads none of the replies.
        self.closing = GracefulClose(owner.reactor)

    # The connection

    def connectionMade(self) -> None:
        transport: Any = self.transport
        handle = socketOf(transport)
        self.linkId = handle.fileno()
        self.uid, self.peer = describePeer(transport.getPeer(), handle)
        self.trusted = trustedPeer(self.uid)
        self.description = self.peer
        self.owner.linkUp(self)

    def whenReady(self) -> None:
        """
        When a L{ClientService} counts the connection as made: at once.
        """
        return None

    def receiverFor(self, switch: Any) -> Any:
        """
        What each packet from the guest is handed to.
        """
        return switch.vnetPacketReceived

    def plug(self, switch: Any, port: Any) -> None:
        """
        Attach to C{port}; packets from the guest go to what L{receiverFor}
        says.
        """
        self.port = port
        self._receive = self.receiverFor(switch)
        switch.attach(port, self)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        """
        Keep C{descriptor} for the message it came with; a front-end sending
        more than two messages take (two full memory tables: the next
        message's may come in the read that ends the one before) is refused,
        as it could otherwise pile them up, a byte of an unfinished message
        at a time, until the switch could open no more.
        """
        if self._broken or len(self._fds) >= 2 * vu.MAX_REGIONS:
            os.close(descriptor)
            self.fail(f"more than {2 * vu.MAX_REGIONS} file descriptors came before the "
                      "messages that take them")
            return
        self._fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data
        request = None
        while not self._broken and len(buffer) >= vu.HEADER.size:
            try:
                header = vu.Header.parse(buffer)
            except VhostUserError as e:
                self.fail(str(e))
                return
            end = vu.HEADER.size + header.size
            if len(buffer) < end:
                break
            payload, buffer = buffer[vu.HEADER.size:end], buffer[end:]
            request = header.request
            try:
                self.requestReceived(header, payload)
            except (VhostUserError, VirtqueueError) as e:
                self.fail(str(e))
                return
        self._buffer = buffer
        if self._fds and not buffer and not self._broken:
            # descriptors arrive with the first bytes of their message: with
            # every message read, these came with one that takes none
            self.fail(f"{len(self._fds)} file descriptors came with request "
                      f"{request}, which takes no more")

    def requestReceived(self, header: vu.Header, payload: bytes) -> None:
        """
        Act on one request from QEMU, answering it if it asks for a value.
        """
        request = header.request
        handler = _HANDLERS.get(request)
        if handler is None:
            raise VhostUserError(f"request {request} is not supported")
        answer = handler(self, request, payload)
        if answer is None and header.flags & vu.FLAG_NEED_REPLY and \
                self.protocolFeatures & 1 << vu.P_REPLY_ACK:
            answer = vu.numberReply(request, 0)
        if answer is not None:
            self.transport.write(answer)  # type: ignore[union-attr]

    def fail(self, problem: str) -> None:
        """
        QEMU or the guest sent something unusable: say what, count it and
        close the connection.
        """
        if self._broken:
            return
        self._broken = True
        for ring in self.rings:
            ring.stop()
        if self.port is not None:
            self.port.counters.drops["malformed"] += 1
        if not self.owner.failedOnTrial(self, f"{problem}; closing the connection",
                                        "malformed"):
            log.error("{spec}: {peer}: {problem}; closing the connection",
                      spec=self.owner.spec, peer=self.description, problem=problem)
        self.closing.close(self.transport, f"{self.owner.spec}: {self.description}")

    def connectionLost(self, reason: Any = None) -> None:
        self.closing.lost()
        for ring in self.rings:
            ring.stop()
            ring.closeDescriptors()
        while self._fds:
            os.close(self._fds.popleft())
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        self._setLog(None)
        if not self._broken and self.port is not None and self in self.owner.links:
            self.owner.peerEnded(self, reason)  # QEMU ended it
        self.owner.linkDown(self)

    def close(self) -> None:
        """
        Unplug and disconnect QEMU.
        """
        self.owner.linkDown(self)
        if self.transport is not None:
            self.closing.close(self.transport, f"{self.owner.spec}: {self.description}")

    # Requests

    def takeDescriptor(self, what: str) -> int:
        if not self._fds:
            raise VhostUserError(f"{what} came without its file descriptor")
        return self._fds.popleft()

    def getFeatures(self, request: int, payload: bytes) -> bytes:
        return vu.numberReply(request, self.owner.offeredFeatures)

    def setFeatures(self, request: int, payload: bytes) -> None:
        features = vu.number(request, payload)
        unknown = features & ~self.owner.offeredFeatures
        if unknown:
            raise VhostUserError(f"features {unknown:#x} were never offered")
        self.features = features
        if not features & 1 << vu.F_PROTOCOL_FEATURES:
            for ring in self.rings:  # rings start enabled without the protocol features
                ring.enabled = True
            self.ringsChanged()
        self.logging = bool(features & 1 << vu.F_LOG_ALL) and self.dirtyLog is not None
        self.mergeable, self.eventIndex, self.packed = (
            bool(features & 1 << bit) for bit in (vu.F_MRG_RXBUF, vu.F_EVENT_IDX, vu.F_RING_PACKED))
        modern = features & (1 << vu.F_VERSION_1)
        self.headerLength = vnet.HEADER_LENGTH + 2 if modern or self.mergeable else \
            vnet.HEADER_LENGTH
        whole = features & SUPER_FRAMES == SUPER_FRAMES
        if whole != self.vnetHeader:
            self.vnetHeader = whole
            if self.port is not None:
                self.port.rewire()
        self._describe()

    def _describe(self) -> None:
        """
        What C{port/print} says: the peer, the frames it takes, the queues.
        """
        text = self.peer
        if self.features:
            text += ", super-frames" if self.vnetHeader else ", plain frames"
            text += (", mergeable buffers" if self.mergeable else "") + \
                (", packed rings" if self.packed else "")
        if len(self.receiving) > 1:
            text += f", {len(self.receiving)} queue pairs"
        if self.dirtyLog is not None:
            text += f", {self.dirtyLog.writes} writes logged for a migration"
        self.description = text

    def getProtocolFeatures(self, request: int, payload: bytes) -> bytes:
        return vu.numberReply(request, PROTOCOL_OFFERED)

    def setProtocolFeatures(self, request: int, payload: bytes) -> None:
        features = vu.number(request, payload)
        if features & ~PROTOCOL_OFFERED:
            raise VhostUserError(f"protocol features {features & ~PROTOCOL_OFFERED:#x} were "
                                 "never offered")
        self.protocolFeatures = features

    def getQueueCount(self, request: int, payload: bytes) -> bytes:
        return vu.numberReply(request, MAX_QUEUE_PAIRS)

    def setRingEnabled(self, request: int, payload: bytes) -> None:
        index, enabled = vu.ringState(request, payload)
        self.ring(index).enabled = bool(enabled)
        self.ringsChanged()

    def ringsChanged(self) -> None:
        """
        A ring started, stopped, or was enabled or disabled: frames for the
        guest go to the receive rings running and enabled now.
        """
        self.receiving = [ring for ring in self.rings[0::2]
                          if ring.queue is not None and ring.enabled]
        self._describe()

    def setMemoryTable(self, request: int, payload: bytes) -> None:
        regions = vu.memoryTable(request, payload)
        if len(self._fds) < len(regions):
            raise VhostUserError(f"the memory table of {len(regions)} regions came without "
                                 f"its file descriptors ({len(self._fds)})")
        fds = [self._fds.popleft() for _ in regions]
        memory = GuestMemory.map(regions, fds, self.trusted, self._reserve, self.uid)
        for ring in self.rings:
            ring.stop()
        if self.memory is not None:
            self.memory.close()
        self.memory = memory
        for ring in self.rings:
            ring.restart()

    def setLogBase(self, request: int, payload: bytes) -> bytes:
        """
        Map the dirty log QEMU shares for a migration; answer with an empty
        payload, as QEMU waits for (and as DPDK sends).
        """
        size, offset = vu.logArea(request, payload)
        self._setLog(DirtyLog.map(self.takeDescriptor("the dirty log"), size, offset,
                                  self.trusted, self._reserve, self.uid))
        return vu.reply(request, b"")

    def _reserve(self, size: int, what: str) -> Callable[[], None]:
        """
        Count C{size} bytes of the switch's address space about to be
        mapped for C{what}, against the front-end's user unless trusted.
        """
        space: AddressSpace = getattr(self.owner, "addressSpace", SHARED)
        return space.reserve(size, None if self.trusted else self.uid, what)

    def _setLog(self, log: DirtyLog | None) -> None:
        if self.dirtyLog is not None:
            self.dirtyLog.close()
        self.dirtyLog = log
        self.logging = bool(self.features & 1 << vu.F_LOG_ALL) and log is not None
        self._describe()

    def setLogDescriptor(self, request: int, payload: bytes) -> None:
        """
        An eventfd to say the log changed: optional, and QEMU reads the log
        anyway, so it is closed.
        """
        if self._fds:
            os.close(self._fds.popleft())

    def sendRarp(self, request: int, payload: bytes) -> None:
        """
        The guest migrated here: announce its address with a broadcast RARP
        from its port, so that every switch on the way (this one first)
        learns where it is now, as QEMU does for its other backends.
        """
        mac = vu.number(request, payload).to_bytes(8, "little")[:6]
        if self.port is not None and self._receive is not None:
            # what the guest sends always has a header (see receiverFor), and
            # QEMU asks for this before the device has its features
            self._receive(self.port, vnet.PLAIN_HEADER + arp.rarpAnnouncement(mac))

    def ring(self, index: int) -> Ring:
        if not 0 <= index < len(self.rings):
            raise VhostUserError(f"queue {index} does not exist ({MAX_QUEUE_PAIRS} queue "
                                 "pairs at most)")
        return self.rings[index]

    def setRingNumber(self, request: int, payload: bytes) -> None:
        index, size = vu.ringState(request, payload)
        self.ring(index).size = size

    def setRingBase(self, request: int, payload: bytes) -> None:
        index, base = vu.ringState(request, payload)
        self.ring(index).base = base

    def setRingAddresses(self, request: int, payload: bytes) -> None:
        addresses = vu.ringAddresses(request, payload)
        self.ring(addresses.ring).addresses = addresses

    def getRingBase(self, request: int, payload: bytes) -> bytes:
        index, _ = vu.ringState(request, payload)
        ring = self.ring(index)
        ring.stop()
        ring.closeDescriptors()
        self._describe()
        return vu.stateReply(request, index, ring.base)

    def setRingDescriptor(self, request: int, payload: bytes) -> None:
        value = vu.number(request, payload)
        ring = self.ring(value & vu.RING_INDEX_MASK)
        if request == vu.SET_VRING_KICK and value & vu.NO_FD:
            raise VhostUserError("a ring without a kick eventfd (polling) is not supported")
        fd = -1 if value & vu.NO_FD else self.takeDescriptor(f"request {request}")
        if fd >= 0 and request != vu.SET_VRING_ERR:
            checkEventfd(fd, "kick" if request == vu.SET_VRING_KICK else "call", ring.index)
        if request == vu.SET_VRING_KICK:
            ring.setKick(fd)
        elif request == vu.SET_VRING_CALL:
            ring.setCall(fd)
        elif fd >= 0:
            os.close(fd)  # error notifications: the switch has none to give

    def ignore(self, request: int, payload: bytes) -> None:
        return None

    def resetOwner(self, request: int, payload: bytes) -> None:
        for ring in self.rings:
            ring.stop()
            ring.closeDescriptors()

    # ILink

    def sendFrame(self, frame: bytes) -> None:
        """
        Write one plain frame to the guest, behind an empty header.
        """
        rings = self.receiving
        if len(rings) == 1:
            rings[0].deliver(vnet.PLAIN_HEADER, frame)
        elif rings:
            rings[flowHash(frame, 0) % len(rings)].deliver(vnet.PLAIN_HEADER, frame)
        else:
            self.port.dropped("down", "the guest's receive queues are not running")

    def sendVnetPacket(self, packet: bytes) -> None:
        """
        Write one virtio-net packet to the guest; UDP GSO is cut up first.
        """
        if packet[1] not in _WHOLE:
            for frame in vnet.toFrames(packet):
                self.sendFrame(frame)
            return
        rings = self.receiving
        if len(rings) == 1:
            rings[0].deliver(packet[:10], memoryview(packet)[10:])
        elif rings:
            ring = rings[flowHash(packet, 10) % len(rings)]
            ring.deliver(packet[:10], memoryview(packet)[10:])
        else:
            self.port.dropped("down", "the guest's receive queues are not running")


def flowHash(data: bytes, at: int) -> int:
    """
    A number that is the same for every frame of one flow (addresses and,
    for TCP and UDP, ports; of the frame at offset C{at}), so that a flow
    stays on one of the guest's receive queues and in order.
    """
    kind = data[at + 12:at + 14]
    if kind == b"\x08\x00":
        key = data[at + 26:at + 34]
        if data[at + 23] in (6, 17) and data[at + 14] == 0x45:
            key += data[at + 34:at + 38]
    elif kind == b"\x86\xdd":
        key = data[at + 22:at + 58]
    else:
        key = data[at:at + 12]
    return hash(key)


_HANDLERS: dict[int, Any] = {
    vu.GET_FEATURES: VhostUserLink.getFeatures,
    vu.SET_FEATURES: VhostUserLink.setFeatures,
    vu.SET_OWNER: VhostUserLink.ignore,
    vu.RESET_OWNER: VhostUserLink.resetOwner,
    vu.SET_MEM_TABLE: VhostUserLink.setMemoryTable,
    vu.SET_LOG_BASE: VhostUserLink.setLogBase,
    vu.SET_LOG_FD: VhostUserLink.setLogDescriptor,
    vu.SEND_RARP: VhostUserLink.sendRarp,
    vu.SET_VRING_NUM: VhostUserLink.setRingNumber,
    vu.SET_VRING_BASE: VhostUserLink.setRingBase,
    vu.SET_VRING_ADDR: VhostUserLink.setRingAddresses,
    vu.GET_VRING_BASE: VhostUserLink.getRingBase,
    vu.SET_VRING_KICK: VhostUserLink.setRingDescriptor,
    vu.SET_VRING_CALL: VhostUserLink.setRingDescriptor,
    vu.SET_VRING_ERR: VhostUserLink.setRingDescriptor,
    vu.GET_PROTOCOL_FEATURES: VhostUserLink.getProtocolFeatures,
    vu.SET_PROTOCOL_FEATURES: VhostUserLink.setProtocolFeatures,
    vu.GET_QUEUE_NUM: VhostUserLink.getQueueCount,
    vu.SET_VRING_ENABLE: VhostUserLink.setRingEnabled,
}
