"""
Debian's C{vde_autolink} (vde2) keeping a cable up between two switches:
vtwisted switches, and C{vde_switch} for reference.

C{vde_autolink -s SOCK -S MGMT} talks to one switch's console through
libvdemgmt: it subscribes to C{fstp/+}, C{fstp/-} and C{fstp/status}
(C{debug/add}), reserves a port (C{port/create N}) and runs a wire, here a
local C{dpipe vde_plug OTHER = vde_plug --port N SOCK} to the other switch
(no ssh).  C{fstp/+} on its port marks the link active; C{fstp/-} makes it
kill the wire and try again a minute later; 30 s after each try it checks
the link, and kills and retries one never seen active.

What Debian's build (2.3.2+r586) does, with C{vde_switch} as with vtwisted:
  - With FSTP (its documented setup) it sees the cable come up; when the
    cable drops it reads C{fstp/-}, and dies of SIGSEGV while logging that
    it will try again (C{ah_pdel} logs C{"[%s] scheduled new wire
    connection"} without its argument), so it never brings the cable back.
    On the switch that is not the root it can die already when the cable
    comes up: C{fstp/+} and C{fstp/status} arrive in one read, and
    libvdemgmt's C{vdemgmt_asyncrecv} gives the second event's handler a
    pointer past the line.  So the tests attach it to the root switch.
  - Without FSTP it never sees the link active: its check fails, and a
    minute later it runs a new wire, so a killed cable comes back after
    about 90 s.
It signals its wire with C{kill(wirepid, SIGQUIT)}, and C{wirepid} is -1
once the wire has died: C{kill(-1, SIGQUIT)} reaches every process it may
signal.  Each one here is therefore init of its own PID namespace
(C{unshare --pid --fork}), where that reaches only its own wires.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Processes, StreamPlug, need, needRoot, socketListening, waitFor

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration

BROADCAST = b"\xff" * 6
#: The wire vde_autolink runs: both ends local, the remote "host" is the
#: other switch's directory (a wire must name $remotehost, $myport, $mysock).
#: vdeplug4's vde_plug takes the port as --port (its -p is a pid file).
RC = """\
addwire LOCAL dpipe vde_plug $remotehost = vde_plug --port $myport $mysock
addlink L1 {remote}
addtypelink L1 LOCAL
linkonoff L1 1
"""


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("vde_autolink", "dpipe", "vde_plug", "unshare")


def childProcesses(parent: int) -> list[tuple[int, str, str]]:
    """
    The pid, name and state of each child of C{parent}, from C{/proc}.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == parent:
            found.append((int(entry.name), name, state))
    return found


class Autolink:
    """
    C{vde_autolink} on one switch, keeping link C{L1} to another, as init of
    its own PID namespace; what it logs goes to C{autolink.log}.
    """

    def __init__(self, processes: Processes, directory: Path, sock: Path, mgmt: Path,
                 remote: Path) -> None:
        self.processes = processes
        self.directory = directory
        rc = directory / "autolink.rc"
        rc.write_text(RC.format(remote=remote))
        self.log = directory / "autolink.log"
        with self.log.open("wb") as log:
            self.process = processes.start(
                ["unshare", "--pid", "--fork", "--kill-child", "vde_autolink", "-s", str(sock),
                 "-S", str(mgmt), "-f", str(rc)],
                stdout=log, stderr=subprocess.STDOUT, cwd=directory)

    def pid(self) -> int | None:
        """
        vde_autolink's own pid (unshare's child), or L{None} once it is gone.
        """
        children = [pid for pid, _, state in childProcesses(self.process.pid) if state != "Z"]
        return children[0] if children else None

    def wires(self) -> list[int]:
        """
        The wires (C{dpipe} children) vde_autolink is running.
        """
        pid = self.pid()
        if pid is None:
            return []
        return [child for child, name, state in childProcesses(pid)
                if name == "dpipe" and state != "Z"]

    def waitForWire(self, timeout: float = 10.0, besides: int | None = None) -> int:
        """
        The pid of a running wire, other than C{besides}.
        """
        waitFor(lambda: [w for w in self.wires() if w != besides], timeout=timeout,
                what=f"a wire from vde_autolink:\n{self.text()}")
        return next(w for w in self.wires() if w != besides)

    def text(self) -> str:
        """
        What vde_autolink logged, with this run's directory written C{DIR}.
        """
        return self.log.read_text(errors="replace").replace(str(self.directory), "DIR")

    def stop(self) -> None:
        """
        Stop vde_autolink by its pid (unshare ignores SIGTERM), then unshare.
        """
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.processes.stop(self.process, signal.SIGKILL)


