"""
Port impairments with real peers: two namespaces behind the switch's TAPs,
one port delayed (and then lossy, then rate-limited) in its spec or from
the console; the kernel's ping and iperf3 measure what they see.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import needRoot, run, uniqueName
from taphelpers import console, iperf3, moveTap, quietNamespace, waitForPing

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()


def _rtts(namespace: str, address: str, count: int = 5) -> list[float]:
    result = run("ip", "netns", "exec", namespace, "ping", "-c", str(count), "-i", "0.2",
                 "-W", "2", address, check=False)
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", result.stdout)]


def _twoNamespaces(vswitch, namespaces, shortdir, net: str,
                   firstOptions: str = "", count: int = 2) -> tuple[Path, list[str]]:
    """
    A switch with a console and two (or C{count}) TAPs, each moved into a
    namespace of its own as C{net}.1, C{net}.2, ... (the first with
    C{firstOptions}); returns the console's path and the namespaces, once
    the first pings the others.
    """
    mgmt = shortdir / "mgmt"
    taps = [uniqueName("vti") for _ in range(count)]
    ports = [f"tap:{taps[0]}{firstOptions}"] + [f"tap:{tap}" for tap in taps[1:]]
    vswitch(*(arg for port in ports for arg in ("--port", port)), "--mgmt", str(mgmt))
    spaces = []
    for n, tap in enumerate(taps, 1):
        ns = quietNamespace(namespaces, "vti")
        moveTap(tap, ns, f"{net}.{n}/24")
        spaces.append(ns)
    for n in range(2, count + 1):
        waitForPing(spaces[0], f"{net}.{n}")
    return mgmt, spaces


def test_delayLossAndRateAsPingAndIperf3SeeThem(vswitch, namespaces, processes,
                                                shortdir) -> None:
    """
    delay=80 on the first TAP's port adds 80 ms to every round trip; the
    console then makes it lose everything, turns that off, and limits it to
    20 Mbit/s, which iperf3's TCP then stays under.
    """
    mgmt, spaces = _twoNamespaces(vswitch, namespaces, shortdir, "10.215.0", ":delay=80")
    rtts = _rtts(spaces[0], "10.215.0.2")
    assert len(rtts) == 5 and min(rtts) >= 80 and max(rtts) < 400, rtts
    assert "impairment: delay 80 ms" in console(mgmt, "port/stats 1")
    console(mgmt, "port/impair 1 loss=100")
    assert _rtts(spaces[0], "10.215.0.2", 3) == []
    assert re.search(r"impaired=[1-9]", console(mgmt, "port/stats 1"))
    console(mgmt, "port/impair 1 off")
    rtts = _rtts(spaces[0], "10.215.0.2")
    assert len(rtts) == 5 and max(rtts) < 50, rtts
    console(mgmt, "port/impair 1 rate=20000")
    report = iperf3(processes, spaces[1], spaces[0], "10.215.0.1", "-t", "3")
    rate = report["end"]["sum_received"]["bits_per_second"]
    assert 8e6 < rate < 21e6, rate


def _checksumErrors(namespace: str) -> int:
    """
    The namespace kernel's count of packets it dropped for a bad IP header
    or ICMP checksum.
    """
    text = run("ip", "netns", "exec", namespace, "cat", "/proc/net/snmp").stdout
    rows = [line.split() for line in text.splitlines()]
    total = 0
    for names, values in zip(rows[::2], rows[1::2]):
        table = dict(zip(names[1:], values[1:]))
        total += int(table.get("InHdrErrors", 0)) + int(table.get("InCsumErrors", 0))
    return total


def test_noiseDamagesFramesTheKernelThenRefuses(vswitch, namespaces, shortdir) -> None:
    """
    noise= on a TAP's port (about one flipped bit per 100-byte frame) makes
    most pings to that namespace fail, and its kernel counts checksum
    errors: the frames arrive damaged, not dropped; noise off, they pass.
    """
    mgmt, spaces = _twoNamespaces(vswitch, namespaces, shortdir, "10.216.0")
    before = _checksumErrors(spaces[1])
    console(mgmt, "port/impair 2 noise=10000")
    answered = len(_rtts(spaces[0], "10.216.0.2", 10))
    stats = console(mgmt, "port/stats 2")
    assert answered < 7, f"{answered} of 10 answered through the noise"
    assert _checksumErrors(spaces[1]) - before >= 3
    assert re.search(r"noise 10000 bits/MB, [1-9]\d* frames damaged", stats), stats
    console(mgmt, "port/impair 2 off")
    assert len(_rtts(spaces[0], "10.216.0.2", 3)) == 3


def test_onePortImpairedBothWaysAndAnAsymmetricRate(vswitch, namespaces, processes,
                                                    shortdir) -> None:
    """
    delay=30:indelay=50 on the first of three TAPs' ports: every round trip
    to that namespace takes 80 ms more, one between the other two nothing
    more.  Then inrate=20000 from the console: what that namespace sends
    stays under 20 Mbit/s, what it is sent does not (an asymmetric link).
    """
    mgmt, spaces = _twoNamespaces(vswitch, namespaces, shortdir, "10.217.0",
                                  ":delay=30:indelay=50", count=3)
    rtts = _rtts(spaces[1], "10.217.0.1")
    assert len(rtts) == 5 and min(rtts) >= 80 and max(rtts) < 400, rtts
    rtts = _rtts(spaces[1], "10.217.0.3")
    assert len(rtts) == 5 and max(rtts) < 30, rtts
    assert "impairment: delay 30 ms; arriving: delay 50 ms" in console(mgmt, "port/stats 1")
    console(mgmt, "port/impair 1 inrate=20000")
    report = iperf3(processes, spaces[0], spaces[1], "10.217.0.2", "-t", "3")
    up = report["end"]["sum_received"]["bits_per_second"]
    report = iperf3(processes, spaces[1], spaces[0], "10.217.0.1", "-t", "3")
    down = report["end"]["sum_received"]["bits_per_second"]
    assert 8e6 < up < 21e6 and down > 100e6, (up, down)
