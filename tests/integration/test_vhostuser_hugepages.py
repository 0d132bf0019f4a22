"""
C{vhostuser:} guests whose memory is in huge pages (hugetlbfs): a hostile
front-end of another user (a throwaway one, see L{unprivileged}) that
would crash the switch with them, and a QEMU of root's that must still be
served.  The tests reserve a few 2 MB huge pages for themselves
(C{/proc/sys/vm/nr_hugepages}, given back afterwards, even on failure).

Why huge pages from a stranger are refused: a file's huge pages are
reserved when it is mapped, but a hole punched in it (C{fallocate}
C{PUNCH_HOLE}) gives its pages and their reservation back, and the next
touch of that memory needs a free huge page; with none left (the
stranger took them) the toucher gets C{SIGBUS}.  C{F_SEAL_SHRINK} does
not forbid punching holes: only the write seals do, and the guest writes
to its memory (see L{vtwisted.ports.sharedmemory}).
"""

from __future__ import annotations

import mmap
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from guest import startGuest
from helpers import (
    memfdMappings,
    need,
    needRoot,
    socketListening,
    sourceEnv,
    twistdArgv,
    unavailable,
    waitFor,
)
from taphelpers import console
from test_vhostuser import LINK, NIC, pingScript, switchWithNamespace, vhostArgs
from unprivileged import ThrowawayUser

from vtwisted.ports.virtqueue import GuestMemory
from vtwisted.wire.vhostuser import Region

pytestmark = pytest.mark.integration

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
MB = 1 << 20

