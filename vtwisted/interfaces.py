"""
The interfaces that tie vtwisted together.

Theory of operation
-------------------
A switch (L{ISwitch}) forwards Ethernet frames between numbered ports.  What
plugs into a port is a I{link} (L{ILink}): one VDE client connection, one TAP
device, one cable to another switch.  A link hands every frame it reads to the
switch and sends whatever the switch gives it.  Several links may share one
port (VDE clients asking for the same port number); each gets a copy.

Links come from I{port types} (L{IPortType}), plugins found with
L{twisted.plugin.getPlugins} in the L{vtwisted.plugins} package (a
C{vtwisted/plugins/} directory of any C{sys.path} entry) and in
L{twisted.plugins}, Twisted's own (see L{vtwisted.porttype}).  A port type
turns a port spec such as C{vde:/tmp/vde.ctl:mode=0660} or C{tap:tap0} into a
service; when that service starts it attaches its links to the switch.

Offloads: a link that negotiated the virtio-net header with its peer (a TAP
device opened with C{IFF_VNET_HDR}, a cable, a vhost-user guest that took
the offloads) sets L{ILink.vnetHeader} and exchanges
I{packets} with the switch: a 10-byte virtio-net header followed by a frame,
which may be a TCP super-frame of up to 64 KB with its checksum still to be
completed.  The switch passes packets untouched to other such links and hands
every other link ordinary frames.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class ISwitchPort(Interface):
    """
    One numbered port of a switch, as a port type sees it: what
    L{ISwitch.allocatePort} returns and a link's L{ILink.port} holds.  A
    port outlives its links and keeps the counters every port type shares.
    """

    number: int = Attribute("The port's number, as the console shows it.")
    links: list[ILink] = Attribute("The links plugged in now, in the order they came.")
    mtu: int = Attribute("The largest IP packet the port carries (C{mtu=}, default 9216).")
    counters: Any = Attribute(
        "The port's traffic, which the switch counts: C{inFrames}, C{inBytes}, "
        "C{outFrames}, C{outBytes}, and C{drops}, a L{dict} from reason to count."
    )

    def dropped(reason: str, detail: str = "") -> None:
        """
        Count a frame that a link of this port dropped, and log the first
        drop of each reason with C{detail} (say what and why: the spec, the
        path, the errno); later ones are only counted, so it is safe per
        frame.

        @param reason: one of L{vtwisted.switchport.DROP_REASONS}: C{busy}
            (the peer cannot take it now), C{peer} (the peer is gone),
            C{down}, C{mtu}, C{malformed} (bad input read), C{unsupported},
            ...
        """


class ILink(Interface):
    """
    One connection plugged into a switch port; it sends frames to its peer.
    """

    module: str = Attribute("Short name of the link's kind, as C{port/print} shows it.")
    description: str = Attribute("What is at the other end, as C{port/print} shows it.")
    linkId: int = Attribute("A number naming this link among the port's links.")
    vnetHeader: bool = Attribute(
        "True if the link accepts packets with a virtio-net header "
        "through L{sendVnetPacket}."
    )
    uid: int | None = Attribute("The user owning the peer, if known, for access control.")
    port: ISwitchPort | None = Attribute(
        "The switch port it is plugged into, or None before that: the link sets it "
        "when it attaches itself (L{ISwitch.attach}) and clears it when it detaches."
    )

    def plug(switch: ISwitch, port: ISwitchPort) -> None:
        """
        Plug this link into C{port} of C{switch}: set L{port}, get ready to
        hand the frames the peer sends to C{switch} (L{ISwitch.frameReceived},
        or L{ISwitch.vnetPacketReceived} when L{vnetHeader} is true) and call
        L{ISwitch.attach}.  The link's service calls it once the port is
        configured, or L{vtwisted.portoptions.PortOptions.plugIn} does for it.

        @param switch: the switch the port belongs to.
        @param port: a port L{ISwitch.allocatePort} gave.
        """

    def sendFrame(frame: bytes) -> None:
        """
        Send one plain Ethernet frame to the peer.

        Never blocks and never raises for transient conditions: a frame the
        peer cannot take now is dropped and counted on the link's port.

        @param frame: destination MAC, source MAC, EtherType, payload (a
            L{bytes} or L{memoryview}).
        """

    def sendVnetPacket(packet: bytes) -> None:
        """
        Send a virtio-net header followed by a frame.  Only called when
        L{vnetHeader} is true.
        """

    def close() -> None:
        """
        Disconnect the peer; the link detaches itself from the switch.
        """


class ISwitch(Interface):
    """
    The forwarding core: learns MAC addresses and forwards frames between
    ports.  It performs no I/O of its own.
    """

    numPorts: int = Attribute("Ports are numbered from 0 to numPorts - 1.")
    hub: bool = Attribute("True when every frame is flooded (hub mode).")

    def allocatePort(number: int | None = None, uid: int | None = None) -> ISwitchPort:
        """
        Find or create the port a new link should join.

        @param number: the port asked for (refused, C{EADDRINUSE}, if it is
            reserved for a spec whose link is down: see
            L{vtwisted.switchport.Reservation}), or L{None} for the lowest
            free allocatable port from 1 up that is not reserved.
        @param uid: the user asking, for access control and port sharing.
        @return: the port (a L{vtwisted.switchport.SwitchPort}).
        @raise vtwisted.errors.SwitchError: no such port can be given.
        """

    def checkRequest(number: int, uid: int | None = None) -> ISwitchPort | None:
        """
        Refuse a request for port C{number} as L{allocatePort} would, but
        create nothing: a port service asks before it opens its files and
        sockets, so a spec refused its port leaves none behind.

        @return: the port, or L{None} if it does not exist yet.
        @raise vtwisted.errors.SwitchError: as L{allocatePort}.
        """

    def attach(port: Any, link: ILink) -> None:
        """
        Plug C{link} into C{port} (an L{ISwitchPort} from L{allocatePort}).
        """

    def detach(port: Any, link: ILink) -> None:
        """
        Unplug C{link}; the port becomes inactive after its last link leaves.
        """

    def frameReceived(port: Any, frame: bytes) -> None:
        """
        A link of C{port} read a plain Ethernet frame (L{bytes} or a
        L{memoryview}): the switch counts it, checks its length against
        the port's MTU (a runt or an oversized frame is counted as a drop)
        and forwards it.
        """

    def vnetPacketReceived(port: Any, packet: bytes) -> None:
        """
        A link of C{port} read a virtio-net header followed by a frame.
        """

    def coalescingPays(port: Any, packet: bytes) -> bool:
        """
        Whether a port should merge datagrams like C{packet} (a virtio-net
        packet it read) before handing them over: not when the switch would
        only cut them apart again.
        """

    def vnetBehind(port: Any, mac: bytes) -> bool:
        """
        Whether untagged frames from C{port} to C{mac} go to a port whose
        links take the virtio-net header (so a super-frame crosses whole);
        yes for a group or unknown address.
        """

    def watchSuperFrames(port: Any, watcher: Callable[[bool], None]) -> None:
        """
        Call C{watcher} soon (on the switch clock's next turn), and again
        after ports, links or VLANs change, with whether another active
        port that shares a VLAN with C{port} (any port, in hub mode) takes
        virtio-net packets whole: a link that can send super-frames needs to
        know if they would only be cut apart.  One watcher per port;
        L{unwatchSuperFrames} stops it.
        """

    def unwatchSuperFrames(port: Any, watcher: Callable[[bool], None]) -> None:
        """
        Stop calling C{watcher} for C{port}.
        """

    def tick(now: int) -> None:
        """
        Advance the switch's coarse clock to C{now} (whole seconds) and
        expire old MAC table entries.
        """


class IPortType(Interface):
    """
    A kind of port, declared as a plugin in L{vtwisted.plugins} or
    L{twisted.plugins} (L{vtwisted.porttype.PortType} declares one).

    Declarations must be cheap to import: the module doing the work is loaded
    only when a spec with this prefix is used.
    """

    prefix: str = Attribute("The spec prefix, such as C{'vde'} or C{'tap'}.")
    description: str = Attribute("One line for C{twistd vswitch --help}.")

    def makeService(switch: ISwitch, spec: Any, reactor: Any) -> Any:
        """
        Build the service for one port spec.  Only read and check the spec
        and remember what it says: C{twistd vswitch} also calls this once
        to check every spec before it starts anything (with C{reactor}
        L{None}), and throws that service away without starting it.  Open
        sockets, files and devices when the service starts.

        @param spec: a parsed L{vtwisted.spec.PortSpec} with this prefix.
        @param reactor: the reactor the links will use (L{None} when the
            spec is only being checked).
        @return: an L{twisted.application.service.IService} which attaches
            its links when started and detaches them when stopped.
        @raise vtwisted.spec.SpecError: the spec's arguments are wrong.
        """


class IPortService(IService):
    """
    The service a port type makes from one spec, as the management
    operations see it.  Port types should provide it; services that do not
    are shown without ports.
    """

    spec: str = Attribute("The port spec it was made from, as written.")
    listening: bool = Attribute(
        "True if it accepts links for as long as it runs (a VDE directory), "
        "false if it brings a fixed set of links (a TAP device)."
    )

    def currentLinks() -> list[ILink]:
        """
        The links it has plugged into the switch now.
        """


class IRevivablePortService(IPortService):
    """
    A port service whose one link can go away while it runs (a TAP device
    deleted) and be opened again: adding its spec again does that, instead
    of refusing a spec already in use.
    """

    def gone() -> bool:
        """
        Whether it runs but its link went away.
        """

    def revive() -> None:
        """
        Open the link again and plug it in.

        @raise OSError: it cannot be opened (the message says why).
        """


class IGuestNetwork(Interface):
    """
    What the protocol engines of a slirp port (L{vtwisted.slirp}) need from
    the virtual router that faces the guests: a way to send IP packets into
    the LAN, the address plan, and the translation between guest-side and
    host-side addresses.

    Addresses on the guest side are L{bytes}: 4 for IPv4, 16 for IPv6 (the
    length tells the family; one connection or flow never mixes them).  On
    the host side they are what Twisted uses (C{"127.0.0.1"}, C{"::1"}, a
    port number).
    """

    gateway: bytes = Attribute("The gateway's IPv4 address (10.0.2.2): the host, to guests.")
    nameserver: bytes = Attribute("The DNS proxy's IPv4 address (10.0.2.3).")
    gateway6: bytes | None = Attribute(
        "The gateway's IPv6 address (fec0::2), or L{None} when IPv6 is off."
    )
    nameserver6: bytes | None = Attribute(
        "The DNS proxy's IPv6 address (fec0::3), or L{None} when IPv6 is off."
    )
    mtu: int = Attribute("The largest IP packet the router sends or takes, in bytes.")
    maxSegment: int = Attribute(
        "The largest TCP payload one L{sendTcp} call may carry.  Larger than "
        "the MSS when the router hands TCP super-frames to the switch, which "
        "cuts them for ports that cannot take them."
    )
    restricted: bool = Attribute("True when guests may reach only forwarded ports.")

    def sendTcp(src: bytes, dst: bytes, header: bytes, payload: Any, mss: int) -> None:
        """
        Send one TCP segment to a guest, over IPv4 or IPv6 by the length of
        the addresses.

        @param header: the TCP header, options included, with a zero
            checksum field: the router fills it in (or leaves it to the
            guest's TAP, for super-frames).
        @param payload: the data (L{bytes} or L{memoryview}), at most
            L{maxSegment} bytes.
        @param mss: the segment size the guest takes; a payload longer
            than this is a super-frame, cut into segments of C{mss} bytes.
        """

    def sendIP(src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = 64) -> None:
        """
        Send C{payload} (a complete UDP datagram or ICMP/ICMPv6 message,
        checksums computed) to a guest in one IPv4 or IPv6 packet, by the
        length of the addresses; IPv4 is fragmented if longer than L{mtu}.
        The router finds the guest's MAC address (ARP or neighbour
        discovery), holding the packet for up to a second if it must.
        """

    def sendIPv4(src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = 64) -> None:
        """
        L{sendIP} for IPv4 addresses.
        """

    def sendUdp(src: bytes, dst: bytes, srcPort: int, dstPort: int, payload: bytes) -> None:
        """
        Send one UDP datagram to a guest; the router computes its checksum,
        or leaves it to the guest's TAP.
        """

    def sendUdpRun(src: bytes, dst: bytes, srcPort: int, dstPort: int,
                   payloads: list[bytes]) -> None:
        """
        Send several datagrams of one flow, all of the first one's length
        but the last, which may be shorter: in one UDP super-frame (USO)
        where the guest's port takes them, else one by one.
        """

    def sendUnreachable(packet: bytes, code: int) -> None:
        """
        Answer the guest's IPv4 or IPv6 C{packet} (header and at least 8
        bytes of payload) with an ICMP or ICMPv6 destination unreachable.

        @param code: in ICMPv4's terms (0 net, 1 host, 3 port, 13
            administratively prohibited); the router maps it to ICMPv6's
            for an IPv6 packet.
        """

    def sendIcmpError(packet: bytes, kind: int, code: int, mtu: int, reporter: bytes) -> None:
        """
        Tell the guest that sent C{packet} (its IPv4 or IPv6 datagram, as it
        sent it) about an error a host reported: an ICMP error of C{kind}
        and C{code} (ICMPv6's numbers for an IPv6 guest) from C{reporter}
        (a guest-side address), with the next-hop C{mtu} of a "too big".
        """

    def hostAddress(dst: bytes, port: int, protocol: int) -> Any:
        """
        Where on the host a guest's packet to C{dst}:C{port} goes: the
        gateway becomes C{127.0.0.1} (IPv6: C{::1}), the DNS proxy's port 53
        the host's nameserver (which may be of either family), other
        addresses themselves; a guest forward's address and port (TCP only)
        its target, an object with an C{endpoint} to connect to.

        @return: a host and port, a guest forward's target, or L{None} if
            the guest may not go there
            (other ports of the DNS proxy; other addresses of the LAN;
            anything but forwards when L{restricted}).
        """

    def guestAddress(host: str, v6: bool = False) -> bytes:
        """
        The address a guest of family C{v6} sees for a peer at C{host} on
        the host side: loopback becomes that family's gateway, others
        themselves (an IPv4-mapped C{::ffff:a.b.c.d} counts as IPv4).
        """

    def dropped(reason: str, message: str) -> None:
        """
        Count a packet the router or an engine dropped under C{reason}
        (C{malformed}, C{unsupported}, C{peer}, ...) and log C{message} once
        per reason.
        """
