"""
The spanning tree of one VLAN (L{VlanTree}): the FSTP rules that
L{vtwisted.fstp.FastSpanningTree} runs once per VLAN.

Theory of operation
-------------------
A tree knows the VLAN's active members, the best path to the root it has
heard (its I{vector}: root id, cost, designated bridge and port, compared as
byte strings), the root port, the ports discarding to break a loop
(I{backups}) and which ports heard BPDUs in the current and last period.
L{VlanTree.received} compares a BPDU's vector with its own: a better one
makes its port the root port and blocks every other spanning-tree port, a
worse one from the same root settles the link it came on.  The tree sends
its BPDUs through the ports itself, but a port's change of state goes
through L{vtwisted.fstp.FastSpanningTree.stateChanged}, which updates the
VLAN's flooding and the switch's route cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from vtwisted.wire import bpdu as wire

if TYPE_CHECKING:
    from vtwisted.fstp import FastSpanningTree
    from vtwisted.switchport import SwitchPort
    from vtwisted.vlans import Vlan

log = Logger()

#: Seconds between BPDUs.
HELLO = 4
#: vde_switch's cost of every port.
PORT_COST = 20000000
#: The cost of the longest path to a root believed: as many cables as the
#: BPDUs' max age has seconds (40).
MAX_PATH_COST = 10 * HELLO * PORT_COST
_NO_DESIGNATED = b"\xff" * 8
#: What follows the root's id in its own vector: cost 0, no designated bridge.
_ROOT_PATH = bytes(4) + _NO_DESIGNATED + b"\x00\x00"


class VlanTree:
    """
    The spanning tree of one VLAN.

    @ivar members: each active member port and whether it is tagged.
    @ivar rootPort: the port towards the root, or L{None} on the root.
    @ivar rootSeen: when the root's BPDUs last arrived (switch seconds).
    @ivar backup: ports discarding to break a loop.
    @ivar heard: ports that heard BPDUs, in the current and last period.
    """

    def __init__(self, stp: FastSpanningTree, vlan: Vlan, announce: bool = True) -> None:
        """
        @param announce: whether to report the root (C{fstp/root}); not for
            a tree made only to be shown while FSTP is off.
        """
        self.stp = stp
        self.vlan = vlan
        self.members: dict[SwitchPort, bool] = {}
        #: The VLAN's generation when the members were last brought in
        #: line with it (L{FastSpanningTree.membershipChanged}).
        self.synced = -1
        #: Edge port numbers (C{fstp/setedge}), kept while FSTP is off.
        self.edge: set[int] = stp.edges.setdefault(vlan.vid, set())
        self.backup: set[SwitchPort] = set()
        self.heard: tuple[set[SwitchPort], set[SwitchPort]] = (set(), set())
        self.lastChange = -1
        #: Where the changes held back by the once-per-second limit came from.
        self._pendingOrigins: set[SwitchPort | None] = set()
        self.forgetRoot(announce)

    def forgetRoot(self, announce: bool = True) -> None:
        """
        Believe this switch is the root again (and say so if C{announce});
        every backup forwards.
        """
        self.root = self.stp.bridgeId
        self.rootCost = 0
        self.designated = _NO_DESIGNATED
        self.designatedPort = b"\x00\x00"
        self.rootPort: SwitchPort | None = None
        self.rootSeen = 0
        if announce:
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
        if message.bridge == self.stp.bridgeId:
            self._ownBpdu(port, message.portId)
            return
        if message.flags & wire.TC:
            self.topologyChange(port)
        cost = message.rootCost + self.stp.portCost(self.vlan.vid, port)
        if cost > MAX_PATH_COST:
            self._tooFar(port, message)
            return
        cost &= 0xFFFFFFFF  # a bonus above the port's cost wraps, as in vde_switch
        theirs = message.root + cost.to_bytes(4, "big") + message.bridge + message.portId
        ours = self.vector
        now = self.stp.switch.now
        if theirs == ours:
            self.rootSeen = now
        elif theirs < ours:
            self._newRoot(port, message, cost, now)
        elif port is self.rootPort:
            if theirs > self.stp.bridgeId + _ROOT_PATH:
                self._becomeRoot(port)  # vde_switch keeps a worse root than itself
            else:
                self._newRoot(port, message, cost, now)
        elif message.root == self.root:
            self._settleLink(port, (message.flags & wire.ROLE_MASK) == wire.ROLE_ROOT)
        else:
            self.send(port)

    def _ownBpdu(self, port: SwitchPort, sender: bytes) -> None:
        """
        This switch's own BPDU, sent on port C{sender}, came back on C{port}:
        both lead to one segment (a hub).  One of them must discard, and
        only one, or the segment is cut off (vde_switch blocks both): not
        the root port, else the one with the higher id.
        """
        if port is self.rootPort:
            return
        rootPort = self.rootPort
        if (rootPort is not None and sender == wire.portId(rootPort.number)) or (
                sender < wire.portId(port.number)):
            self._discard(port)

    def _tooFar(self, port: SwitchPort, message: wire.Bpdu) -> None:
        """
        C{message}'s root is further than any loop of cables: it is a root
        that is gone, whose last BPDUs two switches keep handing each other
        with a growing cost (counting to infinity).  If it came through the
        root port, forget that root and say so to the peer.
        """
        if port is not self.rootPort:
            return
        log.info("FSTP: VLAN {vid}: the root {root} is more than {hops} cables away through "
                 "{port}: it is gone", vid=self.vlan.vid, root=formatId(message.root),
                 hops=MAX_PATH_COST // PORT_COST, port=port.describe())
        self._becomeRoot(port)

    def _becomeRoot(self, port: SwitchPort) -> None:
        """
        The root port brought a path worse than this switch being the root:
        be the root, and tell the peer.
        """
        self.forgetRoot()
        self.send(port)
        self.topologyChange(port)

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
        around a loop that is not broken yet): a change in a second that
        already sent one is told at the next tick (L{announcePending}), as
        that TC may be the only news of it (a switch that lost its root
        port says nothing else until its hello).
        """
        self.stp.switch.fdb.flush(vid=self.vlan.vid)
        if self.stp.switch.now == self.lastChange:
            self._pendingOrigins.add(origin)
            return
        self._announceChange(origin)

    def announcePending(self) -> None:
        """
        Tell the spanning-tree ports of the changes that the once-per-second
        limit held back, if the limit allows now: all of them, but the port
        they all came from if there is one.
        """
        origins = self._pendingOrigins
        if origins and self.stp.switch.now != self.lastChange:
            self._pendingOrigins = set()
            self._announceChange(origins.pop() if len(origins) == 1 else None)

    def _announceChange(self, origin: SwitchPort | None) -> None:
        self.lastChange = self.stp.switch.now
        self.stp.commonTopologyChanged(self.vlan)
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


def formatId(bridgeId: bytes) -> str:
    """
    An 8-byte id as vde_switch prints it (C{80:00:02:aa:bb:cc:dd:ee}).
    """
    return ":".join(f"{b:02x}" for b in bridgeId)


def _number(port: SwitchPort) -> int:
    return port.number
