"""
Options every port spec accepts, whatever its type.

C{port=N} asks for a port number; C{vlan=N} sets the untagged VLAN (created
if missing), C{vlan=all} makes the port VLAN-transparent (see
L{vtwisted.vlans}); C{trunk=10,20} adds tagged memberships; C{mtu=N} lowers
the largest IP packet the port carries (jumbo 9216 by default);
C{delay=MS}, C{jitter=MS}, C{loss=PERCENT}, C{burst=N}, C{dup=PERCENT},
C{rate=KBIT}, C{queue=MS} and C{noise=BITS_PER_MB} impair the frames leaving
it, and the same with C{in} in front (C{indelay=MS}, ...) those arriving
at it (see L{vtwisted.impair}).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from vtwisted import errors
from vtwisted.impair import ALL_KEYWORDS, PortImpairment
from vtwisted.spec import PortSpec
from vtwisted.vlans import MAX_TAG_VID, MAX_USER_VID, NOVLAN
from vtwisted.wire.ethernet import DEFAULT_MTU

MIN_MTU = 68

log = Logger()


class PortOptions:
    """
    The common options of one spec.
    """

    def __init__(
        self,
        number: int | None = None,
        vlan: int | None = None,
        transparent: bool = False,
        trunk: list[int] | None = None,
        mtu: int | None = None,
        impairment: PortImpairment | None = None,
    ) -> None:
        self.number = number
        self.vlan = vlan
        self.transparent = transparent
        self.trunk = trunk or []
        self.mtu = mtu
        self.impairment = impairment

    @classmethod
    def fromSpec(cls, spec: PortSpec, numbered: bool = True) -> PortOptions:
        """
        Read the common options of C{spec}.

        @param numbered: whether C{port=} makes sense for this port type.
        """
        number = spec.integer("port", None, 0, 65535) if numbered else None
        rawVlan = spec.string("vlan")
        transparent = rawVlan == "all"
        vlan = None if transparent else spec.integer("vlan", None, 0, NOVLAN)
        if vlan == MAX_TAG_VID:
            raise spec.error(f"vlan={vlan} cannot be made: give 0 to {MAX_USER_VID}, "
                             f"{NOVLAN} for no untagged VLAN, or all")
        trunk = spec.integerList("trunk", 1, MAX_USER_VID)
        mtu = spec.integer("mtu", None, MIN_MTU, DEFAULT_MTU)
        given = {key: value for key in ALL_KEYWORDS
                 if (value := spec.string(key)) is not None}
        try:
            impairment = PortImpairment.fromOptions(given) if given else None
        except ValueError as e:
            raise spec.error(str(e)) from None
        return cls(number, vlan, transparent, trunk, mtu, impairment)

    def isEmpty(self) -> bool:
        """
        True if no VLAN, MTU or impairment option was given.
        """
        return (self.vlan is None and not self.transparent and not self.trunk
                and self.mtu is None and self.impairment is None)

    def apply(self, switch: Any, port: Any, owner: str | None = None) -> None:
        """
        Configure C{port} of C{switch} for a link of spec C{owner}, creating
        VLANs that do not exist yet.

        A port keeps its configuration while inactive, as vde_switch's do,
        but configuration one spec's options gave it does not leak to a link
        of another spec: such a port is reset to the defaults first.
        """
        if self.isEmpty():
            if port.configuredBy is not None and port.configuredBy != owner:
                reset(switch, port)
            return
        with switch.vlans.batch():
            reset(switch, port)
            self._applyVlans(switch.vlans, port)
        if self.mtu is not None:
            port.setMtu(self.mtu)
        if self.impairment is not None:
            port.setImpairment(self.impairment, switch.clock)
        port.configuredBy = owner

    def _applyVlans(self, vlans: Any, port: Any) -> None:
        """
        Put C{port} in its untagged VLAN and its trunk, or make it
        transparent, creating the VLANs that do not exist yet.
        """
        if self.vlan is not None:
            if self.vlan not in (0, NOVLAN) and self.vlan not in vlans:
                vlans.create(self.vlan)
            vlans.join(port, self.vlan)
        for vid in self.trunk:
            if vid not in vlans:
                vlans.create(vid)
            if vid not in port.taggedVids and port.untaggedVlan is not vlans[vid]:
                vlans.addTagged(port, vid)
        if self.transparent:
            vlans.setTransparent(port, True)

    def plugIn(self, switch: Any, link: Any, owner: str) -> Any:
        """
        Give the one link of spec C{owner} its port (C{port=N}, or the first
        free one), configure it, plug the link in with C{link.plug(switch,
        port)} and log it.

        A port asked for by number that has links of another spec already
        is refused (C{EADDRINUSE}), as a VDE client asking for it is: the
        options given here would reconfigure that spec's port (a capture
        port's would take a TAP out of its VLAN), and a capture port would
        hand the other link a copy of every frame.

        @return: the port.
        @raise vtwisted.errors.SwitchError: the port cannot be had.
        """
        port = self._request(switch.allocatePort, owner)
        self.apply(switch, port, owner)
        link.plug(switch, port)
        log.info("{spec}: {description} on port {number}", spec=owner,
                 description=link.description, number=port.number)
        return port

    def checkPort(self, switch: Any, owner: str) -> None:
        """
        Refuse C{port=N} now if L{plugIn} would (out of range, reserved for
        another spec, another spec's link there), creating nothing: a spec
        asks before it opens its file, device or socket, so one refused its
        port leaves no capture file behind (nor empties one that was there).

        @raise vtwisted.errors.SwitchError: as L{plugIn}.
        """
        if self.number is not None:
            self._request(switch.checkRequest, owner)

    def _request(self, request: Any, owner: str) -> Any:
        """
        The port C{request(number)} gives spec C{owner}, refused if another
        spec's link is there.
        """
        try:
            port = request(self.number)
        except errors.SwitchError as e:  # reserved for another spec, out of range...
            raise errors.SwitchError(e.errno, f"{owner}: {e.message}") from None
        if port is not None and port.links:
            other = port.links[0]
            raise errors.busy(
                f"{owner}: port {port.number} is in use by {other.module} "
                f"{other.description}: give another port= or none")
        return port


def reset(switch: Any, port: Any) -> None:
    """
    Put C{port} back to a new port's configuration: untagged in VLAN 0, no
    trunk, not transparent, the default MTU, no impairment.
    """
    vlans = switch.vlans
    with vlans.batch():
        vlans.setTransparent(port, False)
        for vid in list(port.taggedVids):
            vlans.removeTagged(port, vid)
        vlans.join(port, 0)
    port.setMtu(DEFAULT_MTU)
    if port.impaired is not None or port.impairedIn is not None:
        port.setImpairment(PortImpairment(), None)
    port.configuredBy = None
