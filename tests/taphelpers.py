"""
Helpers for the integration tests of TAP ports: devices the switch creates,
moved into namespaces; TCP transfers checked end to end with SHA-256; iperf3;
raw 802.1Q frames sent and captured with AF_PACKET sockets in a namespace.

Everything here runs commands through L{helpers.run} or starts them through
the C{processes} fixture, so every process is stopped by PID at the end.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from helpers import (
    Namespaces,
    Processes,
    execIn,
    run,
    socketListening,
    sourceEnv,
    twistdArgv,
    uniqueName,
    waitFor,
)

PYTHON = sys.executable


def deviceExists(name: str, namespace: str | None = None) -> bool:
    """
    True if interface C{name} exists (in C{namespace}, or the root one).
    """
    where = ["-n", namespace] if namespace else []
    return run("ip", *where, "link", "show", name, check=False).returncode == 0


def quietNamespace(namespaces: Namespaces, prefix: str) -> str:
    """
    A new namespace without IPv6, so its interfaces send only what a test
    makes them send.
    """
    ns = namespaces.add(prefix)
    for key in ("all", "default"):
        run(*execIn(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"))
    return ns


def ipv6Namespace(namespaces: Namespaces, prefix: str) -> str:
    """
    A new namespace whose interfaces do IPv6 without duplicate address
    detection, router solicitations or temporary addresses: addresses work
    at once, and little but what a test sends crosses its links.
    """
    ns = namespaces.add(prefix)
    for key in ("all", "default"):
        for setting in ("accept_dad=0", "dad_transmits=0", "router_solicitations=0",
                        "accept_ra=0", "use_tempaddr=0"):
            run(*execIn(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.{setting}"))
    return ns


class TapAndPlug(NamedTuple):
    """
    A switch with one offload TAP in a namespace of its own, and a
    C{vde_plug vde://SOCK tap://NAME} client on it in another.

    @ivar switch: the running switch (C{RunningSwitch}).
    @ivar tapSide: the namespace holding the switch's TAP, C{tap}.
    @ivar plugSide: the namespace of C{vde_plug} and its TAP, C{plugTap}.
    """

    switch: Any
    tapSide: str
    tap: str
    plugSide: str
    plugTap: str


def tapAndVdePlug(vswitch: Callable[..., Any], processes: Processes, namespaces: Namespaces,
                  *addresses: str, extra: tuple[str, ...] = (),
                  tapOptions: str = ":offload=on") -> TapAndPlug:
    """
    Start a switch with C{--port tap:NAME} and C{tapOptions} (by default
    C{offload=on}: with C{auto} the TAP would turn its offloads off, no other
    port taking super-frames, and the switch would cut none) and C{extra}
    arguments, move
    its TAP into a new namespace, and start C{vde_plug} between the switch
    and a TAP of its own in a second namespace.

    @param addresses: templates such as C{"10.213.0.{}/24"}: the switch's
        TAP gets each with 1, the plug's TAP with 2.  An IPv6 one turns
        IPv6 on in both namespaces (L{ipv6Namespace}); otherwise they are
        quiet (L{quietNamespace}).
    """
    name, plugTap = uniqueName("vtt"), uniqueName("vtp")
    sw = vswitch("--port", f"tap:{name}{tapOptions}", *extra)
    ipv6 = any(":" in address for address in addresses)
    nsA, nsB = ((ipv6Namespace if ipv6 else quietNamespace)(namespaces, prefix)
                for prefix in ("vtt", "vtp"))
    moveTap(name, nsA, None, up=False)
    processes.start(execIn(nsB, "vde_plug", f"vde://{sw.sock}", f"tap://{plugTap}"))
    waitFor(lambda: deviceExists(plugTap, nsB), what=f"{plugTap} made by vde_plug")
    for ns, device, n in ((nsA, name, 1), (nsB, plugTap, 2)):
        for address in addresses:
            run("ip", "-n", ns, "addr", "add", address.format(n), "dev", device,
                *(["nodad"] if ":" in address else []))
        run("ip", "-n", ns, "link", "set", device, "up")
    return TapAndPlug(sw, nsA, name, nsB, plugTap)


def switchInNamespace(processes: Processes, ns: str, directory: Path,
                      *arguments: str, name: str = "sw") -> tuple[Path, Path]:
    """
    Start C{twistd vswitch} inside namespace C{ns} with C{arguments}, its VDE
    socket, console and log in C{directory}.

    @return: the paths of its VDE socket directory and its console.
    """
    sock, mgmt, log = directory / name, directory / f"{name}.mgmt", directory / f"{name}.log"
    process = processes.start(execIn(ns, *twistdArgv(
        "--sock", str(sock), "--mgmt", str(mgmt), *arguments, logfile=str(log))),
        env=sourceEnv())
    waitFor(lambda: socketListening(mgmt) or process.poll() is not None, what="the switch")
    assert process.poll() is None, log.read_text()
    return sock, mgmt


def multicastNamespace(namespaces: Namespaces) -> str:
    """A namespace whose multicast goes to its own loopback only."""
    ns = quietNamespace(namespaces, "vtm")
    run("ip", "-n", ns, "link", "set", "lo", "multicast", "on")
    run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "lo")
    return ns


def hostBehindTap(namespaces: Namespaces, switchNs: str, tap: str, address: str) -> str:
    """
    A new namespace holding the TAP C{tap} of a switch running in namespace
    C{switchNs}, addressed C{address} and up.
    """
    host = quietNamespace(namespaces, "vth")
    waitFor(lambda: run("ip", "-n", switchNs, "link", "show", tap, check=False).returncode == 0,
            what=tap)
    run("ip", "-n", switchNs, "link", "set", tap, "netns", host)
    run("ip", "-n", host, "addr", "add", address, "dev", tap)
    run("ip", "-n", host, "link", "set", tap, "up")
    return host


def moveTap(name: str, namespace: str, address: str | None, up: bool = True) -> None:
    """
    Move the switch's TAP C{name} from the root namespace into C{namespace}
    (the switch keeps it through its descriptor), address it and bring it up.
    """
    waitFor(lambda: deviceExists(name), what=f"{name} in the root namespace")
    run("ip", "link", "set", name, "netns", namespace)
    if address:
        run("ip", "-n", namespace, "addr", "add", address, "dev", name)
    if up:
        run("ip", "-n", namespace, "link", "set", name, "up")


def ping(namespace: str, address: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    """
    Ping C{address} from C{namespace}; check the return code yourself.
    """
    return run(*execIn(namespace, "ping", "-c", str(count), "-i", "0.2", "-W", "2", address),
               check=False)


def waitForPing(namespace: str, address: str, timeout: float = 10.0) -> None:
    """
    Ping until one answer comes back (ARP and link-up take a moment).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = run(*execIn(namespace, "ping", "-c", "1", "-W", "1", address), check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{address} never answered from {namespace}:\n{result.stdout}")


def ethtoolFeatures(namespace: str, device: str) -> dict[str, str]:
    """
    C{ethtool -k} of a device as a mapping of feature to C{on}/C{off}.
    """
    out = run(*execIn(namespace, "ethtool", "-k", device)).stdout
    features = {}
    for line in out.splitlines()[1:]:
        key, _, value = line.strip().partition(":")
        features[key] = value.split()[0] if value.split() else ""
    return features


def console(path: str | Path, *commands: str, timeout: float = 5.0) -> str:
    """
    Run commands on the switch's management console (C{--mgmt PATH}); their
    replies, prompts stripped.
    """
    replies = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))

        def untilPrompt() -> str:
            buffer = b""
            while not buffer.endswith(b"vde$ "):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
            return buffer.decode(errors="replace").removesuffix("vde$ ")

        untilPrompt()
        for command in commands:
            sock.sendall(command.encode() + b"\n")
            replies.append(untilPrompt())
    return "".join(replies)