@pytest.fixture
def autolink(processes: Processes) -> Iterator[Callable[..., Autolink]]:
    """
    Start C{vde_autolink}s; every one is stopped, by pid, after the test.
    """
    started: list[Autolink] = []

    def start(directory: Path, sock: Path, mgmt: Path, remote: Path) -> Autolink:
        started.append(Autolink(processes, directory, sock, mgmt, remote))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def crosses(sender: StreamPlug, receiver: StreamPlug, tag: bytes, timeout: float = 1.0) -> bool:
    """
    Whether a broadcast from C{sender} reaches C{receiver} within C{timeout}.
    """
    payload = b"autolink-" + tag + bytes(40)
    sender.send(frame(BROADCAST, mac(0x11), payload=payload))
    return receiver.receiveMatching(lambda f: payload in f, timeout) is not None


def twoSwitches(kind: str, directory: Path, vswitch: Callable[..., object],
                processes: Processes, fstp: bool) -> list[tuple[Path, Path]]:
    """
    Two switches (C{vde_switch} or vtwisted) with their consoles, the first
    one the FSTP root (lowest MAC address): their directories and consoles.
    """
    directory.mkdir(exist_ok=True)
    pairs = []
    for n in (1, 2):
        sock, mgmt = directory / f"sw{n}", directory / f"mgmt{n}"
        options = ["--macaddr", f"02:00:00:00:00:0{n}"]
        if kind == "vde_switch":
            processes.start(["vde_switch", *(["-F"] if fstp else []), *options, "-s", str(sock),
                             "-M", str(mgmt)], stdin=subprocess.PIPE)
        else:
            vswitch(*(["--fstp"] if fstp else []), *options, "--mgmt", str(mgmt), sock=sock)
        waitFor(lambda s=sock, m=mgmt: socketListening(s / "ctl") and socketListening(m),
                what=f"{kind} on {sock}")
        pairs.append((sock, mgmt))
    return pairs


def test_killedCableComesBack(vswitch, processes, shortdir, autolink) -> None:
    """
    vde_autolink joins two vtwisted switches with a cable that frames
    cross; when the cable's process dies, no frame crosses until
    vde_autolink runs a new cable (its check 30 s after a try, then a
    minute), and frames cross again.
    """
    (sock1, mgmt1), (sock2, _) = twoSwitches("vtwisted", shortdir / "sw", vswitch, processes,
                                             fstp=False)
    hosts = [StreamPlug(processes, f"vde://{sock}") for sock in (sock1, sock2)]
    link = autolink(shortdir, sock1, mgmt1, sock2)
    first = link.waitForWire()
    waitFor(lambda: crosses(hosts[0], hosts[1], b"first", 0.5), what="frames across the cable")
    assert crosses(hosts[1], hosts[0], b"back")

    os.kill(first, signal.SIGTERM)  # dpipe takes its two vde_plug with it
    waitFor(lambda: first not in link.wires(), what="the cable to go")
    time.sleep(0.5)
    assert not crosses(hosts[0], hosts[1], b"cut")

    link.waitForWire(timeout=150, besides=first)
    waitFor(lambda: crosses(hosts[0], hosts[1], b"again", 0.5), what="frames across the new cable")
    assert crosses(hosts[1], hosts[0], b"back again")
    assert "check failed, scheduled new wire connection" in link.text()


def autolinkWithFstp(
    kind: str, directory: Path, vswitch: Callable[..., object], processes: Processes,
    autolink: Callable[..., Autolink],
) -> tuple[str, int | None]:
    """
    vde_autolink on the root of two FSTP switches: the cable comes up and
    frames cross, then its process is killed.

    @return: what vde_autolink logged, and its exit status (L{None} if it
        still runs) a second after it saw the cable drop.
    """
    (sock1, mgmt1), (sock2, _) = twoSwitches(kind, directory, vswitch, processes, fstp=True)
    hosts = [StreamPlug(processes, f"vde://{sock}") for sock in (sock1, sock2)]
    link = autolink(directory, sock1, mgmt1, sock2)
    waitFor(lambda: "discard -> active" in link.text(), timeout=15,
            what=f"vde_autolink to see the cable with {kind}:\n{link.text()}")
    waitFor(lambda: crosses(hosts[0], hosts[1], b"fstp", 0.5), what=f"frames across ({kind})")
    os.kill(link.waitForWire(), signal.SIGTERM)
    waitFor(lambda: "active -> discard" in link.text() or link.process.poll() is not None,
            timeout=15, what=f"vde_autolink to see the cable drop with {kind}:\n{link.text()}")
    time.sleep(1)
    return link.text(), link.process.poll()


def test_cableDropSeenAsWithVdeSwitch(vswitch, processes, shortdir, autolink) -> None:
    """
    With FSTP, vde_autolink sees a cable between vtwisted switches come up
    (frames cross) and drop, then does what it does with vde_switch: the
    same log, the same fate (Debian's build dies of SIGSEGV there).
    """
    need("vde_switch")
    theirs = autolinkWithFstp("vde_switch", shortdir / "c", vswitch, processes, autolink)
    ours = autolinkWithFstp("vtwisted", shortdir / "py", vswitch, processes, autolink)
    assert ours == theirs
    assert "received fstp/+ for port" in ours[0]
    assert "received fstp/- for port" in ours[0]
