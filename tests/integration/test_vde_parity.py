"""
What a user of Debian's VDE tools sees, compared between Debian's
C{vde_switch} and C{twistd vswitch} started with the same options: the same
clients run against both in each test, and what they get (ports, consoles,
files) is compared.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import StreamPlug, need, needRoot, socketListening, waitFor
from taphelpers import console

pytestmark = pytest.mark.integration

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
DAEMON = ("setpriv", "--reuid=1", "--regid=1", "--clear-groups")


class Switch:
    """
    One of the two switches: its directory and console.
    """

    def __init__(self, name: str, sock: Path, mgmt: Path, process: object,
                 log: Path | None = None) -> None:
        self.name = name
        self.sock = sock
        self.mgmt = mgmt
        self.process = process
        #: vtwisted's log (None for vde_switch's)
        self.log = log

    def ask(self, *commands: str) -> str:
        return console(self.mgmt, *commands)

    def dataSockets(self) -> list[str]:
        return dataSocketsIn(self.sock)


def dataSocketsIn(directory: Path) -> list[str]:
    """
    The switch's data sockets in its directory (C{NNN.F}), without the
    control socket or the clients' own sockets (libvdeplug's C{.PID-SEQ},
    there while a client's handshake lasts).
    """
    return sorted(n for n in os.listdir(directory) if re.match(r"^\d{3,}\.\d+$", n))


@pytest.fixture
def both(processes, vswitch, shortdir) -> Callable[..., list[Switch]]:
    """
    Start Debian's vde_switch and our switch with the same options (and a
    console each); the parent directory is opened to other users.
    """
    need("vde_switch")
    os.chmod(shortdir, 0o755)

    def start(*args: str) -> list[Switch]:
        sock, mgmt = shortdir / "real", shortdir / "real.mgmt"
        real = processes.start(["vde_switch", "-s", str(sock), "-M", str(mgmt), *args],
                               stdin=subprocess.PIPE)
        waitFor(lambda: socketListening(mgmt), what="vde_switch console")
        ourMgmt = shortdir / "ours.mgmt"
        ours = vswitch("--mgmt", str(ourMgmt), *args)
        waitFor(lambda: socketListening(ourMgmt), what="vswitch console")
        return [Switch("vde_switch", sock, mgmt, real),
                Switch("vswitch", ours.sock, ourMgmt, ours.process, ours.log)]

    return start


def test_userGetsThePortSetUpForIt(both, processes) -> None:
    """
    A port given to a user with port/setuser (and a VLAN) goes to that user's
    vde_plug when it asks for any port, on both switches.
    """
    needRoot()
    need("setpriv", "vde_plug")
    for switch in both("--mode", "0666"):
        switch.ask("port/create 1", "port/allocatable 1 1", "port/setuser 1 nobody",
                   "vlan/create 10", "port/setvlan 1 10")
        StreamPlug(processes, f"vde://{switch.sock}", wrapper=NOBODY)
        waitFor(lambda s=switch: len(s.dataSockets()) == 1, what=f"nobody on {switch.name}")
        assert switch.dataSockets()[0].startswith("001."), switch.name
        shown = switch.ask("port/print 1")
        assert "untagged_vlan=0010 ACTIVE" in shown and "Current User: nobody" in shown, shown


def test_hangupLeavesTheSwitchRunning(both, processes) -> None:
    """
    SIGHUP neither stops the switch nor disconnects its clients, as with
    Debian's vde_switch; SIGTERM then removes every file.
    """
    need("vde_plug")
    switches = both()
    for switch in switches:
        StreamPlug(processes, f"vde://{switch.sock}")
        waitFor(lambda s=switch: len(s.dataSockets()) == 1, what=f"client on {switch.name}")
    for switch in switches:
        switch.process.send_signal(signal.SIGHUP)
    time.sleep(1)
    for switch in switches:
        assert switch.process.poll() is None, f"{switch.name} stopped on SIGHUP"
        assert "ACTIVE" in switch.ask("port/print 1"), switch.name
    for switch in switches:
        processes.stop(switch.process)
        assert not switch.sock.exists(), (switch.name, os.listdir(switch.sock))


def clientSockets(switch: Switch) -> list[str]:
    """The clients' own sockets in the switch's directory (libvdeplug's C{.PID-SEQ})."""
    return sorted(n for n in os.listdir(switch.sock) if re.match(r"^\.\d+-\d+$", n))


def test_aClientKilledInItsHandshakeLeavesItsOwnSocketAlone(both, processes) -> None:
    """
    A vde_plug killed (SIGKILL) before the switch answered it (the switch
    held with SIGSTOP meanwhile) leaves its own socket in the directory; at
    SIGTERM each switch removes its files (a later client's data socket,
    the control socket) but not that one, so the directory stays with it
    alone, and vtwisted's log says so.
    """
    need("vde_plug")
    for switch in both():
        switch.process.send_signal(signal.SIGSTOP)
        try:
            killed = StreamPlug(processes, f"vde://{switch.sock}")
            waitFor(lambda s=switch: clientSockets(s), what=f"a client's socket on {switch.name}")
            [left] = clientSockets(switch)
            killed.process.kill()
            killed.process.wait(10)
        finally:
            switch.process.send_signal(signal.SIGCONT)
        StreamPlug(processes, f"vde://{switch.sock}")
        waitFor(lambda s=switch: len(s.dataSockets()) == 1, what=f"a client on {switch.name}")
        processes.stop(switch.process)
        assert os.listdir(switch.sock) == [left], switch.name
        if switch.log is not None:
            assert (f"{switch.sock} stays: it holds files the switch did not make ({left})"
                    in switch.log.read_text())


FORGER = """
import socket, sys
from vtwisted.wire import vdecontrol
ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ctl.connect(sys.argv[1])
ctl.sendall(vdecontrol.packRequest(sys.argv[2].encode(), None, "forged"))
ctl.settimeout(5)
print(len(ctl.recv(200)))
"""


def test_clientMayNotNameAnotherUsersSocket(vswitch, processes, shortdir) -> None:
    """
    A client that names a socket it does not own (root's, such as the
    system log's) gets no port, and that socket no frame; its own vde_plug
    works.  (vde_switch, as root, would send the LAN's frames there.)
    """
    import sys

    from helpers import sourceEnv

    from vtwisted.testing import frame, mac

    needRoot()
    need("setpriv", "vde_plug")
    os.chmod(shortdir, 0o755)
    sw = vswitch("--mode", "0666")
    victim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    victim.bind(str(shortdir / "victim"))
    victim.setblocking(False)
    forged = subprocess.run([*NOBODY, sys.executable, "-c", FORGER, str(sw.ctl),
                             str(shortdir / "victim")],
                            capture_output=True, text=True, timeout=30, env=sourceEnv())
    assert forged.stdout.strip() == "0", forged.stdout + forged.stderr
    own = StreamPlug(processes, f"vde://{sw.sock}", wrapper=NOBODY)
    root = StreamPlug(processes, f"vde://{sw.sock}")
    # Both ports, not three entries in the directory: while a vde_plug's
    # handshake lasts its own socket (.PID-SEQ) is there too, so ctl, root's
    # data socket and root's own socket (or both clients' own sockets) made
    # three while nobody's vde_plug had no port yet, and root's broadcast,
    # flooded to the ports there were, never reached it.  The switch binds
    # a data socket and plugs its port in one reactor turn, before it reads
    # any frame.
    waitFor(lambda: len(dataSocketsIn(sw.sock)) == 2, what="both clients")
    hello = frame(b"\xff" * 6, mac(7))
    root.send(hello)
    assert own.receive() == hello
    with pytest.raises(BlockingIOError):
        victim.recv(2000)
    assert "belongs to uid 0, not to the client (uid 65534" in sw.logText()


@contextmanager
def rawClient(directory: Path, port: int | None, client: Path) -> Iterator[
        tuple[socket.socket, str]]:
    """
    Plug a raw client (one that, unlike vde_plug, leaves the data socket's
    mode alone and sends any datagram) into C{port} (None: any): its data
    socket, connected, and the path of the switch's, for as long as the
    context lasts.
    """
    from vtwisted.wire import vdecontrol

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as data, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        data.bind(str(client))
        try:
            ctl.settimeout(5)
            ctl.connect(str(directory / "ctl"))
            ctl.sendall(vdecontrol.packRequest(os.fsencode(client), port, "raw"))
            path = vdecontrol.parseReply(ctl.recv(200)).decode()
            data.connect(path)
        finally:
            os.unlink(client)
        yield data, path


def dataSocketOf(switch: Switch, port: int | None, client: Path) -> tuple[str, int, int]:
    """
    The name, mode and group of the data socket a switch makes for a raw
    client plugged into C{port} (None: any).
    """
    with rawClient(switch.sock, port, client) as (_, path):
        # vde_switch sets port 0's mode and group just after the reply: a
        # console command answered is one the switch reached after that
        switch.ask("showinfo")
        info = os.stat(path)
    return os.path.basename(path)[:3], stat.S_IMODE(info.st_mode), info.st_gid


@pytest.mark.parametrize("console", [["--mgmtmode", "0640", "--mgmtgroup", "bin"],
                                     ["--mgmtmode", "0664"]],
                         ids=["console mode and group", "console mode"])
def test_dataSocketModesAndGroups(both, shortdir, console) -> None:
    """
    Both switches give a client's data socket the control socket's owner
    bits and --group, and port 0's (the management port's) the console's
    mode and group (the switch's group when the console has none).
    """
    import grp

    needRoot()
    gid = {name: grp.getgrnam(name).gr_gid for name in ("daemon", "bin")}
    seen = {}
    for switch in both("--mode", "0660", "--group", "daemon", *console):
        seen[switch.name] = [dataSocketOf(switch, port, shortdir / f"c{n}")
                             for n, port in enumerate([None, 0, 5])]
    group = gid["bin"] if "bin" in console else gid["daemon"]
    mode = int(console[1], 8)
    assert seen["vswitch"] == seen["vde_switch"] == [
        ("001", 0o600, gid["daemon"]), ("000", mode, group), ("005", 0o600, gid["daemon"])]


def test_runtsAreNotCountedAsReceived(both, shortdir) -> None:
    """
    Datagrams shorter than an Ethernet header (0, 1 and 13 bytes) go
    nowhere and are left out of port/print's IN counters on both switches;
    vtwisted counts them as runt drops in port/stats and logs the first.
    """
    from vtwisted.testing import frame, mac

    good = frame(b"\xff" * 6, mac(1))
    for switch in both():
        with rawClient(switch.sock, None, shortdir / "a") as (a, _), \
                rawClient(switch.sock, None, shortdir / "b") as (b, _):
            for runt in (b"", b"\xff", good[:13]):
                a.send(runt)
            a.send(good)
            b.settimeout(5)
            assert b.recv(2000) == good, switch.name
            shown = switch.ask("port/print 1")
            assert f" IN:  pkts {1:10d}          bytes {len(good):20d}" in shown, \
                (switch.name, shown)
        if switch.log is not None:
            assert " runt=3 " in switch.ask("port/stats 1")
            assert switch.log.read_text().count("dropped a frame (runt)") == 1
