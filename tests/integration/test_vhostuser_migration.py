"""
A QEMU guest on a C{vhostuser:} port migrates live to another QEMU on the
same switch while a namespace streams data into it: QEMU copies the guest's
memory while the switch keeps writing frames into it, so the switch must
log every page it writes (C{VHOST_F_LOG_ALL}), and announce the guest from
its new port (C{SEND_RARP}).  The stream must arrive whole, the guest
keep its network on the other side, and the switch say that it logged its
writes (TCP would mask a few lost pages; the unit tests in
C{test_vhostmigration.py} check the log itself).  The same migration
through QEMU's own stream transport (a C{qemu:} port) checks that the RARPs
QEMU sends move the guest's address at once there too.  Guests run under
TCG (see C{test_vhostuser.py} for why the NIC has C{vectors=0}).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from guest import startGuest
from helpers import execIn, need, waitFor
from taphelpers import PYTHON, console, readLine, waitForPing
from test_vhostuser import NIC, switchWithNamespace, vhostArgs

pytestmark = pytest.mark.integration

#: The guests' memory, in MB (both QEMUs', and the dumps compared).
GUEST_MEMORY = 256

#: Seconds for the switch's minimum persistence and expiry of MAC entries:
#: longer than the test, so that only an announcement moves an address.
PINNED = 100000

#: The guest: take a TCP stream on port 5000 and print its hash, then ping.
SCRIPT = """\
ip addr add 10.211.14.2/24 dev eth0
ip link set eth0 up
echo VTW-LISTENING
nc -l -p 5000 | sha256sum
ping -c 3 -i 0.2 -W 2 10.211.14.1
"""

#: The namespace: COUNT pseudo-random 64 KB chunks, paced, then the hash.
SENDER = r"""
import hashlib, random, socket, sys, time
rng, digest = random.Random(7), hashlib.sha256()
c = socket.create_connection((sys.argv[1], 5000), timeout=60)
print("connected", flush=True)
for _ in range(int(sys.argv[2])):
    chunk = rng.randbytes(65536)
    digest.update(chunk)
    c.sendall(chunk)
    time.sleep(0.03)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(digest.hexdigest(), flush=True)
