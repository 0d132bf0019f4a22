"""
The IPv6 side of the slirp port against the Linux kernel: a network
namespace behind a TAP port of a C{twistd vswitch} with a slirp port
configures itself from the router's advertisements (SLAAC in QEMU's
C{fec0::/64}, default route via C{fe80::2}) and reaches the router's
addresses, which its neighbour table then lists as a router.

The namespace keeps IPv6 on (not L{taphelpers.quietNamespace}): the test is
about what its kernel does unasked.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from helpers import execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import moveTap, ping

pytestmark = pytest.mark.integration

#: What the switch's slirp port gives, as in QEMU (spec B.1, B.10).
PREFIX = "fec0::"
ROUTER = "fe80::2"
ROUTER_MAC = "52:56:00:00:00:02"


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("ping")


def ip6(namespace: str, *args: str) -> str:
    return run(*execIn(namespace, "ip", "-6", *args)).stdout


def slaacAddress(namespace: str, device: str) -> str | None:
    """
    The namespace's address in the slirp prefix once DAD has finished, or None.
    """
    for line in ip6(namespace, "addr", "show", "dev", device).splitlines():
        found = re.search(rf"inet6 ({PREFIX}[0-9a-f:]*)/64 .*", line)
        if found and "tentative" not in line:
            return found.group(1)
    return None


@pytest.mark.parametrize("tapOptions", ["", ":offload=off"])
def test_kernelConfiguresItselfFromTheRouterAndPingsIt(vswitch, namespaces,
                                                      tapOptions: str) -> None:
    """The kernel takes a fec0::/64 SLAAC address and a default route via fe80::2, pings both."""
    tap = uniqueName("vt6")
    sw = vswitch("--port", f"tap:{tap}{tapOptions}", "--port", "slirp")
    ns = namespaces.add("vt6")
    moveTap(tap, ns, None)
    try:
        waitFor(lambda: slaacAddress(ns, tap) is not None, timeout=20,
                what="a SLAAC address from the router's advertisement")
    except Exception:
        raise AssertionError(f"{ip6(ns, 'addr')}\n{sw.logText()}") from None
    address = slaacAddress(ns, tap)
    assert address is not None
    assert "scope site" in ip6(ns, "addr", "show", "dev", tap), "fec0:: is site-local"
    route = ip6(ns, "route", "show", "default")
    assert f"via {ROUTER} dev {tap} proto ra" in route, route
    for target in (f"{ROUTER}%{tap}", f"{PREFIX}2", f"{PREFIX}3"):
        result = ping(ns, target)
        assert result.returncode == 0, f"{target}: {result.stdout}{result.stderr}\n{sw.logText()}"
    neighbours = ip6(ns, "neigh", "show", "dev", tap)
    assert re.search(rf"^{ROUTER} lladdr {ROUTER_MAC} router", neighbours, re.M), neighbours
    assert re.search(rf"^{PREFIX}2 lladdr {ROUTER_MAC} router", neighbours, re.M), neighbours
    assert "Traceback" not in sw.logText(), sw.logText()


@pytest.mark.parametrize("tapOptions", ["", ":offload=off"])
def test_ipv6GuestReachesTheHostAndItsResolverThroughTheGateway(
        vswitch, processes, namespaces, tapOptions: str) -> None:
    """
    Over IPv6 alone, the guest moves 10 MB each way to a server on the
    host's ::1 via fec0::2 intact (TCP super-frames with offloads), and a
    name query to fec0::3 reaches the host's resolver (IPv4 loopback).
    """
    import hashlib
    import random
    import subprocess

    from taphelpers import readLine
    from test_slirp import CLIENT, DNS, PYTHON, startServer

    resolver = processes.start([PYTHON, "-c", DNS], stdout=subprocess.PIPE)
    dnsPort = int(readLine(resolver, 10))
    tap = uniqueName("vt6")
    sw = vswitch("--port", f"tap:{tap}{tapOptions}",
                 "--port", f"slirp:resolver=127.0.0.1:resolverport={dnsPort}")
    ns = namespaces.add("vt6")
    moveTap(tap, ns, None)
    waitFor(lambda: slaacAddress(ns, tap) is not None, timeout=20, what="a SLAAC address")
    size = 10_000_000
    _, sinkPort = startServer(processes, "sink", 1, address="::1")
    up = run(*execIn(ns, PYTHON, "-c", CLIENT, f"{PREFIX}2", str(sinkPort), str(size)),
             timeout=60)
    sent, _, answer = up.stdout.strip().partition(" | ")
    length, digest, peer = answer.split()
    assert f"{length} {digest}" == sent, up.stdout
    assert peer == "::1"
    _, sourcePort = startServer(processes, str(size), 1, address="::1")
    down = run(*execIn(ns, PYTHON, "-c", CLIENT, f"{PREFIX}2", str(sourcePort), "0"),
               timeout=60)
    expected = hashlib.sha256(random.Random(7).randbytes(size)).hexdigest()
    assert down.stdout.split() == [str(size), expected]
    lookup = run(*execIn(ns, "busybox", "nslookup", "example.test", f"{PREFIX}3"), check=False,
                 timeout=20)
    assert "10.9.8.7" in lookup.stdout, lookup.stdout + lookup.stderr
    assert "Traceback" not in sw.logText(), sw.logText()


@pytest.mark.parametrize("pingGroups, mode", [("1 0", "raw"), ("0 2147483647", "ping")])
def test_ipv6GuestReachesHostsBeyondTheGateway(processes, namespaces, shortdir,
                                               pingGroups: str, mode: str) -> None:
    """
    With the switch in a namespace routed over IPv6 to another, the guest
    pings a host there (libslirp cannot) and a TCP server there sees the
    guest's connection come from the switch's own address.
    """
    from test_slirp import Beyond

    world = Beyond(processes, namespaces, shortdir, "2001:db8::1/64", "2001:db8::2/64",
                   pingGroups, ipv6=True)
    waitFor(lambda: slaacAddress(world.guest, world.tap) is not None, timeout=20,
            what="a SLAAC address")
    world.check(processes, "2001:db8::2", "2001:db8::1", f"IPv6 pings by {mode} socket")


#: A guest UDP service on [::]:5353 answering in capitals.
UDP_ECHO = r"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 5353))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2000)
    s.sendto(data.upper(), peer)
"""


