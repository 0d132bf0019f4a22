"""
A lab with MTU 9000 everywhere: hosts in namespaces behind each kind of port
the switch joins to the kernel or to other switches (offload TAP, plain TAP,
C{vde_plug tap://}, a cable between two switches, VXLAN between two
switches over a 1500-byte underlay) exchange 8972-byte pings that may not
fragment, and TCP arrives intact with no port counting a drop.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import (
    checkedTransfer,
    console,
    deviceExists,
    moveTap,
    quietNamespace,
    switchInNamespace,
    waitForPing,
)

pytestmark = pytest.mark.integration

JUMBO = "9000"
SIZE = 2 * 1024 * 1024


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()


def jumbo(ns: str, device: str, address: str) -> None:
    """Address C{device} in C{ns}, give it MTU 9000 and bring it up."""
    run("ip", "-n", ns, "addr", "add", address, "dev", device)
    run("ip", "-n", ns, "link", "set", device, "mtu", JUMBO, "up")


def hostFor(namespaces, tap: str, address: str, switchNs: str | None = None) -> str:
    """A new namespace holding the switch's TAP C{tap} at MTU 9000."""
    ns = quietNamespace(namespaces, "vtj")
    if switchNs is None:
        moveTap(tap, ns, None, up=False)
    else:
        waitFor(lambda: deviceExists(tap, switchNs), what=tap)
        run("ip", "-n", switchNs, "link", "set", tap, "netns", ns)
    jumbo(ns, tap, address)
    return ns