"""


def portOf(mgmt: Path, pid: int, timeout: float = 5.0) -> int:
    """
    The number of the switch port whose link is the QEMU of C{pid}, once
    there is one (within C{timeout} seconds).
    """
    deadline = time.monotonic() + timeout
    while True:
        shown = console(mgmt, "port/allprint")
        number = None
        for line in shown.splitlines():
            if line.startswith("Port "):
                number = int(line.split()[1])
            elif f" pid {pid} " in line and number is not None:
                return number
        if time.monotonic() > deadline:
            raise AssertionError(f"no port for pid {pid}:\n{shown}")
        time.sleep(0.1)


class Qmp:
    """
    QEMU's machine protocol on a Unix socket, one command at a time.
    """

    def __init__(self, path: Path) -> None:
        waitFor(path.exists, timeout=30, what=f"QMP socket {path}")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw")
        json.loads(self.file.readline())  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: object) -> dict:
        self.file.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:
            answer = json.loads(self.file.readline())
            if "event" not in answer:
                assert "error" not in answer, answer
                return answer.get("return", {})

    def close(self) -> None:
        self.sock.close()


class LostPages(Exception):
    """
    QEMU's migration itself lost guest memory: the target's copy differs
    from the stopped source's before the target ran at all.
    """


def differingPages(source: Path, target: Path, chunk: int = 1 << 20) -> list[int]:
    """
    The 4 KB pages in which two memory dumps differ.
    """
    pages: list[int] = []
    with open(source, "rb") as a, open(target, "rb") as b:
        offset = 0
        while True:
            x, y = a.read(chunk), b.read(chunk)
            if not x and not y:
                return pages
            if x != y:
                pages += [(offset + at) >> 12 for at in range(0, max(len(x), len(y)), 4096)
                          if x[at:at + 4096] != y[at:at + 4096]]
            offset += chunk


def checkMemoryArrived(source: Qmp, target: Qmp, directory: Path) -> None:
    """
    Compare the guest memory of the stopped source with what the target
    (started with C{-S}, so still paused) received, before it runs.

    @raise LostPages: they differ.
    """
    while target.execute("query-status").get("status") == "inmigrate":
        time.sleep(0.1)
    dumps = directory / "source.mem", directory / "target.mem"
    try:
        for qmp, dump in zip((source, target), dumps):
            qmp.execute("pmemsave", val=0, size=GUEST_MEMORY << 20, filename=str(dump))
        lost = differingPages(*dumps)
    finally:
        for dump in dumps:
            dump.unlink(missing_ok=True)
    if lost:
        raise LostPages(f"{len(lost)} pages of guest memory differ after the migration, "
                        f"before the target ran: {', '.join(map(hex, lost[:10]))}")


@pytest.mark.parametrize("kind", ["split", "packed", "stream"])
def test_aGuestMigratesWhileDataStreamsIntoIt(vswitch, processes, namespaces,
                                              shortdir, kind: str) -> None:
    """
    L{_migrate}, again from scratch (three attempts at most) only when
    QEMU's migration itself lost guest memory, which L{_migrate} checks
    before the migrated guest runs: QEMU 7.2 under TCG, with the guest's
    RAM in shared memory (as vhost-user needs), now and then misses guest
    writes when the host is loaded (shown with QEMU alone, no switch and
    no vhost-user; README, Not yet), in the passes after its first, which
    L{_migrate} avoids.  Any other failure fails at once.
    """
    need("qemu-system-x86_64")
    attempts = 3
    lost: list[str] = []
    for attempt in range(1, attempts + 1):
        directory = shortdir / str(attempt)
        directory.mkdir()
        try:
            _migrate(vswitch, processes, namespaces, directory, kind)
            return
        except LostPages as e:
            lost.append(str(e))
            warnings.warn(f"attempt {attempt}: {e}; migrating again", stacklevel=1)
            processes.stopAll()
    raise AssertionError(f"QEMU lost guest memory in all {attempts} migrations:\n"
                         + "\n".join(lost))


def _migrate(vswitch, processes, namespaces, shortdir, kind: str) -> None:
    """
    Live migration mid-stream: 12 MB sent to the guest over 6 s, migrated
    to a second QEMU after the first second; the guest, now on the second
    QEMU's port, prints the SHA-256 the sender computed and pings the
    namespace, and its address moved to that port because it was announced
    (the switch's minimum persistence and expiry are set longer than the
    test, so that nothing else moves it, however long things take).  Through
    vhost-user with split rings, and with packed ones (C{packed=on} on the
    port and on both QEMUs' NICs); and through QEMU's own stream transport
    (a C{qemu:} port), where QEMU sends the announcing RARPs itself.  The
    migration runs at 64 MB/s with a downtime limit of 2 s, so it is one
    live pass of about 4 s (while the switch writes into the guest and
    logs it) and then the rest with the guest stopped; the target waits
    (C{-S}) until its memory is checked against the source's
    (L{checkMemoryArrived}).
    """
    packed = kind == "packed"
    spec = {"split": "vhostuser:unix:{path}", "packed": "vhostuser:unix:{path}:packed=on",
            "stream": "qemu:unix:{path}"}[kind]
    nic = NIC + (",packed=on" if packed else "")
    sw, ns, mgmt, path = switchWithNamespace(vswitch, namespaces, shortdir, "10.211.14.1/24",
                                             spec=spec)
    # Only an announcement (the RARP) may move the guest's address: no
    # frame of its own once its entry is 3 s old, nor the entry expiring.
    pinned = console(mgmt, f"hash/setminper {PINNED}", f"hash/setexpire {PINNED}")
    assert pinned.count("1000 Success") == 2, pinned
    netdev, extra = vhostArgs(path, memory=GUEST_MEMORY)
    if kind == "stream":
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={path}"]
    qmpPath, targetQmp = shortdir / "qmp.sock", shortdir / "target-qmp.sock"
    incoming = shortdir / "migration.sock"
    mac = "52:54:00:76:75:14"
    source = startGuest(processes, netdev, SCRIPT, mac, directory=shortdir / "from",
                        nic=nic, memory=GUEST_MEMORY,
                        extraArgs=[*extra, "-qmp", f"unix:{qmpPath},server=on,wait=off"])
    waitFor(lambda: source.sawLine("VTW-LISTENING"), timeout=60, what="the guest's listener")
    waitForPing(ns, "10.211.14.2", timeout=20)
    target = startGuest(processes, netdev, SCRIPT, mac, directory=shortdir / "to", nic=nic,
                        memory=GUEST_MEMORY,
                        extraArgs=[*extra, "-S", "-incoming", f"unix:{incoming}",
                                   "-qmp", f"unix:{targetQmp},server=on,wait=off"])
    waitFor(lambda: console(mgmt, "port/allprint").count("qemu-system") == 2 and
            incoming.exists(), timeout=30, what="the second QEMU waiting for the guest")
    sender = processes.start(execIn(ns, PYTHON, "-c", SENDER, "10.211.14.2", "192"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert readLine(sender, 20).strip() == "connected"
    time.sleep(1)
    shown = console(mgmt, "port/allprint")
    assert ("packed rings" in shown) == packed, shown
    qmp = Qmp(qmpPath)
    # one pass of about 4 s while the switch writes, then the rest with the
    # guest stopped: QEMU's later passes are where it lost guest writes
    qmp.execute("migrate-set-parameters", **{"downtime-limit": 2000,
                                             "max-bandwidth": 64 << 20})
    qmp.execute("migrate", uri=f"unix:{incoming}")
    deadline = time.monotonic() + 90
    while (status := qmp.execute("query-migrate").get("status")) not in ("completed", "failed"):
        assert time.monotonic() < deadline, f"migration still {status}"
        time.sleep(0.2)
    assert status == "completed", source.diagnostics() + target.diagnostics() + sw.logText()
    resumed = Qmp(targetQmp)
    checkMemoryArrived(qmp, resumed, shortdir)
    resumed.execute("cont")
    resumed.close()
    try:
        moved = f"to port: {portOf(mgmt, target.process.pid):03d}"
    except AssertionError as e:  # the target's link went: say what the switch saw
        raise AssertionError(f"{e}\n{target.diagnostics()}\n{sw.logText()}") from None
    waitFor(lambda: moved in console(mgmt, f"hash/find {mac}"), timeout=60,
            what="the guest's address on its new port (only the RARP can move it)")
    try:
        sent = readLine(sender, 60).strip()
    except AssertionError as e:  # the stream stalled: say where it stopped
        raise AssertionError(f"{e}\n{console(mgmt, 'port/allprint')}\n" + target.diagnostics()
                             + sw.logText()) from None
    result = target.wait(timeout=120)
    logged = re.search(r"qemu-system-x86 pid (\d+)[^\n]*, (\d+) writes logged for a migration",
                       console(mgmt, "port/allprint"))
    qmp.execute("quit")
    qmp.close()
    if kind != "stream":
        assert logged is not None and int(logged.group(1)) == source.process.pid, \
            console(mgmt, "port/allprint")
        assert int(logged.group(2)) > 100, "the switch logged the pages it wrote while migrating"
    assert f"{sent}  -" in result.console, target.diagnostics() + sw.logText()
    assert "3 packets received" in result.console, target.diagnostics()
    assert result.rc == 0 and "Traceback" not in sw.logText(), sw.logText()
    assert "malformed" not in sw.logText(), "the RARP (and everything else) was well-formed"
