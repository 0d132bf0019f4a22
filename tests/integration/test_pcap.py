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


def test_aCaptureThatCannotBeWrittenLeavesTheLanAlone(processes, shortdir) -> None:
    """
    A capture to a full disk (``/dev/full``: every write fails with
    ENOSPC) neither stops frames between two clients nor floods the log:
    one line names the spec, the path and the errno, the lost records are
    counted, and ``port/del`` removes the port.
    """
    need("vde_plug")
    from helpers import StreamPlug
    from taphelpers import console

    from vtwisted.testing import frame, mac

    sock, mgmt, log = shortdir / "sw", shortdir / "sw.mgmt", shortdir / "sw.log"
    processes.start(twistdArgv("--sock", str(sock), "--mgmt", str(mgmt), "--port",
                               "pcap:/dev/full:port=9", logfile=str(log)), env=sourceEnv())
    waitFor(lambda: socketListening(mgmt), what="the switch")
    one, two = StreamPlug(processes, f"vde://{sock}"), StreamPlug(processes, f"vde://{sock}")
    waitFor(lambda: console(mgmt, "port/print").count("module unix prog") >= 2,
            what="two clients")
    got = 0
    for n in range(3000):  # in rounds: the clients' socket buffers are small
        one.send(frame(b"\xff" * 6, mac(0x61), payload=n.to_bytes(4, "big") + bytes(996)))
        if n % 50 == 49:
            while got <= n and two.receive(timeout=5.0) is not None:
                got += 1
            assert got == n + 1, f"frames stopped after {got}"
    stats = console(mgmt, "port/stats 9")
    assert "busy=0" not in stats, stats
    console(mgmt, "port/del 9")
    waitFor(lambda: "Port 0009" not in console(mgmt, "port/print"), what="the port to go")
    text = log.read_text()
    assert "pcap:/dev/full" in text and "errno 28" in text, text
    assert "Traceback" not in text, text


def test_aCaptureRefusedItsPortLeavesNoFile(vswitch, shortdir) -> None:
    """
    ``port/add pcap:FILE:port=N`` refused (port N another spec's, or out of
    range) makes no file, and one naming an existing file leaves it as it
    was; ``port/specs`` lists neither.
    """
    from taphelpers import console

    mgmt = shortdir / "mgmt"
    vswitch("--mgmt", str(mgmt), "--port", f"pcap:{shortdir / 'held.pcap'}:port=3")
    kept = shortdir / "kept.pcap"
    kept.write_bytes(b"an earlier capture")
    for name, number, error in (("new.pcap", 3, "1098 Address already in use"),
                                ("far.pcap", 999, "1022 Invalid argument"),
                                ("kept.pcap", 3, "1098 Address already in use")):
        reply = console(mgmt, f"port/add pcap:{shortdir / name}:port={number}")
        assert error in reply
    assert not (shortdir / "new.pcap").exists()
    assert not (shortdir / "far.pcap").exists()
    assert kept.read_bytes() == b"an earlier capture"
    specs = console(mgmt, "port/specs")
    assert "new.pcap" not in specs and "far.pcap" not in specs and "kept.pcap" not in specs
