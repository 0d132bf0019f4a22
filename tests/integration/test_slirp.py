"""
The slirp port against real Linux guests: a network namespace behind an
offload TAP (and one without offloads) takes a DHCP lease from the switch
with busybox's udhcpc, then reaches servers on the host's loopback through
the gateway address 10.0.2.2, a DNS server through 10.0.2.3, and is reached
from the host through port forwards.

Every server the guests reach listens on 127.0.0.1 of the test's own
(root) namespace, where the switch runs; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import execIn, need, needRoot, run, uniqueName
from taphelpers import console, moveTap, ping, quietNamespace, readLine

if TYPE_CHECKING:
    from conftest import RunningSwitch

pytestmark = pytest.mark.integration

PYTHON = sys.executable

#: udhcpc's script: configure what the lease says, as a distribution's would.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "$router" dev "$interface"
    echo "lease $ip/$mask router=$router dns=$dns" ;;
esac
"""

#: A TCP server: prints its port, then for each of N connections reads
#: everything and answers the byte count and SHA-256, or sends SIZE bytes.
SERVER = r"""
import hashlib, random, socket, sys
mode, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[3] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[3], int(sys.argv[4])))
s.listen(8)
print(s.getsockname()[1], flush=True)
for _ in range(count):
    c, peer = s.accept()
    c.settimeout(30)
    if mode == "sink":
        h, n = hashlib.sha256(), 0
        while chunk := c.recv(1 << 20):
            h.update(chunk)
            n += len(chunk)
        c.sendall(f"{n} {h.hexdigest()} {peer[0]}".encode())
    else:
        data = random.Random(7).randbytes(int(mode))
        c.sendall(data)
    c.close()
"""

#: A TCP client: sends SIZE seeded bytes and prints what it sent and what
#: the sink answered, or (SIZE 0) prints the length and SHA-256 it read.
CLIENT = r"""
import hashlib, random, socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
size = int(sys.argv[3])
if size:
    data = random.Random(5).randbytes(size)
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := c.recv(4096):
        answer += chunk
    print(len(data), hashlib.sha256(data).hexdigest(), "|", answer.decode(), flush=True)
else:
    h, n = hashlib.sha256(), 0
    while chunk := c.recv(1 << 20):
        h.update(chunk)
        n += len(chunk)
    print(n, h.hexdigest(), flush=True)
"""

#: A DNS server on loopback answering every A query with 10.9.8.7.
DNS = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    query, peer = s.recvfrom(2048)
    ident, = struct.unpack("!H", query[:2])
    end = query.index(b"\0", 12) + 5
    question = query[12:end]
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 9, 8, 7])
    header = struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0)
    s.sendto(header + question + answer, peer)
