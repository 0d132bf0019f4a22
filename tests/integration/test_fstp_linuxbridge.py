"""
A Linux bridge with its spanning tree on (C{stp_state 1}), in a namespace
behind a TAP of a switch running FSTP: its IEEE 802.1D BPDUs are sound
frames of a protocol FSTP does not speak, so C{port/stats} counts them as
C{unsupported} (not C{malformed}) and the log says what they are, while the
hosts behind the bridge and the switch still reach each other.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import need, needRoot, run, unavailable, uniqueName, waitFor
from taphelpers import console, ping, quietNamespace, waitForPing

pytestmark = pytest.mark.integration

NET = "10.91.0"


def drops(mgmt: Path, port: int) -> dict[str, int]:
    stats = console(mgmt, f"port/stats {port}")
    line = next(line for line in stats.splitlines() if line.startswith(" drops: "))
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def test_linuxBridgeBpdusAreUnsupportedNotMalformed(vswitch, namespaces,
                                                    shortdir: Path) -> None:
    needRoot()
    need("ip", "ping")
    bridged, host = quietNamespace(namespaces, "vtb"), quietNamespace(namespaces, "vtb")
    tapBridge, tapHost = uniqueName("vtb"), uniqueName("vtb")
    mgmt = shortdir / "mgmt"
    sw = vswitch("--fstp", "--mgmt", str(mgmt), "--port", f"tap:{tapBridge}:netns={bridged}",
                 "--port", f"tap:{tapHost}:netns={host}")
    made = run("ip", "-n", bridged, "link", "add", "br0", "type", "bridge", "stp_state", "1",
               "hello_time", "100", "forward_delay", "200", check=False)
    if made.returncode != 0:
        unavailable(f"no Linux bridges here: {made.stderr.strip()}")
    run("ip", "-n", bridged, "link", "set", tapBridge, "master", "br0")
    run("ip", "-n", bridged, "addr", "add", f"{NET}.1/24", "dev", "br0")
    run("ip", "-n", bridged, "link", "set", "br0", "up")
    run("ip", "-n", host, "addr", "add", f"{NET}.2/24", "dev", tapHost)
    waitFor(lambda: sum(drops(mgmt, 1).values()) > 0, timeout=15,
            what="the bridge's BPDUs reaching the switch")
    counted = drops(mgmt, 1)
    assert counted["malformed"] == 0 and counted["unsupported"] >= 1, counted
    assert "BPDU: an IEEE 802.1D configuration BPDU" in sw.logText(), sw.logText()
    waitForPing(host, f"{NET}.1", timeout=20)  # the bridge's port listens, learns, forwards
    assert ping(host, f"{NET}.1").returncode == 0