def assertJumboPath(processes, a: str, addressA: str, b: str, addressB: str,
                    seed: int) -> None:
    """
    Unfragmentable 9000-byte pings both ways, and TCP both ways intact.
    """
    waitForPing(a, addressB)
    for src, dst in ((a, addressB), (b, addressA)):
        result = run(*execIn(src, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do",
                             "-s", "8972", dst), check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    for n, (src, dst, address) in enumerate(((a, b, addressB), (b, a, addressA))):
        sent, got = checkedTransfer(processes, src, dst, address, SIZE, seed=seed + n,
                                    port=7400 + seed + n)
        assert sent == got and sent.startswith(f"{SIZE} ")


def assertNoLengthDrops(mgmt: Path) -> None:
    """No port of the switch counted an C{oversize} or C{mtu} drop."""
    stats = console(mgmt, "port/stats")
    lines = [line for line in stats.splitlines() if "drops:" in line]
    assert lines and all(" oversize=0 " in line and " mtu=0 " in line for line in lines), stats


def test_offloadTapPlainTapAndVdePlugShareAJumboLan(processes, namespaces, shortdir) -> None:
    """
    Behind an offload TAP, a plain TAP and a C{vde_plug tap://} client (its
    buffers take 9234 bytes), each pair of hosts carries jumbo frames.
    """
    need("vde_plug")
    switchNs = quietNamespace(namespaces, "vtjs")
    taps = uniqueName("vtj"), uniqueName("vtj")
    sock, mgmt = switchInNamespace(processes, switchNs, shortdir,
                                   "--port", f"tap:{taps[0]}:offload=on",
                                   "--port", f"tap:{taps[1]}:offload=off")
    offload = hostFor(namespaces, taps[0], "10.214.0.1/24", switchNs)
    plain = hostFor(namespaces, taps[1], "10.214.0.2/24", switchNs)
    plugged = quietNamespace(namespaces, "vtjp")
    plugTap = uniqueName("vtp")
    processes.start(execIn(plugged, "vde_plug", f"vde://{sock}", f"tap://{plugTap}"))
    waitFor(lambda: deviceExists(plugTap, plugged), what=f"{plugTap} made by vde_plug")
    jumbo(plugged, plugTap, "10.214.0.3/24")
    assertJumboPath(processes, offload, "10.214.0.1", plain, "10.214.0.2", 1)
    assertJumboPath(processes, offload, "10.214.0.1", plugged, "10.214.0.3", 3)
    assertJumboPath(processes, plain, "10.214.0.2", plugged, "10.214.0.3", 5)
    assertNoLengthDrops(mgmt)


def test_aCableBetweenTwoSwitchesCarriesJumboFrames(vswitch, processes, namespaces,
                                                    shortdir) -> None:
    """
    Two switches joined by a plain cable over the loopback, a host behind
    each one's TAP (one with offloads, one without).
    """
    taps = uniqueName("vtj"), uniqueName("vtj")
    port = 17000 + int(taps[0][3:]) % 1000
    mgmts = shortdir / "one.mgmt", shortdir / "two.mgmt"
    vswitch("--port", f"cable:listen:tcp:{port}:interface=127.0.0.1:tls=off",
            "--port", f"tap:{taps[0]}", "--mgmt", str(mgmts[0]))
    vswitch("--port", f"cable:tcp:host=127.0.0.1:port={port}:tls=off",
            "--port", f"tap:{taps[1]}:offload=off", "--mgmt", str(mgmts[1]))
    a = hostFor(namespaces, taps[0], "10.214.1.1/24")
    b = hostFor(namespaces, taps[1], "10.214.1.2/24")
    assertJumboPath(processes, a, "10.214.1.1", b, "10.214.1.2", 10)
    for mgmt in mgmts:
        assertNoLengthDrops(mgmt)


def test_vxlanBetweenTwoSwitchesCarriesJumboFramesOverA1500Underlay(
        processes, namespaces, shortdir) -> None:
    """
    Over an underlay with MTU 1500, a VXLAN port sends fragmented
    datagrams (as README says): jumbo frames still cross whole.
    """
    here, there = quietNamespace(namespaces, "vtju"), quietNamespace(namespaces, "vtju")
    devs = uniqueName("vja"), uniqueName("vjb")
    run("ip", "link", "add", devs[0], "netns", here, "type", "veth", "peer", "name", devs[1],
        "netns", there)
    under = ("10.214.9.1", "10.214.9.2")
    for ns, dev, address in ((here, devs[0], under[0]), (there, devs[1], under[1])):
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")
    taps = uniqueName("vtj"), uniqueName("vtj")
    mgmts = []
    for ns, remote, tap, name in ((here, under[1], taps[0], "one"),
                                  (there, under[0], taps[1], "two")):
        _, mgmt = switchInNamespace(processes, ns, shortdir, "--port",
                                    f"vxlan:remote={remote}:vni=7", "--port", f"tap:{tap}",
                                    name=name)
        mgmts.append(mgmt)
    a = hostFor(namespaces, taps[0], "10.214.2.1/24", here)
    b = hostFor(namespaces, taps[1], "10.214.2.2/24", there)
    assertJumboPath(processes, a, "10.214.2.1", b, "10.214.2.2", 20)
    for mgmt in mgmts:
        assertNoLengthDrops(mgmt)


def pings(src: str, dst: str, size: int) -> bool:
    """Whether two unfragmentable pings of C{size} bytes of data are answered."""
    return run(*execIn(src, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s",
                       str(size), dst), check=False).returncode == 0


def test_framesOverAPortsMtuAreCountedOnThatPortOnce(processes, namespaces, shortdir) -> None:
    """
    The default limit is a 9234-byte frame (IP 9220: 4 bytes kept for a
    tag), from a TAP as from C{vde_plug}; one byte more is an C{oversize}
    drop of the port it came from.  A port with C{mtu=1500} counts a jumbo
    frame leaving by it as an C{mtu} drop and one arriving as C{oversize};
    each reason is logged once per port, naming the port.
    """
    need("vde_plug")
    switchNs = quietNamespace(namespaces, "vtjs")
    taps = uniqueName("vtj"), uniqueName("vtj")
    sock, mgmt = switchInNamespace(processes, switchNs, shortdir, "--port", f"tap:{taps[0]}",
                                   "--port", f"tap:{taps[1]}:mtu=1500")
    a = hostFor(namespaces, taps[0], "10.214.3.1/24", switchNs)
    b = hostFor(namespaces, taps[1], "10.214.3.2/24", switchNs)
    c, plugTap = quietNamespace(namespaces, "vtjp"), uniqueName("vtp")
    processes.start(execIn(c, "vde_plug", f"vde://{sock}", f"tap://{plugTap}"))
    waitFor(lambda: deviceExists(plugTap, c), what=f"{plugTap} made by vde_plug")
    jumbo(c, plugTap, "10.214.3.3/24")
    for ns, dev in ((a, taps[0]), (c, plugTap)):
        run("ip", "-n", ns, "link", "set", dev, "mtu", "9300")
    waitForPing(a, "10.214.3.3")
    assert pings(a, "10.214.3.3", 9192) and pings(c, "10.214.3.1", 9192)
    assert not pings(a, "10.214.3.3", 9193)
    waitForPing(a, "10.214.3.2")
    assert pings(a, "10.214.3.2", 1472) and pings(b, "10.214.3.1", 1472)
    assert not pings(a, "10.214.3.2", 8972)
    assert not pings(b, "10.214.3.1", 8972)
    stats = console(mgmt, "port/stats")
    ports = dict(re.findall(r"^Port 000(\d) mtu=\d+ .*\n drops: (.*)$", stats, re.M))
    assert " oversize=2 " in ports["1"] and " mtu=0 " in ports["1"], stats
    assert " oversize=2 " in ports["2"] and " mtu=2 " in ports["2"], stats
    assert re.search(r"^Port 0002 mtu=1500 ", stats, re.M), stats
    log = (shortdir / "sw.log").read_text()
    for port, reason in (("port 1", "oversize"), ("port 2", "oversize"), ("port 2", "mtu")):
        lines = [line for line in log.splitlines() if f"dropped a frame ({reason})" in line
                 and f"{port} (" in line]
        assert len(lines) == 1, log


def test_aVethPacketPortCarriesJumboFrames(processes, namespaces, shortdir) -> None:
    """
    A C{packet:} port on a veth with MTU 9000 at both ends, and a host
    behind an offload TAP: jumbo frames and super-frames of 9000-byte
    segments cross both ways.
    """
    switchNs, far = quietNamespace(namespaces, "vtjs"), quietNamespace(namespaces, "vtjv")
    ends = uniqueName("vja"), uniqueName("vjb")
    run("ip", "link", "add", ends[0], "netns", switchNs, "mtu", JUMBO, "type", "veth", "peer",
        "name", ends[1], "netns", far, "mtu", JUMBO)
    run("ip", "-n", switchNs, "link", "set", ends[0], "up")
    jumbo(far, ends[1], "10.214.4.1/24")
    tap = uniqueName("vtj")
    _, mgmt = switchInNamespace(processes, switchNs, shortdir, "--port", f"packet:{ends[0]}",
                                "--port", f"tap:{tap}")
    host = hostFor(namespaces, tap, "10.214.4.2/24", switchNs)
    assertJumboPath(processes, far, "10.214.4.1", host, "10.214.4.2", 30)
    assertNoLengthDrops(mgmt)
