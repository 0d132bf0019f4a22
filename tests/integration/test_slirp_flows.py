"""
What the slirp port keeps per guest and per flow (UDP mappings, idle TCP
connections, DHCP leases) against real Linux guests: namespaces behind a
TAP of the switch, as in L{test_slirp}, talking only to servers the test
starts on the host's loopback.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import execIn, run, uniqueName, waitFor
from taphelpers import console, moveTap, quietNamespace, readLine
from test_slirp import DNS, UDHCPC_SCRIPT, _needs, guestBehindSlirp  # noqa: F401

pytestmark = pytest.mark.integration

PYTHON = sys.executable

#: A stub resolver as glibc's: each query from a fresh socket (source
#: port), closed once answered; prints how many were answered.
QUERIES = r"""
import socket, struct, sys
answered = 0
for i in range(int(sys.argv[1])):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        header = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0)
        s.sendto(header + b"\x07example\x04test\x00\x00\x01\x00\x01", ("10.0.2.3", 53))
        try:
            s.recv(512)
            answered += 1
        except OSError:
            pass
print(answered, flush=True)
"""


def test_dnsQueriesFromFreshPortsNeverFillTheTable(vswitch, processes, namespaces,
                                                   shortdir) -> None:
    """
    2000 queries in a row, each from its own source port, are all answered:
    the sockets of answered queries make room for new ones instead of
    filling the port's 1024 UDP mappings for 10 s.
    """
    resolver = processes.start([PYTHON, "-c", DNS], stdout=subprocess.PIPE)
    port = int(readLine(resolver, 10))
    sw, ns, _ = guestBehindSlirp(
        vswitch, namespaces, shortdir, f":resolver=127.0.0.1:resolverport={port}")
    result = run(*execIn(ns, PYTHON, "-c", QUERIES, "2000"), timeout=120)
    assert result.stdout.strip() == "2000", sw.logText()[-2000:]
    assert "(busy)" not in sw.logText(), sw.logText()[-2000:]


#: A client with keep-alive after a second idle, a second apart, given up
#: after two unanswered probes; idle for 8 s, then it sends and prints the echo.
KEEPALIVE = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
time.sleep(8)
try:
    c.sendall(b"still there?")
    print(c.recv(100).decode(), flush=True)
except OSError as e:
    print(e, flush=True)
"""


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_idleConnectionsSurviveTheGuestsKeepAlive(vswitch, namespaces, shortdir,
                                                  family: str) -> None:
    """
    A guest socket with TCP keep-alive (Go's default, databases' clients)
    stays up while idle: its probes are answered.
    """
    host = "127.0.0.1" if family == "ipv4" else "::1"
    server = socket.socket(socket.AF_INET if family == "ipv4" else socket.AF_INET6)
    server.bind((host, 0))
    server.listen(1)
    server.settimeout(30)

    def echo() -> None:
        with server, server.accept()[0] as connection:
            connection.settimeout(30)
            connection.sendall(connection.recv(100))

    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir)
    gateway = "10.0.2.2"
    if family == "ipv6":
        run(*execIn(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"))
        run(*execIn(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0"))
        device = run(*execIn(ns, "ip", "-o", "link", "show", "type", "tun")).stdout
        tap = device.split(":")[1].strip()
        run(*execIn(ns, "sysctl", "-qw", f"net.ipv6.conf.{tap}.disable_ipv6=0"))
        run(*execIn(ns, "ip", "addr", "add", "fec0::15/64", "dev", tap, "nodad"))
        gateway = "fec0::2"
    threading.Thread(target=echo, daemon=True).start()
    result = run(*execIn(ns, PYTHON, "-c", KEEPALIVE, gateway, str(server.getsockname()[1])),
                 timeout=30)
    assert result.stdout.strip() == "still there?", result.stdout + result.stderr


def test_guestsThatComeAndGoNeverExhaustTheLeases(vswitch, processes, namespaces,
                                                  shortdir) -> None:
    """
    Eighteen guests in turn (one namespace, a new MAC each time) take a
    lease with udhcpc and release it as they leave (C{-R}): each gets one,
    the pool of sixteen reusing released addresses once it is full.
    """
    tap = uniqueName("vts")
    sw = vswitch("--port", f"tap:{tap}", "--port", "slirp")
    ns = quietNamespace(namespaces, "vts")
    moveTap(tap, ns, None)
    script = shortdir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    leases = []
    for n in range(18):
        run(*execIn(ns, "ip", "link", "set", tap, "address", f"02:00:00:00:01:{n:02x}"))
        client = processes.start(execIn(ns, "busybox", "udhcpc", "-i", tap, "-n", "-R", "-f",
                                        "-t", "3", "-T", "1", "-s", str(script)),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        line = ""
        while not line.startswith("lease "):
            try:
                line = readLine(client, 10)
            except AssertionError as e:
                raise AssertionError(f"guest {n}: {e}\n{sw.logText()[-2000:]}") from None
        leases.append(line.split()[1].split("/")[0])
        assert processes.stop(client) == 0, "udhcpc released its lease and left"
    assert leases == [f"10.0.2.{15 + n}" for n in range(16)] + ["10.0.2.15", "10.0.2.16"]


#: A guest server that greets each client with the port it came from and
#: closes first.
GREETER = r"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.0.2.15", 8080))
s.listen(4)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(b"hello %d" % peer[1])
    c.close()
"""


def test_forwardClientWithAFixedSourcePortComesBackAtOnce(vswitch, processes, namespaces,
                                                          shortdir) -> None:
    """
    A host client that always connects from one source port (as some do)
    reaches the guest through a forward each time, even while its previous
    connection lingers in the port's time-wait.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        hostPort = probe.getsockname()[1]
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir,
                                 f":hostfwd=tcp\\:127.0.0.1\\:{hostPort}-\\:8080")
    greeter = processes.start(execIn(ns, PYTHON, "-c", GREETER), stdout=subprocess.PIPE)
    assert readLine(greeter, 10).strip() == "ready"
    source = None
    for _ in range(3):
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            client.bind(("127.0.0.1", source or 0))
            source = client.getsockname()[1]
            client.settimeout(10)
            client.connect(("127.0.0.1", hostPort))
            assert client.recv(100) == b"hello %d" % source, sw.logText()[-2000:]
        time.sleep(0.2)


#: A guest looking for a service by broadcast: prints who answered.
DISCOVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.settimeout(5)
s.sendto(b"anyone there?", ("255.255.255.255", int(sys.argv[1])))
answer, peer = s.recvfrom(100)
print(answer.decode(), peer[0], peer[1], flush=True)
"""


def test_guestsBroadcastFindsAServiceOnTheHostsLoopback(vswitch, namespaces, shortdir) -> None:
    """
    As with libslirp, a guest's UDP broadcast (255.255.255.255) reaches the
    host's loopback, and the answer comes from the gateway.
    """
    service = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    service.bind(("127.0.0.1", 0))
    service.settimeout(30)
    port = service.getsockname()[1]

    def answer() -> None:
        with service:
            question, peer = service.recvfrom(100)
            service.sendto(b"here: " + question, peer)

    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir)
    threading.Thread(target=answer, daemon=True).start()
    result = run(*execIn(ns, PYTHON, "-c", DISCOVER, str(port)), check=False, timeout=30)
    assert result.stdout.split() == ["here:", "anyone", "there?", "10.0.2.2", str(port)], (
        result.stdout + result.stderr)


#: A guest client: connects, says so, then idles for argv[3] seconds and
#: prints the echo of what it sends then.
IDLE = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
print("connected", flush=True)
time.sleep(float(sys.argv[3]))
try:
    c.sendall(b"still there?")
    print(c.recv(100).decode(), flush=True)
except OSError as e:
    print(e, flush=True)
"""


def _echoServer() -> tuple[socket.socket, list[object]]:
    """
    A loopback server for one connection: echoes what comes; C{ended}
    gets what ended the connection (C{b""} for a close, or the error).
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(30)
    ended: list[object] = []

    def serve() -> None:
        with server, server.accept()[0] as connection:
            connection.settimeout(60)
            try:
                while data := connection.recv(100):
                    connection.sendall(data)
                ended.append(b"")
            except OSError as e:
                ended.append(e)

    threading.Thread(target=serve, daemon=True).start()
    return server, ended


def test_aGuestThatVanishesHasItsIdleConnectionsGivenUp(vswitch, processes, namespaces,
                                                       shortdir) -> None:
    """
    slirp:keepalive=3: a guest's idle connection to the host's loopback,
    when the guest vanishes without a word (its TAP deleted, then its
    program killed: nothing reaches the switch), is given up within about
    3 s: the host server's socket is reset and the port's table is empty
    again (before, it stayed established for ever with its host socket).
    """
    server, ended = _echoServer()
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, ":keepalive=3",
                                 extra=("--mgmt", str(shortdir / "mgmt")))
    client = processes.start(
        execIn(ns, PYTHON, "-c", IDLE, "10.0.2.2", str(server.getsockname()[1]), "600"),
        stdout=subprocess.PIPE)
    assert readLine(client, 30).strip() == "connected"
    device = run(*execIn(ns, "ip", "-o", "link", "show", "type", "tun")).stdout
    run(*execIn(ns, "ip", "link", "del", device.split(":")[1].strip()))
    client.kill()
    waitFor(lambda: ended, timeout=15, what="the host's connection ended")
    assert isinstance(ended[0], ConnectionResetError), ended
    assert "0 TCP connections" in console(shortdir / "mgmt", "port/print")
    assert "1 timed out" in console(shortdir / "mgmt", "slirp/print")


def test_anIdleGuestThatIsThereKeepsItsConnection(vswitch, processes, namespaces,
                                                  shortdir) -> None:
    """
    slirp:keepalive=3, a guest idle for 8 s: its kernel answers the
    probes, so the connection stays and carries data again.
    """
    server, ended = _echoServer()
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, ":keepalive=3")
    result = run(*execIn(ns, PYTHON, "-c", IDLE, "10.0.2.2", str(server.getsockname()[1]),
                         "8"), timeout=30)
    assert result.stdout.split() == ["connected", "still", "there?"], result.stdout
    assert not ended or ended == [b""], ended
