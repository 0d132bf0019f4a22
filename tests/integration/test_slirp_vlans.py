"""
A slirp port in one VLAN of a switch with two: namespaces behind TAPs take
leases with busybox's udhcpc.  Only the slirp port's own (untagged) VLAN is
served; a slirp spec that would make it a tagged member is refused, and
frames it gets tagged (made a member on the console) are counted as
unsupported, not ignored unseen.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from helpers import execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import console, deviceExists, quietNamespace
from test_slirp import UDHCPC_SCRIPT

pytestmark = pytest.mark.integration


def udhcpc(ns: str, device: str, script: Path, tries: int) -> str | None:
    """
    The address udhcpc leased in C{ns}, or None if no server answered.
    """
    lease = run(*execIn(ns, "busybox", "udhcpc", "-i", device, "-n", "-q", "-f", "-t",
                        str(tries), "-T", "1", "-s", str(script)), check=False, timeout=30)
    found = re.search(r"^lease (\S+)/", lease.stdout, re.M)
    return found.group(1) if lease.returncode == 0 and found else None


def twoGuestsAndSlirp(vswitch: Any, namespaces: Any, shortdir: Path, prefix: str,
                      options: tuple[str, str], slirp: str) -> tuple[Any, Path, Path, list]:
    """
    A switch with a console, a slirp port (C{slirp}) and two TAPs (with
    C{options}) moved into namespaces of their own, and udhcpc's script.

    @return: the switch, its console's path, the script, and the two
        guests' C{(namespace, device)}.
    """
    needRoot()
    need("busybox")
    guests = [(quietNamespace(namespaces, prefix), uniqueName(prefix)) for _ in options]
    mgmt = shortdir / "mgmt"
    taps = [arg for (ns, tap), option in zip(guests, options)
            for arg in ("--port", f"tap:{tap}:netns={ns}{option}")]
    sw = vswitch("--mgmt", str(mgmt), *taps, "--port", slirp)
    waitFor(lambda: all(deviceExists(tap, ns) for ns, tap in guests), what="the TAPs")
    script = shortdir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    return sw, mgmt, script, guests


def drops(mgmt: Path, port: int) -> dict[str, int]:
    stats = console(mgmt, f"port/stats {port}")
    line = next(line for line in stats.splitlines() if line.startswith(" drops: "))
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def test_slirpServesOnlyItsUntaggedVlan(vswitch, namespaces, shortdir: Path) -> None:
    sw, mgmt, script, [(ns10, tap10), (ns20, tap20)] = twoGuestsAndSlirp(
        vswitch, namespaces, shortdir, "vsv", (":vlan=10", ":vlan=20"), "slirp:vlan=10")
    assert udhcpc(ns10, tap10, script, 5) == "10.0.2.15", sw.logText()
    assert udhcpc(ns20, tap20, script, 2) is None
    refused = console(mgmt, "port/add slirp:trunk=20:net=10.0.9.0/24")
    assert "a slirp router takes untagged frames only: give it vlan=N" in refused, refused
    assert "1000 Success" in console(mgmt, "vlan/addport 20 3")
    assert udhcpc(ns20, tap20, script, 2) is None
    counted = drops(mgmt, 3)
    assert counted["unsupported"] >= 1 and counted["malformed"] == 0, counted
    assert "a frame tagged for VLAN 20: the router serves only" in sw.logText()
