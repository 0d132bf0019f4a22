"""
QEMU stream guests over TCP (C{qemu:listen:tcp:}) whose host vanishes
without closing: C{twistd vswitch} in a namespace of its own with a bridge,
each guest "host" a namespace joined to it by a veth pair.  A guest's host
vanishes when its veth pair is deleted (its kernel never sends a FIN or a
reset again) and its client killed.

The guests are Python clients speaking QEMU's stream protocol (a 4-byte
big-endian length, then the frame): to the switch's kernel, which does all
that is tested here, QEMU's stream client is a plain TCP client.  One test
uses a real QEMU, stopped (C{-S}), which reads nothing: a live guest that
must keep its port.

Addresses are in a private test /24 that exists only in the namespaces the
test made.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    allAcknowledged,
    execIn,
    keepaliveProbes,
    need,
    needRoot,
    run,
    sourceEnv,
    twistdArgv,
    uniqueName,
    waitFor,
)
from taphelpers import quietNamespace, tcpPeers

pytestmark = pytest.mark.integration

LISTENER, HOST, OTHER = "10.211.41.1", "10.211.41.2", "10.211.41.3"
HOST_MAC = "02:00:0a:d3:29:02"
PORT = 7641

#: A guest: connects, sends a frame, then reads (C{read}), reads and sends
#: 20 broadcasts every 20 ms (C{flood}), or sleeps.
GUEST = r"""
import socket, struct, sys, time
host, port, mode, mac = sys.argv[1], int(sys.argv[2]), sys.argv[3], bytes.fromhex(sys.argv[4])
sock = socket.create_connection((host, port))
frame = b"\xff" * 6 + mac + b"\x88\xb5" + bytes(46)
sock.sendall(struct.pack("!I", len(frame)) + frame)
while True:  # sends block (never half a frame); reads do not
    if mode == "flood":
        sock.sendall((struct.pack("!I", len(frame)) + frame) * 20)
    if mode in ("read", "flood"):
        try:
            while sock.recv(65536, socket.MSG_DONTWAIT):
                pass
        except BlockingIOError:
            pass
    time.sleep(0.02)
