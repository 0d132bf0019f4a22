"""
FSTP when the root switch of a ring dies: the survivors (vtwisted, or
vtwisted and Debian's C{vde_switch -F}) elect the next lowest id and stop
talking about the dead one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import StreamPlug, need, socketListening, sourceEnv, twistdArgv, waitFor
from taphelpers import console

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration


def cpuSeconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rootLines(mgmt: Path) -> list[str]:
    return [line for line in console(mgmt, "fstp/print 0").splitlines() if "++ root" in line]


@pytest.mark.parametrize("kinds", ["vvv", "vcv"])
def test_ringSurvivesTheDeathOfItsRoot(kinds: str, processes, shortdir: Path) -> None:
    """
    A ring of three switches, 02:..:01 the root; kill it: the other two
    agree on 02:..:02 within a few hellos (or, with vde_switch as 02:..:02,
    on one of them), spend no time passing BPDUs about, and carry a
    broadcast once.
    """
    need("dpipe", "vde_plug", *(["vde_switch"] if "c" in kinds else []))
    socks = [shortdir / f"s{n}" for n in (1, 2, 3)]
    mgmts = [shortdir / f"m{n}" for n in (1, 2, 3)]
    switches = []
    for n, kind in enumerate(kinds):
        address = f"02:00:00:00:00:0{n + 1}"
        if kind == "v":
            argv = twistdArgv("--sock", str(socks[n]), "--fstp", "--macaddr", address, "--mgmt",
                              str(mgmts[n]), logfile=str(shortdir / f"log{n}"))
            switches.append(processes.start(argv, env=sourceEnv()))
        else:
            switches.append(processes.start(
                ["vde_switch", "-F", "-s", str(socks[n]), "--macaddr", address,
                 "-M", str(mgmts[n])], stdin=subprocess.PIPE))
        waitFor(lambda n=n: socketListening(socks[n] / "ctl"), what=f"switch {n + 1}")
    hosts = [StreamPlug(processes, f"vde://{sock}") for sock in socks[1:]]
    for a, b in ((0, 1), (1, 2), (2, 0)):
        processes.start(["dpipe", "vde_plug", f"vde://{socks[a]}", "=", "vde_plug",
                         f"vde://{socks[b]}"])
    waitFor(lambda: any("Alternate/Backup" in console(m, "fstp/print 0") for m in mgmts),
            timeout=20, what="a blocked port")
    time.sleep(2)
    processes.stop(switches[0], signal.SIGKILL)
    # The next lowest id, 02:..:02; but vde_switch -F, when it is that
    # switch, was seen to keep its vtwisted neighbour's claim to the root
    # (02:..:03) though its own id is lower: it does not claim the root
    # while it hears one.  Either way the two must agree, with no loop.
    roots = [" ++ root 80:00:02:00:00:00:00:02"]
    if kinds == "vcv":
        roots.append(" ++ root 80:00:02:00:00:00:00:03")

    def agreed() -> bool:
        first, second = (rootLines(m)[0] for m in mgmts[1:])
        return first == second and first in roots

    waitFor(agreed, timeout=15, what="the survivors agreeing on the next root")
    ours = [p for p, kind in zip(switches[1:], kinds[1:]) if kind == "v"]
    before = [cpuSeconds(p.pid) for p in ours]
    time.sleep(5)
    assert [cpuSeconds(p.pid) - b < 0.5 for p, b in zip(ours, before)] == [True] * len(ours)
    root = 1 if rootLines(mgmts[1])[0] == roots[0] else 2
    assert " ++ rootport 0000 cost 0 " in console(mgmts[root], "fstp/print 0")
    assert " cost 20000000 " in console(mgmts[3 - root], "fstp/print 0")
    hosts[1].quiet(0.2)
    payload = b"after-root-died" + bytes(40)
    hosts[0].send(frame(b"\xff" * 6, mac(0x22), payload=payload))
    copies = 0
    deadline = time.monotonic() + 2
    while (remaining := deadline - time.monotonic()) > 0 and (got := hosts[1].receive(remaining)):
        copies += payload in got
    assert copies == 1


def test_twoCablesToAHubKeepItReachable(vswitch, processes, shortdir: Path) -> None:
    """
    Two cables from a vtwisted --fstp switch to a hub (vde_switch -x): the
    switch blocks one of them, not both (vde_switch -F blocks both), so a
    host behind the hub and one on the switch hear each other once.
    """
    need("vde_switch", "dpipe", "vde_plug")
    mgmt = shortdir / "mgmt"
    ours = vswitch("--fstp", "--mgmt", str(mgmt))
    hub = shortdir / "hub"
    processes.start(["vde_switch", "-x", "-s", str(hub)], stdin=subprocess.PIPE)
    waitFor(lambda: socketListening(hub / "ctl"), what="the hub")
    hosts = [StreamPlug(processes, f"vde://{ours.sock}"), StreamPlug(processes, f"vde://{hub}")]
    for _ in range(2):
        processes.start(["dpipe", "vde_plug", f"vde://{ours.sock}", "=", "vde_plug", f"vde://{hub}"])
    waitFor(lambda: "Alternate/Backup" in console(mgmt, "fstp/print 0"), timeout=20,
            what="a blocked port")
    time.sleep(2 * 4)  # two hellos: the other port must stay forwarding
    assert console(mgmt, "vlan/print 0").count("status=Discarding") == 1
    for sender, receiver, tag in ((0, 1, b"to-hub"), (1, 0, b"from-hub")):
        hosts[receiver].quiet(0.2)
        payload = tag + bytes(40)
        hosts[sender].send(frame(b"\xff" * 6, mac(0x30 + sender), payload=payload))
        copies = 0
        deadline = time.monotonic() + 1.5
        while (left := deadline - time.monotonic()) > 0 and (got := hosts[receiver].receive(left)):
            copies += payload in got
        assert copies == 1, tag
