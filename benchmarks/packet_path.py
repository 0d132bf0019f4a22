"""
Benchmark: a namespace behind a switch reaches one at the far end of a veth
pair that the switch plugs in as an interface.

In the same run and alternating rounds:

* vtwisted: C{--tap TAP --port packet:VETH}, the switch in a namespace
  holding one end of the pair, the server's namespace the other end, the
  client's namespace behind the TAP;
* the Linux kernel: a bridge in that namespace joining the pair's end and
  a second veth pair to the client's namespace (offloads on throughout).

(C{vde_switch} with C{vde_pcapplug} would be the C row, but here the frames
C{vde_pcapplug} injects never leave the interface.)  Each row reports
iperf3 TCP throughput and the 64-byte UDP packet rate, both directions.

Run as root:  python benchmarks/packet_path.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netbench
from netbench import (
    CLIENT_ADDR,
    SERVER_ADDR,
    Bench,
    configure,
    ends,
    joined,
    sh,
    sourceEnv,
    twistdArgv,
)

Setup = Callable[[Bench], tuple[str, str]]


def _wire(b: Bench, address: str) -> tuple[str, str, str]:
    """
    The switch's namespace and the far one, joined by a veth pair whose far
    end has C{address}; returns (switch's namespace, its end, far).
    """
    near, mine, far, theirs = joined(b, "vtwp")
    sh("ip", "-n", near, "link", "set", mine, "up")
    configure(far, theirs, address)
    return near, mine, far


def vtwistedPacket(outward: bool) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        near, veth, far = _wire(b, SERVER_ADDR if outward else CLIENT_ADDR)
        tap = f"vpt{b.tmp.name[-4:]}"
        b.start(["ip", "netns", "exec", near, *twistdArgv(
            "--sock", str(b.tmp / "sw"), "--port", f"packet:{veth}", "--tap", tap)],
            env=sourceEnv())
        return ends(b, near, tap, far, outward, "vtwpc")

    return setup


def linuxBridge(outward: bool) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        near, veth, far = _wire(b, SERVER_ADDR if outward else CLIENT_ADDR)
        client = f"vpc{b.tmp.name[-4:]}"
        sh("ip", "-n", near, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", near, "link", "add", client, "type", "veth", "peer", "name", "up0")
        for dev in (veth, "up0"):
            sh("ip", "-n", near, "link", "set", dev, "master", "br0", "up")
        sh("ip", "-n", near, "link", "set", "br0", "up")
        return ends(b, near, client, far, outward, "vtwpc")

    return setup


SETUPS: dict[str, Setup] = {
    "vtwisted, TAP to packet:": vtwistedPacket(True),
    "Linux bridge, outward": linuxBridge(True),
    "vtwisted, packet: to TAP": vtwistedPacket(False),
    "Linux bridge, inward": linuxBridge(False),
}


def main() -> None:
    netbench.runComparison(__doc__ or "", SETUPS, [
        ("vtwisted, TAP to packet:", "Linux bridge, outward"),
        ("vtwisted, packet: to TAP", "Linux bridge, inward"),
    ])


if __name__ == "__main__":
    main()
