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


def drops(mgmt: Path, port: int) -> dict[str, int]:
    stats = console(mgmt, f"port/stats {port}")
    line = next(line for line in stats.splitlines() if line.startswith(" drops: "))
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def test_slirpServesOnlyItsUntaggedVlan(vswitch, namespaces, shortdir: Path) -> None:
    needRoot()
    need("busybox")
    ns10, ns20 = quietNamespace(namespaces, "vsv"), quietNamespace(namespaces, "vsv")
    tap10, tap20 = uniqueName("vsv"), uniqueName("vsv")
    mgmt = shortdir / "mgmt"
    sw = vswitch("--mgmt", str(mgmt), "--port", f"tap:{tap10}:netns={ns10}:vlan=10",
                 "--port", f"tap:{tap20}:netns={ns20}:vlan=20", "--port", "slirp:vlan=10")
    waitFor(lambda: deviceExists(tap10, ns10) and deviceExists(tap20, ns20), what="the TAPs")
    script = shortdir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    assert udhcpc(ns10, tap10, script, 5) == "10.0.2.15", sw.logText()
    assert udhcpc(ns20, tap20, script, 2) is None
    refused = console(mgmt, "port/add slirp:trunk=20:net=10.0.9.0/24")
    assert "a slirp router takes untagged frames only: give it vlan=N" in refused, refused
    assert "1000 Success" in console(mgmt, "vlan/addport 20 3")
    assert udhcpc(ns20, tap20, script, 2) is None
    counted = drops(mgmt, 3)
    assert counted["unsupported"] >= 1 and counted["malformed"] == 0, counted
    assert "a frame tagged for VLAN 20: the router serves only" in sw.logText()