"""


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("busybox", "ping")


def startServer(processes, mode: str, count: int, namespace: str | None = None,
                address: str = "127.0.0.1", port: int = 0) -> tuple[object, int]:
    argv = [PYTHON, "-c", SERVER, mode, str(count), address, str(port)]
    server = processes.start(execIn(namespace, *argv) if namespace else argv,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return server, int(readLine(server, 10))


def guestBehindSlirp(vswitch, namespaces, shortdir: Path, slirpOptions: str = "",
                     tapOptions: str = "",
                     extra: tuple[str, ...] = ()) -> tuple[RunningSwitch, str, str]:
    """
    A switch with a slirp port and a TAP moved into a new namespace, which
    takes a lease with udhcpc.

    @return: the switch, the namespace, and udhcpc's report.
    """
    tap = uniqueName("vts")
    sw = vswitch("--port", f"tap:{tap}{tapOptions}", "--port", f"slirp{slirpOptions}", *extra)
    ns = quietNamespace(namespaces, "vts")
    moveTap(tap, ns, None)
    script = shortdir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    lease = run(*execIn(ns, "busybox", "udhcpc", "-i", tap, "-n", "-q", "-f", "-t", "5",
                        "-T", "1", "-s", str(script)), check=False, timeout=30)
    assert lease.returncode == 0, f"{lease.stdout}\n{lease.stderr}\n{sw.logText()}"
    return sw, ns, lease.stdout


def test_guestGetsQemusAddressPlanByDhcpAndPingsTheGateway(vswitch, namespaces,
                                                           shortdir) -> None:
    """udhcpc gets 10.0.2.15/24 with router 10.0.2.2 and DNS 10.0.2.3; both answer pings."""
    sw, ns, lease = guestBehindSlirp(vswitch, namespaces, shortdir)
    assert "lease 10.0.2.15/24 router=10.0.2.2 dns=10.0.2.3" in lease, lease
    for address in ("10.0.2.2", "10.0.2.3"):
        result = ping(ns, address)
        assert result.returncode == 0, result.stdout
    # 4000 bytes leave the guest in fragments, reassembled by the router,
    # and the answer comes back in fragments the guest reassembles.
    big = run(*execIn(ns, "ping", "-c", "2", "-s", "4000", "-W", "2", "10.0.2.2"), check=False)
    assert big.returncode == 0 and "4008 bytes from 10.0.2.2" in big.stdout, big.stdout
    assert "Traceback" not in sw.logText(), sw.logText()


def test_guestDownloadsAndUploadsThroughTheGatewayIntact(vswitch, processes, namespaces,
                                                         shortdir) -> None:
    """20 MB each way between the guest and a loopback server via 10.0.2.2 keep every byte."""
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir)
    size = 20_000_000
    _, sinkPort = startServer(processes, "sink", 1)
    up = run(*execIn(ns, PYTHON, "-c", CLIENT, "10.0.2.2", str(sinkPort), str(size)),
             timeout=60)
    sent, _, answer = up.stdout.strip().partition(" | ")
    length, digest, peer = answer.split()
    assert f"{length} {digest}" == sent, up.stdout
    assert peer == "127.0.0.1", "the host sees the guest's connection come from loopback"
    _, sourcePort = startServer(processes, str(size), 1)
    down = run(*execIn(ns, PYTHON, "-c", CLIENT, "10.0.2.2", str(sourcePort), "0"), timeout=60)
    expected = random.Random(7).randbytes(size)
    assert down.stdout.split() == [str(size), hashlib.sha256(expected).hexdigest()]
    text = sw.logText()
    assert "Traceback" not in text, text


def test_aJumboGuestReachesTheRouterWhole(vswitch, processes, namespaces, shortdir) -> None:
    """
    A guest with MTU 9000 (the port takes jumbo frames; the router's MTU
    stays 1500): unfragmentable 9000-byte pings reach the gateway, whose
    answers come back in fragments, and TCP crosses intact both ways.
    """
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir)
    tap = run(*execIn(ns, "ip", "-o", "link", "show", "type", "tun")).stdout.split(":")[1]
    run("ip", "-n", ns, "link", "set", tap.strip(), "mtu", "9000")
    big = run(*execIn(ns, "ping", "-c", "2", "-M", "do", "-s", "8972", "-W", "2", "10.0.2.2"),
              check=False)
    assert big.returncode == 0 and "8980 bytes from 10.0.2.2" in big.stdout, big.stdout
    size = 4_000_000
    _, sinkPort = startServer(processes, "sink", 1)
    up = run(*execIn(ns, PYTHON, "-c", CLIENT, "10.0.2.2", str(sinkPort), str(size)),
             timeout=60)
    sent, _, answer = up.stdout.strip().partition(" | ")
    assert " ".join(answer.split()[:2]) == sent, up.stdout
    _, sourcePort = startServer(processes, str(size), 1)
    down = run(*execIn(ns, PYTHON, "-c", CLIENT, "10.0.2.2", str(sourcePort), "0"), timeout=60)
    expected = random.Random(7).randbytes(size)
    assert down.stdout.split() == [str(size), hashlib.sha256(expected).hexdigest()]
    text = sw.logText()
    assert "(mtu)" not in text and "(oversize)" not in text, text


def test_closedHostPortIsRefusedAtOnce(vswitch, namespaces, shortdir) -> None:
    """A connection to a closed port of the host is refused, not left hanging."""
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()[1]
    probe.close()
    started = time.monotonic()
    result = run(*execIn(ns, PYTHON, "-c", CLIENT, "10.0.2.2", str(closed), "0"), check=False,
                 timeout=30)
    assert result.returncode != 0
    assert "ConnectionRefusedError" in result.stderr, result.stderr
    assert time.monotonic() - started < 5


def test_dnsQueriesToTheProxyReachTheHostResolver(vswitch, processes, namespaces,
                                                  shortdir) -> None:
    """nslookup via 10.0.2.3 gets the loopback resolver's answer."""
    resolver = processes.start([PYTHON, "-c", DNS], stdout=subprocess.PIPE)
    port = int(readLine(resolver, 10))
    sw, ns, _ = guestBehindSlirp(
        vswitch, namespaces, shortdir, f":resolver=127.0.0.1:resolverport={port}")
    result = run(*execIn(ns, "busybox", "nslookup", "example.test", "10.0.2.3"), check=False,
                 timeout=20)
    assert "10.9.8.7" in result.stdout, result.stdout + result.stderr


