"""
The C{packet:} port on a veth: the switch runs in a namespace holding one
end, a host namespace holds the other, and a third namespace sits behind
the switch's TAP.  TCP super-frames cross whole both ways, tagged frames
keep their tags though the veth strips them on receipt.  (C{vde_pcapplug},
the C tool this port type stands in for, is no peer to test against here:
with C{vde_switch} too, the frames it injects never leave the interface.)
"""

from __future__ import annotations

import re

import pytest
from helpers import StreamPlug, execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import (
    RawCapture,
    checkedTransfer,
    checksumErrors,
    console,
    quietNamespace,
    sendRaw,
    switchInNamespace,
    waitForPing,
)

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()


class Wire:
    """
    A veth pair: C{switchEnd} in namespace C{here} (up, no address), and
    C{hostEnd} in a host namespace C{there} with 10.9.0.1/24.
    """

    def __init__(self, namespaces) -> None:
        self.here = quietNamespace(namespaces, "vps")
        self.there = quietNamespace(namespaces, "vph")
        self.switchEnd, self.hostEnd = uniqueName("vpa"), uniqueName("vpb")
        run("ip", "link", "add", self.switchEnd, "netns", self.here, "type", "veth", "peer",
            "name", self.hostEnd, "netns", self.there)
        run("ip", "-n", self.here, "link", "set", self.switchEnd, "up")
        run("ip", "-n", self.there, "addr", "add", "10.9.0.1/24", "dev", self.hostEnd)
        run("ip", "-n", self.there, "link", "set", self.hostEnd, "up")

    def tapHost(self, namespaces, tap: str) -> str:
        """The switch's TAP C{tap}, moved to a namespace of its own as 10.9.0.2/24."""
        host = quietNamespace(namespaces, "vpt")
        waitFor(lambda: run("ip", "-n", self.here, "link", "show", tap,
                            check=False).returncode == 0, what=tap)
        run("ip", "-n", self.here, "link", "set", tap, "netns", host)
        run("ip", "-n", host, "addr", "add", "10.9.0.2/24", "dev", tap)
        run("ip", "-n", host, "link", "set", tap, "up")
        return host


@pytest.mark.parametrize("offload", ["on", "off"])
def test_aVethHostAndATapHostShareOneLan(processes, namespaces, shortdir, offload) -> None:
    """
    Ping and 8 MB each way, intact and with no checksum errors, whether the
    TAP has offloads or not: the interface's super-frames reach an offload
    TAP whole (the port counts far fewer packets than the 1500-byte frames
    they stand for), and are cut for the other.
    """
    wire = Wire(namespaces)
    tap = uniqueName("vpt")
    _, mgmt = switchInNamespace(processes, wire.here, shortdir, "--port",
                                f"packet:{wire.switchEnd}", "--port",
                                f"tap:{tap}:offload={offload}")
    host = wire.tapHost(namespaces, tap)
    waitForPing(host, "10.9.0.1")
    size = 8 * 1024 * 1024
    for sender, receiver, address, seed in ((host, wire.there, "10.9.0.1", 1),
                                           (wire.there, host, "10.9.0.2", 2)):
        sent, got = checkedTransfer(processes, sender, receiver, address, size, seed=seed)
        assert sent == got and sent.startswith(f"{size} ")
    for ns in (host, wire.there):
        assert not any(checksumErrors(ns).values()), checksumErrors(ns)
    described = console(mgmt, "port/print 1")
    assert "module packet" in described
    packetsIn = int(described.split("IN:  pkts")[1].split()[0])
    assert "offload=csum,tso4,tso6" in described
    if offload == "on":
        assert packetsIn < size / 1448 / 4, described


