"""
VLAN membership, the vde_switch way, plus VLAN-transparent ports.

Theory of operation
-------------------
VLAN 0 always exists.  Every port has at most one untagged VLAN (a new port
is in VLAN 0; none, shown as 4095, means "tagged frames only") and any number
of tagged memberships (a trunk).  A port made I{transparent} (C{vlan=all}) is
a tagged member of every VLAN, including VLANs that only exist because a
transparent port received a frame tagged for them: tagged frames cross the
switch between such ports untouched, which vde_switch cannot do.

Each L{Vlan} keeps the tuple of its active members in port order, rebuilt
whenever membership or a port's activity changes, so flooding is one loop
over a ready tuple.  Every membership change calls
L{VlanRegistry.onChange}, so the switch forgets its cached routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from vtwisted import errors
from vtwisted.fdb import MacEntry, MacTable

if TYPE_CHECKING:
    from vtwisted.switch import SwitchPort

#: The untagged VLAN value meaning "no untagged VLAN".
NOVLAN = 4095
#: The highest VLAN id C{vlan/create} accepts (as vde_switch).
MAX_USER_VID = 4093
#: The highest VLAN id a tagged frame may carry.
MAX_TAG_VID = 4094


class Vlan:
    """
    One VLAN: its MAC table and its members.

    @ivar untagged: ports whose untagged VLAN this is.
    @ivar tagged: ports that are tagged members (transparent ones included).
    @ivar active: the members with links, in port order.
    @ivar implicit: created by traffic from a transparent port, not by
        configuration.
    @ivar discarding: members the spanning tree blocks (L{vtwisted.fstp}).
    """

    __slots__ = ("vid", "macs", "untagged", "tagged", "active", "implicit", "discarding",
                 "generation")

    def __init__(self, vid: int, macs: dict[bytes, MacEntry], implicit: bool = False) -> None:
        self.vid = vid
        self.macs = macs
        self.untagged: list[SwitchPort] = []
        self.tagged: list[SwitchPort] = []
        self.active: tuple[SwitchPort, ...] = ()
        self.implicit = implicit
        self.discarding: set[SwitchPort] = set()
        #: Counts the rebuilds: what follows the members (the spanning
        #: tree) looks again only when it moved.
        self.generation = 0

    def __repr__(self) -> str:
        return f"<Vlan {self.vid}>"

    def members(self) -> list[tuple[SwitchPort, bool]]:
        """
        Every member and whether it is tagged, in port order.
        """
        both = [(p, False) for p in self.untagged] + [(p, True) for p in self.tagged]
        return sorted(both, key=lambda pair: pair[0].number)

    def rebuild(self) -> None:
        """
        Recompute L{active}: members with links that are not discarding.
        """
        discarding = self.discarding
        self.generation += 1
        self.active = tuple(p for p, _ in self.members() if p.links and p not in discarding)


class VlanRegistry:
    """
    Every VLAN of a switch and the membership operations on them.
    """

    def __init__(self, fdb: MacTable) -> None:
        self.fdb = fdb
        self.vlans: dict[int, Vlan] = {0: Vlan(0, fdb.forVlan(0))}
        self.transparentPorts: list[SwitchPort] = []
        #: Called after every membership change.
        self.onChange: Callable[[], None] = _nothing
        #: Called instead of L{onChange} when traffic created a VLAN.
        self.onImplicit: Callable[[Vlan], None] = lambda vlan: self.onChange()
        #: How many L{batch} blocks are open, and whether a change came in one.
        self._batching = 0
        self._pending = False

    @contextmanager
    def batch(self) -> Iterator[None]:
        """
        Make several membership changes with one L{onChange} at the end, if
        any changed (a port's C{trunk=1-4093} would otherwise have the
        spanning tree go over every VLAN once per VLAN joined).
        """
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching and self._pending:
                self._pending = False
                self.onChange()

    def _changed(self) -> None:
        if self._batching:
            self._pending = True
        else:
            self.onChange()

    def __contains__(self, vid: int) -> bool:
        return vid in self.vlans

    def __getitem__(self, vid: int) -> Vlan:
        return self.vlans[vid]

    def get(self, vid: int) -> Vlan | None:
        """
        The VLAN C{vid}, if it exists.
        """
        return self.vlans.get(vid)

    def create(self, vid: int, implicit: bool = False) -> Vlan:
        """
        Create VLAN C{vid} (C{vlan/create}).
        """
        limit = MAX_TAG_VID if implicit else MAX_USER_VID
        if not 1 <= vid <= limit:
            raise errors.invalid(f"VLAN {vid} is out of range (1 to {MAX_USER_VID})")
        existing = self.vlans.get(vid)
        if existing is not None:
            if existing.implicit and not implicit:
                existing.implicit = False
                self._changed()
                return existing
            raise errors.exists(f"VLAN {vid} exists")
        vlan = self.vlans[vid] = Vlan(vid, self.fdb.forVlan(vid), implicit)
        vlan.tagged.extend(self.transparentPorts)
        vlan.rebuild()
        if implicit:
            self.onImplicit(vlan)
        else:
            self._changed()
        return vlan

    def remove(self, vid: int) -> None:
        """
        Remove an unused VLAN (C{vlan/remove}).
        """
        vlan = self._existing(vid)
        if vid == 0:
            raise errors.invalid("VLAN 0 cannot be removed")
        explicit = [p for p in vlan.tagged if not p.transparent or vid in p.taggedVids]
        if vlan.untagged or explicit:
            raise errors.busy(f"VLAN {vid} has member ports")
        self.fdb.flush(vid=vid)
        del self.vlans[vid]
        del self.fdb.tables[vid]
        self._changed()

    def _existing(self, vid: int) -> Vlan:
        vlan = self.vlans.get(vid)
        if vlan is None:
            raise errors.missing(f"VLAN {vid} does not exist")
        return vlan

    def join(self, port: SwitchPort, vid: int) -> None:
        """
        Make C{vid} the untagged VLAN of C{port} (C{port/setvlan}); L{NOVLAN}
        leaves it with none.
        """
        if not 0 <= vid <= NOVLAN:
            raise errors.invalid(f"VLAN {vid} is out of range (0 to {NOVLAN})")
        vlan = None if vid == NOVLAN else self._existing(vid)
        old = port.untaggedVlan
        if old is vlan:
            return
        port.untaggedVlan = vlan
        if vlan is not None:
            port.taggedVids.discard(vid)
            if port in vlan.tagged:
                vlan.tagged.remove(port)
            vlan.untagged.append(port)
            vlan.rebuild()
        if old is not None:
            old.untagged.remove(port)
            self.fdb.flush(port, old.vid)
            if port.transparent:
                old.tagged.append(port)
            old.rebuild()
        self._changed()

    def addTagged(self, port: SwitchPort, vid: int) -> None:
        """
        Make C{port} a tagged member of C{vid} (C{vlan/addport}).
        """
        vlan = self._existing(vid)
        if port.untaggedVlan is vlan or vid in port.taggedVids:
            raise errors.exists(f"port {port.number} is already in VLAN {vid}")
        port.taggedVids.add(vid)
        if port not in vlan.tagged:
            vlan.tagged.append(port)
        vlan.rebuild()
        self._changed()

    def removeTagged(self, port: SwitchPort, vid: int) -> None:
        """
        Remove C{port}'s tagged membership of C{vid} (C{vlan/delport}).
        """
        vlan = self._existing(vid)
        if port.untaggedVlan is vlan:
            raise errors.busy(f"VLAN {vid} is the untagged VLAN of port {port.number}")
        if vid not in port.taggedVids:
            raise errors.missing(f"port {port.number} is not a tagged member of VLAN {vid}")
        port.taggedVids.discard(vid)
        if not port.transparent:
            vlan.tagged.remove(port)
        self.fdb.flush(port, vid)
        vlan.rebuild()
        self._changed()

    def setTransparent(self, port: SwitchPort, transparent: bool) -> None:
        """
        Make C{port} a tagged member of every VLAN (C{vlan=all}), or undo it.
        """
        if port.transparent == transparent:
            return
        port.transparent = transparent
        if transparent:
            self.transparentPorts.append(port)
        else:
            self.transparentPorts.remove(port)
        for vlan in self.vlans.values():
            if vlan is port.untaggedVlan or vlan.vid in port.taggedVids:
                continue
            if transparent:
                vlan.tagged.append(port)
            else:
                vlan.tagged.remove(port)
                self.fdb.flush(port, vlan.vid)
            vlan.rebuild()
        self._changed()

    def forTag(self, vid: int, port: SwitchPort) -> Vlan | None:
        """
        The VLAN a frame tagged C{vid} from C{port} belongs to, or L{None} if
        the port may not send it there.
        """
        vlan = self.vlans.get(vid)
        if vlan is None:
            if port.transparent and 1 <= vid <= MAX_TAG_VID:
                return self.create(vid, implicit=True)
            return None
        if vlan is port.untaggedVlan or vid in port.taggedVids or port.transparent:
            return vlan
        return None

    def leaveAll(self, port: SwitchPort) -> None:
        """
        Remove C{port} from every VLAN (the port is being removed).
        """
        with self.batch():
            self.setTransparent(port, False)
            for vid in list(port.taggedVids):
                self.removeTagged(port, vid)
            self.join(port, NOVLAN)

    def refresh(self, port: SwitchPort) -> None:
        """
        C{port} became active or inactive: rebuild its VLANs' member tuples.
        """
        for vlan in self.vlans.values():
            if port in vlan.untagged or port in vlan.tagged:
                vlan.rebuild()
        self._changed()

    def ofPort(self, port: SwitchPort) -> list[tuple[Vlan, bool]]:
        """
        The VLANs C{port} is in and whether it is tagged in each.
        """
        return [
            (vlan, vlan is not port.untaggedVlan)
            for vid, vlan in sorted(self.vlans.items())
            if vlan is port.untaggedVlan or port in vlan.tagged
        ]


def _nothing() -> None:
    """
    The default L{VlanRegistry.onChange}.
    """