def test_hostReachesGuestThroughPortForwards(vswitch, processes, namespaces,
                                             shortdir) -> None:
    """A TCP forward on loopback reaches a server in the guest, which sees 10.0.2.2."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    hostPort = probe.getsockname()[1]
    probe.close()
    mgmt = shortdir / "mgmt"
    sw, ns, _ = guestBehindSlirp(
        vswitch, namespaces, shortdir, f":hostfwd=tcp\\:127.0.0.1\\:{hostPort}-\\:8080",
        extra=("--mgmt", str(mgmt)))
    startServer(processes, "sink", 1, ns, "10.0.2.15", 8080)
    result = run(PYTHON, "-c", CLIENT, "127.0.0.1", str(hostPort), "3000000", timeout=60)
    sent, _, answer = result.stdout.strip().partition(" | ")
    length, digest, peer = answer.split()
    assert f"{length} {digest}" == sent
    assert peer == "10.0.2.2"
    ports = console(mgmt, "port/print")
    assert f"forwards tcp:127.0.0.1:{hostPort}-10.0.2.15:8080" in ports, ports


def test_guestWithoutOffloadsGetsSegmentedFrames(vswitch, processes, namespaces,
                                                 shortdir) -> None:
    """Behind a TAP without offloads, a 5 MB download arrives intact in MSS-sized frames."""
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, tapOptions=":offload=off")
    size = 5_000_000
    _, sourcePort = startServer(processes, str(size), 1)
    down = run(*execIn(ns, PYTHON, "-c", CLIENT, "10.0.2.2", str(sourcePort), "0"), timeout=60)
    assert down.stdout.split() == [
        str(size), hashlib.sha256(random.Random(7).randbytes(size)).hexdigest()]



#: A QEMU guest's script: lease, ping the gateway, download a file from the
#: host's loopback HTTP server via 10.0.2.2, resolve a name via 10.0.2.3.
GUEST_SCRIPT = """\
cat > /tmp/lease.sh <<'END'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
ip route add default via "$router"
echo "lease $ip/$mask router=$router dns=$dns"
END
chmod +x /tmp/lease.sh
ip link set eth0 up
udhcpc -i eth0 -n -q -f -t 10 -T 1 -s /tmp/lease.sh; rc=$?
ping -c 2 -W 2 10.0.2.2 || rc=1
wget -q -O /tmp/got http://10.0.2.2:{http}/blob || rc=1
echo "got $(wc -c < /tmp/got) $(sha256sum < /tmp/got | cut -d' ' -f1)"
nslookup example.test 10.0.2.3
n=0
until ip -6 addr show dev eth0 | grep -v tentative | grep -q "inet6 fec0::"; do
    n=$((n + 1)); [ $n -ge 50 ] && break; sleep 0.2
