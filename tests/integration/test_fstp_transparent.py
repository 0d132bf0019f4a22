"""
FSTP on VLAN-transparent (C{vlan=all}) ports against Debian's C{vde_switch
-F}: a loop whose cables carry VLAN 10 as trunks at vde_switch's end and
transparently at vtwisted's, where VLAN 10 only exists because traffic (or
vde_switch's BPDUs) made it; and a client tagging frames for every VID.
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
BPDU_ADDRESS = bytes.fromhex("0180c2000000")


def framesFor(plug: StreamPlug, seconds: float) -> list[bytes]:
    """The BPDUs C{plug} receives within C{seconds}."""
    frames = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        got = plug.receive(remaining)
        if got is None:
            break
        if got[:6] == BPDU_ADDRESS:
            frames.append(got)
    return frames


def test_vdeSwitchTrunkLoopThroughTransparentPortsIsBroken(vswitch, processes,
                                                             shortdir: Path) -> None:
    """
    vde_switch's VLAN 10 tree and vtwisted's implicit VLAN 10 (started by
    vde_switch's BPDUs) agree: a frame tagged 10 crosses the loop once.
    """
    need("vde_switch", "dpipe", "vde_plug")
    mgmts = (shortdir / "mgmt", shortdir / "cmgmt")
    allDir = shortdir / "all"
    vswitch("--fstp", "--macaddr", "02:00:00:00:00:02", "--mgmt", str(mgmts[0]),
            "--port", f"vde:{allDir}:vlan=all")
    waitFor(lambda: socketListening(allDir / "ctl"), what="the vlan=all socket")
    theirs = shortdir / "c-switch"
    processes.start(["vde_switch", "-F", "-s", str(theirs), "--macaddr", "02:00:00:00:00:01",
                     "-M", str(mgmts[1])], stdin=subprocess.PIPE)
    waitFor(lambda: socketListening(theirs / "ctl"), what="vde_switch")
    console(mgmts[1], "vlan/create 10")
    hostOurs = StreamPlug(processes, f"vde://{allDir}")
    hostTheirs = StreamPlug(processes, f"vde://{theirs}")
    for _ in range(2):
        processes.start(["dpipe", "vde_plug", f"vde://{allDir}", "=", "vde_plug",
                         f"vde://{theirs}"])
    waitFor(lambda: "Port 0003" in console(mgmts[1], "port/print"), what="two cables")
    console(mgmts[1], "vlan/addport 10 1", "vlan/addport 10 2", "vlan/addport 10 3")
    waitFor(lambda: "Alternate/Backup" in console(mgmts[0], "fstp/print 10")
            + console(mgmts[1], "fstp/print 10"), timeout=20, what="a blocked port in VLAN 10")
    assert "ROOTSWITCH" in console(mgmts[1], "fstp/print 10")
    time.sleep(1)
    for sender, receiver, tag in ((hostOurs, hostTheirs, b"ours"),
                                  (hostTheirs, hostOurs, b"theirs")):
        payload = b"vlan10-" + tag + bytes(40)
        sender.send(insertTag(frame(BROADCAST, mac(0x10), payload=payload), 10))
        assert copiesOf(receiver, payload, 1.5) == 1


def test_clientTaggingEveryVidCostsNoBpdus(vswitch, processes, shortdir: Path) -> None:
    """
    A client on a vlan=all port sends a frame tagged for each of the 4094
    VIDs: the switch keeps answering its console at once, and another
    vlan=all client hears only the untagged VLAN's BPDUs afterwards.
    """
    need("vde_plug")
    allDir = shortdir / "all"
    mgmt = shortdir / "mgmt"
    vswitch("--fstp", "--mgmt", str(mgmt), "--port", f"vde:{allDir}:vlan=all")
    waitFor(lambda: socketListening(allDir / "ctl"), what="the vlan=all socket")
    attacker = StreamPlug(processes, f"vde://{allDir}")
    listener = StreamPlug(processes, f"vde://{allDir}")
    started = time.monotonic()
    for vid in range(1, 4095):
        attacker.send(insertTag(frame(BROADCAST, mac(0x66), payload=bytes(46)), vid))
    waitFor(lambda: "VLAN 4094" in console(mgmt, "vlan/print 4094") or None, timeout=10,
            what="VLAN 4094")
    assert time.monotonic() - started < 8
    listener.quiet(0.5)
    bpdus = framesFor(listener, 9)
    assert 1 <= len(bpdus) <= 4
    assert all(f[12:14] != b"\x81\x00" for f in bpdus)
