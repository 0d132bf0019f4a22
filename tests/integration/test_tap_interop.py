"""
TAP ports (C{--port tap:NAME}) against the Linux kernel: the switch creates
each device, the test moves it into a network namespace of its own (the
switch keeps using it through its descriptor), and the kernels in the
namespaces talk through the switch: ping, iperf3, and TCP transfers checked
with SHA-256 end to end, with offloads on, off, and across a VDE socket.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import StreamPlug, execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import (
    PYTHON,
    assertNoChecksumErrors,
    checkedTransfer,
    checksumErrors,
    console,
    deviceExists,
    ethtoolFeatures,
    iperf3,
    moveTap,
    ping,
    quietNamespace,
    readLine,
    tapAndVdePlug,
    waitForPing,
)

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration

BROADCAST = b"\xff" * 6
NET = "10.213.0"


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("ping", "iperf3", "tcpdump", "ethtool", "ss")


def tapPair(vswitch, namespaces, *options: str, extra: tuple[str, ...] = ()):
    """
    A switch with one TAP per option string (C{""}, C{":offload=off"}, ...),
    each moved into its own namespace and addressed 10.213.0.N/24.

    @return: the switch and a list of C{(namespace, device, address)}.
    """
    names = [uniqueName("vtt") for _ in options]
    args = [arg for name, option in zip(names, options) for arg in ("--port",
                                                                   f"tap:{name}{option}")]
    sw = vswitch(*args, *extra)
    sides = []
    for n, name in enumerate(names, 1):
        ns = quietNamespace(namespaces, "vtt")
        moveTap(name, ns, f"{NET}.{n}/24")
        sides.append((ns, name, f"{NET}.{n}"))
    return sw, sides


def test_offloadTapsPingAndCarryIperf3(vswitch, processes, namespaces) -> None:
    """Two namespaces on two offload TAPs ping each other and move an iperf3 TCP stream."""
    sw, [(nsA, tapA, addrA), (nsB, tapB, addrB)] = tapPair(vswitch, namespaces, "", "")
    assert not deviceExists(tapA) and deviceExists(tapA, nsA), "the device moved"
    waitForPing(nsA, addrB)
    result = ping(nsA, addrB)
    assert result.returncode == 0, result.stdout
    report = iperf3(processes, nsA, nsB, addrB, "-n", "40M")
    assert report["end"]["sum_received"]["bytes"] > 0
    log = sw.logText()
    assert f"tap:{tapA}: {tapA} offload=csum,tso4,tso6,ecn" in log, log
    assert "Traceback" not in log, log


def test_ethtoolShowsWhatEachTapNegotiated(vswitch, processes, namespaces, shortdir) -> None:
    """TSO is on for an offload TAP and off with offload=off, and the two still talk intact."""
    mgmt = shortdir / "mgmt"
    sw, [(nsA, tapA, addrA), (nsB, tapB, addrB)] = tapPair(
        vswitch, namespaces, ":offload=on", ":offload=off", extra=("--mgmt", str(mgmt))
    )
    on, off = ethtoolFeatures(nsA, tapA), ethtoolFeatures(nsB, tapB)
    assert on["tcp-segmentation-offload"] == "on" and on["tx-checksumming"] == "on", on
    assert off["tcp-segmentation-offload"] == "off" and off["tx-checksumming"] == "off", off
    ports = console(mgmt, "port/allprint")
    assert re.search(rf"module tuntap +: {tapA} offload=csum,tso4,tso6,ecn\b", ports), ports
    assert re.search(rf"module tuntap +: {tapB} offload=off$", ports, re.M), ports
    waitForPing(nsA, addrB)
    # super-frames from A are cut for B; B's plain frames reach A behind an empty header
    sent, got = checkedTransfer(processes, nsA, nsB, addrB, 8_000_000, seed=2)
    assert got == sent
    sent, got = checkedTransfer(processes, nsB, nsA, addrA, 8_000_000, seed=3)
    assert got == sent
    assertNoChecksumErrors(nsA, nsB)


def test_offloadTapToVdePlugPathKeepsEveryByte(vswitch, processes, namespaces) -> None:
    """30 MB each way between an offload TAP and a vde_plug tap:// client arrive bit-exact."""
    need("vde_plug")
    sw, nsA, name, nsB, _ = tapAndVdePlug(vswitch, processes, namespaces, f"{NET}.{{}}/24")
    waitForPing(nsA, f"{NET}.2")
    assert ethtoolFeatures(nsA, name)["tcp-segmentation-offload"] == "on"
    # A sends super-frames with partial checksums: the switch must cut them into
    # 1500-byte segments and complete every checksum, or TCP stalls, corrupts or
    # at least counts checksum errors.
    sent, got = checkedTransfer(processes, nsA, nsB, f"{NET}.2", 30_000_000, seed=4)
    assert got == sent
    sent, got = checkedTransfer(processes, nsB, nsA, f"{NET}.1", 30_000_000, seed=5)
    assert got == sent
    # TCP would hide a few bad segments by retransmitting them: count them
    assertNoChecksumErrors(nsA, nsB)
    assert "Traceback" not in sw.logText()


