"""
Benchmark: a namespace reaches another across a vdeplug4 vxvde network.

The server's namespace ("far") holds C{vde_plug vxvde://239.0.0.1/vni=42
tap://TAP}, a vxvde member relaying to a TAP there, on a veth pair whose
other end is in the "near" namespace, where the member under test runs
with the client's namespace behind it.  In the same run and alternating
rounds, the near side is:

* vtwisted: C{--port vxvde:vni=42 --tap TAP} (an offload TAP);
* C{vde_switch -t TAP} with C{vde_plug vde://SOCK vxvde://239.0.0.1/vni=42}.

Each row reports iperf3 TCP throughput and the 64-byte UDP packet rate,
from the host behind the switch to the far side and back.

Run as root:  python benchmarks/vxvde_path.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import subprocess
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
    listening,
    sourceEnv,
    twistdArgv,
    waitFor,
)
from vxlan_path import underlay

Setup = Callable[[Bench], tuple[str, str]]
URL = "vxvde://239.0.0.1/vni=42"


def _farMember(b: Bench, address: str) -> tuple[str, str]:
    """The underlay, and a vxvde member with a TAP at C{address} far away."""
    near, _, far, _ = underlay(b)
    tap = f"vvf{b.tmp.name[-4:]}"
    b.start(["ip", "netns", "exec", far, "vde_plug", URL, f"tap://{tap}"])
    configure(far, tap, address)
    return near, far


def vtwistedVxvde(outward: bool) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        near, far = _farMember(b, SERVER_ADDR if outward else CLIENT_ADDR)
        tap = f"vvt{b.tmp.name[-4:]}"
        b.start(["ip", "netns", "exec", near, *twistdArgv(
            "--sock", str(b.tmp / "sw"), "--port", "vxvde:vni=42", "--tap", tap)],
            env=sourceEnv())
        return ends(b, near, tap, far, outward, "vtwvc")

    return setup


def vdeSwitchVxvde(outward: bool) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        near, far = _farMember(b, SERVER_ADDR if outward else CLIENT_ADDR)
        tap, sock = f"vvt{b.tmp.name[-4:]}", b.tmp / "sw"
        b.start(["ip", "netns", "exec", near, "vde_switch", "-s", str(sock), "-t", tap],
                stdin=subprocess.PIPE)
        waitFor(lambda: listening(sock / "ctl"), what=str(sock))
        b.start(["ip", "netns", "exec", near, "vde_plug", f"vde://{sock}", URL])
        return ends(b, near, tap, far, outward, "vtwvc")

    return setup


SETUPS: dict[str, Setup] = {
    "vtwisted vxvde:, outward": vtwistedVxvde(True),
    "vde_switch + vde_plug, outward": vdeSwitchVxvde(True),
    "vtwisted vxvde:, inward": vtwistedVxvde(False),
    "vde_switch + vde_plug, inward": vdeSwitchVxvde(False),
}


def main() -> None:
    netbench.runComparison(__doc__ or "", SETUPS, [
        ("vtwisted vxvde:, outward", "vde_switch + vde_plug, outward"),
        ("vtwisted vxvde:, inward", "vde_switch + vde_plug, inward"),
    ])


if __name__ == "__main__":
    main()
