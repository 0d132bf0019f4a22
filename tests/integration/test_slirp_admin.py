"""
The slirp port as its administrator sees it: forwards added and removed
through the console while guests run, UDP both ways, C{restrict=on},
garbage from a guest, and two guests sharing one slirp router.

Guests are network namespaces behind TAP ports (see L{test_slirp}); every
server they reach listens on the host's 127.0.0.1, where the switch runs,
and nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from helpers import execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import console, moveTap, ping, quietNamespace, readLine, sendRaw
from test_slirp import CLIENT, PYTHON, UDHCPC_SCRIPT, guestBehindSlirp, startServer

pytestmark = pytest.mark.integration

GATEWAY_MAC = bytes.fromhex("52550a000202")
BROADCAST_MAC = b"\xff" * 6

#: A UDP echo server: prints its port, then answers every datagram with
#: itself and " from ADDRESS:PORT" of its sender.
UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print(s.getsockname()[1], flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data + f" from {peer[0]}:{peer[1]}".encode(), peer)
"""

#: A UDP client: sends a datagram to ADDRESS:PORT until an answer comes,
#: prints the answer and where it came from.
UDP_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for attempt in range(5):
    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    try:
        data, peer = s.recvfrom(65535)
    except TimeoutError:
        continue
    print(data.decode(), "|", f"{peer[0]}:{peer[1]}", flush=True)
    break
else:
    sys.exit("no answer")
"""

#: A UDP server that answers its first datagram only when told to on
#: stdin, and says when the datagram came and when the answer went.
LATE_ANSWER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
data, peer = s.recvfrom(65535)
print("got", data.decode(), flush=True)
sys.stdin.readline()
s.sendto(b"late " + data, peer)
print("answered", flush=True)
"""

#: restrict=on probe: one UDP datagram, then a TCP connection, to the
#: gateway; prints how the connection ended.
RESTRICTED_PROBE = r"""
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"let me out", ("10.0.2.2", int(sys.argv[1])))
started = time.monotonic()
try:
    socket.create_connection(("10.0.2.2", int(sys.argv[2])), timeout=20).close()
    print("connected")
except OSError as e:
    print(type(e).__name__, round(time.monotonic() - started, 3))
"""

#: A TCP server on loopback that accepts two connections before sending
#: anything, then sends SIZE seeded bytes to both, a chunk to each in turn:
#: both guests' connections are open and busy at the same time.
TWO_AT_ONCE = r"""
import random, socket, sys
size = int(sys.argv[1])
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(2)
print(s.getsockname()[1], flush=True)
conns = [s.accept() for _ in range(2)]
print(" ".join(peer[0] for _, peer in conns), flush=True)
data = random.Random(7).randbytes(size)
for offset in range(0, size, 65536):
    for c, _ in conns:
        c.sendall(data[offset:offset + 65536])
for c, _ in conns:
    c.close()
"""


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("busybox", "ping")


