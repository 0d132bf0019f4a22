"""
The C{vxlan:} port with real endpoints: Linux C{vxlan} devices (unicast,
multicast, over IPv6), vdeplug4's C{vde_plug vxlan://}, and a second
vtwisted switch.  The switch runs in a namespace of its own, joined to the
endpoint's namespace by a veth pair that is their only underlay; hosts sit
in further namespaces behind the switch's TAP devices.
"""

from __future__ import annotations

import re

import pytest
from helpers import StreamPlug, execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import (
    checkedTransfer,
    checksumErrors,
    console,
    hostBehindTap,
    quietNamespace,
    switchInNamespace,
    waitForPing,
)

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration

#: Underlay addresses: the switch's side, then the endpoint's.
UNDER4 = ("10.99.0.1", "10.99.0.2")
UNDER6 = ("fd99::1", "fd99::2")


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()


class Underlay:
    """
    Two namespaces joined by a veth pair, the switch's (C{here}) and an
    endpoint's (C{there}), with IPv4 (and IPv6 if asked) and multicast
    routed over the pair.  The far end's checksum offload is off: a Linux
    vxlan device leaves inner checksums to the NIC, and a veth never
    computes them.
    """

    def __init__(self, namespaces, ipv6: bool = False, mtu: int = 1550) -> None:
        self.here = quietNamespace(namespaces, "vxs")
        self.there = quietNamespace(namespaces, "vxk")
        self.hereDev, self.thereDev = uniqueName("vxa"), uniqueName("vxb")
        run("ip", "link", "add", self.hereDev, "netns", self.here, "mtu", str(mtu), "type",
            "veth", "peer", "name", self.thereDev, "netns", self.there, "mtu", str(mtu))
        for ns, dev, address4, address6 in ((self.here, self.hereDev, UNDER4[0], UNDER6[0]),
                                            (self.there, self.thereDev, UNDER4[1], UNDER6[1])):
            if ipv6:
                run(*execIn(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0"))
                run("ip", "-n", ns, "addr", "add", f"{address6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "addr", "add", f"{address4}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        run(*execIn(self.there, "ethtool", "-K", self.thereDev, "tx", "off"))

    def kernelVxlan(self, address: str, *how: str, vni: int = 42) -> None:
        """
        A Linux vxlan device (VNI 42 unless told, port 4789) in C{there},
        addressed C{address} (the overlay), made as C{how} says
        (C{remote ...}).
        """
        name = f"vx{vni}"
        run("ip", "-n", self.there, "link", "add", name, "type", "vxlan", "id", str(vni),
            "dstport", "4789", *how)
        run("ip", "-n", self.there, "link", "set", name, "mtu", "1500", "up")
        run("ip", "-n", self.there, "addr", "add", address, "dev", name)


@pytest.mark.parametrize(("underlayMtu", "gro"), [(1550, False), (1500, False), (1550, True)])
def test_kernelVxlanDeviceByUnicast(processes, namespaces, shortdir, underlayMtu, gro) -> None:
    """
    A Linux vxlan device pointed at the switch is on the LAN of a namespace
    behind the switch's TAP: ping, and 4 MB of TCP each way arriving intact
    with no checksum errors (the switch cuts the TAP's super-frames for the
    tunnel, and merges the device's segments into super-frames for the TAP).  An underlay
    without room for the 50 bytes of encapsulation works too, its
    datagrams fragmented, with nothing dropped; and so does one whose
    device merges datagrams (GRO, as network cards do), which the switch
    reads as such (UDP_GRO) and cuts apart.
    """
    need("ethtool")
    under = Underlay(namespaces, mtu=underlayMtu)
    if gro:
        run(*execIn(under.here, "ethtool", "-K", under.hereDev, "gro", "on"))
    under.kernelVxlan("10.8.0.1/24", "remote", UNDER4[0], "local", UNDER4[1])
    tap = uniqueName("vxt")
    _, mgmt = switchInNamespace(processes, under.here, shortdir, "--port",
                                f"vxlan:remote={UNDER4[1]}:vni=42", "--tap", tap)
    host = hostBehindTap(namespaces, under.here, tap, "10.8.0.2/24")
    waitForPing(host, "10.8.0.1")
    size = 4 * 1024 * 1024
    sent, got = checkedTransfer(processes, host, under.there, "10.8.0.1", size)
    assert sent == got and sent.startswith(f"{size} ")
    sent, got = checkedTransfer(processes, under.there, host, "10.8.0.2", size, seed=2)
    assert sent == got and sent.startswith(f"{size} ")
    for ns in (host, under.there):
        assert not any(checksumErrors(ns).values()), checksumErrors(ns)
    described = console(mgmt, "port/print 1")
    assert "1 MACs behind 1 endpoints" in described
    merged = re.search(r"coalesced (\d+) segments into (\d+)", described)
    assert merged and int(merged[2]) > 0 and int(merged[1]) > 2 * int(merged[2]), described
    assert ("reads merged by the kernel" in described) == gro, described
    table = console(mgmt, "vxlan/print")
    assert f"via {UNDER4[1]}" in table and "vni 42 remote" in table, table
    stats = console(mgmt, "port/stats 1")
    assert "total=0" in stats, stats


@pytest.mark.parametrize("mode", ["unicast", "group"])
def test_twoVnisOnOneEndpointKeepTwoVlansApart(processes, namespaces, shortdir, mode) -> None:
    """
    Two vxlan: ports share UDP port 4789 as two VNIs mapped to two VLANs,
    each reaching its own Linux device, by unicast or on one multicast
    group; what one VLAN's host sends never leaves through the other VNI.
    """
    need("ethtool")
    under = Underlay(namespaces)
    if mode == "unicast":
        how: tuple[str, ...] = ("remote", UNDER4[0], "local", UNDER4[1])
        where = f"remote={UNDER4[1]}"
    else:
        how = ("group", "239.1.1.43", "dev", under.thereDev)
        where = f"239.1.1.43:if={under.hereDev}"
    for vni, net in ((10, "10.8.5"), (20, "10.8.6")):
        under.kernelVxlan(f"{net}.1/24", *how, vni=vni)
    taps = uniqueName("vxt"), uniqueName("vxt")
    _, mgmt = switchInNamespace(
        processes, under.here, shortdir,
        "--port", f"vxlan:{where}:vni=10:vlan=10",
        "--port", f"vxlan:{where}:vni=20:vlan=20",
        "--port", f"tap:{taps[0]}:vlan=10", "--port", f"tap:{taps[1]}:vlan=20")
    first = hostBehindTap(namespaces, under.here, taps[0], "10.8.5.2/24")
    waitForPing(first, "10.8.5.1")
    assert re.search(r"OUT: pkts +0 ", console(mgmt, "port/print 2")), "VNI 20 stayed quiet"
    second = hostBehindTap(namespaces, under.here, taps[1], "10.8.6.2/24")
    waitForPing(second, "10.8.6.1")
    assert "vni 20" in console(mgmt, "port/print 2")


def test_kernelVxlanDeviceOnAMulticastGroup(processes, namespaces, shortdir) -> None:
    """
    With a group instead of a remote, broadcasts (ARP) go to the group on
    the interface C{if=} names, and the answers come back unicast.
    """
    need("ethtool")
    under = Underlay(namespaces)
    under.kernelVxlan("10.8.1.1/24", "group", "239.1.1.42", "dev", under.thereDev)
    tap = uniqueName("vxt")
    switchInNamespace(processes, under.here, shortdir, "--port",
                      f"vxlan:239.1.1.42:vni=42:if={under.hereDev}", "--tap", tap)
    host = hostBehindTap(namespaces, under.here, tap, "10.8.1.2/24")
    waitForPing(host, "10.8.1.1")


def test_kernelVxlanDeviceOnAnIpv6Group(processes, namespaces, shortdir) -> None:
    """
    vxlan:v6 joins vdeplug4's IPv6 group (ff05:56de::1) on the interface
    C{if=} names, where a Linux vxlan device on that group answers.
    """
    need("ethtool")
    under = Underlay(namespaces, ipv6=True, mtu=1570)
    under.kernelVxlan("10.8.4.1/24", "group", "ff05:56de::1", "dev", under.thereDev)
    tap = uniqueName("vxt")
    _, mgmt = switchInNamespace(processes, under.here, shortdir, "--port",
                                f"vxlan:v6:vni=42:if={under.hereDev}", "--tap", tap)
    host = hostBehindTap(namespaces, under.here, tap, "10.8.4.2/24")
    waitForPing(host, "10.8.4.1")
    assert f"via {UNDER6[1]}" in console(mgmt, "vxlan/print")


def test_kernelVxlanDeviceOverIpv6(processes, namespaces, shortdir) -> None:
    """The underlay can be IPv6: the remote is written with escaped colons."""
    need("ethtool")
    under = Underlay(namespaces, ipv6=True)
    under.kernelVxlan("10.8.2.1/24", "remote", UNDER6[0], "local", UNDER6[1])
    tap = uniqueName("vxt")
    remote = UNDER6[1].replace(":", "\\:")
    switchInNamespace(processes, under.here, shortdir, "--port",
                      f"vxlan:remote={remote}:vni=42", "--tap", tap)
    host = hostBehindTap(namespaces, under.here, tap, "10.8.2.2/24")
    waitForPing(host, "10.8.2.1")


def test_vdePlugVxlanAndAVdeClientShareOneLan(processes, namespaces, shortdir) -> None:
    """
    vdeplug4's C{vde_plug vxlan://} (default group, VNI 42) and a client on
    the switch's VDE socket exchange frames; the switch's answer to the
    plug's MAC goes to the plug's address alone, which the plug accepts.
    """
    need("vde_plug")
    under = Underlay(namespaces)
    sock, mgmt = switchInNamespace(processes, under.here, shortdir, "--port",
                                   f"vxlan:vni=42:if={under.hereDev}")
    client = StreamPlug(processes, f"vde://{sock}")
    remote = StreamPlug(processes, "vxlan://239.0.0.1/vni=42", wrapper=execIn(under.there))
    waitFor(lambda: "Port 0002" in console(mgmt, "port/print"), what="the client's port")
    hello = frame(b"\xff" * 6, mac(0x20), payload=b"hello from vde_plug vxlan")

    def broadcastArrives() -> bool:
        remote.send(hello)
        return client.receiveMatching(lambda f: f == hello, 0.3) is not None

    waitFor(broadcastArrives, what="the plug's broadcast")
    reply = frame(mac(0x20), mac(0x10), payload=b"hello back")
    client.send(reply)
    assert remote.receiveMatching(lambda f: f == reply) is not None
    assert "1 MACs behind 1 endpoints" in console(mgmt, "port/print 1")
    memberships = run(*execIn(under.here, "ip", "maddr", "show", "dev", under.hereDev))
    assert "239.0.0.1" in memberships.stdout


def test_twoSwitchesJoinedByVxlan(processes, namespaces, shortdir) -> None:
    """
    Two vtwisted switches on one VXLAN group carry a namespace's traffic to
    another's, each behind one switch's TAP: 4 MB arrive intact.
    """
    under = Underlay(namespaces)
    taps = uniqueName("vxt"), uniqueName("vxt")
    for ns, dev, tap, name in ((under.here, under.hereDev, taps[0], "one"),
                               (under.there, under.thereDev, taps[1], "two")):
        switchInNamespace(processes, ns, shortdir, "--port", f"vxlan:vni=9:if={dev}",
                          "--tap", tap, name=name)
    left = hostBehindTap(namespaces, under.here, taps[0], "10.8.3.1/24")
    right = hostBehindTap(namespaces, under.there, taps[1], "10.8.3.2/24")
    waitForPing(left, "10.8.3.2")
    size = 4 * 1024 * 1024
    sent, got = checkedTransfer(processes, left, right, "10.8.3.2", size)
    assert sent == got and sent.startswith(f"{size} ")


@pytest.mark.parametrize("device", ["underlay", "another"])
def test_ifBindsAUnicastPortToItsDevice(processes, namespaces, shortdir, device) -> None:
    """
    With C{remote=}, C{if=} is the device the endpoint's datagrams go and
    come through: the underlay's, and a Linux vxlan device is on the LAN;
    another (one end of a second veth pair), and nothing of it is heard
    (if= was ignored).
    """
    under = Underlay(namespaces)
    dummy, peer = uniqueName("vxd"), uniqueName("vxe")
    run("ip", "-n", under.here, "link", "add", dummy, "type", "veth", "peer", "name", peer)
    for end in (dummy, peer):
        run("ip", "-n", under.here, "link", "set", end, "up")
    under.kernelVxlan("10.8.0.1/24", "remote", UNDER4[0], "local", UNDER4[1])
    tap = uniqueName("vxt")
    dev = under.hereDev if device == "underlay" else dummy
    _, mgmt = switchInNamespace(processes, under.here, shortdir, "--port",
                                f"vxlan:remote={UNDER4[1]}:vni=42:if={dev}", "--tap", tap)
    host = hostBehindTap(namespaces, under.here, tap, "10.8.0.2/24")
    if device == "underlay":
        waitForPing(host, "10.8.0.1")
        return
    ping = run(*execIn(under.there, "ping", "-c", "3", "-i", "0.2", "-W", "1", "10.8.0.2"),
               check=False)
    assert ping.returncode != 0, ping.stdout
    described = console(mgmt, "port/print 1")
    assert "0 MACs behind 0 endpoints" in described, described