def test_hostForwardReachesAnIpv6Guest(vswitch, processes, namespaces) -> None:
    """
    Forwards from the host's [::1] to an IPv6-only guest's services: TCP to
    [fec0::99]:80 carries a transfer intact (the guest sees it come from the
    gateway fec0::2), UDP to [fec0::99]:5353 gets its answer back.
    """
    import hashlib
    import random
    import socket
    import subprocess
    import sys

    from taphelpers import readLine
    from test_slirp import startServer

    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        hostPort = probe.getsockname()[1]
    tap = uniqueName("vt6")
    rule = (f"tcp\\:[\\:\\:1]\\:{hostPort}-[fec0\\:\\:99]\\:80,"
            f"udp\\:[\\:\\:1]\\:{hostPort}-[fec0\\:\\:99]\\:5353")
    sw = vswitch("--port", f"tap:{tap}", "--port", f"slirp:hostfwd={rule}")
    ns = namespaces.add("vt6")
    moveTap(tap, ns, None)
    run("ip", "-n", ns, "addr", "add", f"{PREFIX}99/64", "dev", tap, "nodad")
    startServer(processes, "sink", 1, ns, "::", 80)
    echo = processes.start(execIn(ns, sys.executable, "-c", UDP_ECHO), stdout=subprocess.PIPE)
    assert readLine(echo, 10).strip() == "ready"
    data = random.Random(3).randbytes(3_000_000)
    with socket.create_connection(("::1", hostPort), timeout=30) as client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    length, digest, peer = answer.decode().split()
    assert (int(length), digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert peer == f"{PREFIX}2", "forwarded connections come from the gateway"
    assert f"tcp:[::1]:{hostPort}-[fec0::99]:80" in sw.logText()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        udp.settimeout(5)
        udp.sendto(b"ping six", ("::1", hostPort))
        reply, sender = udp.recvfrom(100)
    assert (reply, sender[:2]) == (b"PING SIX", ("::1", hostPort))


#: The guest sends one big datagram to [argv[1]]:argv[2] and prints the
#: length and digest of what it sent and of the answer.
BIG_DATAGRAM = r"""
import hashlib, socket, sys
data = bytes(range(256)) * 15 + bytes(160)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(data, (sys.argv[1], int(sys.argv[2])))
answer = s.recv(65536)
print(len(data), hashlib.sha256(data).hexdigest(), len(answer),
      hashlib.sha256(answer).hexdigest())
"""


@contextmanager
def oneDatagramAnswered(reverse: bool = False) -> Iterator[tuple[int, list[bytes]]]:
    """
    A UDP socket on the host's ::1 that answers the first datagram it gets
    (reversed if asked) from a thread, for 15 s at most.

    @return: its port, and the datagrams it got (once the block ends).
    """
    got: list[bytes] = []
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as host:
        host.bind(("::1", 0))
        host.settimeout(15)

        def answer() -> None:
            try:
                data, peer = host.recvfrom(65536)
            except TimeoutError:
                return
            got.append(data)
            host.sendto(data[::-1] if reverse else data, peer)

        answering = threading.Thread(target=answer)
        answering.start()
        try:
            yield host.getsockname()[1], got
        finally:
            answering.join()


@pytest.mark.parametrize("tapOptions", ["", ":offload=off"])
def test_bigIpv6DatagramCrossesTheRouterWhole(vswitch, processes, namespaces,
                                              tapOptions: str) -> None:
    """
    A 4000-byte UDP datagram the guest's kernel sends in IPv6 fragments to
    fec0::2 reaches a socket on the host's ::1 whole (the router
    reassembles it), and the host's 4000-byte answer reaches the guest whole.
    """
    import hashlib
    import sys

    tap = uniqueName("vt6")
    sw = vswitch("--port", f"tap:{tap}{tapOptions}", "--port", "slirp")
    ns = namespaces.add("vt6")
    moveTap(tap, ns, None)
    waitFor(lambda: slaacAddress(ns, tap) is not None, timeout=20, what="a SLAAC address")
    with oneDatagramAnswered(reverse=True) as (port, got):
        result = run(*execIn(ns, sys.executable, "-c", BIG_DATAGRAM, f"{PREFIX}2", str(port)),
                     check=False, timeout=30)
    data = bytes(range(256)) * 15 + bytes(160)
    assert got == [data], (len(got[0]) if got else None, sw.logText())
    digest, back = hashlib.sha256(data).hexdigest(), hashlib.sha256(data[::-1]).hexdigest()
    assert result.stdout.split() == ["4000", digest, "4000", back], (
        result.stdout + result.stderr + sw.logText())
    assert "Traceback" not in sw.logText(), sw.logText()


def test_qemusIpv6OptionsPlaceTheGatewayAndTheDns(vswitch, processes, namespaces) -> None:
    """
    QEMU's ipv6-net=, ipv6-host= and ipv6-dns=: the guest configures itself
    in fd00:77::/64, pings the gateway at ::1 and the DNS proxy at ::dead,
    whose names reach the host's resolver; the old addresses are nobody's.
    """
    import subprocess

    from taphelpers import readLine
    from test_slirp import DNS, PYTHON

    resolver = processes.start([PYTHON, "-c", DNS], stdout=subprocess.PIPE)
    dnsPort = int(readLine(resolver, 10))
    tap = uniqueName("vt6")
    sw = vswitch("--port", f"tap:{tap}", "--port",
                 "slirp:ipv6-net=fd00\\:77\\:\\:/64:ipv6-host=fd00\\:77\\:\\:1"
                 f":ipv6-dns=fd00\\:77\\:\\:dead:resolver=127.0.0.1:resolverport={dnsPort}")
    ns = namespaces.add("vt6")
    moveTap(tap, ns, None)
    waitFor(lambda: "inet6 fd00:77::" in ip6(ns, "addr", "show", "dev", tap) and
            "tentative" not in ip6(ns, "addr", "show", "dev", tap), timeout=20,
            what="a SLAAC address in fd00:77::/64")
    for target in ("fd00:77::1", "fd00:77::dead"):
        result = ping(ns, target)
        assert result.returncode == 0, f"{target}: {result.stdout}\n{sw.logText()}"
    assert ping(ns, "fd00:77::2").returncode != 0
    lookup = run(*execIn(ns, "busybox", "nslookup", "example.test", "fd00:77::dead"),
                 check=False, timeout=20)
    assert "10.9.8.7" in lookup.stdout, lookup.stdout + lookup.stderr


def test_ipv4OffLeavesGuestsIpv6Alone(vswitch, namespaces) -> None:
    """
    ipv4=off: the guest configures IPv6 and pings the gateway there, while
    DHCP gets no lease and the IPv4 gateway does not answer.
    """
    tap = uniqueName("vt6")
    sw = vswitch("--port", f"tap:{tap}", "--port", "slirp:ipv4=off")
    ns = namespaces.add("vt6")
    moveTap(tap, ns, None)
    waitFor(lambda: slaacAddress(ns, tap) is not None, timeout=20, what="a SLAAC address")
    assert ping(ns, f"{PREFIX}2").returncode == 0, sw.logText()
    lease = run(*execIn(ns, "busybox", "udhcpc", "-i", tap, "-n", "-q", "-t", "2", "-T", "1",
                        "-s", "/bin/true"), check=False, timeout=30)
    assert lease.returncode != 0, lease.stdout
    run("ip", "-n", ns, "addr", "add", "10.0.2.15/24", "dev", tap)
    assert ping(ns, "10.0.2.2").returncode != 0
    assert "Traceback" not in sw.logText(), sw.logText()


def test_aJumboLanKeepsItsIpv6MtuUnlessMtuIsGiven(vswitch, namespaces) -> None:
    """
    Two hosts with MTU 9000 and a slirp port on their LAN: after the
    router's advertisements their IPv6 MTU is still 9000 and 8952-byte
    pings that may not fragment cross between them; with C{slirp:mtu=1500}
    the advertisements carry that MTU, which the kernels then take.
    """
    for slirp, expected in (("slirp", 9000), ("slirp:mtu=1500", 1500)):
        taps = uniqueName("vt6"), uniqueName("vt6")
        vswitch("--port", f"tap:{taps[0]}", "--port", f"tap:{taps[1]}", "--port", slirp)
        hosts = []
        for tap in taps:
            ns = namespaces.add("vt6")
            moveTap(tap, ns, None, up=False)
            run("ip", "-n", ns, "link", "set", tap, "mtu", "9000", "up")
            hosts.append(ns)
        for ns, tap in zip(hosts, taps):
            waitFor(lambda ns=ns, tap=tap: slaacAddress(ns, tap) is not None, timeout=20,
                    what="a SLAAC address from the router's advertisement")
            mtu = run(*execIn(ns, "cat", f"/proc/sys/net/ipv6/conf/{tap}/mtu")).stdout
            assert int(mtu) == expected, (slirp, mtu)
        if expected == 9000:
            peer = slaacAddress(hosts[1], taps[1])
            assert peer is not None
            result = run(*execIn(hosts[0], "ping", "-6", "-c", "2", "-W", "2", "-M", "do",
                                 "-s", "8952", peer), check=False)
            assert result.returncode == 0, result.stdout + result.stderr


#: The guest sends a 4000-byte datagram to [argv[1]]:argv[2] until answered
#: (the first is lost to a Packet Too Big, after which its kernel cuts it),
#: and prints the path MTU its kernel then has and the length of the answer.
PMTU_PROBE = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
answer = None
for attempt in range(3):
    try:
        s.send(bytes(4000))
        answer = s.recv(65536)
        break
    except OSError:
        pass
print(s.getsockopt(socket.IPPROTO_IPV6, 24), len(answer or b""))
"""


def test_aJumboGuestLearnsAGivenMtuFromTheRouter(vswitch, namespaces) -> None:
    """
    A guest with link MTU 9000 that ignores the advertisements' MTU, behind
    C{slirp:mtu=1500}: its 4000-byte IPv6 datagram gets a Packet Too Big
    (as libslirp sends), so its kernel sends it again in fragments and the
    host's answer comes back, instead of losing it unanswered; an IPv4
    ping that may not be fragmented gets fragmentation needed.
    """
    import sys

    tap = uniqueName("vt6")
    sw = vswitch("--port", f"tap:{tap}", "--port", "slirp:mtu=1500")
    ns = namespaces.add("vt6")
    moveTap(tap, ns, None, up=False)
    run(*execIn(ns, "sysctl", "-qw", f"net.ipv6.conf.{tap}.accept_ra_mtu=0"))
    run("ip", "-n", ns, "link", "set", tap, "mtu", "9000", "up")
    waitFor(lambda: slaacAddress(ns, tap) is not None, timeout=20, what="a SLAAC address")
    with oneDatagramAnswered() as (port, _):
        result = run(*execIn(ns, sys.executable, "-c", PMTU_PROBE, f"{PREFIX}2", str(port)),
                     check=False, timeout=30)
    assert result.stdout.split() == ["1500", "4000"], result.stdout + result.stderr + sw.logText()
    run("ip", "-n", ns, "addr", "add", "10.0.2.15/24", "dev", tap)
    pings = [run(*execIn(ns, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "4000",
                         "10.0.2.2"), check=False) for _ in range(2)]
    assert "mtu=1500" in pings[1].stdout + pings[1].stderr, pings[1].stdout + pings[1].stderr
    assert "Traceback" not in sw.logText(), sw.logText()