def freePort(kind: int = socket.SOCK_STREAM) -> int:
    """
    A port of 127.0.0.1 nobody uses right now.
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def guestDevice(namespace: str) -> tuple[str, bytes]:
    """
    The name and MAC of the one Ethernet device of a guest namespace.
    """
    links = json.loads(run("ip", "-n", namespace, "-j", "link", "show").stdout)
    (link,) = [each for each in links if each["ifname"] != "lo"]
    return link["ifname"], bytes.fromhex(link["address"].replace(":", ""))


def slirpPortNumber(mgmt: Path) -> int:
    """
    The switch port the slirp router sits on, from C{port/print}.
    """
    number = None
    for line in console(mgmt, "port/print").splitlines():
        if line.startswith("Port "):
            number = int(line.split()[1])
        elif "module slirp" in line and number is not None:
            return number
    raise AssertionError("no slirp port in port/print")


def drops(mgmt: Path, port: int) -> dict[str, int]:
    """
    The drops by reason C{port/stats} shows for a port.
    """
    text = console(mgmt, f"port/stats {port}")
    match = re.search(r"drops: (.*)", text)
    assert match, text
    return {key: int(value) for key, value in
            (item.split("=") for item in match.group(1).split())}


def leaseAddress(report: str) -> str:
    """
    The address in udhcpc's report (C{lease ADDRESS/MASK ...}).
    """
    match = re.search(r"lease (\S+)/", report)
    assert match, report
    return match.group(1)


def sinkThrough(port: int, size: int, seed: int) -> tuple[str, str]:
    """
    Upload C{size} seeded bytes to a C{sink} server through a forward on
    loopback C{port}: what was sent and what the sink answered.
    """
    data = random.Random(seed).randbytes(size)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := c.recv(4096):
            answer += chunk
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}", answer.decode()


def test_consoleForwardsComeAndGoWhileTheSwitchRuns(vswitch, processes, namespaces,
                                                    shortdir) -> None:
    """A console forward reaches the guest until removed; busy ports and bad rules say why."""
    mgmt = shortdir / "mgmt"
    sw, ns, lease = guestBehindSlirp(vswitch, namespaces, shortdir, extra=("--mgmt", str(mgmt)))
    _, mac = guestDevice(ns)
    startServer(processes, "sink", 2, ns, "10.0.2.15", 8080)
    hostPort = freePort()
    rule = f"tcp:127.0.0.1:{hostPort}-:8080"

    port = slirpPortNumber(mgmt)
    elsewhere = console(mgmt, f"slirp/hostfwd_add {port + 1} {rule}")
    assert "1006 No such device or address" in elsewhere, elsewhere
    assert f"port {port + 1} has no slirp router" in elsewhere, elsewhere
    added = console(mgmt, f"slirp/hostfwd_add {port} {rule}")
    assert f"Forward tcp:127.0.0.1:{hostPort}-10.0.2.15:8080" in added, added
    assert added.rstrip().endswith("1000 Success"), added
    twice = console(mgmt, f"slirp/hostfwd_add {rule}")
    assert "1017 File exists" in twice and "exists already" in twice, twice
    sent, answer = sinkThrough(hostPort, 2_000_000, 1)
    length, digest, peer = answer.split()
    assert f"{length} {digest}" == sent
    assert peer == "10.0.2.2", "the guest sees forwarded connections come from the gateway"

    shown = console(mgmt, "slirp/print")
    assert f" forward tcp:127.0.0.1:{hostPort}-10.0.2.15:8080" in shown, shown
    macText = ":".join(f"{b:02x}" for b in mac)
    assert f" lease 10.0.2.15 {macText}" in shown, shown

    early = socket.create_connection(("127.0.0.1", hostPort), timeout=30)
    removed = console(mgmt, f"slirp/hostfwd_remove {rule}")
    assert f"Removed tcp:127.0.0.1:{hostPort}-10.0.2.15:8080" in removed, removed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", hostPort), timeout=5).close()
    data = random.Random(2).randbytes(500_000)
    with early:
        early.sendall(data)
        early.shutdown(socket.SHUT_WR)
        echoed = b""
        while chunk := early.recv(4096):
            echoed += chunk
    assert echoed.decode().split()[:2] == [str(len(data)), hashlib.sha256(data).hexdigest()]
    assert f"forward tcp:127.0.0.1:{hostPort}" not in console(mgmt, "slirp/print")

    again = console(mgmt, f"slirp/hostfwd_remove {rule}")
    assert "1006 No such device or address" in again, again
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        busy = squatter.getsockname()[1]
        answer = console(mgmt, f"slirp/hostfwd_add tcp:127.0.0.1:{busy}-:8080")
    assert "1098 Address already in use" in answer, answer
    assert f"cannot forward tcp:127.0.0.1:{busy}-10.0.2.15:8080" in answer, answer
    assert f"forward tcp:127.0.0.1:{busy}" not in console(mgmt, "slirp/print")

    for bad, problem in (("tcp:127.0.0.1:http-:8080", "'http' is not a port number"),
                         ("sctp::2222-:22", "protocol 'sctp' is not tcp or udp"),
                         ("tcp::2222:22", "expected [tcp|udp]:[HOSTADDR]:HOSTPORT-"),
                         ("tcp:nohost:2222-:22", "'nohost' is not an IP address")):
        answer = console(mgmt, f"slirp/hostfwd_add {bad}")
        assert "1022 Invalid argument" in answer, answer
        assert problem in answer, answer
    assert "Traceback" not in sw.logText(), sw.logText()


def test_udpForwardAnswersFromItsOwnPortAndGuestUdpReachesTheHost(vswitch, processes,
                                                                   namespaces,
                                                                   shortdir) -> None:
    """UDP answers come from the forward's port in, and from 10.0.2.2:PORT out."""
    forwardPort = freePort(socket.SOCK_DGRAM)
    sw, ns, _ = guestBehindSlirp(
        vswitch, namespaces, shortdir, f":hostfwd=udp\\:127.0.0.1\\:{forwardPort}-\\:5353")
    guestEcho = processes.start(execIn(ns, PYTHON, "-c", UDP_ECHO, "10.0.2.15", "5353"),
                                stdout=subprocess.PIPE)
    readLine(guestEcho, 10)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.settimeout(2)
        for _ in range(5):
            client.sendto(b"hello guest", ("127.0.0.1", forwardPort))
            try:
                answer, peer = client.recvfrom(65535)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError(f"no answer through the UDP forward:\n{sw.logText()}")
        clientPort = client.getsockname()[1]
    assert peer == ("127.0.0.1", forwardPort)
    assert answer.decode() == f"hello guest from 10.0.2.2:{clientPort}"

    hostEcho = processes.start([PYTHON, "-c", UDP_ECHO, "127.0.0.1", "0"],
                               stdout=subprocess.PIPE)
    echoPort = int(readLine(hostEcho, 10))
    result = run(*execIn(ns, PYTHON, "-c", UDP_CLIENT, "10.0.2.2", str(echoPort), "hello host"),
                 check=False, timeout=30)
    assert result.returncode == 0, result.stderr + sw.logText()
    text, _, source = result.stdout.strip().partition(" | ")
    assert source == f"10.0.2.2:{echoPort}"
    assert re.fullmatch(r"hello host from 127\.0\.0\.1:\d+", text), text
    assert "Traceback" not in sw.logText(), sw.logText()


