"""
The FSTP operations of L{vtwisted.operations.SwitchOperations}: what the
console's C{fstp/*} menu and the manhole's C{ops} call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtwisted import errors
from vtwisted.fstp import PORT_COST
from vtwisted.status import FstpPortStatus, FstpStatus

if TYPE_CHECKING:
    from vtwisted.fstptree import VlanTree

#: vde_switch's limit on VLAN ids in C{fstp/*} commands.
_VLAN_LIMIT = 4095


class FstpOperations:
    """
    Spanning tree settings and state.
    """

    switch: Any

    def uptime(self) -> int:
        """
        Whole seconds since the switch started: the age of a tree whose
        root is this switch (L{vtwisted.operations.SwitchOperations} says).
        """
        raise NotImplementedError()

    def fstpEnabled(self) -> bool:
        """
        Whether FSTP runs.
        """
        return self.switch.stp is not None

    def fstpPriority(self) -> int:
        """
        The switch's priority, the first two bytes of its bridge id.
        """
        return int(self.switch.spanningTree.priority)

    def setFstp(self, enabled: bool) -> None:
        """
        Start or stop FSTP (C{EADDRINUSE} in hub mode).
        """
        self.switch.spanningTree.setEnabled(enabled)

    def _fstpTarget(self, vid: int, number: int) -> None:
        if not 0 <= vid < _VLAN_LIMIT or not 0 <= number < self.switch.numPorts:
            raise errors.invalid(f"VLAN {vid} or port {number} is out of range")
        if vid not in self.switch.vlans:
            raise errors.SwitchError(6, f"VLAN {vid} does not exist")

    def setFstpEdge(self, vid: int, number: int, edge: bool) -> None:
        """
        Make port C{number} an edge of VLAN C{vid}: it sends no BPDUs, and
        ignores them, and always forwards.
        """
        self._fstpTarget(vid, number)
        self.switch.spanningTree.setEdge(vid, number, edge)

    def setFstpBonus(self, vid: int, number: int, cost: int) -> None:
        """
        Make paths to the root through port C{number} of VLAN C{vid} cost
        C{cost} less (one bonus port per VLAN).
        """
        self._fstpTarget(vid, number)
        self.switch.spanningTree.bonus[vid] = (number, cost)

    def fstpTrees(self, vid: int | None = None) -> list[FstpStatus]:
        """
        The spanning tree of VLAN C{vid}, or of every VLAN.
        """
        stp = self.switch.spanningTree
        if vid is None:
            return [self._treeStatus(tree) for tree in stp.allTrees()]
        if not 0 <= vid < _VLAN_LIMIT - 1:
            raise errors.invalid(f"VLAN {vid} is out of range")
        return [self._treeStatus(stp.tree(vid))]

    def _treeStatus(self, tree: VlanTree) -> FstpStatus:
        stp = tree.stp
        bonusPort, bonusCost = stp.bonus.get(tree.vlan.vid, (0, 0))
        members = sorted(tree.members.items(), key=lambda item: (item[1], item[0].number))
        return FstpStatus(
            vid=tree.vlan.vid,
            enabled=stp.enabled,
            isRoot=tree.isRoot(),
            root=tree.root,
            designated=tree.designated,
            rootPort=0 if tree.rootPort is None else tree.rootPort.number,
            cost=tree.rootCost,
            # vde_switch prints qtime() - roottimestamp, and a root's
            # timestamp is 0: its age is the switch's uptime.
            age=self.uptime() if tree.rootPort is None
            else max(0, self.switch.now - tree.rootSeen),
            bonusPort=bonusPort,
            bonusCost=bonusCost,
            ports=tuple(
                FstpPortStatus(port.number, tagged, PORT_COST, tree.role(port))
                for port, tagged in members
            ),
        )
