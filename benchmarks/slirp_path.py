"""
Benchmark: a namespace behind user-mode NAT, talking to the host's loopback.

In the same run and alternating rounds, a namespace reaches an iperf3
server on the host's 127.0.0.1 through the gateway address 10.0.2.2 of:

* vtwisted's slirp port, the namespace behind an offload TAP of the same
  switch (C{--port tap:X --port slirp});
* C{slirp4netns} (libslirp with a TAP in the namespace), MTU 1500 and the
  65520 its documentation suggests for speed;
* C{vde_switch -t TAP} with C{vde_plug vde://... slirp://} (libvdeplug_slirp).

Rows report iperf3 throughput from the namespace to the host (upload) and
back (download, C{-R}): TCP, and UDP floods of 1200-byte datagrams (what
arrives, in Gbit/s).

Run as root:  python benchmarks/slirp_path.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netbench
from netbench import Bench, bench, listening, ratio, sh, sourceEnv, summarize, twistdArgv, waitFor

GUEST = "10.0.2.15"
Setup = Callable[[Bench], str]


def _tapInto(b: Bench, tap: str, prefix: str, address: str = GUEST) -> str:
    ns = b.namespace(prefix)
    waitFor(lambda: sh("ip", "link", "show", tap, check=False).returncode == 0, what=tap)
    sh("ip", "link", "set", tap, "netns", ns)
    sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", tap)
    sh("ip", "-n", ns, "link", "set", tap, "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", "10.0.2.2")
    return ns


def vtwistedSlirp(b: Bench) -> str:
    tap = f"vsl{b.tmp.name[-4:]}"
    b.start(twistdArgv("--sock", str(b.tmp / "sw"), "--port", f"tap:{tap}", "--port", "slirp"),
            env=sourceEnv())
    return _tapInto(b, tap, "vtwsl")


def slirp4netns(mtu: int) -> Setup:
    def setup(b: Bench) -> str:
        ns = b.namespace("vtws4")
        b.start(["slirp4netns", "--configure", f"--mtu={mtu}", "--netns-type=path",
                 f"/run/netns/{ns}", "tap0"])
        waitFor(lambda: "10.0.2.100" in sh("ip", "-n", ns, "addr", check=False).stdout,
                what="slirp4netns's tap0")
        return ns

    return setup


def vdeSlirp(b: Bench) -> str:
    tap = f"cvs{b.tmp.name[-4:]}"
    sock = b.tmp / "vde"
    b.start(["vde_switch", "-s", str(sock), "-t", tap], stdin=subprocess.PIPE)
    waitFor(lambda: listening(sock / "ctl"), what=str(sock))
    b.start(["vde_plug", f"vde://{sock}", "slirp://"])
    return _tapInto(b, tap, "vtwsv")


SETUPS: dict[str, Setup] = {
    "vtwisted slirp, offload TAP": vtwistedSlirp,
    "slirp4netns, MTU 1500": slirp4netns(1500),
    "slirp4netns, MTU 65520": slirp4netns(65520),
    "vde_switch -t + vde_plug slirp://": vdeSlirp,
}


def _freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: The four measurements: (protocol, direction), each a row of the report.
KINDS = (("TCP", "upload"), ("TCP", "download"), ("UDP", "upload"), ("UDP", "download"))


def iperf(b: Bench, client: str, seconds: float, kind: tuple[str, str]) -> float:
    """
    iperf3 from namespace C{client} to a server on the host's loopback, via
    10.0.2.2 (C{-R} for downloads); Gbit/s received.  UDP sends 1200-byte
    datagrams as fast as it can (C{-b 0}), so what counts is how many get
    through.
    """
    port = _freePort()
    b.start(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)])
    time.sleep(0.3)
    ping = sh("ip", "netns", "exec", client, "ping", "-c", "2", "-i", "0.2", "-W", "2",
              "10.0.2.2", check=False)
    if ping.returncode != 0:
        raise RuntimeError(f"no connectivity: {ping.stdout}{ping.stderr}")
    protocol, direction = kind
    argv = ["ip", "netns", "exec", client, "iperf3", "-c", "10.0.2.2", "-p", str(port),
            "-t", str(seconds), "-J"]
    argv += ["-R"] if direction == "download" else []
    argv += ["-u", "-b", "0", "-l", "1200"] if protocol == "UDP" else []
    end = netbench.iperf3Report(argv)["end"]
    if protocol == "UDP":
        s = end["sum"]
        received = (s["packets"] - s["lost_packets"]) * 1200 * 8
        return float(received / s["seconds"]) / 1e9
    return float(end["sum_received"]["bits_per_second"]) / 1e9


def main() -> None:
    args = netbench.arguments(__doc__, only=True)
    names = [n for n in SETUPS if args.only is None or n in args.only]
    results: dict[tuple[str, tuple[str, str]], list[float]] = {}
    for kind in KINDS:
        for _ in range(args.rounds):
            for name in names:
                with bench() as b:
                    client = SETUPS[name](b)
                    value = iperf(b, client, args.seconds, kind)
                results.setdefault((name, kind), []).append(value)
    print(f"TCP congestion control: {netbench.congestionInUse()}")
    for kind in KINDS:
        way = "namespace to host" if kind[1] == "upload" else "host to namespace"
        print(f"{kind[0]} {kind[1]} ({way}), iperf3:")
        for name in names:
            summarize(name, results[(name, kind)], "Gbit/s")
    print("Ratios:")
    ours = "vtwisted slirp, offload TAP"
    for name in names:
        if name == ours or ours not in names:
            continue
        for kind in KINDS:
            ratio(f"{kind[0]} {kind[1]}: vtwisted / {name}", results[(ours, kind)],
                  results[(name, kind)])


if __name__ == "__main__":
    main()