"""


class Lab:
    """
    The switch's namespace with its bridge, hosts plugged into it, and
    guests started in them.
    """

    def __init__(self, processes: Any, namespaces: Any, shortdir: Path) -> None:
        self.processes, self.namespaces, self.dir = processes, namespaces, shortdir
        self.switchNs = quietNamespace(namespaces, "vtwqs")
        run("ip", "-n", self.switchNs, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switchNs, "addr", "add", f"{LISTENER}/24", "dev", "br0")
        run("ip", "-n", self.switchNs, "link", "set", "br0", "up")
        self.script = shortdir / "guest.py"
        self.script.write_text(GUEST)
        self.log = shortdir / "switch.log"
        self.mgmt = shortdir / "mgmt"
        self.guests = 0

    def host(self, address: str = HOST, mac: str = HOST_MAC) -> tuple[str, str]:
        """
        A new host namespace at C{address}, plugged into the bridge; its
        namespace and the name of the bridge's end of its veth pair.
        """
        ns = quietNamespace(self.namespaces, "vtwqh")
        near, far = uniqueName("ql"), uniqueName("qh")
        run("ip", "link", "add", near, "netns", self.switchNs, "type", "veth", "peer", "name",
            far, "netns", ns, "address", mac)
        run("ip", "-n", self.switchNs, "link", "set", near, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", far)
        run("ip", "-n", ns, "link", "set", far, "up")
        return ns, near

    def switch(self, *specs: str) -> None:
        ports = [arg for spec in specs for arg in ("--port", spec)]
        self.processes.start(execIn(self.switchNs, *twistdArgv(
            "--sock", str(self.dir / "sw"), "--mgmt", str(self.mgmt), *ports,
            logfile=str(self.log))), env=sourceEnv())
        waitFor(self.mgmt.exists, what="the switch's console")

    def guest(self, ns: str, mode: str, port: int = PORT) -> tuple[Any, str]:
        """
        Start a guest in C{ns}; its process and its peer as C{port/print}
        shows it, once the switch has it.
        """
        self.guests += 1
        before = set(tcpPeers(self.mgmt))
        process = self.processes.start(execIn(ns, sys.executable, str(self.script), LISTENER,
                                              str(port), mode, f"02000000{self.guests:04x}"))
        waitFor(lambda: set(tcpPeers(self.mgmt)) - before, timeout=10,
                what=f"the {mode} guest on the switch")
        (peer,) = set(tcpPeers(self.mgmt)) - before
        return process, peer

    def dump(self) -> None:
        print(f"--- switch:\n{self.log.read_text() if self.log.exists() else ''}")


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "frames-in-flight"])
def test_aGuestWhoseHostVanishesLosesItsPortAfterKeepalive(processes, namespaces, shortdir,
                                                           busy: bool) -> None:
    """
    Two listeners, C{keepalive=3} and C{keepalive=0}, a guest of the
    vanishing host on each: the first's port goes, the second's stays.
    With frames in flight to the vanished guest (another host floods
    broadcasts) keepalive never probes: the watch on acknowledgements ends
    it, where the kernel's retransmissions would last some 15 minutes.
    """
    needRoot()
    lab = Lab(processes, namespaces, shortdir)
    lab.switch(f"qemu:listen:tcp:{PORT}:interface={LISTENER}:keepalive=3",
               f"qemu:listen:tcp:{PORT + 1}:interface={LISTENER}:keepalive=0")
    try:
        oldHost, oldVeth = lab.host()
        watched, ghost = lab.guest(oldHost, "read")
        unwatched, kept = lab.guest(oldHost, "read", PORT + 1)
        if busy:
            otherHost, _ = lab.host(OTHER, "02:00:0a:d3:29:03")
            lab.guest(otherHost, "flood")
        else:
            waitFor(lambda: allAcknowledged(lab.switchNs), what="the links idle")
        run("ip", "-n", lab.switchNs, "link", "del", oldVeth)
        for process in (watched, unwatched):
            processes.stop(process, signal.SIGKILL)
        # 3 s of silence, a few more for the probes' and the watch's schedule
        waitFor(lambda: ghost not in tcpPeers(lab.mgmt), timeout=30,
                what="the vanished guest's port freed")
        assert kept in tcpPeers(lab.mgmt)
        if busy:
            assert "nothing acknowledged for" in lab.log.read_text()
    except AssertionError:
        lab.dump()
        raise


def test_aGuestDiallingAgainFromARebootedHostEndsItsGhost(processes, namespaces,
                                                         shortdir) -> None:
    """
    The guest's host "reboots" unseen (its veth deleted, its client killed,
    a new namespace with its address and MAC): the listener's
    C{keepalive=120} would first probe the idle ghost 40 s after its last
    word, so its going within seconds of the new guest's connection is the
    listener's probe.  A second live guest from that address keeps its
    port.
    """
    needRoot()
    lab = Lab(processes, namespaces, shortdir)
    lab.switch(f"qemu:listen:tcp:{PORT}:interface={LISTENER}:keepalive=120")
    try:
        oldHost, oldVeth = lab.host()
        victim, ghost = lab.guest(oldHost, "read")
        waitFor(lambda: allAcknowledged(lab.switchNs), what="the old link idle")
        run("ip", "-n", lab.switchNs, "link", "del", oldVeth)
        processes.stop(victim, signal.SIGKILL)
        newHost, _ = lab.host()
        _, new = lab.guest(newHost, "read")
        waitFor(lambda: ghost not in tcpPeers(lab.mgmt), timeout=20,
                what="the old host's guest gone from the switch")
        assert tcpPeers(lab.mgmt) == [new]
        assert "probing them" in lab.log.read_text()

        sent = keepaliveProbes(lab.switchNs)
        _, live = lab.guest(newHost, "read")  # probes the new guest's link, which answers
        waitFor(lambda: keepaliveProbes(lab.switchNs) > sent, timeout=20,
                what="the switch's kernel probing the new guest's link")
        time.sleep(1.5)  # answered (or reset) within a round trip; let a reset land
        assert sorted(tcpPeers(lab.mgmt)) == sorted([new, live])
        assert lab.log.read_text().count("probing them") == 2
    except AssertionError:
        lab.dump()
        raise


def test_aStoppedQemuThatReadsNothingKeepsItsPort(processes, namespaces, shortdir) -> None:
    """
    A real QEMU with its VM stopped (C{-S}) reads nothing from its socket:
    its kernel closes its window while another guest floods broadcasts.
    It is alive, answers every probe, and keeps its port well past
    C{keepalive=2} (a C{TCP_USER_TIMEOUT} would have cut it off).
    """
    needRoot()
    need("qemu-system-x86_64")
    lab = Lab(processes, namespaces, shortdir)
    lab.switch(f"qemu:listen:tcp:{PORT}:interface={LISTENER}:keepalive=2")
    try:
        host, _ = lab.host()
        otherHost, _ = lab.host(OTHER, "02:00:0a:d3:29:03")
        lab.guest(otherHost, "flood")
        qemu = processes.start(execIn(host, "qemu-system-x86_64", "-S", "-nodefaults",
                                      "-display", "none", "-machine", "accel=tcg",
                                      "-netdev", f"stream,id=n0,server=off,addr.type=inet,"
                                                 f"addr.host={LISTENER},addr.port={PORT}",
                                      "-device", "virtio-net-pci,netdev=n0"),
                               stderr=subprocess.PIPE)
        waitFor(lambda: len(tcpPeers(lab.mgmt)) == 2, timeout=20, what="QEMU on the switch")
        (stopped,) = [peer for peer in tcpPeers(lab.mgmt) if peer.startswith(HOST)]

        def windowClosed() -> bool:
            out = run(*execIn(lab.switchNs, "ss", "-tniH", "dst", stopped)).stdout
            return "notsent:" in out

        waitFor(windowClosed, timeout=20, what="QEMU's window closed to the switch")
        time.sleep(6)  # three times keepalive=
        assert stopped in tcpPeers(lab.mgmt)
        assert qemu.poll() is None
        assert "nothing acknowledged" not in lab.log.read_text()
    except AssertionError:
        lab.dump()
        raise
