"""
Benchmark: a QEMU guest's TCP throughput to and from a namespace, through
each way a guest reaches the switch, against vde_switch and against no
switch at all.

The guest is the test suite's (tests/guest.py: Debian kernel, busybox,
one vCPU); this machine has no usable KVM, so it runs under TCG and its
own emulated CPU is usually the limit: the figures say what each path
leaves a slow guest, and how much host CPU it takes from it.  The
namespace sits behind a TAP the switch opens (C{offload=auto}: offloads on
beside a vhost-user guest that takes super-frames, off beside the socket
ports, whose frames the switch would otherwise cut); the guest
sends with C{dd | nc} and receives with C{nc -l > /dev/null}, the
namespace side measures (bytes over seconds, first byte to end).

Set-ups: vtwisted with C{vhostuser:} (shared-memory virtio rings), with
C{qemu:} (QEMU's stream socket), with C{vde:} (C{-netdev vde}); the C
C{vde_switch -t} with C{-netdev vde}; and QEMU's own C{-netdev tap}
inside the namespace (no switch).

Run as root:  python benchmarks/guest_path.py [--rounds 3] [--megabytes 64]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import netbench  # noqa: E402
from netbench import Bench, configure, listening, sh, sourceEnv, twistdArgv, waitFor  # noqa: E402

HOST, GUEST = "10.213.0.1", "10.213.0.2"
MAC = "52:54:00:76:77:01"

#: The namespace's sender: SIZE bytes to the guest, seconds until it closed.
SEND = r"""
import socket, sys, time
size = int(sys.argv[3])
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
chunk = bytes(1 << 20)
start = time.monotonic()
left = size
while left:
    left -= c.send(chunk[:min(left, len(chunk))])
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(size * 8 / (time.monotonic() - start) / 1e9, flush=True)
"""

#: The namespace's sink: Gbit/s of one connection, first byte to end.
SINK = r"""
import socket, sys, time
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
n, start = 0, None
while chunk := c.recv(1 << 20):
    start = start or time.monotonic()
    n += len(chunk)
