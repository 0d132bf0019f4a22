"""
Options every port spec accepts, whatever its type.

C{port=N} asks for a port number; C{vlan=N} sets the untagged VLAN (created
if missing), C{vlan=all} makes the port VLAN-transparent (see
L{vtwisted.vlans}); C{trunk=10,20} adds tagged memberships; C{mtu=N} lowers
the largest IP packet the port carries (jumbo 9216 by default).
"""

from __future__ import annotations

from typing import Any

from vtwisted.spec import PortSpec
from vtwisted.vlans import MAX_USER_VID, NOVLAN
from vtwisted.wire.ethernet import DEFAULT_MTU

MIN_MTU = 68


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
    ) -> None:
        self.number = number
        self.vlan = vlan
        self.transparent = transparent
        self.trunk = trunk or []
        self.mtu = mtu

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
        trunk = spec.integerList("trunk", 1, MAX_USER_VID)
        mtu = spec.integer("mtu", None, MIN_MTU, DEFAULT_MTU)
        return cls(number, vlan, transparent, trunk, mtu)

    def apply(self, switch: Any, port: Any) -> None:
        """
        Configure C{port} of C{switch}, creating VLANs that do not exist yet.
        """
        vlans = switch.vlans
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
        if self.mtu is not None:
            port.setMtu(self.mtu)
