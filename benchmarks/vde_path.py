"""
Benchmark: our switch against the C vde_switch on the VDE socket path.

Two namespaces, each behind a TAP device that C{vde_plug vde://SOCK
tap://TAP} attaches to the switch under test; iperf3 TCP throughput and
64-byte UDP packet rate between them.  The two switches alternate, several
rounds in the same run, and the medians are compared.

Run as root:  python benchmarks/vde_path.py [--rounds 3] [--seconds 5]
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
    bench,
    configure,
    iperf,
    listening,
    ratio,
    sourceEnv,
    summarize,
    twistdArgv,
    waitFor,
)


def cSwitch(b: Bench, sock: Path) -> None:
    b.start(["vde_switch", "-s", str(sock)], stdin=subprocess.PIPE)


def ourSwitch(b: Bench, sock: Path) -> None:
    b.start(twistdArgv("--sock", str(sock)), env=sourceEnv())


def measure(startSwitch: Callable[[Bench, Path], None], seconds: float, udp: bool) -> float:
    with bench() as b:
        sock = b.tmp / "sw"
        startSwitch(b, sock)
        waitFor(lambda: listening(sock / "ctl"), what="switch")
        client, server = b.namespace("vtwbc"), b.namespace("vtwbs")
        for ns, tap, address in ((client, "tapc", CLIENT_ADDR), (server, "taps", SERVER_ADDR)):
            b.start(["ip", "netns", "exec", ns, "vde_plug", f"vde://{sock}", f"tap://{tap}"])
            configure(ns, tap, address)
        return iperf(b, client, server, seconds, udp)


def main() -> None:
    args = netbench.arguments(__doc__)
    print("VDE socket path: namespace - TAP - vde_plug - SWITCH - vde_plug - TAP - namespace")
    results: dict[tuple[str, bool], list[float]] = {}
    for udp in (False, True):
        for _ in range(args.rounds):
            for name, start in (("vde_switch", cSwitch), ("vtwisted", ourSwitch)):
                results.setdefault((name, udp), []).append(measure(start, args.seconds, udp))
    print(f"TCP congestion control: {netbench.congestionInUse()}")
    summarize("vde_switch TCP", results[("vde_switch", False)], "Gbit/s")
    summarize("vtwisted TCP", results[("vtwisted", False)], "Gbit/s")
    summarize("vde_switch UDP 64-byte", results[("vde_switch", True)], "pkt/s")
    summarize("vtwisted UDP 64-byte", results[("vtwisted", True)], "pkt/s")
    print("Ratios (vtwisted / vde_switch):")
    ratio("TCP throughput", results[("vtwisted", False)], results[("vde_switch", False)])
    ratio("UDP 64-byte packet rate", results[("vtwisted", True)], results[("vde_switch", True)])


if __name__ == "__main__":
    main()