def test_taggedFramesKeepTheirTags(processes, namespaces, shortdir) -> None:
    """
    A frame tagged for VLAN 10 sent into the veth reaches a VLAN 10 client
    untagged, though the veth hands the tag beside the frame; the client's
    answer leaves the veth tagged for VLAN 10.
    """
    need("vde_plug")
    wire = Wire(namespaces)
    sock, mgmt = switchInNamespace(processes, wire.here, shortdir, "--port",
                                   f"packet:{wire.switchEnd}:trunk=10", "--port",
                                   f"vde:{shortdir}/v10:vlan=10")
    client = StreamPlug(processes, f"vde://{shortdir}/v10")
    waitFor(lambda: "Port 0002" in console(mgmt, "port/print"), what="the client's port")
    inner = frame(b"\xff" * 6, mac(0x41), payload=b"tagged for ten")
    tagged = inner[:12] + b"\x81\x00\x00\x0a" + inner[12:]
    sendRaw(wire.there, wire.hostEnd, tagged)
    assert client.receiveMatching(lambda f: f == inner) is not None
    capture = RawCapture(processes, wire.there, wire.hostEnd, 2)
    answer = frame(mac(0x41), mac(0x42), payload=b"back on ten")
    client.send(answer)
    got = [(f, tci) for f, tci in capture.frames() if f[6:12] == mac(0x42)]
    assert got and all(tci is not None and tci & 0xFFF == 10 for _, tci in got), got
    assert sock.exists()


def test_aDeletedInterfaceTakesOnlyItsPortDown(processes, namespaces, shortdir) -> None:
    """
    Deleting the interface takes its port down with a log line naming the
    spec; the switch and its other ports keep working.
    """
    need("vde_plug")
    wire = Wire(namespaces)
    sock, mgmt = switchInNamespace(processes, wire.here, shortdir, "--port",
                                   f"packet:{wire.switchEnd}")
    waitFor(lambda: "module packet" in console(mgmt, "port/print"), what="the packet port")
    run("ip", "-n", wire.there, "link", "del", wire.hostEnd)
    waitFor(lambda: "module packet" not in console(mgmt, "port/print"), what="the port to go")
    log = (shortdir / "sw.log").read_text()
    assert f"packet:{wire.switchEnd}" in log and "the port goes down" in log, log
    one, two = StreamPlug(processes, f"vde://{sock}"), StreamPlug(processes, f"vde://{sock}")
    waitFor(lambda: console(mgmt, "port/print").count("module unix prog") >= 2,
            what="two clients")
    hello = frame(b"\xff" * 6, mac(0x51), payload=b"still switching")
    one.send(hello)
    assert two.receiveMatching(lambda f: f == hello) is not None


def test_theSocketOpensBeforeTwistdDropsPrivileges(processes, namespaces, shortdir) -> None:
    """twistd --uid: the packet socket opens as root, and frames still cross as nobody."""
    import os
    from pathlib import Path

    from helpers import socketListening, sourceEnv, twistdArgv

    os.chmod(shortdir, 0o777)
    wire = Wire(namespaces)
    tap = uniqueName("vpt")
    sock, log = shortdir / "dropped", shortdir / "dropped.log"
    argv = twistdArgv("--sock", str(sock), "--port", f"packet:{wire.switchEnd}", "--tap", tap,
                      logfile=str(log))
    at = argv.index("vswitch")
    argv[at:at] = ["--uid", "65534", "--gid", "65534"]
    process = processes.start(execIn(wire.here, *argv), env=sourceEnv())
    waitFor(lambda: socketListening(sock / "ctl"), what="switch after dropping privileges")
    host = wire.tapHost(namespaces, tap)
    waitForPing(host, "10.9.0.1")
    status = (Path("/proc") / str(process.pid) / "status").read_text()  # ip netns exec execs
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"65534"}, status