def test_guestAnsweringThroughARemovedUdpForwardDoesNotUpsetTheRouter(
        vswitch, processes, namespaces, shortdir) -> None:
    """A guest answering after its UDP forward was removed breaks nothing."""
    mgmt = shortdir / "mgmt"
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, extra=("--mgmt", str(mgmt)))
    forwardPort = freePort(socket.SOCK_DGRAM)
    rule = f"udp:127.0.0.1:{forwardPort}-:5353"
    added = console(mgmt, f"slirp/hostfwd_add {rule}")
    assert f"Forward udp:127.0.0.1:{forwardPort}-10.0.2.15:5353" in added, added
    guest = processes.start(execIn(ns, PYTHON, "-c", LATE_ANSWER, "10.0.2.15", "5353"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert readLine(guest, 10).strip() == "ready"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.sendto(b"question", ("127.0.0.1", forwardPort))
        assert readLine(guest, 10).strip() == "got question"
        removed = console(mgmt, f"slirp/hostfwd_remove {rule}")
        assert f"Removed udp:127.0.0.1:{forwardPort}-10.0.2.15:5353" in removed, removed
        assert guest.stdin is not None
        guest.stdin.write(b"now\n")
        guest.stdin.flush()
        assert readLine(guest, 10).strip() == "answered"
        # The router takes the guest's frames in order: once the gateway
        # answered this ping, it has handled the late answer too.
        answered = ping(ns, "10.0.2.2", 1)
        assert answered.returncode == 0, answered.stdout
        client.setblocking(False)
        try:
            _, peer = client.recvfrom(65535)
        except BlockingIOError:
            pass
        else:
            assert peer[1] != forwardPort, "the removed forward's socket is closed"
    text = sw.logText()
    assert "Traceback" not in text and "failed on a" not in text, text
    assert f"forward udp:127.0.0.1:{forwardPort}" not in console(mgmt, "slirp/print")


def test_restrictedGuestReachesOnlyTheGatewaysPingAndItsForwards(vswitch, processes,
                                                                 namespaces,
                                                                 shortdir) -> None:
    """restrict=on: no router/DNS, host TCP reset and UDP dropped; ping and forwards work."""
    forwardPort = freePort()
    sw, ns, lease = guestBehindSlirp(
        vswitch, namespaces, shortdir,
        f":restrict=on:hostfwd=tcp\\:127.0.0.1\\:{forwardPort}-\\:8080")
    assert "lease 10.0.2.15/24 router= dns=\n" in lease, lease

    with socket.socket() as listener, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udpServer:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        udpServer.bind(("127.0.0.1", 0))
        result = run(*execIn(ns, PYTHON, "-c", RESTRICTED_PROBE,
                             str(udpServer.getsockname()[1]), str(listener.getsockname()[1])),
                     timeout=30)
        words = result.stdout.split()
        assert words[:1] == ["ConnectionRefusedError"], result.stdout
        assert float(words[1]) < 2, "refused at once, not after a timeout"
        # The datagram went first and the RST came after it: had either
        # been let out, it would be waiting in these sockets by now.
        listener.setblocking(False)
        udpServer.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
        with pytest.raises(BlockingIOError):
            udpServer.recvfrom(65535)

    answered = ping(ns, "10.0.2.2")
    assert answered.returncode == 0, answered.stdout

    startServer(processes, "sink", 1, ns, "10.0.2.15", 8080)
    sent, answer = sinkThrough(forwardPort, 1_000_000, 3)
    length, digest, peer = answer.split()
    assert f"{length} {digest}" == sent
    assert peer == "10.0.2.2"
    assert "Traceback" not in sw.logText(), sw.logText()


def _sum16(data: bytes, initial: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _ipv4(src: bytes, dst: bytes, protocol: int, payload: bytes, goodChecksum: bool = True,
          totalLength: int | None = None) -> bytes:
    total = 20 + len(payload) if totalLength is None else totalLength
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, protocol, 0, src, dst)
    checksum = 0xFFFF - _sum16(header)
    if not goodChecksum:
        checksum ^= 0x5A5A
    return header[:10] + struct.pack("!H", checksum) + header[12:] + payload


def _frame(dst: bytes, src: bytes, packet: bytes) -> bytes:
    frame = dst + src + b"\x08\x00" + packet
    return frame + bytes(max(60 - len(frame), 0))


def _udp(srcPort: int, dstPort: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", srcPort, dstPort, 8 + len(payload), 0) + payload


def garbage(mac: bytes) -> list[bytes]:
    """
    Six frames the slirp router must count as malformed, from a guest at
    10.0.2.15 with C{mac}: the first two have bad IPv4 header checksums.
    """
    guest, gateway = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2])
    toGateway = _udp(40000, 9, b"x" * 32)
    badChecksum = _frame(GATEWAY_MAC, mac, _ipv4(guest, gateway, 17, toGateway, False))
    longerThanFrame = _frame(GATEWAY_MAC, mac, _ipv4(guest, gateway, 17, toGateway,
                                                     totalLength=400))
    # 8 bytes of TCP header whose sequence number makes the checksum right,
    # so the segment gets past the router to the TCP engine.
    pseudo = guest + gateway + struct.pack("!BBH", 0, 6, 8)
    ports = struct.pack("!HHH", 40001, 80, 0x1234)
    fix = 0xFFFF - _sum16(pseudo + ports + b"\0\0")
    shortTcp = _frame(GATEWAY_MAC, mac, _ipv4(guest, gateway, 6, ports + struct.pack("!H", fix)))
    anyone, everyone = bytes(4), b"\xff" * 4
    shortBootp = _frame(BROADCAST_MAC, mac, _ipv4(anyone, everyone, 17,
                                                  _udp(68, 67, b"\x01\x01\x06\x00" + bytes(60))))
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x5EED, 0, 0, anyone, anyone,
                        anyone, anyone, mac, b"", b"")
    cutOption = bootp + bytes([99, 130, 83, 99]) + bytes([53, 1, 1, 61, 200]) + b"\x01" * 20
    badOptions = _frame(BROADCAST_MAC, mac, _ipv4(anyone, everyone, 17, _udp(68, 67, cutOption)))
    return [badChecksum, badChecksum, longerThanFrame, shortTcp, shortBootp, badOptions]


