"""
FSTP: vde_switch's "fast spanning tree", which keeps loops of cables from
flooding the network forever.

Theory of operation
-------------------
Each VLAN has its own tree (L{vtwisted.fstptree.VlanTree}).  A switch's id
is its priority (2 bytes) and MAC address; every VLAN starts with the switch
believing it is the root.  Every L{vtwisted.fstptree.HELLO} seconds it sends
a BPDU (L{vtwisted.wire.bpdu}) on each member port that is not an edge port:
the root it knows, its cost to that root, its own id and the port's id.
Ports that heard BPDUs in the last few hellos are I{spanning-tree ports};
ports with only hosts behind them never hear any and keep forwarding
whatever happens.

A BPDU's vector (root, cost plus this port's cost, sender, sender's port) is
compared with the tree's.  A better one makes its port the root port: every
other spanning-tree port turns discarding (a "backup") at once and is told
so, the root port forwards and answers with an agreement, and the VLAN's MAC
table is flushed (a topology change, also sent on to the other ports, at
most once a second: one more in that second is sent at the next).  A
worse vector from the same root settles the link it came on: if the far
side uses it as its root port, it forwards; if not, the link is redundant
and this side discards.  A backup port that stops hearing BPDUs (its peer no
longer speaks FSTP) forwards again, and a root port silent for three hellos
makes the switch forget the root and start again.  These are vde_switch's
rules (C{vde-wire.md} 4.6), so a vtwisted switch and C{vde_switch -F} build
one tree; like vde_switch, FSTP does not speak IEEE 802.1D/w.

A discarding port neither learns nor forwards in its VLAN: the switch asks
L{FastSpanningTree.screen} about every frame that misses its route cache,
and the tree keeps discarding ports out of the VLAN's flooding tuple.  The
tree performs no I/O of its own: it sends through the ports and reads the
switch's coarse clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from twisted.logger import Logger

from vtwisted import errors
from vtwisted.fstptree import HELLO, PORT_COST, VlanTree
from vtwisted.wire import bpdu as wire

if TYPE_CHECKING:
    from vtwisted.switch import Switch
    from vtwisted.switchport import SwitchPort
    from vtwisted.vlans import Vlan

log = Logger()

DEFAULT_PRIORITY = 0x8000
#: How many VLANs made by traffic (not configured) may run a tree of their
#: own at once: those in which a peer sends BPDUs.
IMPLICIT_TREES = 64


class FastSpanningTree:
    """
    FSTP for every VLAN of a switch.

    @ivar bridgeId: priority and MAC, as BPDUs carry it.
    @ivar enabled: whether the protocol runs (C{fstp/setfstp}).
    """

    def __init__(self, switch: Switch, mac: bytes, priority: int = DEFAULT_PRIORITY) -> None:
        self.switch = switch
        self.mac = mac
        self.priority = priority
        self.bridgeId = priority.to_bytes(2, "big") + mac
        self.enabled = False
        self.trees: dict[int, VlanTree] = {}
        self.edges: dict[int, set[int]] = {}
        #: VLAN id to the port number and cost of C{fstp/bonus}.
        self.bonus: dict[int, tuple[int, int]] = {}
        #: Implicit VLANs that run a tree of their own (a peer spoke in them).
        self.implicitTrees: set[int] = set()
        self._nextHello = 0
        self._hellos = 0
        self._heardIndex = 0

    def setPriority(self, priority: int) -> None:
        """
        Change the first two bytes of the bridge id (before enabling).
        """
        self.priority = priority
        self.bridgeId = priority.to_bytes(2, "big") + self.mac

    def setEnabled(self, enabled: bool) -> None:
        """
        Start or stop the protocol; stopping makes every port forward.
        """
        if enabled == self.enabled:
            return
        if enabled and self.switch.hub:
            raise errors.busy("FSTP cannot run in hub mode")
        self.enabled = enabled
        if enabled:
            self.mac = self.switch.mac
            self.setPriority(self.priority)
            self.switch.stp = self
            self._nextHello = self.switch.now + HELLO
            self.membershipChanged()
        else:
            self.switch.stp = None
            for tree in self.trees.values():
                tree.forgetRoot()
            self.trees.clear()
            self.implicitTrees.clear()
            for vlan in self.switch.vlans.vlans.values():
                if vlan.discarding:
                    vlan.discarding.clear()
                    vlan.rebuild()
            self.switch.forgetRoutes()

    def membershipChanged(self) -> None:
        """
        Bring every tree's members in line with the VLANs' active members;
        VLANs that traffic made follow the common tree (L{implicitVlanCreated}).
        """
        if not self.enabled:
            return
        vlans = self.switch.vlans.vlans
        for vid in [v for v in self.trees if v not in vlans]:
            del self.trees[vid]
        self.implicitTrees = {v for v in self.implicitTrees if v in vlans and vlans[v].implicit}
        for vid, vlan in vlans.items():
            tree = self.trees.get(vid)
            if tree is None:
                if vlan.implicit:
                    continue
                tree = self._newTree(vlan)
            if tree.synced != vlan.generation:
                _syncMembers(tree)
                tree.synced = vlan.generation
        self._followCommon(self._followers())

    def implicitVlanCreated(self, vlan: Vlan) -> None:
        """
        Traffic from a VLAN-transparent port made C{vlan}.  It gets no tree
        of its own, so that a client tagging frames for every VID costs no
        BPDUs: each member port discards in it when it discards in its own
        untagged VLAN (the common tree, as MSTP's common instance), until a
        peer sends BPDUs in C{vlan} (L{_bpduReceived}).
        """
        self._followCommon((vlan,))

    def _newTree(self, vlan: Vlan) -> VlanTree:
        if vlan.discarding:
            vlan.discarding.clear()
            vlan.rebuild()
        tree = self.trees[vlan.vid] = VlanTree(self, vlan)
        return tree

    def _followers(self) -> list[Vlan]:
        """
        The implicit VLANs without a tree of their own.
        """
        trees = self.trees
        return [v for v in self.switch.vlans.vlans.values() if v.implicit and v.vid not in trees]

    def _commonBlocks(self, port: SwitchPort) -> bool:
        untagged = port.untaggedVlan
        tree = None if untagged is None else self.trees.get(untagged.vid)
        return tree is not None and port in tree.backup

    def _followCommon(self, vlans: Iterable[Vlan]) -> None:
        """
        Make each of C{vlans} discard on the ports that discard in their
        untagged VLAN's tree.
        """
        changed = False
        for vlan in vlans:
            blocked = {p for p in vlan.tagged if self._commonBlocks(p)}
            if blocked != vlan.discarding:
                for port in blocked - vlan.discarding:
                    self.switch.fdb.flush(port, vlan.vid)
                vlan.discarding.clear()
                vlan.discarding.update(blocked)
                vlan.rebuild()
                changed = True
        if changed:
            self.switch.forgetRoutes()

    def commonTopologyChanged(self, vlan: Vlan) -> None:
        """
        The tree of C{vlan} changed: if it is the untagged VLAN of a
        transparent port, the implicit VLANs that follow it forget their
        addresses too.
        """
        if any(p.untaggedVlan is vlan for p in self.switch.vlans.transparentPorts):
            for follower in self._followers():
                if follower.macs:
                    self.switch.fdb.flush(vid=follower.vid)

    def tick(self, now: int) -> None:
        """
        Tell the topology changes held back last second; send hellos when
        due; every fourth hello, age the backups.
        """
        for tree in list(self.trees.values()):
            tree.announcePending()
        if now < self._nextHello:
            return
        self._nextHello = now + HELLO
        self._hellos += 1
        for tree in list(self.trees.values()):
            tree.hello(now)
        if self._hellos % 4 == 0:
            self._heardIndex = 1 - self._heardIndex
            for tree in self.trees.values():
                tree.ageBackups(self._heardIndex)
            self._retireSilentTrees()

    def _retireSilentTrees(self) -> None:
        """
        Implicit VLANs whose trees heard no BPDUs in two periods follow the
        common tree again.
        """
        silent = [self.trees[vid] for vid in self.implicitTrees
                  if not (self.trees[vid].heard[0] or self.trees[vid].heard[1])]
        for tree in silent:
            for port in list(tree.backup):
                tree.unblock(port)
            del self.trees[tree.vlan.vid]
            self.implicitTrees.discard(tree.vlan.vid)
        if silent:
            self._followCommon([tree.vlan for tree in silent])

    def screen(self, port: SwitchPort, vlan: Vlan, data: bytes, offset: int) -> bool:
        """
        Whether the switch must stop here with a frame of C{vlan} read on
        C{port}: it is a BPDU (now handled), or the port is discarding.
        """
        if data[offset : offset + 6] == wire.BPDU_ADDRESS:
            self._bpduReceived(port, vlan, data, offset)
            return True
        if port in vlan.discarding:
            port.dropped("discarding", f"the spanning tree blocks this port in VLAN {vlan.vid}")
            return True
        return False

    def _bpduReceived(self, port: SwitchPort, vlan: Vlan, data: bytes, offset: int) -> None:
        try:
            message = wire.parse(data, offset)
        except wire.OtherSpanningTree as e:
            port.dropped("unsupported", f"BPDU: {e}")
            return
        except wire.BpduError as e:
            port.dropped("malformed", f"BPDU: {e}")
            return
        tree = self.trees.get(vlan.vid)
        if tree is None:
            if not vlan.implicit:
                return
            tree = self._implicitTree(port, vlan)
            if tree is None:
                return
        tree.received(port, message, self._heardIndex)

    def _implicitTree(self, port: SwitchPort, vlan: Vlan) -> VlanTree | None:
        """
        A peer speaks FSTP in C{vlan}, which traffic made: give it a tree of
        its own, unless L{IMPLICIT_TREES} already have one.
        """
        if len(self.implicitTrees) >= IMPLICIT_TREES:
            port.dropped("unsupported",
                         f"BPDU for VLAN {vlan.vid}, but {IMPLICIT_TREES} VLANs that traffic "
                         "made already run a tree (vlan/create gives one its own)")
            return None
        tree = self._newTree(vlan)
        self.implicitTrees.add(vlan.vid)
        _syncMembers(tree)
        return tree

    def stateChanged(self, vlan: Vlan, port: SwitchPort, discarding: bool,
                     report: bool = True) -> None:
        """
        A port started or stopped discarding in C{vlan}.

        @param report: whether to say so (C{fstp/status} and the log); not
            for a port that is leaving the VLAN.
        """
        if discarding:
            vlan.discarding.add(port)
            self.switch.fdb.flush(port, vlan.vid)
        else:
            vlan.discarding.discard(port)
        vlan.rebuild()
        self.switch.forgetRoutes()
        if port.untaggedVlan is vlan and not vlan.implicit:
            self._followCommon(self._followers())
        if not report:
            return
        self.reportStatus(vlan, port, discarding)
        log.info("FSTP: VLAN {vid}: {port} is {state}", vid=vlan.vid, port=port.describe(),
                 state="discarding" if discarding else "forwarding")

    def reportStatus(self, vlan: Vlan, port: SwitchPort, discarding: bool) -> None:
        """
        Tell C{fstp/status} listeners whether C{port} discards in C{vlan}.
        """
        vid = vlan.vid
        self.switch.events.emit(
            "fstp/status", f"Port {port.number:04d} VLAN {vid >> 8:02x}:{vid & 0xFF:02x} "
                           f"{'discarding' if discarding else 'learning+forwarding'}")

    def portCost(self, vid: int, port: SwitchPort) -> int:
        """
        The cost of reaching the root through C{port}, less its bonus.
        """
        bonusPort, bonus = self.bonus.get(vid, (0, 0))
        return PORT_COST - bonus if port.number == bonusPort else PORT_COST

    def setEdge(self, vid: int, port: int, edge: bool) -> None:
        """
        Make port number C{port} an edge of VLAN C{vid}'s tree (no BPDUs,
        always forwarding), or not.
        """
        edges = self.edges.setdefault(vid, set())
        tree = self.trees.get(vid)
        member = None if tree is None else next(
            (p for p in tree.members if p.number == port), None)
        if edge:
            edges.add(port)
        else:
            edges.discard(port)
        if tree is not None and member is not None:
            tree.unblock(member)

    def tree(self, vid: int) -> VlanTree:
        """
        The tree of VLAN C{vid}; while FSTP is off, a fresh one that only
        knows the members (for C{fstp/print}).
        """
        vlan = self.switch.vlans.get(vid)
        if vlan is None:
            raise errors.SwitchError(6, f"VLAN {vid} does not exist")
        tree = self.trees.get(vid)
        if tree is None:
            tree = VlanTree(self, vlan, announce=False)
            tree.members = _activeMembers(vlan)
        return tree

    def allTrees(self) -> Iterator[VlanTree]:
        """
        Every VLAN's tree, by VLAN id.
        """
        vlans = self.switch.vlans.vlans
        for vid in sorted(vlans):
            if vid in self.trees or not (self.enabled and vlans[vid].implicit):
                yield self.tree(vid)


def _syncMembers(tree: VlanTree) -> None:
    current = _activeMembers(tree.vlan)
    for port in [p for p in tree.members if p not in current]:
        tree.leave(port)
    for port, tagged in current.items():
        if tree.members.get(port) != tagged:
            tree.join(port, tagged)


def _activeMembers(vlan: Vlan) -> dict[SwitchPort, bool]:
    return {p: tagged for p, tagged in vlan.members() if p.links}