def test_anInterfaceTakenDownAndUpAgainCarriesOn(processes, namespaces, shortdir) -> None:
    """
    Taking the interface down (``ip link set IFACE down``) and up again
    leaves the port in place: the frames sent while it was down are
    counted as ``down`` drops, and pings cross again once it is up.
    """
    wire = Wire(namespaces)
    tap = uniqueName("vpt")
    _, mgmt = switchInNamespace(processes, wire.here, shortdir, "--port",
                                f"packet:{wire.switchEnd}", "--port", f"tap:{tap}")
    host = wire.tapHost(namespaces, tap)
    waitForPing(host, "10.9.0.1")
    run("ip", "-n", wire.here, "link", "set", wire.switchEnd, "down")
    run(*execIn(host, "ping", "-c", "2", "-i", "0.2", "-W", "1", "10.9.0.1"), check=False)
    run("ip", "-n", wire.here, "link", "set", wire.switchEnd, "up")
    waitForPing(host, "10.9.0.1")
    assert "module packet" in console(mgmt, "port/print 1")
    log = (shortdir / "sw.log").read_text()
    assert "the port goes down" not in log and "Traceback" not in log, log


def test_anInterfaceTakenDownThenDeletedTakesItsPortDown(processes, namespaces, shortdir) -> None:
    """
    An interface taken down and then deleted (the kernel says nothing more
    on the socket) takes its port down within seconds, though the switch
    sends it nothing; the switch goes on.
    """
    wire = Wire(namespaces)
    _, mgmt = switchInNamespace(processes, wire.here, shortdir, "--port",
                                f"packet:{wire.switchEnd}")
    waitFor(lambda: "module packet" in console(mgmt, "port/print"), what="the packet port")
    run("ip", "-n", wire.here, "link", "set", wire.switchEnd, "down")
    log = shortdir / "sw.log"
    waitFor(lambda: "went down" in log.read_text(), what="the port to see it down")
    run("ip", "-n", wire.here, "link", "del", wire.switchEnd)
    waitFor(lambda: "module packet" not in console(mgmt, "port/print"), what="the port to go")
    text = log.read_text()
    assert f"packet:{wire.switchEnd}" in text and "the port goes down" in text, text
    assert "Traceback" not in text, text


def test_aFrameOverTheInterfacesMtuIsAnMtuDrop(processes, namespaces, shortdir) -> None:
    """
    A frame longer than the interface's MTU allows is counted as an ``mtu``
    drop of the packet port (not ``peer``), and logged once with the reason:
    the kernel's (EMSGSIZE) for an untagged frame within the 4 bytes the
    port keeps for a tag.
    """
    need("vde_plug")
    wire = Wire(namespaces)
    run("ip", "-n", wire.here, "link", "set", wire.switchEnd, "mtu", "1000")
    sock, mgmt = switchInNamespace(processes, wire.here, shortdir, "--port",
                                   f"packet:{wire.switchEnd}")
    client = StreamPlug(processes, f"vde://{sock}")
    waitFor(lambda: "module unix prog" in console(mgmt, "port/print"), what="the client")
    for _ in range(3):  # 1016 bytes: 2 more than the interface takes untagged
        client.send(frame(b"\xff" * 6, mac(0x61), payload=b"x" * 1002))
    waitFor(lambda: " mtu=3 " in console(mgmt, "port/stats 1"), what="three mtu drops")
    stats = console(mgmt, "port/stats 1")
    assert " peer=0 " in stats, stats
    text = (shortdir / "sw.log").read_text()
    assert text.count("dropped a frame (mtu)") == 1 and "EMSGSIZE" in text, text