def test_guestGarbageIsCountedLoggedOnceAndHarmless(vswitch, processes, namespaces,
                                                    shortdir) -> None:
    """Broken guest frames show in port/stats, are logged once, and downloads still work."""
    mgmt = shortdir / "mgmt"
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, extra=("--mgmt", str(mgmt)))
    device, mac = guestDevice(ns)
    port = slirpPortNumber(mgmt)
    before = drops(mgmt, port)["malformed"]
    frames = garbage(mac)
    sendRaw(ns, device, *frames)
    waitFor(lambda: drops(mgmt, port)["malformed"] - before >= len(frames), timeout=10,
            what="the malformed frames counted")

    def malformedLines() -> list[str]:
        return [line for line in sw.logText().splitlines() if "(malformed)" in line]

    waitFor(malformedLines, timeout=10, what="the malformed drop in the log")
    lines = malformedLines()
    assert len(lines) == 1, lines
    assert "10.0.2.15: bad header checksum" in lines[0], lines
    assert "further drops of this kind are only counted" in lines[0], lines

    size = 3_000_000
    _, sourcePort = startServer(processes, str(size), 1)
    down = run(*execIn(ns, PYTHON, "-c", CLIENT, "10.0.2.2", str(sourcePort), "0"), timeout=60)
    assert down.stdout.split() == [
        str(size), hashlib.sha256(random.Random(7).randbytes(size)).hexdigest()]
    assert drops(mgmt, port)["malformed"] - before == len(frames)
    text = sw.logText()
    assert "Traceback" not in text and "failed on a" not in text, text