print(n * 8 / (time.monotonic() - start) / 1e9, flush=True)
"""

Netdev = tuple[list[str], list[str], list[str] | None]


def _nsBehindTap(b: Bench, tap: str) -> str:
    ns = b.namespace("vtgp")
    waitFor(lambda: sh("ip", "link", "show", tap, check=False).returncode == 0, what=tap)
    sh("ip", "link", "set", tap, "netns", ns)
    configure(ns, tap, HOST)
    return ns


def _vtwisted(portSpec: Callable[[Path], str], netdev: Callable[[Path], list[str]],
              extra: list[str] | None = None) -> Callable[[Bench], tuple[str, Netdev]]:
    def setup(b: Bench) -> tuple[str, Netdev]:
        tap = f"vgp{b.tmp.name[-4:]}"
        b.start(twistdArgv("--sock", str(b.tmp / "sw"), "--port", portSpec(b.tmp),
                           "--port", f"tap:{tap}"), env=sourceEnv())
        waitFor(lambda: listening(b.tmp / "sw" / "ctl"), what="the switch")
        return _nsBehindTap(b, tap), (netdev(b.tmp), extra or [], None)

    return setup


def _cSwitch(b: Bench) -> tuple[str, Netdev]:
    tap = f"cgp{b.tmp.name[-4:]}"
    b.start(["vde_switch", "-s", str(b.tmp / "sw"), "-t", tap], stdin=subprocess.PIPE)
    waitFor(lambda: listening(b.tmp / "sw" / "ctl"), what="vde_switch")
    return _nsBehindTap(b, tap), (["-netdev", f"vde,id=n0,sock={b.tmp / 'sw'}"], [], None)


def _qemuTap(b: Bench) -> tuple[str, Netdev]:
    ns = b.namespace("vtgq")
    tap = "qtap0"
    sh("ip", "-n", ns, "tuntap", "add", tap, "mode", "tap")
    configure(ns, tap, HOST)
    netdev = ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"]
    return ns, (netdev, [], ["ip", "netns", "exec", ns])


SHARED = ["-object", "memory-backend-memfd,id=mem0,size=256M,share=on",
          "-machine", "memory-backend=mem0"]
SETUPS: dict[str, Callable[[Bench], tuple[str, Netdev]]] = {
    "vtwisted vhostuser:": _vtwisted(
        lambda d: f"vhostuser:unix:{d / 'vh.sock'}",
        lambda d: ["-chardev", f"socket,id=c0,path={d / 'vh.sock'}",
                   "-netdev", "vhost-user,id=n0,chardev=c0"], SHARED),
    "vtwisted qemu: stream": _vtwisted(
        lambda d: f"qemu:unix:{d / 'st.sock'}",
        lambda d: ["-netdev", f"stream,id=n0,addr.type=unix,addr.path={d / 'st.sock'}"]),
    "vtwisted -netdev vde": _vtwisted(
        lambda d: f"vde:{d / 'v2'}", lambda d: ["-netdev", f"vde,id=n0,sock={d / 'v2'}"]),
    "vde_switch -t, -netdev vde": _cSwitch,
    "QEMU -netdev tap, no switch": _qemuTap,
}


def measure(setup: Callable[[Bench], tuple[str, Netdev]], megabytes: int) -> tuple[float, float]:
    """
    One guest: Gbit/s from the namespace to the guest, then back.
    """
    from guest import startGuest
    from helpers import Processes

    size = megabytes << 20
    script = (f"ip addr add {GUEST}/24 dev eth0\nip link set eth0 up\n"
              f"n=0; until ping -c 1 -W 1 {HOST} >/dev/null 2>&1; do n=$((n+1)); "
              "[ $n -ge 60 ] && break; done; echo probes $n\n"
              "nc -l -p 7300 > /dev/null & nc=$!\nsleep 0.5\necho VTW-LISTENING\nwait $nc\n"
              f"dd if=/dev/zero bs=65536 count={size >> 16} 2>/dev/null | nc {HOST} 7400\n")
    processes = Processes()
    with netbench.bench() as b:
        try:
            ns, (netdev, extra, wrapper) = setup(b)
            sink = b.start(["ip", "netns", "exec", ns, sys.executable, "-c", SINK, HOST, "7400"],
                           stdout=subprocess.PIPE, text=True)
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            nic = "virtio-net-pci,vectors=0" if "vhost-user" in " ".join(netdev) else \
                "virtio-net-pci"
            guest = startGuest(processes, netdev, script, MAC, directory=b.tmp / "g",
                               name="bench", nic=nic, extraArgs=extra, wrapper=wrapper)
            waitFor(lambda: guest.sawLine("VTW-LISTENING"), timeout=120, what="the guest")
            sent = sh("ip", "netns", "exec", ns, sys.executable, "-c", SEND, GUEST, "7300",
                      str(size), check=False)
            if sent.returncode:
                raise RuntimeError(f"sending to the guest failed: {sent.stderr}\n"
                                   f"{guest.diagnostics()}")
            inward = float(sent.stdout)
            outward = float(sink.stdout.readline())
            guest.wait(120)
            return inward, outward
        finally:
            processes.stopAll()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    names = [n for n in SETUPS if args.only is None or any(o in n for o in args.only)]
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            results[name].append(measure(SETUPS[name], args.megabytes))
            time.sleep(0.5)
    print(f"TCP, {args.megabytes} MB each way, Gbit/s (median, runs):")
    for name in names:
        runs = results[name]
        into = [r[0] for r in runs]
        out = [r[1] for r in runs]
        print(f"  {name:<30} to the guest {statistics.median(into):6.3f} "
              f"({', '.join(f'{v:.3f}' for v in into)})   from the guest "
              f"{statistics.median(out):6.3f} ({', '.join(f'{v:.3f}' for v in out)})",
              flush=True)


if __name__ == "__main__":
    main()
