"""
FSTP: vde_switch's "fast spanning tree", which keeps loops of cables from
flooding the network forever.

Theory of operation
-------------------
Each VLAN has its own tree (L{VlanTree}).  A switch's id is its priority
(2 bytes) and MAC address; every VLAN starts with the switch believing it is
the root.  Every L{HELLO} seconds it sends a BPDU (L{vtwisted.wire.bpdu}) on
each member port that is not an edge port: the root it knows, its cost to
that root, its own id and the port's id.  Ports that heard BPDUs in the last
few hellos are I{spanning-tree ports}; ports with only hosts behind them
never hear any and keep forwarding whatever happens.

A BPDU's vector (root, cost plus this port's cost, sender, sender's port) is
compared with the tree's.  A better one makes its port the root port: every
other spanning-tree port turns discarding (a "backup") at once and is told
so, the root port forwards and answers with an agreement, and the VLAN's MAC
table is flushed (a topology change, also sent on to the other ports).  A
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

from collections.abc import Iterator
from typing import TYPE_CHECKING

from twisted.logger import Logger

from vtwisted import errors
from vtwisted.wire import bpdu as wire

if TYPE_CHECKING:
    from vtwisted.switch import Switch
    from vtwisted.switchport import SwitchPort
    from vtwisted.vlans import Vlan

log = Logger()

#: Seconds between BPDUs.
HELLO = 4
#: vde_switch's cost of every port.
PORT_COST = 20000000
DEFAULT_PRIORITY = 0x8000
_NO_DESIGNATED = b"\xff" * 8


class VlanTree:
    """
    The spanning tree of one VLAN.

    @ivar members: each active member port and whether it is tagged.
    @ivar rootPort: the port towards the root, or L{None} on the root.
    @ivar rootSeen: when the root's BPDUs last arrived (switch seconds).
    @ivar backup: ports discarding to break a loop.
    @ivar heard: ports that heard BPDUs, in the current and last period.
    """

    def __init__(self, stp: FastSpanningTree, vlan: Vlan) -> None:
        self.stp = stp
        self.vlan = vlan
        self.members: dict[SwitchPort, bool] = {}
        #: Edge port numbers (C{fstp/setedge}), kept while FSTP is off.
        self.edge: set[int] = stp.edges.setdefault(vlan.vid, set())
        self.backup: set[SwitchPort] = set()
        self.heard: tuple[set[SwitchPort], set[SwitchPort]] = (set(), set())
        self.lastChange = -1
        self.forgetRoot()

    def forgetRoot(self) -> None:
        """
        Believe this switch is the root again; every backup forwards.
        """
        self.root = self.stp.bridgeId
        self.rootCost = 0
        self.designated = _NO_DESIGNATED
        self.designatedPort = b"\x00\x00"
        self.rootPort: SwitchPort | None = None
        self.rootSeen = 0
        self.event("fstp/root", 0, f" -> {formatId(self.root)}")
        for port in list(self.backup):
            self._forward(port)

    def event(self, category: str, number: int, text: str = "") -> None:
        """
        Report a debug event about port C{number} in this VLAN.
        """
        vid = self.vlan.vid
        self.stp.switch.events.emit(
            category, f"Port {number:04d} VLAN {vid >> 8:02x}:{vid & 0xFF:02x}{text}")

    @property
    def vector(self) -> bytes:
        """
        This switch's path to the root: root id, cost, designated bridge
        and port, which compare as byte strings the way the paths rank.
        """
        return self.root + self.rootCost.to_bytes(4, "big") + self.designated + self.designatedPort

    def isRoot(self) -> bool:
        """
        Whether this switch is the root of the VLAN.
        """
        return self.root == self.stp.bridgeId

    def role(self, port: SwitchPort) -> str:
        """
        The port's role, in vde_switch's words.
        """
        if port.number in self.edge:
            return "Edge"
        if port is self.rootPort:
            return "Root"
        if port in self.backup:
            return "Alternate/Backup"
        return "Designated"

    def treePorts(self, *excluding: SwitchPort | None) -> list[SwitchPort]:
        """
        Members that heard BPDUs lately, are not edges or backups, in port
        order.
        """
        heard = self.heard[0] | self.heard[1]
        return [
            p for p in sorted(self.members, key=_number)
            if p in heard and p.number not in self.edge and p not in self.backup
            and p not in excluding
        ]

    # Membership

    def join(self, port: SwitchPort, tagged: bool) -> None:
        """
        C{port} became an active member: greet it, and start again from a
        clean MAC table.
        """
        self.members[port] = tagged
        self._forward(port)
        for heard in self.heard:
            heard.discard(port)
        self.send(port)
        self.topologyChange(port)

    def leave(self, port: SwitchPort) -> None:
        """
        C{port} left the VLAN or went inactive: if it heard BPDUs lately, it
        is reported gone (C{fstp/-}, which is how C{vde_autolink} learns
        that a cable dropped); its backup state goes with it, unreported.
        """
        del self.members[port]
        if port in self.heard[0] or port in self.heard[1]:
            self.event("fstp/-", port.number)
        if port in self.backup:
            self._forward(port, report=False)
        for heard in self.heard:
            heard.discard(port)
        if port is self.rootPort:
            self.forgetRoot()
        self.topologyChange(port)

    # Timers

    def hello(self, now: int) -> None:
        """
        Send BPDUs on every member but edges; forget a silent root.
        """
        if self.rootPort is not None and now - self.rootSeen > 3 * HELLO:
            self.forgetRoot()
        for port in sorted(self.members, key=_number):
            if port.number not in self.edge:
                self.send(port, agreement=True)

    def ageBackups(self, index: int) -> None:
        """
        Backups that heard nothing in two periods forward again; start the
        period C{index}.
        """
        heard = self.heard[0] | self.heard[1]
        for port in [p for p in self.backup if p not in heard]:
            self._forward(port)
        for port in self.heard[index] - self.heard[1 - index]:
            self.event("fstp/-", port.number)
        self.heard[index].clear()

    # BPDUs

    def send(self, port: SwitchPort, agreement: bool = False, tc: bool = False) -> None:
        """
        Send this tree's BPDU on C{port}.
        """
        stp = self.stp
        flags = (
            int(tc)
            | (port in self.backup) << 1
            | (port not in self.backup) << 2
            | (port is not self.rootPort) << 3
            | (0 if port in self.backup else wire.LEARNING | wire.FORWARDING)
            | int(agreement) << 6
        )
        age = 0 if self.rootPort is None else max(0, stp.switch.now - self.rootSeen)
        message = wire.Bpdu(flags, self.root, self.rootCost, stp.bridgeId,
                            wire.portId(port.number), age, 10 * HELLO, HELLO, 0)
        tagged = self.members.get(port, False)
        frame = wire.pack(stp.mac, message, self.vlan.vid if tagged else None)
        counters = port.counters
        counters.outFrames += 1
        counters.outBytes += len(frame)
        port.send(frame)

    def received(self, port: SwitchPort, message: wire.Bpdu, heardIndex: int) -> None:
        """
        Act on a BPDU read on C{port}.
        """
        if port.number in self.edge or port not in self.members:
            return
        if port not in self.heard[0] and port not in self.heard[1]:
            self.event("fstp/+", port.number)
        self.heard[heardIndex].add(port)
        if message.flags & wire.TC:
            self.topologyChange(port)
        cost = (message.rootCost + self.stp.portCost(self.vlan.vid, port)) & 0xFFFFFFFF
        theirs = message.root + cost.to_bytes(4, "big") + message.bridge + message.portId
        ours = self.vector
        now = self.stp.switch.now
        if theirs == ours:
            self.rootSeen = now
        elif theirs < ours or port is self.rootPort:
            self._newRoot(port, message, cost, now)
        elif message.root == self.root:
            self._settleLink(port, (message.flags & wire.ROLE_MASK) == wire.ROLE_ROOT)
        else:
            self.send(port)

    def _newRoot(self, port: SwitchPort, message: wire.Bpdu, cost: int, now: int) -> None:
        """
        A better path to a root came through C{port}: make it the root port
        and block every other spanning-tree port until its peer agrees.
        """
        changed = message.root != self.root
        self.root, self.rootCost = message.root, cost
        self.designated, self.designatedPort = message.bridge, message.portId
        self.rootPort, self.rootSeen = port, now
        self.event("fstp/root", port.number, f" -> {formatId(self.root)}")
        if changed:
            log.info("FSTP: VLAN {vid}: the root is now {root}, through {port}",
                     vid=self.vlan.vid, root=formatId(self.root), port=port.describe())
        for other in self.treePorts(port):
            self._discard(other)
            self.send(other)
        if port in self.backup:
            self._forward(port)
        else:
            # vde_switch reports the root port forwarding even if it was.
            self.stp.reportStatus(self.vlan, port, discarding=False)
        self.send(port, agreement=True)
        self.topologyChange(port)

    def _settleLink(self, port: SwitchPort, peerUsesIt: bool) -> None:
        """
        The far side of C{port} has a worse path to our root: the link
        forwards if it is the far side's root port, and is redundant if not.
        """
        if peerUsesIt and port in self.backup:
            self._forward(port)
            self.topologyChange(port)
        elif not peerUsesIt and port not in self.backup:
            self._discard(port)
            self.topologyChange(port)

    def topologyChange(self, origin: SwitchPort | None) -> None:
        """
        Flush the VLAN's MAC table and tell the other spanning-tree ports,
        at most once per second (vde_switch has no limit, so a TC could run
        around a loop that is not broken yet).
        """
        stp = self.stp
        stp.switch.fdb.flush(vid=self.vlan.vid)
        now = stp.switch.now
        if now == self.lastChange:
            return
        self.lastChange = now
        for port in self.treePorts(origin):
            self.send(port, tc=True)

    def unblock(self, port: SwitchPort) -> None:
        """
        Let C{port} forward (it became an edge, or stopped being one).
        """
        self._forward(port)

    def _discard(self, port: SwitchPort) -> None:
        if port not in self.backup:
            self.backup.add(port)
            self.stp.stateChanged(self.vlan, port, discarding=True)

    def _forward(self, port: SwitchPort, report: bool = True) -> None:
        if port in self.backup:
            self.backup.discard(port)
            self.stp.stateChanged(self.vlan, port, discarding=False, report=report)


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

    def membershipChanged(self) -> None:
        """
        Bring every tree's members in line with the VLANs' active members.
        """
        if not self.enabled:
            return
        vlans = self.switch.vlans.vlans
        for vid in [v for v in self.trees if v not in vlans]:
            del self.trees[vid]
        for vid, vlan in vlans.items():
            tree = self.trees.get(vid)
            if tree is None:
                tree = self.trees[vid] = VlanTree(self, vlan)
            current = _activeMembers(vlan)
            for port in [p for p in tree.members if p not in current]:
                tree.leave(port)
            for port, tagged in current.items():
                if tree.members.get(port) != tagged:
                    tree.join(port, tagged)

    def tick(self, now: int) -> None:
        """
        Send hellos when due; every fourth hello, age the backups.
        """
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
        tree = self.trees.get(vlan.vid)
        if tree is None:
            return
        try:
            message = wire.parse(data, offset)
        except wire.BpduError as e:
            port.dropped("malformed", f"BPDU: {e}")
            return
        tree.received(port, message, self._heardIndex)

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
            tree = VlanTree(self, vlan)
            tree.members = _activeMembers(vlan)
        return tree

    def allTrees(self) -> Iterator[VlanTree]:
        """
        Every VLAN's tree, by VLAN id.
        """
        for vid in sorted(self.switch.vlans.vlans):
            yield self.tree(vid)


def formatId(bridgeId: bytes) -> str:
    """
    An 8-byte id as vde_switch prints it (C{80:00:02:aa:bb:cc:dd:ee}).
    """
    return ":".join(f"{b:02x}" for b in bridgeId)


def _activeMembers(vlan: Vlan) -> dict[SwitchPort, bool]:
    return {p: tagged for p, tagged in vlan.members() if p.links}


def _number(port: SwitchPort) -> int:
    return port.number
