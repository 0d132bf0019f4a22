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
L{twisted.plugin.getPlugins} in the L{vtwisted.plugins} package.  A port type
turns a port spec such as C{vde:/tmp/vde.ctl:mode=0660} or C{tap:tap0} into a
service; when that service starts it attaches its links to the switch.

Offloads: a link that negotiated the virtio-net header with its peer (a TAP
device opened with C{IFF_VNET_HDR}) sets L{ILink.vnetHeader} and exchanges
I{packets} with the switch: a 10-byte virtio-net header followed by a frame,
which may be a TCP super-frame of up to 64 KB with its checksum still to be
completed.  The switch passes packets untouched to other such links and hands
every other link ordinary frames.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from zope.interface import Attribute, Interface


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
    port: Any = Attribute("The switch port it is plugged into, or None before that.")

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

    def allocatePort(number: int | None = None, uid: int | None = None) -> Any:
        """
        Find or create the port a new link should join.

        @param number: the port asked for, or L{None} for the lowest free
            allocatable port from 1 up.
        @param uid: the user asking, for access control and port sharing.
        @return: a L{vtwisted.switch.SwitchPort}.
        @raise vtwisted.errors.SwitchError: no such port can be given.
        """

    def attach(port: Any, link: ILink) -> None:
        """
        Plug C{link} into C{port} (from L{allocatePort}).
        """

    def detach(port: Any, link: ILink) -> None:
        """
        Unplug C{link}; the port becomes inactive after its last link leaves.
        """

    def frameReceived(port: Any, frame: bytes) -> None:
        """
        A link of C{port} read a plain Ethernet frame.
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

    def tick(now: int) -> None:
        """
        Advance the switch's coarse clock to C{now} (whole seconds) and
        expire old MAC table entries.
        """


class IPortType(Interface):
    """
    A kind of port, declared as a plugin in L{vtwisted.plugins}.

    Declarations must be cheap to import: the module doing the work is loaded
    only when a spec with this prefix is used.
    """

    prefix: str = Attribute("The spec prefix, such as C{'vde'} or C{'tap'}.")
    description: str = Attribute("One line for C{twistd vswitch --help}.")

    def makeService(switch: ISwitch, spec: Any, reactor: Any) -> Any:
        """
        Build the service for one port spec.

        @param spec: a parsed L{vtwisted.spec.PortSpec} with this prefix.
        @param reactor: the reactor the links will use.
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
