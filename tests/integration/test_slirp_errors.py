"""
ICMP errors relayed by slirp, seen by a Linux guest: a namespace behind a
TAP asks through its own sockets (a connected UDP socket's
C{ConnectionRefusedError}, and traceroute's way: probes with growing TTLs
or hop limits and C{IP_RECVERR}).  The routed world lives in namespaces made here.
"""

from __future__ import annotations

import socket

import pytest
from helpers import execIn, need, needRoot, run, uniqueName
from test_slirp import PYTHON, Beyond, guestBehindSlirp

pytestmark = pytest.mark.integration

#: The guest asks a closed UDP port and reports what its socket says.
REFUSED = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"anyone there?")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("silence")
"""

#: traceroute's way (traceroute6's for an IPv6 destination): one probe per
#: TTL or hop limit, 1 to 3, each error read from the error queue and
#: printed as "HOPS REPORTER TYPE CODE".
TRACE = r"""
import select, socket, struct, sys
dst, port, six = sys.argv[1], int(sys.argv[2]), ":" in sys.argv[1]
if six:
    family, level, recverr, hopsOption = (socket.AF_INET6, socket.IPPROTO_IPV6, 25,
                                          socket.IPV6_UNICAST_HOPS)
else:
    family, level, recverr, hopsOption = socket.AF_INET, socket.IPPROTO_IP, 11, socket.IP_TTL
for hops in (1, 2, 3):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(level, recverr, 1)
    s.setsockopt(level, hopsOption, hops)
    s.sendto(b"probe", (dst, port))
    poller = select.poll()
    poller.register(s, select.POLLERR)
    if not poller.poll(5000):
        print(hops, "silence")
        continue
    _, ancillary, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
    for cmsgLevel, kind, data in ancillary:
        if cmsgLevel == level and kind == recverr:
            _, origin, icmpType, code, _, _, _ = struct.unpack_from("=IBBBBII", data)
            if six:
                reporter = socket.inet_ntop(socket.AF_INET6, data[24:40])
            else:
                reporter = socket.inet_ntoa(data[20:24])
            print(hops, reporter, icmpType, code)
"""


#: The guest connects with TCP and prints how its connect ended.
CONNECT = r"""
import errno, socket, sys
s = socket.socket()
s.settimeout(20)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e))
"""


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("busybox")


def test_closedHostPortIsRefusedInTheGuest(vswitch, namespaces, shortdir) -> None:
    """
    A guest's UDP to a closed port of the host's loopback fails at once with
    ConnectionRefusedError, as on a real network (libslirp relays this too).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir)
    result = run(*execIn(ns, PYTHON, "-c", REFUSED, "10.0.2.2", str(port)), timeout=30)
    assert result.stdout.strip() == "refused"


def _fartherNetwork(namespaces, world: Beyond, near: str, far: str, *flags: str) -> str:
    """
    A namespace on a third network, joined to C{world}'s remote one by a
    veth pair (C{near} the remote's address on it, C{far} its own).
    """
    farther = namespaces.add("vtf")
    veth = uniqueName("vtw")
    run("ip", "link", "add", veth, "netns", world.remote, "type", "veth", "peer", "name", veth,
        "netns", farther)
    for ns, address in ((world.remote, near), (farther, far)):
        run("ip", "-n", ns, "addr", "add", address, "dev", veth, *flags)
        run("ip", "-n", ns, "link", "set", veth, "up")
    return farther


def test_guestTracerouteSeesEveryHop(processes, namespaces, shortdir) -> None:
    """
    Beyond the gateway a router leads to a third network: the guest's
    probes with TTL 1, 2 and 3 get time exceeded from the gateway, time
    exceeded from the router, and port unreachable from the far host.
    """
    world = Beyond(processes, namespaces, shortdir, "192.0.2.1/24", "192.0.2.2/24", "1 0",
                   ipv6=False)
    farther = _fartherNetwork(namespaces, world, "198.51.100.1/24", "198.51.100.2/24")
    run(*execIn(world.remote, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
    run("ip", "-n", world.outside, "route", "add", "198.51.100.0/24", "via", "192.0.2.2")
    run("ip", "-n", farther, "route", "add", "default", "via", "198.51.100.1")
    run("ip", "-n", world.guest, "addr", "add", "10.0.2.15/24", "dev", world.tap)
    run("ip", "-n", world.guest, "route", "add", "default", "via", "10.0.2.2")
    result = run(*execIn(world.guest, PYTHON, "-c", TRACE, "198.51.100.2", "33434"),
                 timeout=60)
    assert result.stdout.split("\n")[:3] == [
        "1 10.0.2.2 11 0",
        "2 192.0.2.2 11 0",
        "3 198.51.100.2 3 3",
    ], result.stdout + world.log.read_text()


def test_guestTraceroute6SeesEveryHop(processes, namespaces, shortdir) -> None:
    """
    As over IPv4: the guest's probes with hop limits 1, 2 and 3 get time
    exceeded from the gateway fec0::2 (the router's own hop), time exceeded
    from the router beyond, and port unreachable from the far host.
    """
    from helpers import waitFor
    from test_slirp6 import slaacAddress

    world = Beyond(processes, namespaces, shortdir, "2001:db8::1/64", "2001:db8::2/64", "1 0",
                   ipv6=True)
    farther = _fartherNetwork(namespaces, world, "2001:db8:1::1/64", "2001:db8:1::2/64",
                              "nodad")
    run(*execIn(world.remote, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"))
    run("ip", "-n", world.outside, "-6", "route", "add", "2001:db8:1::/64", "via",
        "2001:db8::2")
    run("ip", "-n", farther, "-6", "route", "add", "default", "via", "2001:db8:1::1")
    waitFor(lambda: slaacAddress(world.guest, world.tap) is not None, timeout=20,
            what="a SLAAC address")
    result = run(*execIn(world.guest, PYTHON, "-c", TRACE, "2001:db8:1::2", "33434"),
                 timeout=60)
    assert result.stdout.split("\n")[:3] == [
        "1 fec0::2 3 0",
        "2 2001:db8::2 3 0",
        "3 2001:db8:1::2 1 4",
    ], result.stdout + world.log.read_text()


def test_guestConnectFailsAsTheHostsDoes(processes, namespaces, shortdir) -> None:
    """
    A guest's TCP connect to where the switch's host has no route fails with
    ENETUNREACH, to a missing host on the host's network (no ARP answer)
    with EHOSTUNREACH, and to a closed port with ECONNREFUSED: libslirp's
    ICMP net and host unreachable, and its RST.
    """
    world = Beyond(processes, namespaces, shortdir, "192.0.2.1/24", "192.0.2.2/24", "1 0",
                   ipv6=False)
    run("ip", "-n", world.guest, "addr", "add", "10.0.2.15/24", "dev", world.tap)
    run("ip", "-n", world.guest, "route", "add", "default", "via", "10.0.2.2")
    got = [run(*execIn(world.guest, PYTHON, "-c", CONNECT, address, "80"),
               timeout=60).stdout.strip()
           for address in ("203.0.113.9", "192.0.2.77", "192.0.2.2")]
    assert got == ["ENETUNREACH", "EHOSTUNREACH", "ECONNREFUSED"], (
        got, world.log.read_text())
