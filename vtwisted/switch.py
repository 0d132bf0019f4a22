"""
The forwarding core: ports, VLANs, MAC learning, flooding, hub mode.

Theory of operation
-------------------
A L{Switch} owns numbered L{SwitchPort}s.  Port types attach links (see
L{vtwisted.interfaces.ILink}) to ports; a port with at least one link is
active.  A link hands each frame it reads to L{Switch.frameReceived}, or, if
it negotiated the virtio-net header, each packet to
L{Switch.vnetPacketReceived}.

For every frame the switch counts it on the ingress port (not a runt, shorter
than an Ethernet header: vde_switch ignores those, so they are only counted
as drops), finds its VLAN (the
802.1Q tag, or the port's untagged VLAN) and drops it unless the port is a
member, learns the source address in that VLAN's MAC table, looks up the
destination and sends to that port, or floods to every other active member of
the VLAN.  A port receives a frame tagged if it is a tagged member of the
frame's VLAN and untagged if that VLAN is its untagged one.

The common case (an untagged frame to a known port in the same VLAN) is
remembered as a route: the ingress port's C{routes} maps the frame's first
bytes (virtio-net header if any, addresses, EtherType) to the egress port and
the frame lengths the route holds for, so the next frames of the flow take
one dictionary lookup and one call.  Routes are only installed once the
source address is learned on the ingress port, and every change that could
alter a decision (the MAC table, VLAN membership, links, MTUs, hub mode)
forgets them all; so does every L{Switch.tick}, so that the first frame of
each second refreshes its source address's age.  A port whose arriving
frames are impaired (L{vtwisted.impair}) gets no routes: its frames go to
the impairment, which hands them to L{Switch.forwardFrame} in its time.  Anything else
takes the slow path, L{vtwisted.delivery}: it makes each form an egress
port may need (tag added or removed, virtio-net header kept or resolved
into plain frames) at most once per received frame, whatever the number of
destinations.

The switch performs no I/O and reads no clock: L{Switch.tick} advances its
coarse time in whole seconds and ages the MAC table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from vtwisted import errors
from vtwisted.debugevents import DebugEvents
from vtwisted.delivery import Delivery
from vtwisted.fdb import MacTable
from vtwisted.interfaces import ILink, ISwitch
from vtwisted.porttable import PortTable
from vtwisted.switchport import SwitchPort
from vtwisted.vlans import Vlan, VlanRegistry
from vtwisted.wire import arp, vnet, vnetcheck
from vtwisted.wire import vlan as vlanwire
from vtwisted.wire.ethernet import MIN_FRAME

if TYPE_CHECKING:
    from vtwisted.fstp import FastSpanningTree

DEFAULT_NUMPORTS = 32
GC_INTERVAL = 2
_TPID = vlanwire.TPID
#: The EtherType of the announcements that move an address at once (see L{vtwisted.fdb}).
_RARP = arp.ETHERTYPE_RARP.to_bytes(2, "big")
_VNET = vnet.HEADER_LENGTH
_validate = vnetcheck.validate
#: The most routes one port remembers.
ROUTE_LIMIT = 1024
_knownHeaders = vnetcheck.knownPlainHeaders
_largest = vnetcheck.largestFrame
_routeBounds = vnetcheck.routeBounds


@implementer(ISwitch)
class Switch(PortTable, Delivery):
    """
    A learning Ethernet switch with VLANs, or a hub.

    @ivar ports: port number to L{SwitchPort}, for ports that exist.
    @ivar fdb: the L{MacTable}.
    @ivar now: coarse time in whole seconds, set by L{tick}.
    @ivar mac: the switch's own address (BPDUs, C{showinfo}).
    @ivar stp: the spanning tree while it runs (see L{vtwisted.fstp}).
    @ivar events: the debug events console sessions listen to.
    """

    def __init__(
        self,
        numPorts: int = DEFAULT_NUMPORTS,
        hub: bool = False,
        macTable: MacTable | None = None,
        mac: bytes | None = None,
    ) -> None:
        """
        @param mac: the switch's address; vde_switch's default is
            C{00:ff} and four random bytes.
        """
        if numPorts < 1:
            raise errors.invalid("the switch needs at least one port")
        self.numPorts = numPorts
        self.hub = hub
        self.fdb = macTable if macTable is not None else MacTable()
        self.ports: dict[int, SwitchPort] = {}
        self.vlans = VlanRegistry(self.fdb)
        self.fdb.onChange = self.forgetRoutes
        self.vlans.onChange = self._membershipChanged
        self.vlans.onImplicit = self._implicitVlanCreated
        self.mac = mac if mac is not None else b"\x00\xff" + os.urandom(4)
        self.stp: FastSpanningTree | None = None
        self.events = DebugEvents()
        #: Ports that get a copy of every frame any other port reads.
        self.monitors: tuple[SwitchPort, ...] = ()
        #: The clock port impairments wait on (the service sets it).
        self.clock: Any = None
        self.events.onChange = lambda: self.events.wire(self.fdb)
        self._spanningTree: FastSpanningTree | None = None
        self._routed: set[SwitchPort] = set()
        self.now = 0
        #: Seconds between sweeps of the MAC table (C{hash/setgcint}).
        self.gcInterval = GC_INTERVAL
        self._lastSweep = 0
        self._hubTargets: tuple[SwitchPort, ...] = ()
        self._superFrameWatchers: dict[SwitchPort, Callable[[bool], None]] = {}
        self._tellingWatchers = False

    def attach(self, port: SwitchPort, link: ILink) -> None:
        """
        Plug C{link} into C{port}.
        """
        self.events.linkAdded(port.number, link, first=not port.links)
        if not port.links:  # a new peer: its first drop of each kind is logged
            port.forgetWarnings()
        port.links.insert(0, link)
        port.rewire()
        self._activityChanged(port)

    def detach(self, port: SwitchPort, link: ILink) -> None:
        """
        Unplug C{link}; flush the port's addresses when it goes inactive.
        """
        if link not in port.links:
            return
        port.links.remove(link)
        self.events.linkRemoved(port.number, link, last=not port.links)
        port.rewire()
        if not port.links:
            self.fdb.flush(port)
        self._activityChanged(port)

    def _activityChanged(self, port: SwitchPort) -> None:
        self.vlans.refresh(port)
        self._hubTargets = tuple(
            p for n, p in sorted(self.ports.items()) if n != 0 and p.links
        )
        self._tellSuperFrameWatchers()

    def portChanged(self) -> None:
        """
        A port's MTU or links changed: forget every route, and tell those
        watching whether other ports take super-frames.
        """
        self.forgetRoutes()
        self._tellSuperFrameWatchers()

    def _tellSuperFrameWatchers(self) -> None:
        """
        Tell the watchers on the clock's next turn, once however many ports
        changed: a switch starting plugs its ports in one by one, and the
        first would otherwise be told it is alone.
        """
        if not self._superFrameWatchers or self._tellingWatchers:
            return
        if self.clock is None:
            self._tellWatchersNow()
            return
        self._tellingWatchers = True
        self.clock.callLater(0, self._tellWatchersNow)

    def _tellWatchersNow(self) -> None:
        self._tellingWatchers = False
        for watched, watcher in list(self._superFrameWatchers.items()):
            watcher(self._othersTakeSuperFrames(watched))

    def watchSuperFrames(self, port: SwitchPort, watcher: Callable[[bool], None]) -> None:
        """
        Call C{watcher} soon (see L{_tellSuperFrameWatchers}) and whenever
        ports, links or VLANs change with whether another active port
        sharing a VLAN with C{port} takes virtio-net packets whole.
        """
        self._superFrameWatchers[port] = watcher
        self._tellSuperFrameWatchers()

    def unwatchSuperFrames(self, port: SwitchPort, watcher: Callable[[bool], None]) -> None:
        """
        Stop calling C{watcher} for C{port}.
        """
        if self._superFrameWatchers.get(port) == watcher:
            del self._superFrameWatchers[port]

    def _othersTakeSuperFrames(self, port: SwitchPort) -> bool:
        """
        Whether an active port but C{port} that takes virtio-net packets
        shares a VLAN with it (or any, in hub mode).
        """
        if self.hub:
            return any(p.vnet for p in self._hubTargets if p is not port)
        for vlan, _ in self.vlans.ofPort(port):
            for other in (*vlan.untagged, *vlan.tagged):
                if other is not port and other.vnet and other.links:
                    return True
        return False

    def setHub(self, hub: bool) -> None:
        """
        Switch between hub and switch behaviour; a hub stops FSTP.
        """
        if hub and self.stp is not None:
            self.stp.setEnabled(False)
        self.hub = hub
        self.fdb.flush()
        self.forgetRoutes()
        self._tellSuperFrameWatchers()

    @property
    def spanningTree(self) -> FastSpanningTree:
        """
        The switch's FSTP (made on first use, off until enabled).
        """
        if self._spanningTree is None:
            from vtwisted.fstp import FastSpanningTree

            self._spanningTree = FastSpanningTree(self, self.mac)
        return self._spanningTree

    def setMonitor(self, port: SwitchPort, monitor: bool) -> None:
        """
        Make C{port} receive a copy of every frame the other ports read, as
        read (a capture port), or stop.  While any port monitors, no route
        is remembered, so no frame bypasses it.
        """
        others = tuple(p for p in self.monitors if p is not port)
        self.monitors = (*others, port) if monitor else others
        self.forgetRoutes()

    def _membershipChanged(self) -> None:
        self.forgetRoutes()
        self._tellSuperFrameWatchers()
        if self.stp is not None:
            self.stp.membershipChanged()

    def _implicitVlanCreated(self, vlan: Vlan) -> None:
        self.forgetRoutes()
        self._tellSuperFrameWatchers()
        if self.stp is not None:
            self.stp.implicitVlanCreated(vlan)

    def forgetRoutes(self) -> None:
        """
        Drop every remembered route (see the module's docstring).  This runs
        on every new MAC address, so it only visits the ports that have
        routes: a flood of random addresses costs no more per port.
        """
        if self._routed:
            for port in self._routed:
                port.routes.clear()
            self._routed.clear()

    def _addRoute(
        self, port: SwitchPort, key: bytes, vlan: Vlan, src: bytes, out: SwitchPort,
        send: Callable[[bytes], None], bounds: tuple[int, int],
    ) -> None:
        """
        Remember that frames starting with C{key} from C{port}, with a length
        within C{bounds}, go to C{out} through C{send}, if C{src} is learned
        on C{port}.  A route holds C{(shortest, longest, counters, send)}:
        what the fast path needs, without attribute lookups (C{send} changes
        only when links do, which forgets routes).
        """
        if self.monitors or port.impairedIn is not None:
            return  # every frame must pass the monitors, or the impairment
        entry = vlan.macs.get(src)
        if entry is not None and entry.port is port and len(port.routes) < ROUTE_LIMIT:
            port.routes[key] = (*bounds, out.counters, send)
            self._routed.add(port)

    # Time

    def tick(self, now: int) -> None:
        """
        Advance the coarse clock and expire old MAC table entries.
        """
        self.now = now
        self.forgetRoutes()
        if now - self._lastSweep >= max(self.gcInterval, 1):
            self._lastSweep = now
            self.fdb.expire(now)
        if self.stp is not None:
            self.stp.tick(now)

    # Forwarding

    def frameReceived(self, port: SwitchPort, frame: bytes) -> None:
        """
        A link of C{port} read a plain frame.
        """
        n = len(frame)
        if n < MIN_FRAME:
            self._badLength(port, n)
            return
        c = port.counters
        c.inFrames += 1
        c.inBytes += n
        route = port.routes.get(frame[:14])
        if route is not None and route[0] <= n <= route[1]:
            oc = route[2]
            oc.outFrames += 1
            oc.outBytes += n
            route[3](frame)
            return
        if port.arrive is not None:
            port.arrive(frame)
            return
        self.forwardFrame(port, frame)

    def forwardFrame(self, port: SwitchPort, frame: bytes) -> None:
        """
        Switch a plain frame that arrived at C{port}, unless a remembered
        route took it (or the port's arrival impairment holds it back).
        """
        n = len(frame)
        if n < MIN_FRAME or n > port.maxFrame:
            self._badLength(port, n)
            return
        if self.monitors:
            self._deliver(port, frame, False, frame[12:14] == _TPID, None, self.monitors)
        if self.hub:
            self._deliver(port, frame, False, frame[12:14] == _TPID, None, self._hubTargets)
            return
        if frame[12:14] == _TPID:
            self._taggedReceived(port, frame, False)
            return
        vlan = port.untaggedVlan
        if vlan is None:
            port.dropped("vlan", "untagged frame on a port with no untagged VLAN")
            return
        if self.stp is not None and self.stp.screen(port, vlan, frame, 0):
            return
        macs = vlan.macs
        if not frame[6] & 1:
            src = frame[6:12]
            entry = macs.get(src)
            if entry is not None and entry.port is port:
                entry.seen = self.now
            else:
                self.fdb.learn(macs, src, port, self.now, frame[12:14] == _RARP)
        if not frame[0] & 1:
            entry = macs.get(frame[0:6])
            if entry is not None:
                out = entry.port
                if out is port:
                    return
                if out.untaggedVlan is vlan and n <= out.maxFrame:
                    oc = out.counters
                    oc.outFrames += 1
                    oc.outBytes += n
                    out.send(frame)
                    self._addRoute(port, frame[:14], vlan, frame[6:12], out, out.send,
                                   (MIN_FRAME, min(port.maxFrame, out.maxFrame)))
                    return
                self._deliver(port, frame, False, False, vlan, (out,))
                return
        self._deliver(port, frame, False, False, vlan, vlan.active)

    def vnetPacketReceived(self, port: SwitchPort, packet: bytes) -> None:
        """
        A link of C{port} read a virtio-net header and a frame.
        """
        n = len(packet) - _VNET
        if n < MIN_FRAME:
            self._shortVnetPacket(port, packet)
            return
        c = port.counters
        c.inFrames += 1
        c.inBytes += n
        route = port.routes.get(packet[:24])
        if route is not None and route[0] <= n <= route[1]:
            oc = route[2]
            oc.outFrames += 1
            oc.outBytes += n
            route[3](packet)
            return
        if port.arrive is not None:
            port.arriveVnet(packet)
            return
        self.forwardVnetPacket(port, packet)

    def forwardVnetPacket(self, port: SwitchPort, packet: bytes) -> None:
        """
        Switch a virtio-net packet that arrived at C{port}, as
        L{forwardFrame} does a plain frame.
        """
        n = len(packet) - _VNET
        if n < MIN_FRAME:
            self._shortVnetPacket(port, packet)
            return
        shortest = _knownHeaders.get(packet[:_VNET])
        if shortest is None or n + _VNET < shortest:
            problem = _validate(packet)
            if problem is not None:
                port.dropped("malformed", f"bad virtio-net header: {problem}")
                return
        if n > port.maxFrame and _largest(packet) > port.maxFrame:
            self._badLength(port, _largest(packet))
            return
        tagged = packet[22:24] == _TPID
        if self.monitors:
            self._deliver(port, packet, True, tagged, None, self.monitors)
        if self.hub:
            self._deliver(port, packet, True, tagged, None, self._hubTargets)
            return
        if tagged:
            self._taggedReceived(port, packet, True)
            return
        vlan = port.untaggedVlan
        if vlan is None:
            port.dropped("vlan", "untagged frame on a port with no untagged VLAN")
            return
        if self.stp is not None and self.stp.screen(port, vlan, packet, _VNET):
            return
        macs = vlan.macs
        if not packet[16] & 1:
            src = packet[16:22]
            entry = macs.get(src)
            if entry is not None and entry.port is port:
                entry.seen = self.now
            else:
                self.fdb.learn(macs, src, port, self.now, packet[22:24] == _RARP)
        if not packet[10] & 1:
            entry = macs.get(packet[10:16])
            if entry is not None:
                out = entry.port
                if out is port:
                    return
                if out.untaggedVlan is vlan and (
                    (n <= out.maxFrame or _largest(packet) <= out.maxFrame) if out.vnet
                    else not packet[1] and n <= out.maxFrame  # one frame, no GSO
                ):
                    send = out.sendVnet if out.vnet else out.sendConverted
                    oc = out.counters
                    oc.outFrames += 1
                    oc.outBytes += n
                    send(packet)
                    bounds = _routeBounds(packet, min(port.maxFrame, out.maxFrame))
                    if bounds is not None:
                        if not out.vnet:  # the header read once for the route, not per frame
                            send = vnet.converter(packet, out.send)
                        self._addRoute(port, packet[:24], vlan, packet[16:22], out, send, bounds)
                    return
                self._deliver(port, packet, True, False, vlan, (out,))
                return
        self._deliver(port, packet, True, False, vlan, vlan.active)

    def coalescingPays(self, port: SwitchPort, packet: bytes) -> bool:
        """
        Whether merging datagrams like C{packet} read on C{port} into one
        packet with the header pays: not when their untagged destination is
        learned on a port without the header, which would need them cut
        apart again.
        """
        return self.vnetBehind(port, packet[10:16])

    def vnetBehind(self, port: SwitchPort, mac: bytes) -> bool:
        """
        Whether untagged frames from C{port} to C{mac} go to a port with the
        virtio-net header: not when C{mac} is learned on a port without it.
        A group or unknown address counts as yes: flooding reaches ports of
        both kinds, and the switch cuts super-frames for the others.
        """
        vlan = port.untaggedVlan
        if self.hub or vlan is None or mac[0] & 1:
            return True
        entry = vlan.macs.get(mac)
        return entry is None or entry.port.vnet

    def _shortVnetPacket(self, port: SwitchPort, packet: bytes) -> None:
        """
        Drop a virtio-net packet too short to carry an Ethernet header.
        """
        if len(packet) < _VNET:  # not even a header (a cable's peer sent it)
            port.dropped("malformed", f"{len(packet)} bytes, shorter than a virtio-net header")
        else:
            self._badLength(port, len(packet) - _VNET)

    def _badLength(self, port: SwitchPort, n: int) -> None:
        if n < MIN_FRAME:
            port.dropped("runt", f"{n} bytes, shorter than an Ethernet header")
        else:
            port.dropped("oversize", f"{n} bytes, more than {port.maxFrame}")