def test_thePortTakesTheInterfacesMtu(processes, namespaces, shortdir) -> None:
    """
    Without ``mtu=``, the port's MTU is the interface's (``port/print``
    shows it), so a frame from another port too long for it is an ``mtu``
    drop of the switch; ``mtu=`` given stays, with a warning if it is more
    than the interface's.
    """
    need("vde_plug")
    wire = Wire(namespaces)
    run("ip", "-n", wire.here, "link", "set", wire.switchEnd, "mtu", "1000")
    sock, mgmt = switchInNamespace(processes, wire.here, shortdir, "--port",
                                   f"packet:{wire.switchEnd}", "--port",
                                   f"packet:{wire.switchEnd}:mtu=1400")
    client = StreamPlug(processes, f"vde://{sock}")
    waitFor(lambda: "module unix prog" in console(mgmt, "port/print"), what="the client")
    stats = console(mgmt, "port/stats")
    assert re.search(r"^Port 0001 mtu=1000 ", stats, re.M), stats
    assert re.search(r"^Port 0002 mtu=1400 ", stats, re.M), stats
    assert f"{wire.switchEnd} (mtu 1000)" in console(mgmt, "port/print 1")
    client.send(frame(b"\xff" * 6, mac(0x62), payload=b"x" * 1100))
    waitFor(lambda: " mtu=1 " in console(mgmt, "port/stats 1"), what="an mtu drop")
    text = (shortdir / "sw.log").read_text()
    assert "1114 bytes, more than 1018" in text, text
    assert f"mtu=1400 is more than {wire.switchEnd}'s MTU of 1000" in text, text


def test_thePortFollowsTheInterfacesMtu(processes, namespaces, shortdir) -> None:
    """
    The interface's MTU changed while the switch runs (``ip link set IFACE
    mtu N``) becomes the port's at once, up and down, and is logged.
    """
    wire = Wire(namespaces)
    _, mgmt = switchInNamespace(processes, wire.here, shortdir, "--port",
                                f"packet:{wire.switchEnd}")
    waitFor(lambda: "Port 0001 mtu=1500 " in console(mgmt, "port/stats"), what="the port")
    for mtu in ("1200", "4000"):
        run("ip", "-n", wire.here, "link", "set", wire.switchEnd, "mtu", mtu)
        waitFor(lambda: f"Port 0001 mtu={mtu} " in console(mgmt, "port/stats"),  # noqa: B023
                what=f"the port's MTU to be {mtu}")
    assert f"{wire.switchEnd} (mtu 4000)" in console(mgmt, "port/print 1")
    text = (shortdir / "sw.log").read_text()
    assert f"{wire.switchEnd}'s MTU is now 4000 (it was 1200)" in text, text
    assert "Traceback" not in text, text


def test_aSuperFrameOver64KbIsAnOversizeDropNotCutShort(processes, namespaces, shortdir) -> None:
    """
    A veth peer sending IPv6 TCP with BIG TCP (its gso_max_size raised
    past 64 KB) makes super-frames too long for one read: each is counted
    as an ``oversize`` drop, logged once with what to do, and none is
    handed on cut short; with gso_max_size 65536 again, TCP crosses intact.
    """
    wire = Wire(namespaces)
    tap = uniqueName("vpt")
    _, mgmt = switchInNamespace(processes, wire.here, shortdir, "--port",
                                f"packet:{wire.switchEnd}", "--port", f"tap:{tap}")
    host = wire.tapHost(namespaces, tap)
    for ns, dev, address in ((wire.there, wire.hostEnd, "fd80:9::1"), (host, tap, "fd80:9::2")):
        run(*execIn(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0"))
        run("ip", "-n", ns, "addr", "add", f"{address}/64", "dev", dev, "nodad")
    big = run("ip", "-n", wire.there, "link", "set", "dev", wire.hostEnd, "gso_max_size",
              "131072", check=False)
    if big.returncode:
        pytest.skip(f"no BIG TCP here: {big.stderr.strip()}")
    waitForPing(wire.there, "fd80:9::2")
    checkedTransfer(processes, wire.there, host, "fd80:9::2", 1024 * 1024)
    stats = console(mgmt, "port/stats 1")
    assert not re.search(r"\boversize=0\b", stats), stats
    text = (shortdir / "sw.log").read_text()
    assert text.count("dropped a frame (oversize)") == 1 and "BIG TCP" in text, text
    run("ip", "-n", wire.there, "link", "set", "dev", wire.hostEnd, "gso_max_size", "65536")
    size = 4 * 1024 * 1024
    sent, got = checkedTransfer(processes, wire.there, host, "fd80:9::2", size, seed=2)
    assert sent == got and sent.startswith(f"{size} ")
