"""
Two C{twistd vswitch} processes, each in a namespace of its own, joined by
a cable over a veth pair; the pair is then "pulled" (set down), so that
neither kernel hears from the other again, no FIN, no reset, as when a
host loses power or a firewall forgets the connection.  Both switches must
notice, drop the link, and the connecting one dial again once the veth is
back.

Addresses are in a private test /24 that exists only in the namespaces the
test made.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import execIn, needRoot, run, sourceEnv, twistdArgv, uniqueName, waitFor
from taphelpers import console, quietNamespace

pytestmark = pytest.mark.integration

LISTENER, CONNECTOR = "10.211.31.1", "10.211.31.2"
PORT = 7611


def cablePorts(mgmt: Path) -> str:
    """
    The ports of the (only) cable spec, from C{port/specs}: C{0001} or C{none}.
    """
    found = re.search(r"Spec cable:\S+ ports=(\S+)", console(mgmt, "port/specs"))
    assert found, console(mgmt, "port/specs")
    return found[1]


def test_aFarSwitchThatVanishesIsDroppedAndDialledAgain(processes, namespaces,
                                                         shortdir) -> None:
    needRoot()
    left, right = quietNamespace(namespaces, "vtwka"), quietNamespace(namespaces, "vtwkb")
    ends = uniqueName("ka"), uniqueName("kb")
    run("ip", "link", "add", ends[0], "netns", left, "type", "veth", "peer", "name", ends[1],
        "netns", right)
    for ns, end, address in ((left, ends[0], LISTENER), (right, ends[1], CONNECTOR)):
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", end)
        run("ip", "-n", ns, "link", "set", end, "up")
    mgmt = {side: shortdir / f"mgmt-{side}" for side in "ab"}
    logs = {side: shortdir / f"sw-{side}.log" for side in "ab"}
    specs = {
        "a": f"cable:listen:tcp:{PORT}:interface={LISTENER}:tls=off:keepalive=3",
        "b": f"cable:tcp:host={LISTENER}:port={PORT}:tls=off:keepalive=3",
    }
    for side, ns in (("a", left), ("b", right)):
        processes.start(execIn(ns, *twistdArgv(
            "--sock", str(shortdir / f"sw-{side}"), "--mgmt", str(mgmt[side]),
            "--port", specs[side], logfile=str(logs[side]))), env=sourceEnv())
    for side in "ab":
        waitFor(lambda side=side: mgmt[side].exists(), what=f"switch {side}'s console")
    try:
        waitFor(lambda: cablePorts(mgmt["a"]) != "none" and cablePorts(mgmt["b"]) != "none",
                timeout=15, what="the cable up")
        for ns, end in ((left, ends[0]), (right, ends[1])):
            run("ip", "-n", ns, "link", "set", end, "down")
        # 3 s of silence, a few more for the probes' schedule
        waitFor(lambda: cablePorts(mgmt["a"]) == "none" and cablePorts(mgmt["b"]) == "none",
                timeout=12, what="both switches to drop the dead cable")
        assert "left port" in logs["b"].read_text()
        for ns, end in ((left, ends[0]), (right, ends[1])):
            run("ip", "-n", ns, "link", "set", end, "up")
        waitFor(lambda: cablePorts(mgmt["a"]) != "none" and cablePorts(mgmt["b"]) != "none",
                timeout=20, what="the cable back")
        ports = console(mgmt["a"], "port/allprint")
        assert len(re.findall(r"module cable", ports)) == 1, ports  # the dead one is gone
    except AssertionError:
        for side in "ab":
            print(f"--- switch {side}:\n{logs[side].read_text()}")
        raise
