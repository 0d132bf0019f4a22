"""
The capture port (C{pcap:}) read back by tcpdump: two namespaces behind
TAP ports of a switch ping each other; the capture holds their unicast
traffic, which no flooding would have shown a third port.
"""

from __future__ import annotations

import pytest
from helpers import need, needRoot, run, socketListening, sourceEnv, twistdArgv, uniqueName, waitFor
from taphelpers import moveTap, ping, quietNamespace

from vtwisted.wire import pcap

pytestmark = pytest.mark.integration


def test_captureShowsUnicastBetweenTwoNamespaces(processes, namespaces, shortdir) -> None:
    """tcpdump reads the capture: every echo request and reply between the two namespaces."""
    needRoot()
    need("tcpdump", "ping")
    taps = (uniqueName("vtc"), uniqueName("vtc"))
    capture = shortdir / "lan.pcap"
    switch = processes.start(twistdArgv(
        "--sock", str(shortdir / "sw"), "--port", f"tap:{taps[0]}", "--port", f"tap:{taps[1]}",
        "--port", f"pcap:{capture}", logfile=str(shortdir / "sw.log")), env=sourceEnv())
    waitFor(lambda: socketListening(shortdir / "sw" / "ctl"), what="the switch")
    spaces = []
    for tap, address in zip(taps, ("10.8.0.1/24", "10.8.0.2/24")):
        ns = quietNamespace(namespaces, "vtc")
        moveTap(tap, ns, address)
        spaces.append(ns)
    assert ping(spaces[0], "10.8.0.2", count=4).returncode == 0
    processes.stop(switch)
    records = pcap.readRecords(capture.read_bytes())
    assert records, "the capture holds frames"
    dump = run("tcpdump", "-n", "-r", str(capture), check=False)
    assert dump.returncode == 0, dump.stderr
    lines = dump.stdout.splitlines()
    assert sum("10.8.0.1 > 10.8.0.2: ICMP echo request" in line for line in lines) == 4
    assert sum("10.8.0.2 > 10.8.0.1: ICMP echo reply" in line for line in lines) == 4
    assert len(lines) == len(records)
    assert "frames written to" in (shortdir / "sw.log").read_text()
