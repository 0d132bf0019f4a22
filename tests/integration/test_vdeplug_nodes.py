"""
vdeplug4's plugins that are not ports of their own, against the switch's
C{vde:} directory, each through a real C{vde_plug}:

  - C{seqpacket://FD} wraps a descriptor the plug inherits (one end of a
    C{SOCK_SEQPACKET} socket pair; the URL's "path" is the descriptor's
    number).  vdeplug4's static library starts C{vde_plug --descr D
    seqpacket://FD URL} and keeps the other end: one message per frame.
  - C{hub://DIR} and C{switch://DIR} make a VDE directory served by the
    plug itself; C{vde_plug vde://SWITCH switch://DIR} cables it to ours.
  - C{multi://DIR} and C{bonding://DIR} serve a directory for one host,
    cabled out over several links: multi sends each frame on every link,
    bonding on one in turn; both hand the host whatever any link brings.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import StreamPlug, copiesOf, need, socketListening, waitFor
from taphelpers import console

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration

BROADCAST = b"\xff" * 6
HOST, PEER = mac(0x40), mac(0x41)


@pytest.fixture(autouse=True)
def _needs() -> None:
    need("vde_plug")


def _endpoints(mgmt: Path) -> int:
    return console(mgmt, "port/print").count("endpoint ID")


def _inPackets(mgmt: Path) -> dict[int, int]:
    """Each port's IN packet counter, from C{port/print}."""
    counts = {}
    port = 0
    for line in console(mgmt, "port/print").splitlines():
        if found := re.match(r"Port (\d+) ", line):
            port = int(found.group(1))
        elif found := re.match(r"\s*IN:\s+pkts\s+(\d+)", line):
            counts[port] = int(found.group(1))
    return counts


def _switchWithConsole(vswitch, shortdir: Path):
    mgmt = shortdir / "mgmt"
    return vswitch("--mgmt", str(mgmt)), mgmt


def _cable(processes, node: Path, sw):
    """A C{vde_plug} joining the node's directory to the switch's."""
    return processes.start(["vde_plug", f"vde://{node}", f"vde://{sw.sock}"])


@pytest.mark.parametrize("byPath", [False, True], ids=["fd", "path"])
def test_seqpacketHelperAsTheStaticLibraryRunsIt(
    vswitch, processes, shortdir, byPath: bool
) -> None:
    """
    What vdeplug4's static library does for a program that cannot load
    plugins: a C{SOCK_SEQPACKET} pair, one end given to C{vde_plug
    seqpacket://FD vde://SWITCH}.  Frames cross as one message each, jumbo
    ones whole, and the description names the switch's port.  A path in
    place of the number reads as 0: the plug's standard input.
    """
    sw, mgmt = _switchWithConsole(vswitch, shortdir)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine, theirs:
        url = f"seqpacket://{shortdir / 'x'}" if byPath else f"seqpacket://{theirs.fileno()}"
        processes.start(
            ["vde_plug", "--descr", "static-helper", url, f"vde://{sw.sock}"],
            pass_fds=(theirs.fileno(),),
            stdin=theirs if byPath else subprocess.DEVNULL,
        )
        theirs.close()
        peer = StreamPlug(processes, f"vde://{sw.sock}")
        waitFor(lambda: _endpoints(mgmt) == 2, what="both plugs on the switch")
        assert "static-helper" in console(mgmt, "port/print")
        small = frame(BROADCAST, HOST, payload=b"one message")
        jumbo = frame(PEER, HOST, payload=b"j" * 9000)
        mine.send(small)
        mine.send(jumbo)
        assert peer.receive() == small, sw.logText()
        assert peer.receive() == jumbo, sw.logText()
        answer = frame(HOST, PEER, payload=b"back as one message")
        peer.send(answer)
        mine.settimeout(5)
        assert mine.recv(65536) == answer


