"""
Switch ports: configuration, counters and the links plugged in.

A L{SwitchPort} is the switch's record of one numbered port.  It outlives its
links (an inactive port keeps its VLANs, as vde_switch's do) and holds the
only counters every port type shares: frames and bytes in and out, and drops
by reason.  L{SwitchPort.send} is rebound whenever links come and go, so the
forwarding path makes one call per frame whatever the number of links.

An inactive port may be held for a spec whose link is down and comes back
(a L{Reservation}: a C{cmd:} command between runs, a cable dialling): no
other link gets it meanwhile (L{vtwisted.porttable}), so what the console
set on it stays with that spec's peer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from vtwisted import errors
from vtwisted.impair import ImpairedSender, PortImpairment
from vtwisted.interfaces import ILink, ISwitchPort
from vtwisted.wire import vnet
from vtwisted.wire.ethernet import DEFAULT_MTU, maxFrameFor

if TYPE_CHECKING:
    from vtwisted.vlans import Vlan

log = Logger()

#: Reasons a frame is dropped, as counters and logs name them.
DROP_REASONS = (
    "runt",  # shorter than an Ethernet header
    "oversize",  # longer than the ingress port's MTU allows
    "vlan",  # the port is not a member of the frame's VLAN
    "mtu",  # longer than the egress port's MTU allows
    "busy",  # the peer could not take it now (EAGAIN, ENOBUFS)
    "peer",  # the peer is gone (ECONNREFUSED and the like)
    "down",  # the peer's interface is down (a TAP device not up yet)
    "malformed",  # a bad virtio-net header, stream record, BPDU, ...
    "discarding",  # the spanning tree blocks the port in the frame's VLAN
    "impaired",  # lost on purpose (the port's loss= impairment)
    "unsupported",  # well formed, but nothing here handles it (a slirp port's GRE, say)
)


@dataclass(frozen=True)
class Reservation:
    """
    Who holds an inactive port, and until when: C{spec}'s link is down and
    comes back to it (C{until}, in words: C{until it runs again}).
    """

    spec: str
    until: str

    def describe(self) -> str:
        """
        C{reserved for SPEC until ...}, for the console and refusals.
        """
        return f"reserved for {self.spec} {self.until}"


class PortCounters:
    """
    Traffic counters of one port: frames and bytes in and out, and drops by
    reason (see L{DROP_REASONS}).
    """

    __slots__ = ("inFrames", "inBytes", "outFrames", "outBytes", "drops")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """
        Set every counter to zero.
        """
        self.inFrames = 0
        self.inBytes = 0
        self.outFrames = 0
        self.outBytes = 0
        self.drops = dict.fromkeys(DROP_REASONS, 0)


def _discard(data: Any) -> None:
    """
    Where an inactive port's frames go.
    """


def _ignore(port: Any, data: Any) -> None:
    """
    The default L{SwitchPort.forwarders}.
    """


def _nothing() -> None:
    """
    The default L{SwitchPort.onChange}.
    """


@implementer(ISwitchPort)
class SwitchPort:
    """
    One numbered port: configuration, counters and the links plugged in.

    A port keeps its configuration while inactive, as vde_switch's do.

    @ivar send: sends one plain frame to every link (no counting).
    @ivar sendVnet: sends one virtio-net packet; only used when L{vnet}.
    @ivar sendConverted: sends the plain frame of a virtio-net packet without
        GSO (see L{vtwisted.wire.vnet.toFrame}); for ports without L{vnet}.
    @ivar vnet: every link accepts virtio-net packets.
    @ivar maxFrame: the longest frame, tag included, this port carries.
    @ivar routes: the switch's cache of where this port's frames go (see
        L{vtwisted.switch}).
    @ivar onChange: called when the port's MTU or links change.
    @ivar impaired: impairs the frames leaving the port, if any.
    @ivar impairedIn: impairs the frames arriving at the port, if any;
        then L{arrive} and L{arriveVnet} take them (the switch's routes are
        never remembered for such a port, so every frame reaches them).
    @ivar forwarders: where arriving frames and virtio-net packets go once
        their impairment lets them (the switch sets them).
    """

    __slots__ = (
        "number",
        "links",
        "counters",
        "untaggedVlan",
        "taggedVids",
        "transparent",
        "allocatable",
        "reservation",
        "user",
        "group",
        "mtu",
        "maxFrame",
        "send",
        "sendVnet",
        "sendConverted",
        "vnet",
        "configuredBy",
        "routes",
        "onChange",
        "impaired",
        "impairedIn",
        "arrive",
        "arriveVnet",
        "forwarders",
        "_warned",
    )

    def __init__(self, number: int, allocatable: bool = True) -> None:
        self.number = number
        self.links: list[ILink] = []
        self.counters = PortCounters()
        self.untaggedVlan: Vlan | None = None
        self.taggedVids: set[int] = set()
        self.transparent = False
        self.allocatable = allocatable
        #: Held for a spec whose link is down and comes back, if any: no
        #: other link may have the port meanwhile.
        self.reservation: Reservation | None = None
        self.user: int | None = None
        self.group: int | None = None
        self.mtu = DEFAULT_MTU
        self.maxFrame = maxFrameFor(DEFAULT_MTU)
        self.send: Callable[[Any], None] = _discard
        self.sendVnet: Callable[[Any], None] = _discard
        self.sendConverted: Callable[[Any], None] = _discard
        self.vnet = False
        self._warned: set[str] = set()
        #: The spec whose options configured this port, if any.
        self.configuredBy: str | None = None
        self.routes: dict[bytes, tuple[int, int, PortCounters, Callable[[Any], None]]] = {}
        self.onChange: Callable[[], None] = _nothing
        #: Delay, loss and the like applied to frames leaving the port.
        self.impaired: ImpairedSender | None = None
        self.impairedIn: ImpairedSender | None = None
        self.arrive: Callable[[Any], None] | None = None
        self.arriveVnet: Callable[[Any], None] = _discard
        self.forwarders: tuple[Callable[[SwitchPort, Any], None],
                               Callable[[SwitchPort, Any], None]] = (_ignore, _ignore)

    def __repr__(self) -> str:
        return f"<SwitchPort {self.number} links={len(self.links)}>"

    @property
    def active(self) -> bool:
        """
        True while at least one link is plugged in.
        """
        return bool(self.links)

    @property
    def currentUser(self) -> int | None:
        """
        The uid of the links' owner, if known.
        """
        for link in self.links:
            if link.uid is not None:
                return link.uid
        return None

    def describe(self) -> str:
        """
        C{port N (module: description)}, for log messages.
        """
        if not self.links:
            return f"port {self.number}"
        link = self.links[0]
        return f"port {self.number} ({link.module}: {link.description})"

    def dropped(self, reason: str, detail: str = "") -> None:
        """
        Count a dropped frame; log the first drop of each reason (since
        the port's peer came, or its counters were reset).
        """
        self.counters.drops[reason] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            log.warn(
                "{port}: dropped a frame ({reason}){detail}; "
                "further drops of this kind are only counted",
                port=self.describe(),
                reason=reason,
                detail=f": {detail}" if detail else "",
            )

    def forgetWarnings(self) -> None:
        """
        Log the next drop of each reason again: the port has a new peer, or
        its counters start again from zero.
        """
        self._warned.clear()

    def checkAccess(self, uid: int | None) -> None:
        """
        Let user C{uid} (None: the switch itself) plug into this port, or
        raise L{vtwisted.errors.SwitchError} C{EACCES}, as vde_switch decides
        from the port's user and group.
        """
        if self.user is None and self.group is None:
            return
        if uid is None or uid == 0 or uid == self.user:
            return
        if self.group is not None and _inGroup(uid, self.group):
            return
        raise errors.SwitchError(13, f"port {self.number}: access denied to uid {uid}")

    def setMtu(self, mtu: int) -> None:
        """
        Set the largest IP packet this port carries.
        """
        self.mtu = mtu
        self.maxFrame = maxFrameFor(mtu)
        self.onChange()

    def rewire(self) -> None:
        """
        Point L{send}, L{sendVnet} and L{sendConverted} at the current links.
        """
        links = self.links
        self.vnet = bool(links) and all(link.vnetHeader for link in links)
        self.onChange()
        if not links:
            self.send = self.sendVnet = _discard
        elif len(links) == 1:
            self.send = links[0].sendFrame
            self.sendVnet = links[0].sendVnetPacket if self.vnet else _discard
        else:
            senders = tuple(link.sendFrame for link in links)
            vsenders = tuple(link.sendVnetPacket for link in links) if self.vnet else ()

            def fanOut(frame: Any) -> None:
                for send in senders:
                    send(frame)

            def fanOutVnet(packet: Any) -> None:
                for send in vsenders:
                    send(packet)

            self.send = fanOut
            self.sendVnet = fanOutVnet
        send, toFrame = self.send, vnet.toFrame
        self.sendConverted = lambda packet: send(toFrame(packet))
        impaired = self.impaired
        if impaired is not None:
            # frames still waiting hold the old links' senders: a link gone may have
            # closed its descriptor, whose number the next one opened reuses
            impaired.stop()
        if not links and self.impairedIn is not None:
            # the peer is gone: frames it sent that are still held back would
            # teach the switch its addresses on a port nothing answers on
            self.impairedIn.stop()
        if impaired is not None and links:
            plain = self.send = impaired.wrap(self.send)
            self.sendVnet = impaired.wrap(self.sendVnet, vnetPackets=True)
            # frames made before they are impaired: noise hits complete checksums
            self.sendConverted = lambda packet: plain(toFrame(packet))

    def setImpairment(self, impairment: PortImpairment, clock: Any) -> None:
        """
        Impair the frames leaving and arriving at this port from now on
        (see L{vtwisted.impair}); a direction where nothing happens is not
        impaired at all.  Frames still waiting under the old impairment
        are dropped.
        """
        for old in (self.impaired, self.impairedIn):
            if old is not None:
                old.stop()
        leaving, arriving = impairment.leaving, impairment.arriving
        self.impaired = ImpairedSender(leaving, clock, self) if leaving.active() else None
        self.impairedIn = None
        self.arrive, self.arriveVnet = None, _discard
        if arriving.active():
            inbound = self.impairedIn = ImpairedSender(arriving, clock, self, "arriving")
            forward, forwardVnet = self.forwarders
            self.arrive = inbound.wrap(lambda frame: forward(self, frame))
            self.arriveVnet = inbound.wrap(lambda packet: forwardVnet(self, packet),
                                           vnetPackets=True)
        self.rewire()

    def describeImpairment(self) -> str:
        """
        The impairments either way, or C{none}.
        """
        parts = []
        if self.impaired is not None:
            parts.append(self.impaired.describe())
        if self.impairedIn is not None:
            parts.append("arriving: " + self.impairedIn.describe())
        return "; ".join(parts) or "none"


def _inGroup(uid: int, gid: int) -> bool:
    """
    True if user C{uid} is a member of group C{gid}.
    """
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False
