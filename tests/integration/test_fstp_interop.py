"""
FSTP against real peers: vtwisted and Debian's C{vde_switch -F} joined by
two C{dpipe} cables (a loop), and a ring of three vtwisted switches.
Hosts are C{vde_plug} stream clients sending raw broadcasts.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import StreamPlug, copiesOf, need, socketListening, waitFor
from taphelpers import console

from vtwisted.testing import frame, mac
from vtwisted.wire.vlan import insertTag

pytestmark = pytest.mark.integration

BROADCAST = b"\xff" * 6


def cable(processes, left: Path, right: Path) -> subprocess.Popen[bytes]:
    return processes.start(["dpipe", "vde_plug", f"vde://{left}", "=", "vde_plug",
                            f"vde://{right}"])


def fstpPrint(mgmt: Path) -> str:
    return console(mgmt, "fstp/print 0")


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
    time.sleep(1)
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
    waitFor(lambda: sum("Alternate/Backup" in fstpPrint(m) for m in mgmts) >= 1,
            timeout=20, what="a blocked port")
    time.sleep(1)
    payload = b"ring-first-" + bytes(40)
    hosts[1].send(frame(BROADCAST, mac(0x11), payload=payload))
    assert [copiesOf(h, payload) for h in (hosts[0], hosts[2])] == [1, 1]
    # Switch 1 (the root) reaches switch 2 directly; cut that cable.
    processes.stop(cables[(0, 1)])
    time.sleep(3)
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
    time.sleep(1)
    payload = b"fstp-tagged-" + bytes(40)
    hosts[0].send(insertTag(frame(BROADCAST, mac(0x10), payload=payload), 10))
    assert copiesOf(hosts[1], payload) == 1