def tcpPeers(path: str | Path) -> list[str]:
    """
    The TCP peers (C{IP:PORT}) of the links C{port/print} shows on the
    switch whose console is C{path}: its cables, its TCP guests.
    """
    return re.findall(r"tcp (\d+\.\d+\.\d+\.\d+:\d+)", console(path, "port/print"))


def readLine(process: subprocess.Popen[bytes], timeout: float, stderr: bool = False) -> str:
    """
    One line from a process's stdout (or stderr), or an AssertionError after
    C{timeout}.  Reads the descriptor directly: lines arriving together must
    not hide in a buffered reader that C{select} cannot see.
    """
    stream = process.stderr if stderr else process.stdout
    assert stream is not None
    fd = stream.fileno()
    pending: dict[int, bytes] = process.__dict__.setdefault("_pendingOutput", {})
    buffer = pending.get(fd, b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no output from {process.args!r} in {timeout} s: {buffer!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"{process.args!r} closed its output: {buffer!r}")
        buffer += chunk
    line, _, pending[fd] = buffer.partition(b"\n")
    return line.decode(errors="replace") + "\n"


def unread(process: subprocess.Popen[bytes], stderr: bool = False) -> bytes:
    """
    What L{readLine} read from a process beyond the lines it returned.
    """
    stream = process.stderr if stderr else process.stdout
    assert stream is not None
    return process.__dict__.get("_pendingOutput", {}).pop(stream.fileno(), b"")


_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(30)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(20)
h, n = hashlib.sha256(), 0
while chunk := c.recv(1 << 20):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), flush=True)
c.close()
"""

_CLIENT = r"""
import hashlib, random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def checkedTransfer(
    processes: Processes,
    sender: str,
    receiver: str,
    address: str,
    size: int,
    seed: int = 1,
    port: int = 7100,
) -> tuple[str, str]:
    """
    Send C{size} deterministic pseudo-random bytes over TCP from namespace
    C{sender} to C{address} (IPv4 or IPv6) in namespace C{receiver}.

    @return: what the sender sent and what the receiver got, each as
        C{"LENGTH SHA256"}.
    """
    server = processes.start(execIn(receiver, PYTHON, "-c", _SERVER, address, str(port)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert readLine(server, 10).strip() == "ready"
    client = run(*execIn(sender, PYTHON, "-c", _CLIENT, address, str(port), str(seed),
                         str(size)), check=False, timeout=60)
    assert client.returncode == 0, client.stderr
    got = readLine(server, 30).strip()
    return client.stdout.strip(), got


def checksumErrors(namespace: str) -> dict[str, int]:
    """
    IPv4 and IPv6 header errors and TCP/UDP checksum errors the kernel of
    C{namespace} counted: TCP recovers from a few bad segments by
    retransmitting, so a transfer that arrives intact is not enough.  (TCP
    counts both IP versions in C{/proc/net/snmp}; UDP over IPv6 has its own.)
    """
    text = run(*execIn(namespace, "cat", "/proc/net/snmp")).stdout.splitlines()
    found = {}
    for names, values in zip(text[::2], text[1::2]):
        keys, numbers = names.split(), values.split()
        for key in ("InHdrErrors", "InCsumErrors"):
            if key in keys:
                found[f"{keys[0]}{key}"] = int(numbers[keys.index(key)])
    snmp6 = run(*execIn(namespace, "cat", "/proc/net/snmp6"), check=False).stdout
    for line in snmp6.splitlines():
        key, _, value = line.partition(" ")
        if key in ("Ip6InHdrErrors", "Udp6InCsumErrors"):
            found[key] = int(value)
    return found


def assertNoChecksumErrors(*namespaces: str) -> None:
    """
    Fail if the kernel of any of C{namespaces} counted a header or checksum
    error (L{checksumErrors}).
    """
    for namespace in namespaces:
        errors = checksumErrors(namespace)
        assert not any(errors.values()), (namespace, errors)

def iperf3(processes: Processes, client: str, server: str, address: str,
           *options: str) -> dict:
    """
    Run one iperf3 TCP test from namespace C{client} to C{address} in
    C{server}; return iperf3's JSON report.
    """
    daemon = processes.start(execIn(server, "iperf3", "-s", "-1", "-B", address),
                             stdout=subprocess.PIPE)
    waitFor(lambda: "5201" in run(*execIn(server, "ss", "-ltn"), check=False).stdout,
            what="iperf3 server")
    result = run(*execIn(client, "iperf3", "-c", address, "-J", *options), check=False,
                 timeout=60)
    processes.stop(daemon)
    report = json.loads(result.stdout or "{}")
    assert result.returncode == 0 and "error" not in report, result.stdout + result.stderr
    return report


# Raw frames in a namespace: AF_PACKET sockets bound to one interface.

_SEND_RAW = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for frame in sys.argv[2:]:
    s.send(bytes.fromhex(frame))
"""

_CAPTURE_RAW = r"""
import select, socket, sys, time
SOL_PACKET, PACKET_AUXDATA, TP_STATUS_VLAN_VALID = 263, 8, 0x10
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)  # the kernel moves 802.1Q tags there
s.bind((sys.argv[1], 0))
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while (left := deadline - time.monotonic()) > 0:
    if not select.select([s], [], [], left)[0]:
        break
    data, anc, _, addr = s.recvmsg(65536, socket.CMSG_SPACE(64))
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    tci = None
    for level, kind, value in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(value) >= 20:
            status = int.from_bytes(value[0:4], "little")
            if status & TP_STATUS_VLAN_VALID:
                tci = int.from_bytes(value[16:18], "little")
    print(data.hex(), tci if tci is not None else "-", flush=True)
"""


def sendRaw(namespace: str, device: str, *frames: bytes) -> None:
    """
    Send whole Ethernet frames (tags included) out of C{device}.
    """
    run(*execIn(namespace, PYTHON, "-c", _SEND_RAW, device, *(f.hex() for f in frames)))


class RawCapture:
    """
    Every frame arriving on a device in a namespace during C{seconds}, with
    the 802.1Q TCI the kernel took out of it, if any.
    """

    def __init__(self, processes: Processes, namespace: str, device: str,
                 seconds: float) -> None:
        self.process = processes.start(
            execIn(namespace, PYTHON, "-c", _CAPTURE_RAW, device, str(seconds)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.seconds = seconds
        assert readLine(self.process, 10).strip() == "ready"

    def frames(self) -> list[tuple[bytes, int | None]]:
        """
        Wait for the end of the capture: C{(frame, tci)} pairs.
        """
        early = unread(self.process)
        out, err = self.process.communicate(timeout=self.seconds + 10)
        assert self.process.returncode == 0, err.decode()
        found = []
        for line in (early + out).decode().splitlines():
            data, tci = line.split()
            found.append((bytes.fromhex(data), None if tci == "-" else int(tci)))
        return found


class TcpDump:
    """
    C{tcpdump -e -nn -XX} on a device in a namespace, from when it says it
    listens until L{stop}.
    """

    def __init__(self, processes: Processes, namespace: str, device: str, *bpf: str) -> None:
        self.processes = processes
        self.process = processes.start(
            execIn(namespace, "tcpdump", "-l", "-e", "-nn", "-XX", "-i", device, *bpf),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while "listening on" not in (line := readLine(self.process, 10, stderr=True)):
            assert line and time.monotonic() < deadline, f"tcpdump did not start: {line}"

    def stop(self) -> str:
        """
        Stop it; what it printed.
        """
        self.processes.stop(self.process)
        assert self.process.stdout is not None
        return self.process.stdout.read().decode(errors="replace")
