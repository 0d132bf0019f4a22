"""
Benchmark: TAP ports with virtio-net offloads against the references.

Two namespaces, and between them, in the same run and alternating rounds:

* vtwisted with two TAP ports it opens itself (offloads on; on without
  coalescing UDP, C{coalesce=off}; off);
* C{reference_hub.py}, a bare Python two-TAP hub with offloads (no features);
* C{vde_switch -t tapA -t tapB} (its own TAP ports, no offloads);
* a Linux bridge between two veth pairs, with offloads and without;
* the mixed path: one namespace on a vtwisted TAP port, the other behind
  C{vde_plug tap://} on the switch's VDE socket, against C{vde_switch} with
  C{vde_plug} on both sides; the TAP as by default (C{offload=auto}: no
  other port takes super-frames, so its offloads are off and the kernel
  segments), and with C{offload=on} (the switch segments super-frames).

Each row reports iperf3 TCP throughput and the 64-byte UDP packet rate.

Run as root:  python benchmarks/tap_path.py [--rounds 3] [--seconds 5] [--only NAME...]
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
    configureTap,
    listening,
    ratio,
    sh,
    sourceEnv,
    twistdArgv,
    waitFor,
)

Setup = Callable[[Bench], tuple[str, str]]


def _moveTaps(b: Bench, taps: tuple[str, str]) -> tuple[str, str]:
    client, server = b.namespace("vtwtc"), b.namespace("vtwts")
    for ns, tap, address in zip((client, server), taps, (CLIENT_ADDR, SERVER_ADDR)):
        waitFor(lambda tap=tap: sh("ip", "link", "show", tap, check=False).returncode == 0,
                what=tap)
        sh("ip", "link", "set", tap, "netns", ns)
        configureTap(ns, tap, address)
    return client, server


def vtwistedTaps(option: str) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        taps = (f"vtbc{b.tmp.name[-4:]}", f"vtbs{b.tmp.name[-4:]}")
        b.start(twistdArgv("--sock", str(b.tmp / "sw"), "--port", f"tap:{taps[0]}{option}",
                           "--port", f"tap:{taps[1]}{option}"), env=sourceEnv())
        return _moveTaps(b, taps)

    return setup


def pythonHub(b: Bench) -> tuple[str, str]:
    taps = (f"phc{b.tmp.name[-4:]}", f"phs{b.tmp.name[-4:]}")
    b.start([sys.executable, str(Path(__file__).parent / "reference_hub.py"), *taps])
    return _moveTaps(b, taps)


def cSwitchTaps(b: Bench) -> tuple[str, str]:
    taps = (f"cbc{b.tmp.name[-4:]}", f"cbs{b.tmp.name[-4:]}")
    b.start(["vde_switch", "-s", str(b.tmp / "sw"), "-t", taps[0], "-t", taps[1]],
            stdin=subprocess.PIPE)
    return _moveTaps(b, taps)


def linuxBridge(offload: bool) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        client, server, middle = b.namespace("vtwbc"), b.namespace("vtwbs"), b.namespace("vtwbr")
        sh("ip", "-n", middle, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", middle, "link", "set", "br0", "up")
        for ns, address, name in ((client, CLIENT_ADDR, "c"), (server, SERVER_ADDR, "s")):
            sh("ip", "-n", middle, "link", "add", f"p{name}", "type", "veth", "peer", "name",
               f"e{name}", "netns", ns)
            sh("ip", "-n", middle, "link", "set", f"p{name}", "master", "br0", "up")
            if not offload:
                for ns2, dev in ((middle, f"p{name}"), (ns, f"e{name}")):
                    sh("ip", "netns", "exec", ns2, "ethtool", "-K", dev, "tso", "off", "gso",
                       "off", "gro", "off", "tx", "off", "rx", "off", "sg", "off", check=False)
            configure(ns, f"e{name}", address)
        return client, server

    return setup


def _vdePlugSide(b: Bench, sock: Path, ns: str, tap: str, address: str) -> None:
    b.start(["ip", "netns", "exec", ns, "vde_plug", f"vde://{sock}", f"tap://{tap}"])
    configureTap(ns, tap, address)


def vtwistedTapToVde(option: str) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        sock = b.tmp / "sw"
        tap = f"vtmc{b.tmp.name[-4:]}"
        b.start(twistdArgv("--sock", str(sock), "--port", f"tap:{tap}{option}"),
                env=sourceEnv())
        waitFor(lambda: listening(sock / "ctl"), what="switch")
        client, server = b.namespace("vtwmc"), b.namespace("vtwms")
        waitFor(lambda: sh("ip", "link", "show", tap, check=False).returncode == 0, what=tap)
        sh("ip", "link", "set", tap, "netns", client)
        configureTap(client, tap, CLIENT_ADDR)
        _vdePlugSide(b, sock, server, "taps", SERVER_ADDR)
        return client, server

    return setup


def cSwitchVdePlugs(b: Bench) -> tuple[str, str]:
    sock = b.tmp / "sw"
    b.start(["vde_switch", "-s", str(sock)], stdin=subprocess.PIPE)
    waitFor(lambda: listening(sock / "ctl"), what="vde_switch")
    client, server = b.namespace("vtwcc"), b.namespace("vtwcs")
    _vdePlugSide(b, sock, client, "tapc", CLIENT_ADDR)
    _vdePlugSide(b, sock, server, "taps", SERVER_ADDR)
    return client, server


SETUPS: dict[str, Setup] = {
    "vtwisted TAP offload": vtwistedTaps(""),
    "vtwisted TAP coalesce=off": vtwistedTaps(":coalesce=off"),
    "vtwisted TAP no offload": vtwistedTaps(":offload=off"),
    "reference 40-line Python hub": pythonHub,
    "vde_switch -t": cSwitchTaps,
    "Linux bridge offload": linuxBridge(True),
    "Linux bridge no offload": linuxBridge(False),
    "vtwisted TAP->VDE+vde_plug": vtwistedTapToVde(""),
    "vtwisted TAP offload=on->VDE+vde_plug": vtwistedTapToVde(":offload=on"),
    "vde_switch+vde_plug": cSwitchVdePlugs,
}


def main() -> None:
    args = netbench.arguments(__doc__, only=True)
    names = [n for n in SETUPS if args.only is None or any(o in n for o in args.only)]
    results = netbench.runRounds({n: SETUPS[n] for n in names}, args.rounds, args.seconds)
    netbench.printResults(names, results)
    print("Ratios:")
    pairs = [
        ("vtwisted TAP offload", "Linux bridge offload", False,
         "TCP: vtwisted TAP / bridge offload"),
        ("reference 40-line Python hub", "Linux bridge offload", False,
         "TCP: reference hub / bridge offload"),
        ("vtwisted TAP offload", "reference 40-line Python hub", False,
         "TCP: vtwisted TAP / reference hub"),
        ("vtwisted TAP offload", "vde_switch -t", False, "TCP: vtwisted TAP / vde_switch -t"),
        ("vtwisted TAP offload", "vde_switch -t", True, "UDP pps: vtwisted TAP / vde_switch -t"),
        ("vtwisted TAP coalesce=off", "vde_switch -t", True,
         "UDP pps: vtwisted TAP coalesce=off / vde_switch -t"),
        ("vtwisted TAP no offload", "vde_switch -t", True,
         "UDP pps: vtwisted TAP offload=off / vde_switch -t"),
        ("vtwisted TAP->VDE+vde_plug", "vde_switch+vde_plug", False,
         "TCP: TAP->VDE / vde_switch+vde_plug"),
        ("vtwisted TAP->VDE+vde_plug", "vde_switch+vde_plug", True,
         "UDP pps: TAP->VDE / vde_switch+vde_plug"),
        ("vtwisted TAP offload=on->VDE+vde_plug", "vde_switch+vde_plug", False,
         "TCP: TAP offload=on->VDE / vde_switch+vde_plug"),
        ("vtwisted TAP offload=on->VDE+vde_plug", "vde_switch+vde_plug", True,
         "UDP pps: TAP offload=on->VDE / vde_switch+vde_plug"),
    ]
    for ours, theirs, udp, label in pairs:
        if (ours, udp) in results and (theirs, udp) in results:
            ratio(label, results[(ours, udp)], results[(theirs, udp)])


if __name__ == "__main__":
    main()