_UDP_RECEIVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
print("ready", flush=True)
h, n = hashlib.sha256(), 0
try:
    while n < int(sys.argv[3]):
        data = s.recv(65536)
        h.update(len(data).to_bytes(2, "big") + data)
        n += 1
except TimeoutError:
    pass
print(n, h.hexdigest(), flush=True)
"""

_UDP_SENDER = r"""
import hashlib, random, socket, sys
r = random.Random(7)
sizes = [18] * 100 + [1400] * 60 + [r.randrange(1, 1473) for _ in range(40)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
h = hashlib.sha256()
for size in sizes:
    data = r.randbytes(size)
    s.send(data)
    h.update(size.to_bytes(2, "big") + data)
print(len(sizes), h.hexdigest(), flush=True)
"""


def test_udpBurstIsCoalescedAndEveryDatagramArrivesInOrder(
    vswitch, processes, namespaces, shortdir
) -> None:
    """
    200 datagrams queued while the switch is paused arrive whole and in
    order, and C{port/print} says how many were coalesced into USO packets.
    """
    mgmt = shortdir / "mgmt"
    sw, [(nsA, tapA, addrA), (nsB, tapB, addrB)] = tapPair(
        vswitch, namespaces, "", "", extra=("--mgmt", str(mgmt))
    )
    waitForPing(nsA, addrB)
    receiver = processes.start(execIn(nsB, PYTHON, "-c", _UDP_RECEIVER, addrB, "7200", "200"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert readLine(receiver, 10).strip() == "ready"
    os.kill(sw.process.pid, signal.SIGSTOP)
    try:
        sender = run(*execIn(nsA, PYTHON, "-c", _UDP_SENDER, addrB, "7200"), timeout=30)
    finally:
        os.kill(sw.process.pid, signal.SIGCONT)
    assert readLine(receiver, 15).strip() == sender.stdout.strip()
    ports = console(mgmt, "port/allprint")
    found = re.search(rf"{tapA} offload=\S+ \(auto\) coalesced (\d+) datagrams into (\d+)", ports)
    assert found and int(found[1]) >= 100 and int(found[2]) < int(found[1]), ports
    assert not any(checksumErrors(nsB).values())


def test_portMtuHoldsForOffloadTapsFramesAndSuperFrames(
    vswitch, processes, namespaces, shortdir
) -> None:
    """
    With C{mtu=1400} on B's port, pings of 1400 bytes of IP cross and larger
    ones (beyond the 4 bytes kept for a VLAN tag) are dropped and counted;
    TCP super-frames of 1500-byte segments are dropped too, and pass once
    A's interface MTU is 1400.
    """
    mgmt = shortdir / "mgmt"
    sw, [(nsA, tapA, addrA), (nsB, tapB, addrB)] = tapPair(
        vswitch, namespaces, "", ":mtu=1400", extra=("--mgmt", str(mgmt))
    )
    waitForPing(nsA, addrB)
    fits = run(*execIn(nsA, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1372", addrB),
               check=False)
    assert fits.returncode == 0, fits.stdout
    over = run(*execIn(nsA, "ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1380", addrB),
               check=False)
    assert over.returncode != 0, over.stdout
    stats = console(mgmt, "port/stats 2")
    assert re.search(r"\bmtu=2\b", stats), stats
    # TCP from A: its super-frames of 1448-byte segments do not fit B's port
    server = processes.start(execIn(nsB, PYTHON, "-c", _SINK, addrB, "7300"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert readLine(server, 10).strip() == "ready"
    probe = run(*execIn(nsA, PYTHON, "-c", _PROBE, addrB, "7300"), check=False, timeout=30)
    assert probe.stdout.strip() == "stalled", (probe.stdout, probe.stderr)
    stats = console(mgmt, "port/stats 2")
    match = re.search(r"\bmtu=(\d+)", stats)
    assert match is not None, stats
    stalled = int(match[1])
    assert stalled > 2
    run("ip", "-n", nsA, "link", "set", tapA, "mtu", "1400")
    sent, got = checkedTransfer(processes, nsA, nsB, addrB, 4_000_000, seed=6)
    assert got == sent


_SINK = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(10)
n = 0
try:
    while n < 300000 and (chunk := c.recv(65536)):
        n += len(chunk)
    c.sendall(b"done")
except OSError:
    pass
"""

_PROBE = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
try:
    c.sendall(bytes(300000))
    print(c.recv(4).decode() or "closed")
except TimeoutError:
    print("stalled")
"""


def test_vdeClientKeepsWorkingWhileTapsExchangeSuperFrames(
    vswitch, processes, namespaces
) -> None:
    """A real vde_plug client still gets broadcasts while two offload TAPs run iperf3."""
    need("vde_plug")
    sw, [(nsA, tapA, addrA), (nsB, tapB, addrB)] = tapPair(vswitch, namespaces, "", "")
    sender = StreamPlug(processes, f"vde://{sw.sock}")
    listener = StreamPlug(processes, f"vde://{sw.sock}")
    waitFor(lambda: len([n for n in os.listdir(sw.sock) if n != "ctl"]) == 2,
            what="both vde_plug clients attached")
    waitForPing(nsA, addrB)
    daemon = processes.start(execIn(nsB, "iperf3", "-s", "-1", "-B", addrB))
    waitFor(lambda: "5201" in run(*execIn(nsB, "ss", "-ltn")).stdout, what="iperf3 server")
    client = processes.start(execIn(nsA, "iperf3", "-c", addrB, "-t", "4"))
    waitFor(lambda: len([line for line in run(*execIn(nsB, "ss", "-tnH")).stdout.splitlines()
                         if line.startswith("ESTAB") and f"{addrB}:5201" in line]) >= 2,
            what="iperf3 control and data connections")
    for n in range(5):
        hello = frame(BROADCAST, mac(40 + n), f"hello {n}".encode().ljust(46, b"."))
        sender.send(hello)
        assert listener.receiveMatching(lambda f, h=hello: f == h, 5), f"broadcast {n} lost"
    assert client.poll() is None, "the broadcasts crossed while the stream was running"
    assert client.wait(20) == 0
    processes.stop(daemon)
    assert sw.process.poll() is None


def test_deletedTapTakesItsPortDownAndNothingElse(vswitch, processes, namespaces) -> None:
    """Deleting a TAP in its namespace takes that port down, is logged, and others keep going."""
    need("vde_plug")
    sw, [(nsA, tapA, addrA), (nsB, tapB, addrB), (nsC, tapC, addrC)] = tapPair(
        vswitch, namespaces, "", "", ""
    )
    waitForPing(nsA, addrB)
    waitForPing(nsC, addrA)
    run("ip", "-n", nsC, "link", "del", tapC)
    # a broadcast from a VDE client reaches every port, the dead one included
    plug = StreamPlug(processes, f"vde://{sw.sock}")
    waitFor(lambda: len([n for n in os.listdir(sw.sock) if n != "ctl"]) == 1,
            what="vde_plug attached")
    plug.send(frame(BROADCAST, mac(77)))
    waitFor(lambda: tapC in sw.logText() and "goes down" in sw.logText(),
            what="the switch to log the port going down")
    # A forgets B's address: its ARP request must reach B and the VDE client
    run("ip", "-n", nsA, "neigh", "flush", "all")
    result = ping(nsA, addrB)
    assert result.returncode == 0, result.stdout
    assert plug.receiveMatching(lambda f: f[12:14] == b"\x08\x06", 5), "ARP reached vde_plug"
    assert sw.process.poll() is None, sw.logText()
    downLines = [line for line in sw.logText().splitlines() if "goes down" in line]
    assert len(downLines) == 1 and tapC in downLines[0], downLines
    assert tapA not in downLines[0] and tapB not in downLines[0]


def test_deletedTapGoesDownWithoutTrafficAndPortAddBringsItBack(
    vswitch, namespaces, shortdir
) -> None:
    """
    With no traffic at all, deleting a TAP still takes its port down within
    a second.  Then C{port/add} of the same spec opens (here creates) the
    device again and the port comes back; while it was up, the same spec
    was refused as in use.
    """
    mgmt = shortdir / "mgmt"
    name = uniqueName("vtt")
    sw = vswitch("--port", f"tap:{name}", "--mgmt", str(mgmt))
    ns = quietNamespace(namespaces, "vtt")
    moveTap(name, ns, None)
    up = re.compile(r"^Port 0001 untagged_vlan=\d+ ACTIVE", re.M)
    assert up.search(console(mgmt, "port/allprint"))
    assert "1017 File exists" in console(mgmt, f"port/add tap:{name}")
    run("ip", "-n", ns, "link", "del", name)
    deadline = time.monotonic() + 3
    while up.search(status := console(mgmt, "port/allprint")):
        assert time.monotonic() < deadline, f"port 1 is still up:\n{status}\n{sw.logText()}"
        time.sleep(0.1)
    assert re.search(r"^Port 0001 untagged_vlan=\d+ INACTIVE", status, re.M), status
    assert "goes down" in sw.logText() and name in sw.logText()
    reply = console(mgmt, f"port/add tap:{name}")
    assert "Port 0001" in reply and "Success" in reply, reply
    assert up.search(console(mgmt, "port/allprint")), sw.logText()
    assert deviceExists(name), "the switch made the device again"
    assert "opened again" in sw.logText()


#: Run as root but without CAP_NET_ADMIN: what an ordinary user has for TUN
#: devices (the kernel checks the device owner, then the capability).  A real
#: unprivileged user's switch is in test_unprivileged_user.py.
WITHOUT_NET_ADMIN = ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin"]


def test_persistentTapOwnedByTheUserWorksWithoutNetAdmin(processes, shortdir) -> None:
    """
    Without CAP_NET_ADMIN the switch opens a persistent TAP its user owns and
    sets its offloads: it negotiates them, then, alone on the switch
    (C{offload=auto}), turns them off.
    """
    need("setpriv")
    from helpers import socketListening, sourceEnv, twistdArgv

    name = uniqueName("vtu")
    run("ip", "tuntap", "add", name, "mode", "tap", "user", str(os.geteuid()))
    try:
        log = shortdir / "capless.log"
        sock = shortdir / "capless"
        processes.start(
            [*WITHOUT_NET_ADMIN, *twistdArgv("--sock", str(sock), "--tap", name,
                                             logfile=str(log))],
            env=sourceEnv(),
        )
        waitFor(lambda: socketListening(sock / "ctl"), what="switch without CAP_NET_ADMIN")
        waitFor(lambda: "offload=none (auto: no other port takes super-frames)" in log.read_text(),
                what="TAP opened, offloads negotiated and turned off")
    finally:
        processes.stopAll()  # a persistent TAP in use cannot be deleted
        run("ip", "tuntap", "del", name, "mode", "tap", check=False)
    assert not deviceExists(name), "the test leaves no device behind"


def test_tapOfAnotherUserIsRefusedWithAdvice(shortdir) -> None:
    """Without CAP_NET_ADMIN, another user's TAP fails start-up saying what to do."""
    need("setpriv")
    from helpers import sourceEnv, twistdArgv

    name = uniqueName("vto")
    run("ip", "tuntap", "add", name, "mode", "tap", "user", "65534")
    try:
        result = subprocess.run(
            [*WITHOUT_NET_ADMIN, *twistdArgv("--sock", str(shortdir / "x"), "--tap", name)],
            capture_output=True, text=True, timeout=60, env=sourceEnv(),
        )
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert f"tap:{name}" in output and "Operation not permitted" in output, output
        assert f"ip tuntap add {name} mode tap user" in output, output
        assert "belongs to user 65534" in output and "not to you (uid 0, root)" in output, output
        assert f"ip tuntap del {name} mode tap" in output, output
        assert not (shortdir / "x").exists(), "nothing is left behind"
    finally:
        run("ip", "tuntap", "del", name, "mode", "tap", check=False)


def test_tapOpensBeforeTwistdDropsPrivileges(processes, shortdir) -> None:
    """twistd --uid: the TAP opens as root, then the switch runs as nobody."""
    from helpers import socketListening, sourceEnv, twistdArgv

    os.chmod(shortdir, 0o777)
    name = uniqueName("vtd")
    log = shortdir / "dropped.log"
    sock = shortdir / "dropped"
    argv = twistdArgv("--sock", str(sock), "--tap", name, logfile=str(log))
    at = argv.index("vswitch")
    argv[at:at] = ["--uid", "65534", "--gid", "65534"]
    process = processes.start(argv, env=sourceEnv())
    waitFor(lambda: socketListening(sock / "ctl"), what="switch after dropping privileges")
    # negotiated before the switch dropped its privileges, turned off after
    waitFor(lambda: "offload=none (auto: no other port takes super-frames)" in log.read_text(),
            what="TAP opened")
    status = (Path("/proc") / str(process.pid) / "status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"65534"}, status
    assert deviceExists(name)


def test_missingTapWithoutNetAdminSaysToMakeIt(shortdir) -> None:
    """Without CAP_NET_ADMIN, a missing TAP fails start-up with the command to make it."""
    need("setpriv")
    from helpers import sourceEnv, twistdArgv

    name = uniqueName("vtm")
    result = subprocess.run(
        [*WITHOUT_NET_ADMIN, *twistdArgv("--sock", str(shortdir / "x"), "--port", f"tap:{name}")],
        capture_output=True, text=True, timeout=60, env=sourceEnv(),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"tap:{name}" in output and "Operation not permitted (errno 1)" in output, output
    assert "without CAP_NET_ADMIN" in output, output
    assert f"as root, ip tuntap add {name} mode tap user root" in output, output
    assert not deviceExists(name)


def test_writesToATapThatIsDownAreCountedAndItComesBackWhenUp(
    vswitch, processes, namespaces, shortdir
) -> None:
    """
    Broadcasts from a VDE client to a TAP whose interface is down (the
    kernel refuses writes with EIO) are counted as down and logged once;
    the port stays up, and once the interface is up the namespace answers.
    """
    need("vde_plug")
    mgmt = shortdir / "mgmt"
    name = uniqueName("vtd")
    sw = vswitch("--port", f"tap:{name}", "--mgmt", str(mgmt))
    ns = quietNamespace(namespaces, "vtd")
    moveTap(name, ns, f"{NET}.1/24", up=False)
    plug = StreamPlug(processes, f"vde://{sw.sock}")
    waitFor(lambda: len([n for n in os.listdir(sw.sock) if n != "ctl"]) == 1,
            what="vde_plug attached")
    for n in range(5):
        plug.send(frame(BROADCAST, mac(60), f"to a down TAP {n}".encode().ljust(46, b".")))
    waitFor(lambda: re.search(r"\bdown=5\b", console(mgmt, "port/stats 1")) is not None,
            what="five frames counted as down")
    assert re.search(r"^Port 0001 untagged_vlan=\d+ ACTIVE", console(mgmt, "port/allprint"), re.M)
    lines = [line for line in sw.logText().splitlines() if "EIO" in line]
    assert len(lines) == 1 and name in lines[0], lines
    run("ip", "-n", ns, "link", "set", name, "up")
    arp = frame(BROADCAST, mac(61), bytes.fromhex(
        "0001080006040001" + mac(61).hex() + "0ad50002" + "000000000000" + f"0ad500{1:02x}"
    ).ljust(46, b"\0"), 0x0806)
    def answered() -> bool:
        plug.send(arp)
        reply = plug.receive(0.5)
        return reply is not None and reply[12:14] == b"\x08\x06" and reply[:6] == mac(61)
    waitFor(answered, what="an ARP reply from the namespace once its TAP is up")
    assert "Traceback" not in sw.logText()