def test_twoGuestsOnOneSlirpGetTheirOwnLeasesAndShareTheHost(vswitch, processes, namespaces,
                                                             shortdir) -> None:
    """Two guests lease .15 and .16 and download from one host server at once, intact."""
    taps = [uniqueName("vts"), uniqueName("vts")]
    mgmt = shortdir / "mgmt"
    vswitch("--port", f"tap:{taps[0]}", "--port", f"tap:{taps[1]}", "--port", "slirp",
            "--mgmt", str(mgmt))
    script = shortdir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    guests = []
    for tap in taps:
        ns = quietNamespace(namespaces, "vts")
        moveTap(tap, ns, None)
        lease = run(*execIn(ns, "busybox", "udhcpc", "-i", tap, "-n", "-q", "-f", "-t", "5",
                            "-T", "1", "-s", str(script)), check=False, timeout=30)
        assert lease.returncode == 0, lease.stdout + lease.stderr
        guests.append((ns, leaseAddress(lease.stdout)))
    assert sorted(address for _, address in guests) == ["10.0.2.15", "10.0.2.16"]
    shown = console(mgmt, "slirp/print")
    assert " lease 10.0.2.15 " in shown and " lease 10.0.2.16 " in shown, shown

    size = 8_000_000
    server = processes.start([PYTHON, "-c", TWO_AT_ONCE, str(size)], stdout=subprocess.PIPE)
    serverPort = readLine(server, 10).strip()
    clients = [processes.start(execIn(ns, PYTHON, "-c", CLIENT, "10.0.2.2", serverPort, "0"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for ns, _ in guests]
    assert readLine(server, 30).split() == ["127.0.0.1", "127.0.0.1"]
    expected = [str(size), hashlib.sha256(random.Random(7).randbytes(size)).hexdigest()]
    deadline = time.monotonic() + 60
    for client in clients:
        out, err = client.communicate(timeout=max(deadline - time.monotonic(), 1))
        assert client.returncode == 0, err.decode()
        assert out.decode().split() == expected