#: The hostile front-end: 4 MB of huge-page memfd (two pages, sealed
#: against shrinking) as guest memory; with C{attack}, a transmit ring in
#: the first page, then a hole punched in the second, every free huge page
#: taken, and a frame in the hole made available with a kick.  It prints
#: what happened and waits for its standard input to close (holding the
#: pages).
HOSTILE = r"""
import array, ctypes, fcntl, mmap, os, socket, struct, sys, time
path, action = sys.argv[1:]
USER, PAGE = 0x7F0000000000, 2 << 20
libc = ctypes.CDLL(None, use_errno=True)

def fallocate(fd, mode, offset, length):
    if libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

def send(request, payload, fds=()):
    data = struct.pack("=III", request, 1, len(payload)) + payload
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    sock.sendmsg([data], rights if fds else [])

def alive():
    send(1, b"")  # GET_FEATURES: answered while the connection lives
    try:
        return bool(sock.recv(64))
    except (ConnectionResetError, TimeoutError):
        return False

memfd = os.memfd_create("hostile", os.MFD_HUGETLB | os.MFD_ALLOW_SEALING)
os.ftruncate(memfd, 2 * PAGE)
fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
memory = mmap.mmap(memfd, 2 * PAGE)
memory[PAGE:PAGE + 64] = b"\xff" * 64
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
sock.connect(path)
try:
    send(2, struct.pack("=Q", 0))  # SET_FEATURES: none, rings enabled
    send(5, struct.pack("=IIQQQQ", 1, 0, 0, 2 * PAGE, USER, 0), (memfd,))
    if not alive():
        print("memory refused", flush=True)
        sys.stdin.read()
        sys.exit(0)
    print("memory taken", flush=True)
    if action != "attack":
        sys.stdin.read()
        sys.exit(0)
    send(8, struct.pack("=II", 1, 8))  # SET_VRING_NUM
    send(10, struct.pack("=II", 1, 0))  # SET_VRING_BASE
    send(9, struct.pack("=IIQQQQ", 1, 0, USER, USER + 0x2000, USER + 0x1000, 0))
    kick = os.eventfd(0)
    send(12, struct.pack("=Q", 1), (kick,))  # SET_VRING_KICK
    alive()
    fallocate(memfd, 3, PAGE, PAGE)  # PUNCH_HOLE | KEEP_SIZE
    hog = os.memfd_create("hog", os.MFD_HUGETLB)
    taken = 0
    while True:
        try:
            fallocate(hog, 0, taken * PAGE, PAGE)
        except OSError:
            break
        taken += 1
    print(f"punched, took {taken} free huge pages", flush=True)
    memory[0:16] = struct.pack("<QIHH", PAGE, 64, 0, 0)  # a frame in the hole
    memory[0x1004:0x1006] = struct.pack("<H", 0)
    memory[0x1002:0x1004] = struct.pack("<H", 1)
    os.eventfd_write(kick, 1)
    time.sleep(1)
    print("kicked", "connection alive" if alive() else "connection gone", flush=True)
except (BrokenPipeError, ConnectionResetError):
    print("connection gone", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def hugePages() -> Iterator[Callable[[int], None]]:
    """
    Reserve C{count} more 2 MB huge pages (the default size) for the
    test: C{nr_hugepages} is set back afterwards, even on failure.
    """
    needRoot()
    if not NR_HUGEPAGES.exists():
        unavailable("the kernel has no huge pages (CONFIG_HUGETLBFS)")
    before = int(NR_HUGEPAGES.read_text())

    def reserve(count: int) -> None:
        NR_HUGEPAGES.write_text(f"{before + count}\n")
        got = int(NR_HUGEPAGES.read_text()) - before
        if got < count:
            unavailable(f"only {got} of {count} huge pages could be reserved")

    try:
        yield reserve
    finally:
        NR_HUGEPAGES.write_text(f"{before}\n")


def hostile(user: ThrowawayUser | None, path: Path,
            action: str = "attack") -> subprocess.Popen[str]:
    """L{HOSTILE} run as C{user} (None: root)."""
    argv = [sys.executable, "-c", HOSTILE, str(path), action]
    return subprocess.Popen(user.argv(*argv) if user else argv, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env=user.env(dict(os.environ)) if user else None)


def test_aStrangersHugePagesAreRefused(vswitch, user, hugePages, shortdir: Path) -> None:
    """
    A stranger's huge-page memory is refused, with a log line naming the
    port, the socket and what to do; the stranger's hole and empty pool
    then crash nothing.  (Taken, as before, the kick made the switch read
    the hole and it died of C{SIGBUS}.)
    """
    hugePages(4)
    path = shortdir / "vh.sock"
    spec = f"vhostuser:unix:{path}:mode=666"
    running = vswitch("--port", spec)
    waitFor(lambda: socketListening(path), what="the vhost-user socket")
    process = hostile(user, path)
    try:
        assert process.stdout is not None
        said = process.stdout.readline().strip()
        if said == "memory taken":
            said += "; " + process.stdout.readline().strip()
            said += "; " + process.stdout.readline().strip()
        code = running.process.poll()
        assert code is None, f"the switch died ({signal.Signals(-code).name}) after the " \
            f"stranger said {said!r}:\n{running.logText()}"
        assert said == "memory refused", (said, running.logText())
        log = running.logText()
        line = next(line for line in log.splitlines() if "huge pages" in line)
        assert spec in line and f" on {path}" in line, line
        assert f"uid {user.uid}" in line and "hugetlb=on" in line, line
    finally:
        process.communicate("", timeout=30)
    assert running.process.poll() is None


def test_hugePagesOfTheSwitchsUserAndRootAreTaken(user, processes, hugePages) -> None:
    """
    A switch run as a user other than root takes huge-page memory from a
    front-end of its own user and from one of root's (who could stop it
    anyway).
    """
    hugePages(4)
    sock, path, log = user.home / "sw", user.home / "vh.sock", user.home / "switch.log"
    running = processes.start(user.argv(*twistdArgv("--sock", str(sock), "--port",
                                                    f"vhostuser:unix:{path}:mode=666",
                                                    logfile=str(log))),
                              env=user.env(sourceEnv()))
    waitFor(lambda: socketListening(path), what="the user's vhost-user socket")
    fronts = [hostile(user, path, "offer"), hostile(None, path, "offer")]
    try:
        said = [front.stdout.readline().strip() for front in fronts if front.stdout]
        assert said == ["memory taken"] * 2, (said, log.read_text())
    finally:
        for front in fronts:
            front.communicate("", timeout=30)
    assert running.poll() is None


def test_rootsHugePagesAreMappedByTheirPagesAndUnmapped(hugePages) -> None:
    """
    Huge pages from a trusted front-end (here root's) are taken: a 4 KB
    region in the second huge page of its file maps that huge page alone,
    which is unmapped when the memory is closed.  (Mapped from 0, a length
    that is no multiple of the huge page could not be unmapped: it stayed.)
    """
    hugePages(2)
    fd = os.memfd_create("root-huge", os.MFD_HUGETLB | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 4 * MB)
    with mmap.mmap(fd, 4 * MB) as mine:  # hugetlbfs has no write(2)
        mine[2 * MB + 4096:2 * MB + 4100] = b"here"
    memory = GuestMemory.map([Region(0, 4096, 0, 2 * MB + 4096)], [fd], trusted=True)
    try:
        assert bytes(memory.guest(0, 4)) == b"here"
        assert memfdMappings("root-huge") == [(2 * MB, 2 * MB)]
    finally:
        memory.close()
    assert memfdMappings("root-huge") == []


@pytest.mark.parametrize("hugetlb", [True, False], ids=["hugetlb", "plain"])
def test_aQemuOfRootsIsServedItsRamMappedOnce(vswitch, processes, namespaces, shortdir: Path,
                                              request, hugetlb: bool) -> None:
    """
    QEMU run as root with its RAM in huge pages
    (C{memory-backend-memfd,hugetlb=on,share=on}, 96 MB), or not (4 GB,
    sparse), is served: its guest pings a namespace behind the switch.  The
    switch maps each region of the RAM from its offset, so the RAM once
    and no more: QEMU splits 4 GB into the 3 GB below the PCI hole and the
    rest above 4 GB, 3 GB into the file (mapped from 0, the second region
    mapped the first again).
    """
    need("qemu-system-x86_64")
    memory = 96 if hugetlb else 4096
    if hugetlb:
        request.getfixturevalue("hugePages")(memory // 2 + 4)
    sw, ns, mgmt, path = switchWithNamespace(vswitch, namespaces, shortdir, "10.211.41.1/24")
    netdev, extra = vhostArgs(path, memory)
    if hugetlb:
        extra[1] += ",hugetlb=on"
    guest = startGuest(processes, netdev, pingScript("10.211.41.2", "10.211.41.1"),
                       "52:54:00:76:75:41", directory=shortdir, name="huge", nic=NIC,
                       memory=memory, extraArgs=extra)
    waitFor(lambda: LINK.search(console(mgmt, "port/allprint")), timeout=30,
            what="QEMU on the switch")
    mapped: list[tuple[int, int]] = []

    def ramMapped() -> bool:
        mapped[:] = memfdMappings("memory-backend-memfd", sw.process.pid)
        return bool(mapped)

    try:
        waitFor(ramMapped, timeout=120, what="the guest's RAM mapped by the switch")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{guest.diagnostics()}\n{sw.logText()}") from None
    assert sum(size for size, _ in mapped) <= memory * MB, mapped
    if hugetlb:
        assert hugeMappings(sw.process.pid) == ["/memfd:memory-backend-memfd (deleted)"]
        assert mapped == [(memory * MB, 0)], mapped
    else:
        assert (1024 * MB, 3072 * MB) in mapped, mapped
    result = guest.wait(timeout=120)
    assert result.rc == 0, guest.diagnostics() + sw.logText()
    assert "3 packets received" in result.output, guest.diagnostics()
    assert "Traceback" not in sw.logText(), sw.logText()


def hugeMappings(pid: int) -> list[str]:
    """The memfds process C{pid} maps in huge pages."""
    found, name = [], ""
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = re.match(r"[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)", line)
            if head:
                name = head.group(1)
            elif line.startswith("KernelPageSize:") and line.split()[1] != "4" and \
                    name.startswith("/memfd:"):
                found.append(name)
    return found
