"""
Benchmark: two switches joined by a cable, a namespace behind a TAP on each.

In the same run and alternating rounds:

* two vtwisted switches, each with an offload TAP, joined by a TLS cable
  (C{cable:listen:} / C{cable:}, certificates made with C{openssl});
* the same with C{tls=off};
* two C{vde_switch -t TAP} joined by C{dpipe vde_plug = vde_plug} (no
  encryption: Debian ships no C{vde_cryptcab}).

Each row reports iperf3 TCP throughput and the 64-byte UDP packet rate.

Run as root:  python benchmarks/cable_path.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import socket
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
    listening,
    ratio,
    sh,
    sourceEnv,
    twistdArgv,
    waitFor,
)

Setup = Callable[[Bench], tuple[str, str]]


def _moveTap(b: Bench, tap: str, prefix: str, address: str) -> str:
    ns = b.namespace(prefix)
    waitFor(lambda: sh("ip", "link", "show", tap, check=False).returncode == 0, what=tap)
    sh("ip", "link", "set", tap, "netns", ns)
    configure(ns, tap, address)
    return ns


def _waitForCable(client: str) -> None:
    waitFor(lambda: sh("ip", "netns", "exec", client, "ping", "-c", "1", "-W", "1",
                       SERVER_ADDR, check=False).returncode == 0,
            timeout=20, what="the cable")


def _certificate(b: Bench, name: str) -> Path:
    """
    A self-signed certificate and its key in one PEM file, for C{name}.
    """
    path = b.tmp / f"{name}.pem"
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext",
       f"subjectAltName=DNS:{name}", "-keyout", str(path), "-out", str(path))
    return path


def _freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def vtwistedCable(tls: bool) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        suffix = b.tmp.name[-4:]
        taps = (f"vcc{suffix}", f"vcs{suffix}")
        number = _freePort()
        if tls:
            a, c = _certificate(b, "localhost"), _certificate(b, "switch-b")
            serverTls = f":cert={a}:ca={c}"
            clientTls = f":cert={c}:ca={a}"
        else:
            serverTls = clientTls = ":tls=off"
        b.start(twistdArgv("--sock", str(b.tmp / "a"), "--port", f"tap:{taps[1]}", "--port",
                           f"cable:listen:tcp:{number}:interface=127.0.0.1{serverTls}"),
                env=sourceEnv())
        b.start(twistdArgv("--sock", str(b.tmp / "b"), "--port", f"tap:{taps[0]}", "--port",
                           f"cable:tcp:host=localhost:port={number}{clientTls}"),
                env=sourceEnv())
        server = _moveTap(b, taps[1], "vtwcs", SERVER_ADDR)
        client = _moveTap(b, taps[0], "vtwcc", CLIENT_ADDR)
        _waitForCable(client)
        return client, server

    return setup


def cSwitchesDpipe(b: Bench) -> tuple[str, str]:
    suffix = b.tmp.name[-4:]
    taps = (f"ccc{suffix}", f"ccs{suffix}")
    socks = (b.tmp / "a", b.tmp / "b")
    for sock, tap in zip(socks, taps):
        b.start(["vde_switch", "-s", str(sock), "-t", tap], stdin=subprocess.PIPE)
        waitFor(lambda sock=sock: listening(sock / "ctl"), what=str(sock))
    b.start(["dpipe", "vde_plug", f"vde://{socks[0]}", "=", "vde_plug", f"vde://{socks[1]}"])
    server = _moveTap(b, taps[1], "vtwcs", SERVER_ADDR)
    client = _moveTap(b, taps[0], "vtwcc", CLIENT_ADDR)
    _waitForCable(client)
    return client, server


SETUPS: dict[str, Setup] = {
    "vtwisted + TLS cable": vtwistedCable(True),
    "vtwisted + cable tls=off": vtwistedCable(False),
    "vde_switch -t + dpipe vde_plug": cSwitchesDpipe,
}


def main() -> None:
    args = netbench.arguments(__doc__)
    results = netbench.runRounds(SETUPS, args.rounds, args.seconds)
    netbench.printResults(list(SETUPS), results)
    print("Ratios:")
    reference = "vde_switch -t + dpipe vde_plug"
    for name in ("vtwisted + TLS cable", "vtwisted + cable tls=off"):
        for udp, kind in ((False, "TCP"), (True, "UDP pps")):
            ratio(f"{kind}: {name} / {reference}", results[(name, udp)],
                  results[(reference, udp)])


if __name__ == "__main__":
    main()
