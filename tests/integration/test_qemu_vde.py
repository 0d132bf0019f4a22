"""
Real QEMU guests (tests/guest.py: Debian kernel + busybox, TCG) on
C{twistd vswitch} through QEMU's own C{-netdev vde} backend (libvdeplug).

Addresses are in private test /24s that exist only on the switch the test
started and in the namespace it made.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from guest import startGuest, waitAll
from helpers import execIn, need, needRoot, run, uniqueName, waitFor

pytestmark = pytest.mark.integration

DATA_SOCKET = re.compile(r"^\d{3,}\.\d+$")

#: Prints the ICMP echo requests this guest has received so far.
IN_ECHOS = (
    "awk '/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 }"
    ' else print $c["InEchos"] }\' /proc/net/snmp'
)


def guestScript(address: str, peer: str, echos: int, extra: str = "", mtu: int = 1500) -> str:
    """
    Bring eth0 up as C{address}/24, wait for C{peer} to answer, ping it, run
    C{extra}, then stay up until C{peer} has pinged us C{echos} times (or
    20 s passed) so that it can finish its own checks.
    """
    return f"""\
ip link set eth0 mtu {mtu}
ip addr add {address}/24 dev eth0
ip link set eth0 up
n=0
until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do
    n=$((n + 1)); [ $n -ge 30 ] && break
done
echo "failed probes: $n"
ping -c 3 -i 0.2 -W 2 {peer}; rc=$?
{extra}
echo VTW-READY
n=0
while [ "$({IN_ECHOS})" -lt {echos} ] && [ $n -lt 100 ]; do sleep 0.2; n=$((n + 1)); done
echo "echos received: $({IN_ECHOS})"
cat /sys/class/net/eth0/mtu
exit $rc
"""


def dataSockets(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if DATA_SOCKET.match(n)]


def vdeNetdev(sock: Path) -> list[str]:
    return ["-netdev", f"vde,id=n0,sock={sock}"]


def test_qemuGuestsPingOverVdeSwitch(vswitch, processes, shortdir) -> None:
    """Two QEMU guests on -netdev vde ping each other through the switch."""
    sw = vswitch()
    left = startGuest(
        processes, vdeNetdev(sw.sock), guestScript("10.211.1.1", "10.211.1.2", 4),
        "52:54:00:76:74:01", directory=shortdir, name="left",
    )
    right = startGuest(
        processes, vdeNetdev(sw.sock), guestScript("10.211.1.2", "10.211.1.1", 4),
        "52:54:00:76:74:02", directory=shortdir, name="right",
    )
    results = waitAll([left, right], timeout=60)
    for guest, result in zip((left, right), results):
        print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
        assert result.rc == 0, guest.diagnostics()
        assert "3 packets received" in result.output, guest.diagnostics()
    assert sw.process.poll() is None


def test_qemuGuestsExchangeJumboFrames(vswitch, processes, shortdir) -> None:
    """
    With MTU 9216 (the switch's default, within libvdeplug's 9234-byte
    frame buffer) two guests exchange 9230-byte frames: QEMU's vde backend
    passes them whole both ways.
    """
    sw = vswitch()
    guests = []
    for name, me, peer, mac in (("jl", "10.211.3.1", "10.211.3.2", "52:54:00:76:74:04"),
                                ("jr", "10.211.3.2", "10.211.3.1", "52:54:00:76:74:05")):
        # 9188 bytes of ICMP payload + 8 + 20 = a 9216-byte packet, a 9230-byte frame
        jumbo = f"ping -c 1 -s 9188 -W 2 {peer} || rc=1"
        script = guestScript(me, peer, 5, jumbo, mtu=9216)
        guests.append(startGuest(processes, vdeNetdev(sw.sock), script, mac,
                                 directory=shortdir, name=name))
    for guest, result in zip(guests, waitAll(guests, timeout=60)):
        print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
        assert result.rc == 0, guest.diagnostics()
        assert "9196 bytes from" in result.output, guest.diagnostics()


def test_qemuGuestReachesNamespace(vswitch, processes, namespaces, shortdir) -> None:
    """A guest on -netdev vde and a namespace on vde_plug tap:// ping both ways, full-size."""
    need("vde_plug", "ping")
    needRoot()
    sw = vswitch()
    ns = namespaces.add("vtwq")
    tap = uniqueName("tq")
    processes.start(execIn(ns, "vde_plug", f"vde://{sw.sock}", f"tap://{tap}"))
    waitFor(lambda: len(dataSockets(sw.sock)) == 1, what="tap attached")
    waitFor(lambda: run("ip", "-n", ns, "link", "show", tap, check=False).returncode == 0,
            what=f"{tap} in {ns}")
    run("ip", "-n", ns, "addr", "add", "10.211.2.1/24", "dev", tap)
    run("ip", "-n", ns, "link", "set", tap, "up")

    # 1472 bytes of ICMP payload = a 1500-byte IP packet = a 1514-byte frame;
    # Linux sets DF on it (path MTU discovery), so it cannot be fragmented.
    big = "ping -c 2 -s 1472 -W 2 10.211.2.1 || rc=1"
    guest = startGuest(
        processes, vdeNetdev(sw.sock), guestScript("10.211.2.2", "10.211.2.1", 4, big),
        "52:54:00:76:74:03", directory=shortdir, name="solo",
    )
    waitFor(lambda: guest.sawLine("VTW-READY") or guest.process.poll() is not None,
            timeout=60, what="guest pings done")
    small = run(*execIn(ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.211.2.2"),
                check=False)
    large = run(*execIn(ns, "ping", "-c", "2", "-i", "0.2", "-s", "1472", "-M", "do",
                        "-W", "2", "10.211.2.2"), check=False)
    result = guest.wait(60)
    print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
    print(small.stdout, large.stdout)
    assert result.rc == 0, guest.diagnostics()
    assert "3 packets received" in result.output, guest.diagnostics()
    assert "2 packets received" in result.output, guest.diagnostics()
    assert small.returncode == 0, small.stdout + small.stderr
    assert large.returncode == 0, large.stdout + large.stderr
