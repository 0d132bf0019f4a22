"""
FSTP against real peers: vtwisted and Debian's C{vde_switch -F} joined by
two C{dpipe} cables (a loop), and a ring of three vtwisted switches.
Hosts are C{vde_plug} stream clients sending raw broadcasts, once every
switch's tree has settled (L{settled}: the root, each switch's distance to
it and the blocked ports are those of the final tree), not after a fixed
wait: BPDUs follow a 4 s hello, so how long a tree takes depends on when
each switch's hello falls.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import StreamPlug, copiesOf, need, socketListening, waitFor
from taphelpers import console

from vtwisted.fstptree import PORT_COST
from vtwisted.testing import frame, mac
from vtwisted.wire.vlan import insertTag

pytestmark = pytest.mark.integration

BROADCAST = b"\xff" * 6


def cable(processes, left: Path, right: Path) -> subprocess.Popen[bytes]:
    return processes.start(["dpipe", "vde_plug", f"vde://{left}", "=", "vde_plug",
                            f"vde://{right}"])


def fstpPrint(mgmt: Path, vid: int = 0) -> str:
    return console(mgmt, f"fstp/print {vid}")


#: The lowest bridge id of every test here (C{--macaddr 02:00:00:00:00:01}).
ROOT = "80:00:02:00:00:00:00:01"


def settled(mgmts: list[Path], hops: list[int], blocked: bool, vid: int = 0) -> bool:
    """
    Whether the tree of VLAN C{vid} is the final one: every switch has
    C{ROOT} for root, C{hops[i]} cables away from switch C{i} (C{0} for the
    root itself), and some port blocks (a loop is left) or none does.  A
    switch on its way there (a root port just chosen, its other ports
    discarding until their peers agree) fails one of these.
    """
    blocks = 0
    for mgmt, distance in zip(mgmts, hops):
        shown = fstpPrint(mgmt, vid)
        cost = re.search(r"\+\+ rootport \d+ cost (\d+)", shown)
        if f"++ root {ROOT}" not in shown or cost is None or (
                int(cost.group(1)) != distance * PORT_COST):
            return False
        blocks += shown.count("role=Alternate/Backup")
    return (blocks > 0) == blocked


def test_loopWithRealVdeSwitchIsBroken(vswitch, processes, shortdir) -> None:
    """
    vtwisted --fstp and vde_switch -F joined twice agree on one tree: a
    broadcast from each side reaches the other side's host exactly once.
    """
    need("vde_switch", "dpipe", "vde_plug")
    ours = vswitch("--fstp", "--macaddr", "02:00:00:00:00:01", "--mgmt",
                   str(shortdir / "mgmt"))
    theirs = shortdir / "c-switch"
    processes.start(["vde_switch", "-F", "-s", str(theirs), "--macaddr", "02:00:00:00:00:02",
                     "-M", str(shortdir / "cmgmt")], stdin=subprocess.PIPE)
    waitFor(lambda: socketListening(theirs / "ctl"), what="vde_switch")
    hostOurs = StreamPlug(processes, f"vde://{ours.sock}")
    hostTheirs = StreamPlug(processes, f"vde://{theirs}")
    cable(processes, ours.sock, theirs)
    cable(processes, ours.sock, theirs)
    waitFor(lambda: "Alternate/Backup" in fstpPrint(shortdir / "mgmt")
            or "Alternate/Backup" in fstpPrint(shortdir / "cmgmt"),
            timeout=20, what="a blocked port")
    ourTree = fstpPrint(shortdir / "mgmt")
    assert "ROOTSWITCH" in ourTree, ourTree  # 80:00:02:00:00:00:00:01 is the lowest id
    assert "Discarding" in console(shortdir / "cmgmt", "vlan/print 0") + console(
        shortdir / "mgmt", "vlan/print 0")
    waitFor(lambda: settled([shortdir / "mgmt", shortdir / "cmgmt"], [0, 1], blocked=True),
            timeout=30, what="the final tree")
    for sender, receiver, tag in ((hostOurs, hostTheirs, b"ours"),
                                  (hostTheirs, hostOurs, b"theirs")):
        payload = b"fstp-" + tag + b"-" + bytes(40)
        sender.send(frame(BROADCAST, mac(0x10 if tag == b"ours" else 0x20), payload=payload))
        assert copiesOf(receiver, payload) == 1


def test_ringOfThreeSwitchesHealsWhenACableIsCut(vswitch, processes, shortdir) -> None:
    """
    Three vtwisted switches in a ring carry one copy of each broadcast;
    when a forwarding cable dies, the blocked one takes over.
    """
    need("dpipe", "vde_plug")
    switches = [
        vswitch("--fstp", "--macaddr", f"02:00:00:00:00:0{n}", "--mgmt",
                str(shortdir / f"m{n}"))
        for n in (1, 2, 3)
    ]
    hosts = [StreamPlug(processes, f"vde://{sw.sock}") for sw in switches]
    cables = {
        (a, b): cable(processes, switches[a].sock, switches[b].sock)
        for a, b in ((0, 1), (1, 2), (2, 0))
    }
    mgmts = [shortdir / f"m{n}" for n in (1, 2, 3)]
    # Switch 1 (the root) reaches the others directly; the third cable blocks.
    waitFor(lambda: settled(mgmts, [0, 1, 1], blocked=True), timeout=30,
            what="the ring's tree: one cable blocked")
    payload = b"ring-first-" + bytes(40)
    hosts[1].send(frame(BROADCAST, mac(0x11), payload=payload))
    assert [copiesOf(h, payload) for h in (hosts[0], hosts[2])] == [1, 1]
    # Cut the root's cable to switch 2, which must then reach it through
    # switch 3, over the cable that blocked.
    processes.stop(cables[(0, 1)])
    waitFor(lambda: settled(mgmts, [0, 2, 1], blocked=False), timeout=30,
            what="the healed tree: switch 2 through switch 3, nothing blocked")
    payload = b"ring-second-" + bytes(40)
    hosts[1].send(frame(BROADCAST, mac(0x11), payload=payload))
    assert [copiesOf(h, payload) for h in (hosts[0], hosts[2])] == [1, 1]


def test_taggedLoopWithRealVdeSwitchIsBroken(vswitch, processes, shortdir) -> None:
    """
    The same loop carrying VLAN 10 tagged: the tagged BPDUs agree too, and a
    frame tagged 10 crosses once.
    """
    need("vde_switch", "dpipe", "vde_plug")
    mgmts = (shortdir / "mgmt", shortdir / "cmgmt")
    ours = vswitch("--fstp", "--macaddr", "02:00:00:00:00:01", "--mgmt", str(mgmts[0]))
    theirs = shortdir / "c-switch"
    processes.start(["vde_switch", "-F", "-s", str(theirs), "--macaddr", "02:00:00:00:00:02",
                     "-M", str(mgmts[1])], stdin=subprocess.PIPE)
    waitFor(lambda: socketListening(theirs / "ctl"), what="vde_switch")
    hosts = (StreamPlug(processes, f"vde://{ours.sock}"), StreamPlug(processes, f"vde://{theirs}"))
    cable(processes, ours.sock, theirs)
    cable(processes, ours.sock, theirs)
    for mgmt in mgmts:
        waitFor(lambda m=mgmt: "Port 0003" in console(m, "port/print"), what="three ports")
        console(mgmt, "vlan/create 10", "vlan/addport 10 1", "vlan/addport 10 2",
                "vlan/addport 10 3")
    waitFor(lambda: any("status=Discarding" in console(m, "vlan/print 10") for m in mgmts),
            timeout=20, what="a port discarding in VLAN 10")
    waitFor(lambda: settled(list(mgmts), [0, 1], blocked=True, vid=10), timeout=30,
            what="the final tree in VLAN 10")
    payload = b"fstp-tagged-" + bytes(40)
    hosts[0].send(insertTag(frame(BROADCAST, mac(0x10), payload=payload), 10))
    assert copiesOf(hosts[1], payload) == 1