@pytest.mark.parametrize("kind", ["hub", "switch"])
def test_vdeplugNodeCabledToTheSwitch(vswitch, processes, shortdir, kind: str) -> None:
    """
    C{vde_plug vde://SWITCH hub://DIR} (or C{switch://DIR}): a client of
    the plug's own directory and one of the switch exchange frames.
    """
    sw, mgmt = _switchWithConsole(vswitch, shortdir)
    node = shortdir / kind
    processes.start(["vde_plug", f"vde://{sw.sock}", f"{kind}://{node}"])
    waitFor(lambda: socketListening(node / "ctl"), what=f"the {kind}:// directory")
    host = StreamPlug(processes, f"vde://{node}")
    peer = StreamPlug(processes, f"vde://{sw.sock}")
    waitFor(lambda: _endpoints(mgmt) == 2, what="the node's cable and the peer")
    hello = frame(BROADCAST, HOST, payload=f"from {kind}://".encode())
    got = None
    for _ in range(10):
        host.send(hello)
        got = peer.receiveMatching(lambda f: f == hello, timeout=0.5)
        if got is not None:
            break
    assert got is not None, sw.logText()
    answer = frame(HOST, PEER, payload=b"from the switch")
    peer.send(answer)
    assert host.receiveMatching(lambda f: f == answer) is not None, sw.logText()


def test_multiHandsOverBetweenTwoCables(vswitch, processes, shortdir) -> None:
    """
    A host on C{multi://DIR} cabled to the switch twice, the first cable
    then cut: while both run, each of the host's frames reaches the LAN
    twice and each broadcast reaches the host twice (a frame to the host
    once, over the port its address was learned on); after the cut,
    traffic goes on over the second cable.
    """
    sw, mgmt = _switchWithConsole(vswitch, shortdir)
    node = shortdir / "multi"
    host = StreamPlug(processes, f"multi://{node}")
    waitFor(lambda: socketListening(node / "ctl"), what="the multi:// directory")
    peer = StreamPlug(processes, f"vde://{sw.sock}")
    first = _cable(processes, node, sw)
    waitFor(lambda: _endpoints(mgmt) == 2, what="the first cable")
    host.send(frame(PEER, HOST, payload=b"before"))
    assert copiesOf(peer, b"before") == 1, sw.logText()

    _cable(processes, node, sw)
    waitFor(lambda: _endpoints(mgmt) == 3, what="the second cable")
    host.send(frame(PEER, HOST, payload=b"during"))
    assert copiesOf(peer, b"during") == 2
    peer.send(frame(BROADCAST, PEER, payload=b"flooded"))
    assert copiesOf(host, b"flooded") == 2
    peer.send(frame(HOST, PEER, payload=b"learned"))
    assert copiesOf(host, b"learned") == 1

    processes.stop(first)
    waitFor(lambda: _endpoints(mgmt) == 2, what="the first cable to go")
    peer.send(frame(HOST, PEER, payload=b"after"))
    assert copiesOf(host, b"after") == 1, sw.logText()
    host.send(frame(PEER, HOST, payload=b"still"))
    assert copiesOf(peer, b"still") == 1, sw.logText()


def test_bondingSpreadsFramesOverTwoCables(vswitch, processes, shortdir) -> None:
    """
    A host on C{bonding://DIR} cabled to the switch twice: its frames come
    in on both ports in turn, each reaching the LAN once; frames to it
    take the one port its address is learned on.
    """
    sw, mgmt = _switchWithConsole(vswitch, shortdir)
    node = shortdir / "bonding"
    host = StreamPlug(processes, f"bonding://{node}")
    waitFor(lambda: socketListening(node / "ctl"), what="the bonding:// directory")
    peer = StreamPlug(processes, f"vde://{sw.sock}")
    waitFor(lambda: _endpoints(mgmt) == 1, what="the peer")
    peer.send(frame(BROADCAST, PEER, payload=b"peer is here"))
    _cable(processes, node, sw)
    _cable(processes, node, sw)
    waitFor(lambda: _endpoints(mgmt) == 3, what="two cables")
    peerPort = min(_inPackets(mgmt))
    for i in range(10):
        host.send(frame(PEER, HOST, payload=b"bonded %d" % i))
    assert copiesOf(peer, b"bonded") == 10, sw.logText()
    cables = {port: n for port, n in _inPackets(mgmt).items() if port != peerPort}
    assert sorted(cables.values()) == [5, 5], console(mgmt, "port/print")
    for i in range(4):
        peer.send(frame(HOST, PEER, payload=b"reply %d" % i))
    assert copiesOf(host, b"reply") == 4, sw.logText()
