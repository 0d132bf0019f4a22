"""
The C{vxvde:} port with vdeplug4's own members: two C{vde_plug vxvde://}
plugs and the switch (with a client on its VDE socket) in one namespace
whose multicast stays on its loopback.  vxvde has no switch: every member
hears the group, and unicast goes to the member a MAC was learned from.
"""

from __future__ import annotations

import re

import pytest
from helpers import StreamPlug, execIn, need, needRoot, waitFor
from taphelpers import console, multicastNamespace, switchInNamespace

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration

BROADCAST = b"\xff" * 6


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("vde_plug")


def _until(plug: StreamPlug, wanted: bytes, sender: StreamPlug | None = None,
           again: bytes | None = None) -> None:
    """Wait for C{wanted} on C{plug}, resending C{again} from C{sender} meanwhile."""
    for _ in range(20):
        if sender is not None and again is not None:
            sender.send(again)
        if plug.receiveMatching(lambda f: f == wanted, timeout=0.5) is not None:
            return
    raise AssertionError(f"{wanted!r} never arrived")


def test_theSwitchIsOneMoreMember(processes, namespaces, shortdir) -> None:
    """
    A broadcast from one plug reaches the other plug and the switch's client;
    the client's answer goes to that plug alone (unicast to its own port);
    the switch's own broadcasts, which the group echoes back to it, are not
    taken for frames from the network; a plug that leaves is forgotten at
    once.
    """
    ns = multicastNamespace(namespaces)
    sock, mgmt = switchInNamespace(processes, ns, shortdir, "--port", "vxvde:vni=7")
    client = StreamPlug(processes, f"vde://{sock}")
    one = StreamPlug(processes, "vxvde://239.0.0.1/vni=7", wrapper=execIn(ns))
    two = StreamPlug(processes, "vxvde://239.0.0.1/vni=7", wrapper=execIn(ns))
    waitFor(lambda: "Port 0002" in console(mgmt, "port/print"), what="the client's port")
    hello = frame(BROADCAST, mac(0x71), payload=b"hello from one")
    _until(client, hello, one, hello)
    _until(two, hello, one, hello)  # two may have joined later than the switch
    client.quiet(0.3)
    answer = frame(mac(0x71), mac(0x72), payload=b"answer to one")
    client.send(answer)
    assert one.receiveMatching(lambda f: f == answer) is not None
    assert two.receiveMatching(lambda f: f == answer, timeout=1) is None
    shout = frame(BROADCAST, mac(0x72), payload=b"the client's broadcast")
    client.send(shout)
    assert one.receiveMatching(lambda f: f == shout) is not None
    assert client.receiveMatching(lambda f: f == shout, timeout=1) is None, "its own echo"
    assert "to port: 002" in console(mgmt, "hash/find 02:00:00:00:00:72")
    described = console(mgmt, "port/print 1")
    assert "module vxvde" in described and "1 MACs behind 1 members" in described, described
    fromTwo = frame(BROADCAST, mac(0x73), payload=b"hello from two")
    _until(client, fromTwo, two, fromTwo)
    assert "2 MACs behind 2 members" in console(mgmt, "port/print 1")
    processes.stop(two.process)
    waitFor(lambda: re.search(r"1 MACs behind 1 members", console(mgmt, "port/print 1")),
            what="the leaving member to be forgotten")


def test_aQemuGuestOnVxvdeReachesANamespace(processes, namespaces, shortdir) -> None:
    """
    A QEMU guest started with -netdev vde,sock=vxvde:// (QEMU's VDE backend
    is vdeplug4) pings a namespace behind the switch's TAP: no vde_switch,
    no plug process, the switch is just one more member.
    """
    from guest import assertGuestPings
    from helpers import uniqueName
    from taphelpers import hostBehindTap

    need("qemu-system-x86_64")
    ns = multicastNamespace(namespaces)
    tap = uniqueName("vtv")
    _, mgmt = switchInNamespace(processes, ns, shortdir, "--port", "vxvde:vni=9",
                                "--port", f"tap:{tap}")
    hostBehindTap(namespaces, ns, tap, "10.7.1.1/24")
    assertGuestPings(processes, ["-netdev", "vde,id=n0,sock=vxvde://239.0.0.1/vni=9"],
                     "10.7.1.2/24", "10.7.1.1", "52:54:00:76:74:52", directory=shortdir,
                     name="vxvde", wrapper=execIn(ns))
    # the guest's frames came and went through the vxvde port (it has left
    # the group since, as its QEMU exited, so it may be forgotten already)
    described = console(mgmt, "port/print 1")
    assert re.search(r"IN:\s+pkts\s+[1-9]", described), described
    assert re.search(r"OUT:\s+pkts\s+[1-9]", described), described


def test_membersOnAnotherHostOverIpv6(processes, namespaces, shortdir) -> None:
    """
    vxvde:v6 on the interface if= names: a vde_plug member in another
    namespace (another host, over a veth) and the switch's client exchange
    frames both ways; the switch drops its own echo.
    """
    from helpers import run, uniqueName
    from taphelpers import quietNamespace

    here, there = quietNamespace(namespaces, "vvs"), quietNamespace(namespaces, "vvh")
    mine, theirs = uniqueName("vva"), uniqueName("vvb")
    run("ip", "link", "add", mine, "netns", here, "type", "veth", "peer", "name", theirs,
        "netns", there)
    for ns, dev, address in ((here, mine, "fd77::1/64"), (there, theirs, "fd77::2/64")):
        run(*execIn(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0"))
        run("ip", "-n", ns, "addr", "add", address, "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")
    sock, mgmt = switchInNamespace(processes, here, shortdir, "--port", f"vxvde:v6:vni=7:if={mine}")
    client = StreamPlug(processes, f"vde://{sock}")
    member = StreamPlug(processes, f"vxvde://ff05:56de::1/v6/vni=7/if={theirs}",
                        wrapper=execIn(there))
    waitFor(lambda: "Port 0002" in console(mgmt, "port/print"), what="the client's port")
    hello = frame(BROADCAST, mac(0x74), payload=b"hello over IPv6")
    _until(client, hello, member, hello)
    answer = frame(mac(0x74), mac(0x75), payload=b"answer over IPv6")
    client.send(answer)
    assert member.receiveMatching(lambda f: f == answer) is not None
    shout = frame(BROADCAST, mac(0x75), payload=b"the client's broadcast")
    client.send(shout)
    assert member.receiveMatching(lambda f: f == shout) is not None
    assert client.receiveMatching(lambda f: f == shout, timeout=1) is None
    assert "group [ff05:56de::1]:14789, 1 MACs behind 1 members" in console(mgmt, "port/print 1")
    assert re.search(r"02:00:00:00:00:74 via fd77::2 port \d+", console(mgmt, "vxlan/print"))