done
ip -6 addr show dev eth0 | grep "inet6 fec0::"
ping -c 2 -W 2 fec0::2 || rc=1
exit $rc
"""


@pytest.mark.parametrize("transport", ["stream", "vhostuser"])
def test_qemuGuestGetsTheUserModeNetworkItKnows(vswitch, processes, shortdir,
                                                transport: str) -> None:
    """
    A QEMU guest on -netdev stream or vhost-user takes a lease, pings the
    gateway, downloads a file from the host's loopback web server and
    resolves a name, as it would under -netdev user, and configures IPv6
    and pings fec0::2: a VM on a LAN with NAT, and no root anywhere.
    """
    from guest import startGuest
    from test_vhostuser import NIC, vhostArgs

    need("qemu-system-x86_64")
    site = shortdir / "site"
    site.mkdir()
    blob = random.Random(9).randbytes(2_000_000)
    (site / "blob").write_bytes(blob)
    web = processes.start([PYTHON, "-u", "-c", (
        "import functools, http.server, sys\n"
        "handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n"
        "server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)\n"
        "print(server.server_address[1], flush=True)\n"
        "server.serve_forever()\n"), str(site)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    httpPort = int(readLine(web, 10))
    resolver = processes.start([PYTHON, "-c", DNS], stdout=subprocess.PIPE)
    dnsPort = int(readLine(resolver, 10))
    sock = shortdir / "vm.sock"
    if transport == "stream":
        spec, nic = f"qemu:unix:{sock}", "virtio-net-pci"
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        extra: list[str] = []
    else:
        spec, nic = f"vhostuser:unix:{sock}", NIC
        netdev, extra = vhostArgs(sock)
    sw = vswitch("--port", spec, "--port", f"slirp:resolver=127.0.0.1:resolverport={dnsPort}")
    guest = startGuest(
        processes, netdev, GUEST_SCRIPT.format(http=httpPort), "52:54:00:76:74:31",
        directory=shortdir, name="slirp", nic=nic, extraArgs=extra)
    result = guest.wait(timeout=90)
    print(result.output)
    assert result.rc == 0, guest.diagnostics() + sw.logText()
    assert "lease 10.0.2.15/24 router=10.0.2.2 dns=10.0.2.3" in result.output
    assert f"got {len(blob)} {hashlib.sha256(blob).hexdigest()}" in result.output
    assert "10.9.8.7" in result.output
    assert "inet6 fec0::" in result.output, "SLAAC from the router's advertisements"


class Beyond:
    """
    A switch with a TAP and a slirp port running in namespace C{outside},
    which a veth joins to namespace C{remote} (the "internet": C{near} is
    C{outside}'s address there, C{far} C{remote}'s); the TAP is moved into
    namespace C{guest} and brought up.
    """

    def __init__(self, processes, namespaces, shortdir: Path, near: str, far: str,
                 pingGroups: str, ipv6: bool) -> None:
        from helpers import socketListening, sourceEnv, twistdArgv, waitFor

        make = namespaces.add if ipv6 else (lambda prefix: quietNamespace(namespaces, prefix))
        self.outside, self.remote = make("vto"), make("vtr")
        veth = uniqueName("vtv")
        run("ip", "link", "add", veth, "netns", self.outside, "type", "veth", "peer", "name",
            veth, "netns", self.remote)
        for ns, address in ((self.outside, near), (self.remote, far)):
            run("ip", "-n", ns, "addr", "add", address, "dev", veth, *(["nodad"] * ipv6))
            run("ip", "-n", ns, "link", "set", veth, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run(*execIn(self.outside, "sysctl", "-qw", f"net.ipv4.ping_group_range={pingGroups}"))
        self.tap, self.mgmt = uniqueName("vts"), shortdir / "mgmt"
        self.log = shortdir / "outside.log"
        switch = processes.start(execIn(self.outside, *twistdArgv(
            "--sock", str(shortdir / "sw"), "--mgmt", str(self.mgmt), "--port",
            f"tap:{self.tap}", "--port", "slirp", logfile=str(self.log))), env=sourceEnv())
        waitFor(lambda: socketListening(self.mgmt) or switch.poll() is not None,
                what="the switch")
        self.guest = make("vts")
        waitFor(lambda: run("ip", "-n", self.outside, "link", "show", self.tap,
                            check=False).returncode == 0, what=f"{self.tap} in {self.outside}")
        run("ip", "-n", self.outside, "link", "set", self.tap, "netns", self.guest)
        run("ip", "-n", self.guest, "link", "set", self.tap, "up")

    def check(self, processes, far: str, near: str, icmpLine: str) -> None:
        """
        The guest pings C{far}, the console names the ping socket kind, and
        a server at C{far} sees 2 MB from the guest arrive from C{near}.
        """
        result = ping(self.guest, far)
        assert result.returncode == 0, result.stdout + self.log.read_text()
        assert icmpLine in console(self.mgmt, "slirp/print")
        assert "PingSocket starting on" not in self.log.read_text(), "a log line per socket"
        _, port = startServer(processes, "sink", 1, self.remote, far, 7400)
        up = run(*execIn(self.guest, PYTHON, "-c", CLIENT, far, str(port), "2000000"),
                 timeout=60)
        sent, _, answer = up.stdout.strip().partition(" | ")
        length, digest, peer = answer.split()
        assert f"{length} {digest}" == sent
        assert peer == near, "NAT: the far server sees the switch's address"


@pytest.mark.parametrize("pingGroups, mode", [("1 0", "raw"), ("0 2147483647", "ping")])
def test_guestReachesHostsBeyondTheGateway(processes, namespaces, shortdir, pingGroups: str,
                                           mode: str) -> None:
    """
    With the switch in a namespace routed to another one (the "internet"),
    the guest pings a host there (through a raw socket as root, or a ping
    socket where ping_group_range allows) and a TCP server there sees the
    guest's connection come from the switch's own address.
    """
    world = Beyond(processes, namespaces, shortdir, "192.0.2.1/24", "192.0.2.2/24", pingGroups,
                   ipv6=False)
    run("ip", "-n", world.guest, "addr", "add", "10.0.2.15/24", "dev", world.tap)
    run("ip", "-n", world.guest, "route", "add", "default", "via", "10.0.2.2")
    world.check(processes, "192.0.2.2", "192.0.2.1", f"IPv4 pings by {mode} socket")


#: A Unix-socket service on the host: answers each connection with what it
#: read, upper-cased.
UNIX_SERVICE = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    data = b""
    while chunk := c.recv(65536):
        data += chunk
    c.sendall(data.upper())
    c.close()
"""

