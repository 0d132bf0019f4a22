"""
QEMU guests (tests/guest.py) whose C{-netdev vde} names one of vdeplug4's
own nodes rather than the switch: with C{sock=bonding://DIR} (or
C{multi://}, C{switch://}) QEMU's libvdeplug serves the directory C{DIR}
for the guest, and C{vde_plug vde://DIR vde://SWITCH} cables join it to the
switch, whose TAP leads to a namespace.

Addresses are in a private test /24 that exists only on the switch the
test started and in the namespace it made.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from guest import Guest, startGuest
from helpers import Namespaces, Processes, need, needRoot, run, socketListening, uniqueName, waitFor
from taphelpers import console, moveTap, quietNamespace

pytestmark = pytest.mark.integration

GUEST_MAC = "52:54:00:76:74:31"
HOST, GUEST = "10.211.7.1", "10.211.7.2"

#: The guest pings the namespace, then idles while the test pings it back.
SCRIPT = f"""\
ip addr add {GUEST}/24 dev eth0
ip link set eth0 up
n=0
until ping -c 1 -W 1 {HOST} >/dev/null 2>&1; do
    n=$((n + 1)); [ $n -ge 30 ] && break
done
ping -c 10 -i 0.2 -W 2 {HOST}
echo VTW-READY
sleep 120
"""


Plugs = list[subprocess.Popen[bytes]]


def _guestOnNode(vswitch: Any, processes: Processes, namespaces: Namespaces, shortdir: Path,
                 kind: str, cables: int) -> tuple[Any, Path, str, Guest, Plugs]:
    """
    A switch with a TAP in a new namespace (as C{HOST}), a guest on
    C{-netdev vde,sock=KIND://DIR} (as C{GUEST}) and C{cables} C{vde_plug}s
    from C{DIR} to the switch; return once the guest has pinged the
    namespace.
    """
    need("vde_plug", "ping", "qemu-system-x86_64")
    needRoot()
    tap = uniqueName("tn")
    mgmt = shortdir / "mgmt"
    sw = vswitch("--port", f"tap:{tap}", "--mgmt", str(mgmt))
    ns = quietNamespace(namespaces, "vtn")
    moveTap(tap, ns, f"{HOST}/24")
    node = shortdir / kind
    guest = startGuest(processes, ["-netdev", f"vde,id=n0,sock={kind}://{node}"], SCRIPT,
                       GUEST_MAC, directory=shortdir, name=kind)
    waitFor(lambda: socketListening(node / "ctl") or guest.process.poll() is not None,
            what=f"QEMU's {kind}:// directory")
    assert guest.process.poll() is None, guest.diagnostics()
    plugs = [processes.start(["vde_plug", f"vde://{node}", f"vde://{sw.sock}"])
             for _ in range(cables)]
    waitFor(lambda: guest.sawLine("VTW-READY") or guest.process.poll() is not None,
            timeout=90, what="the guest's pings")
    assert "10 packets received" in guest.console(), guest.diagnostics() + sw.logText()
    return sw, mgmt, ns, guest, plugs


def _pingGuest(ns: str, count: int = 10) -> str:
    result = run("ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2",
                 GUEST, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _ports(mgmt: Path) -> dict[int, tuple[int, str]]:
    """Each port's IN packet counter and endpoint line, from C{port/print}."""
    ports: dict[int, tuple[int, str]] = {}
    port = inPackets = 0
    for line in console(mgmt, "port/print").splitlines():
        if found := re.match(r"Port (\d+) ", line):
            port = int(found.group(1))
        elif found := re.match(r"\s*IN:\s+pkts\s+(\d+)", line):
            inPackets = int(found.group(1))
        elif "endpoint ID" in line:
            ports[port] = (inPackets, line)
    return ports


def _learnedPort(mgmt: Path) -> int:
    found = re.search(rf"{GUEST_MAC} VLAN 0000 to port: (\d+)", console(mgmt, "hash/print"))
    assert found is not None, console(mgmt, "hash/print")
    return int(found.group(1))


def test_guestOnBondingNodeOverTwoCables(vswitch, processes, namespaces, shortdir) -> None:
    """
    A guest on C{-netdev vde,sock=bonding://DIR} cabled twice to the
    switch: its frames reach the switch over both cables in turn, the
    switch keeps its address on one of them (no flapping: the other
    cable's frames are counted as refused moves), and the namespace's
    pings are answered once each.  Once the cable its address was learned
    on is cut, the switch learns it on the other and traffic goes on.
    """
    sw, mgmt, ns, guest, plugs = _guestOnNode(vswitch, processes, namespaces, shortdir,
                                              "bonding", 2)
    assert "duplicates" not in guest.console(), guest.diagnostics()
    assert "duplicates" not in _pingGuest(ns)
    ports = _ports(mgmt)
    cablePorts = {number for number, (_, line) in ports.items() if "vdeplug" in line}
    assert len(cablePorts) == 2, ports
    assert all(ports[number][0] > 0 for number in cablePorts), ports
    learned = _learnedPort(mgmt)
    assert learned in cablePorts
    refused = re.search(r"Moves refused (\d+)", console(mgmt, "hash/stats"))
    assert refused is not None and int(refused.group(1)) > 0, console(mgmt, "hash/stats")

    pids = {number: int(re.search(r"pid=(\d+)", ports[number][1]).group(1))  # type: ignore[union-attr]
            for number in cablePorts}
    processes.stop(next(p for p in plugs if p.pid == pids[learned]))
    waitFor(lambda: len(_ports(mgmt)) == 2, what="the cut cable's port to go")
    # a frame or two may still go to the cut cable before the node sees it go
    run("ip", "netns", "exec", ns, "ping", "-c", "3", "-W", "1", GUEST, check=False)
    assert "duplicates" not in _pingGuest(ns, 3)
    assert _learnedPort(mgmt) == (cablePorts - {learned}).pop()
    assert guest.process.poll() is None, guest.diagnostics()
    assert "WARN" not in sw.logText().upper() and "error" not in sw.logText(), sw.logText()


@pytest.mark.parametrize("kind", ["multi", "switch"])
def test_guestOnVdeplugNode(vswitch, processes, namespaces, shortdir, kind: str) -> None:
    """
    C{-netdev vde,sock=multi://DIR} with two cables: the guest and the
    namespace reach each other, each of the guest's frames twice (multi
    sends on every link), so every ping is answered twice.  With
    C{switch://DIR} and one cable, once.
    """
    _, _, ns, guest, _ = _guestOnNode(vswitch, processes, namespaces, shortdir, kind,
                                      2 if kind == "multi" else 1)
    back = _pingGuest(ns)
    if kind == "multi":
        assert "duplicates" in back, back  # the last one may come after ping has left
    else:
        assert "duplicates" not in back and "duplicates" not in guest.console(), back
