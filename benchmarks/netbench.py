"""
Shared machinery for the benchmarks: two network namespaces, iperf3 between
them, switches under test started and stopped by PID.

Nothing here sends traffic outside the namespaces it creates: the addresses
are on a private /24 that exists only on the TAP devices inside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ADDR = "10.213.0.1"
SERVER_ADDR = "10.213.0.2"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def waitFor(predicate: Callable[..., object], timeout: float = 10.0, what: str = "it") -> None:
    # Callable[..., object]: mypy cannot infer a lambda x=x: ..., which binds
    # a loop variable, as a Callable[[], object].
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Bench:
    """
    Processes and namespaces of one measurement, all removed on exit.
    """

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[Any]] = []
        self.namespaces: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="vtwb", dir="/tmp"))

    def start(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        process = subprocess.Popen(list(argv), **kwargs)  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    def namespace(self, name: str) -> str:
        full = f"{name}{os.getpid() % 100000}"
        sh("ip", "netns", "add", full)
        self.namespaces.append(full)
        sh("ip", "-n", full, "link", "set", "lo", "up")
        return full

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for name in self.namespaces:
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
        subprocess.run(["rm", "-rf", str(self.tmp)], check=False)


@contextlib.contextmanager
def bench() -> Iterator[Bench]:
    b = Bench()
    try:
        yield b
    finally:
        b.close()


def configure(ns: str, dev: str, address: str) -> None:
    """
    Give C{dev} in C{ns} an address and bring it up.
    """
    waitFor(lambda: sh("ip", "-n", ns, "link", "show", dev, check=False).returncode == 0,
            what=f"{dev} in {ns}")
    sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
    sh("ip", "-n", ns, "link", "set", dev, "up")


def configureTap(ns: str, dev: str, address: str) -> None:
    """
    L{configure} for a TAP device, with the root qdisc of C{--tap-qdisc}.
    """
    configure(ns, dev, address)
    for qdisc in TAP_QDISC:
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", qdisc)


#: The root qdisc for TAP devices (C{--tap-qdisc}), if one was given.
TAP_QDISC: list[str] = []

#: TCP congestion control for iperf3 (C{-C}); None means the system default.
CONGESTION: str | None = None


def congestionInUse() -> str:
    """
    The TCP congestion control the TCP rows use.
    """
    if CONGESTION:
        return CONGESTION
    return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


def iperf(b: Bench, client: str, server: str, seconds: float, udp: bool = False) -> float:
    """
    Run iperf3 from C{client} to the server namespace; TCP: Gbit/s, UDP with
    18-byte payloads (64-byte frames with FCS): packets per second received.
    """
    b.start(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", SERVER_ADDR])
    time.sleep(0.3)
    ping = sh("ip", "netns", "exec", client, "ping", "-c", "3", "-i", "0.2", "-W", "2",
              SERVER_ADDR, check=False)
    if ping.returncode != 0:
        raise RuntimeError(f"no connectivity: {ping.stdout}{ping.stderr}")
    argv = ["ip", "netns", "exec", client, "iperf3", "-c", SERVER_ADDR, "-t", str(seconds),
            "-J"]
    if udp:
        argv += ["-u", "-b", "0", "-l", "18"]
    end = iperf3Report(argv)["end"]
    if udp:
        s = end["sum"]
        received = s["packets"] - s["lost_packets"]
        return received / s["seconds"]
    return end["sum_received"]["bits_per_second"] / 1e9


def iperf3Report(argv: list[str]) -> dict[str, Any]:
    """
    Run an iperf3 client command line (with C{-J}), adding the congestion
    control asked for; return its JSON report or raise with what went wrong.
    """
    if CONGESTION:
        argv = [*argv, "-C", CONGESTION]
    result = sh(*argv, check=False)
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 failed: {result.stdout}{result.stderr}") from None
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data


def measure(setup: Callable[[Bench], tuple[str, str]], seconds: float, udp: bool) -> float:
    """
    Build a set-up (it returns the client and server namespaces) and run
    iperf3 across it once.
    """
    with bench() as b:
        client, server = setup(b)
        return iperf(b, client, server, seconds, udp)


def arguments(doc: str, only: bool = False) -> argparse.Namespace:
    """
    The command line every benchmark takes (C{--rounds}, C{--seconds},
    C{--congestion}, and C{--only} if asked for); sets L{CONGESTION}.
    """
    global CONGESTION
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--congestion", help="TCP congestion control (default: the system's)")
    parser.add_argument("--tap-qdisc", help="root qdisc put on every TAP device in a "
                        "namespace, e.g. noqueue as veth has (default: the kernel's)")
    if only:
        parser.add_argument("--only", nargs="*", default=None, help="names of setups to run")
    args = parser.parse_args()
    CONGESTION = args.congestion
    TAP_QDISC[:] = [args.tap_qdisc] if args.tap_qdisc else []
    return args


Results = dict[tuple[str, bool], list[float]]


def runRounds(
    setups: dict[str, Callable[[Bench], tuple[str, str]]], rounds: int, seconds: float
) -> Results:
    """
    TCP, then 64-byte UDP: C{rounds} rounds, each measuring every set-up once.
    """
    results: Results = {}
    for udp in (False, True):
        for _ in range(rounds):
            for name, setup in setups.items():
                results.setdefault((name, udp), []).append(measure(setup, seconds, udp))
    return results


def printResults(names: Sequence[str], results: Results) -> None:
    """
    The medians of every set-up, TCP then UDP.
    """
    print(f"TCP congestion control: {congestionInUse()}")
    print("TCP throughput (iperf3):")
    for name in names:
        summarize(name, results[(name, False)], "Gbit/s")
    print("UDP, 64-byte frames (iperf3 -u -l 18 -b 0), packets received:")
    for name in names:
        summarize(name, results[(name, True)], "pkt/s")


def twistdArgv(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
        "-n",
        "--pidfile=",
        "--logfile=" + os.environ.get("VTWISTED_BENCH_LOG", "/dev/null"),
        "vswitch",
        *args,
    ]


def sourceEnv() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def summarize(name: str, values: list[float], unit: str) -> float:
    median = statistics.median(values)
    shown = ", ".join(f"{v:.3g}" for v in values)
    print(f"  {name:<34} median {median:10.4g} {unit}   (runs: {shown})", flush=True)
    return median


def ratio(label: str, ours: list[float], theirs: list[float]) -> None:
    """
    Print the ratio of two setups: the median of the ratios within each
    round (the setups of one round ran minutes apart, so slow drifts of the
    machine cancel), and the range over rounds.
    """
    ratios = sorted(o / t for o, t in zip(ours, theirs))
    print(f"  {label:<50} {statistics.median(ratios):6.2f}x   (rounds: {ratios[0]:.2f}x to "
          f"{ratios[-1]:.2f}x)", flush=True)


def hostBehind(b: Bench, near: str, device: str, address: str, prefix: str) -> str:
    """
    A namespace (named from C{prefix}) holding C{device}, moved there from
    namespace C{near} and given C{address}, once it reaches the other end
    (L{SERVER_ADDR} or L{CLIENT_ADDR}, whichever C{address} is not).
    """
    host = b.namespace(prefix)
    waitFor(lambda: sh("ip", "-n", near, "link", "show", device, check=False).returncode == 0,
            what=device)
    sh("ip", "-n", near, "link", "set", device, "netns", host)
    configure(host, device, address)
    other = SERVER_ADDR if address == CLIENT_ADDR else CLIENT_ADDR
    waitFor(lambda: sh("ip", "netns", "exec", host, "ping", "-c", "1", "-W", "1", other,
                       check=False).returncode == 0, timeout=20, what=f"{other} from {host}")
    return host


def joined(b: Bench, prefix: str, mtu: int | None = None) -> tuple[str, str, str, str]:
    """
    Two new namespaces (named from C{prefix}) joined by a veth pair;
    returns (near, near's end, far, far's end), neither end configured.
    """
    near, far = b.namespace(f"{prefix}n"), b.namespace(f"{prefix}f")
    suffix = b.tmp.name[-4:]
    mine, theirs = f"{prefix[-2:]}n{suffix}", f"{prefix[-2:]}f{suffix}"
    size = ["mtu", str(mtu)] if mtu else []
    sh("ip", "link", "add", mine, "netns", near, *size, "type", "veth", "peer", "name", theirs,
       "netns", far, *size)
    return near, mine, far, theirs


def ends(b: Bench, near: str, device: str, far: str, outward: bool,
         prefix: str) -> tuple[str, str]:
    """
    The iperf3 client and server namespaces for a host behind C{device}
    (see L{hostBehind}) and the namespace C{far}: the host sends if
    C{outward}, else it receives.
    """
    host = hostBehind(b, near, device, CLIENT_ADDR if outward else SERVER_ADDR, prefix)
    return (host, far) if outward else (far, host)


def runComparison(doc: str, setups: dict[str, Callable[[Bench], tuple[str, str]]],
                  pairs: Sequence[tuple[str, str]]) -> None:
    """
    The main of a benchmark: run C{setups} for the rounds the command line
    asks, print their medians, and the TCP and UDP ratios of each pair
    C{(ours, reference)}.
    """
    args = arguments(doc)
    results = runRounds(setups, args.rounds, args.seconds)
    printResults(list(setups), results)
    print("Ratios:")
    for ours, reference in pairs:
        for udp, kind in ((False, "TCP"), (True, "UDP pps")):
            ratio(f"{kind}: {ours} / {reference}", results[(ours, udp)],
                  results[(reference, udp)])