#: A guest client: sends argv[3], half-closes, prints the answer.
ASK = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(sys.argv[3].encode())
c.shutdown(socket.SHUT_WR)
answer = b""
while chunk := c.recv(4096):
    answer += chunk
print(answer.decode())
"""


def test_guestForwardReachesAUnixSocketEvenWhenRestricted(vswitch, processes, namespaces,
                                                          shortdir) -> None:
    """
    With restrict=on, a guest reaches nothing outside except the guest
    forward: 10.0.2.100:80 leads to a Unix socket on the host (any Twisted
    client endpoint would do), and slirp/print lists it.
    """
    service = shortdir / "app.sock"
    server = processes.start([PYTHON, "-c", UNIX_SERVICE, str(service)],
                             stdout=subprocess.PIPE)
    assert readLine(server, 10).strip() == "ready"
    mgmt = shortdir / "mgmt"
    sw, ns, _ = guestBehindSlirp(
        vswitch, namespaces, shortdir,
        f":restrict=on:guestfwd=10.0.2.100\\:80-unix\\:{service}", extra=("--mgmt", str(mgmt)))
    answer = run(*execIn(ns, PYTHON, "-c", ASK, "10.0.2.100", "80", "hello guest forward"),
                 timeout=30)
    assert answer.stdout.strip() == "HELLO GUEST FORWARD"
    refused = run(*execIn(ns, PYTHON, "-c", ASK, "10.0.2.100", "81", "x"), check=False,
                  timeout=30)
    assert "ConnectionRefusedError" in refused.stderr, "only the forwarded port leads anywhere"
    assert f"guest forward tcp:10.0.2.100:80-unix:{service}" in console(mgmt, "slirp/print")
    processes.stop(server)  # the service goes away: its guests fail, and it is logged once
    for _ in range(3):
        gone = run(*execIn(ns, PYTHON, "-c", ASK, "10.0.2.100", "80", "x"), check=False,
                   timeout=30)
        assert gone.returncode != 0
    failures = [line for line in sw.logText().splitlines() if "connecting failed" in line]
    assert len(failures) == 1 and f"guest forward to unix:{service}" in failures[0], failures



def test_guestForwardToACommandRunsItPerConnection(vswitch, namespaces, shortdir) -> None:
    """
    QEMU's guestfwd=...-cmd:COMMAND: each connection to 10.0.2.100:80 runs
    the command with the connection on its standard input and output; the
    guest's half close is its end of input, its exit the guest's end of
    data.  Two connections, two runs.
    """
    sw, ns, _ = guestBehindSlirp(
        vswitch, namespaces, shortdir, ":guestfwd=10.0.2.100\\:80-cmd\\:tr a-z A-Z")
    for text in ("hello command", "once more"):
        answer = run(*execIn(ns, PYTHON, "-c", ASK, "10.0.2.100", "80", text), timeout=30)
        assert answer.stdout.strip() == text.upper(), sw.logText()
    assert "Traceback" not in sw.logText(), sw.logText()
