"""
A stream link the switch closes whose peer reads nothing: a real QEMU with
its VM stopped (C{-S}) on C{qemu:unix:}, its socket filled by broadcasts
from another guest, then its port deleted on the console.  C{loseConnection}
alone would wait for ever for QEMU to read what is queued, keeping the
connection; it is aborted after L{vtwisted.closing.CLOSE_GRACE} seconds,
which C{ss} shows, and C{twistd} still stops on C{TERM} with the other
guest's link up.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess

import pytest
from helpers import need, run, waitFor
from taphelpers import console

pytestmark = pytest.mark.integration

FRAME = b"\xff" * 6 + bytes.fromhex("02000a0b0c0d") + b"\x88\xb5" + bytes(1400)
RECORD = struct.pack("!I", len(FRAME)) + FRAME


def unixSockets(pid: int) -> list[tuple[str, str]]:
    """
    The Unix stream sockets of process C{pid}, as (its inode, its peer's
    inode), from C{ss}.
    """
    sockets = []
    for line in run("ss", "-xpnH").stdout.splitlines():
        if f"pid={pid}," not in line:
            continue
        tokens = line.split()
        users = next(i for i, token in enumerate(tokens) if token.startswith("users:"))
        sockets.append((tokens[users - 3], tokens[users - 1]))
    return sockets


def connectedTo(switchPid: int, peerPid: int) -> bool:
    """
    Whether the switch holds a connection to a socket of C{peerPid}.
    """
    theirs = {local for local, _ in unixSockets(peerPid)}
    return any(peer in theirs for _, peer in unixSockets(switchPid))


def portOf(allprint: str, endpoint: str) -> int:
    """
    The number of the port whose endpoint line has C{endpoint} in it.
    """
    number = None
    for line in allprint.splitlines():
        if line.startswith("Port "):
            number = int(line.split()[1])
        elif endpoint in line and number is not None:
            return number
    raise AssertionError(f"no port with {endpoint}:\n{allprint}")


def test_aStoppedQemuWhosePortIsDeletedLosesItsConnection(vswitch, processes,
                                                          shortdir) -> None:
    """
    C{port/del} of a stopped QEMU's port, its socket full: the switch's
    end of the connection is gone within the grace, said once in the log;
    the switch then stops on C{TERM}, the flooding guest still connected.
    """
    need("qemu-system-x86_64", "ss")
    mgmt, guests = shortdir / "mgmt", shortdir / "guests.sock"
    sw = vswitch("--mgmt", str(mgmt), "--port", f"qemu:unix:{guests}")
    qemu = processes.start(["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none",
                            "-machine", "accel=tcg",
                            "-netdev", f"stream,id=n0,server=off,addr.type=unix,"
                                       f"addr.path={guests}",
                            "-device", "virtio-net-pci,netdev=n0"])
    waitFor(lambda: f"pid {qemu.pid}" in console(mgmt, "port/allprint"), timeout=30,
            what="QEMU on the switch")
    flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        flood.connect(str(guests))
        flood.settimeout(10)

        def queueFull() -> bool:
            flood.sendall(RECORD * 100)
            return "peer not reading (" in sw.logText()

        waitFor(queueFull, timeout=30, what="the switch's queue for QEMU full")
        number = portOf(console(mgmt, "port/allprint"), f"pid {qemu.pid}")
        assert connectedTo(sw.process.pid, qemu.pid)
        console(mgmt, f"port/del {number}")
        waitFor(lambda: not connectedTo(sw.process.pid, qemu.pid), timeout=30,
                what="the switch's end of QEMU's connection closed")
        log = sw.logText()
        assert log.count("peer not reading; connection aborted after 5 s") == 1, log
        assert qemu.poll() is None
        sw.process.send_signal(signal.SIGTERM)
        try:
            sw.process.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the switch did not stop:\n{sw.logText()}") from None
        assert sw.process.returncode == -signal.SIGTERM, sw.logText()
    finally:
        flood.close()
