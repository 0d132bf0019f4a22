"""
C{cmd:COMMAND:socket=KIND}: commands handed one end of a socket pair.

In this process's reactor, a Python command checks which descriptors it
inherited and exchanges jumbo frames with the switch over each kind of
socket (and misbehaves: an oversize message, a bad stream length); with
C{twistd} as root, a QEMU guest started by the switch (C{-netdev
stream,addr.type=fd} and C{-netdev dgram,local.type=fd}) and vdeplug4's
C{vde_plug seqpacket://{fd} tap://...} in a namespace reach a namespace
behind the switch's TAP.
"""

from __future__ import annotations

import re
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from guest import END, guestCommand
from helpers import need, needRoot, run, uniqueName, waitFor
from reactortools import sleep, until
from taphelpers import console, moveTap, waitForPing
from twisted.logger import capturedLogs

from vtwisted.testing import FakeLink, frame, mac, plug

pytestmark = pytest.mark.integration

#: The command: argv FD KIND MODE; reports on standard error (logged).
PEER = textwrap.dedent("""\
    import fcntl, os, socket, sys
    fd, kind, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    def isOpen(n):
        try:
            fcntl.fcntl(n, fcntl.F_GETFD)
            return True
        except OSError:
            return False
    print("fds", [n for n in range(1024) if isOpen(n)], file=sys.stderr, flush=True)
    sock = socket.socket(fileno=fd)
    print("type", sock.type.name, file=sys.stderr, flush=True)
    jumbo = b"\\xff" * 6 + bytes.fromhex("020000000001") + b"\\x08\\x00" + b"j" * 8986
    if kind == "stream":
        if mode == "badlength":
            sock.sendall((70000).to_bytes(4, "big") + b"x" * 100)
        sock.sendall(len(jumbo).to_bytes(4, "big") + jumbo)
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            more = sock.recv(65536)
            if not more:
                sys.exit(3)
            data += more
        got = data[4:4 + int.from_bytes(data[:4], "big")]
    else:
        if mode == "oversize":
            sock.send(b"o" * 70000)
        sock.send(jumbo)
        got = sock.recv(70000)
    print("got", len(got), got[-4:].decode(), file=sys.stderr, flush=True)
    if mode.startswith("exit"):
        sys.exit(int(mode[4:]))
    sys.stdin.read()  # until the switch closes it
    """)


def _peer(directory: Path, kind: str, mode: str = "wait", extra: str = "") -> str:
    script = directory / "peer.py"
    script.write_text(PEER)
    return f"cmd:{sys.executable} {script} {{fd}} {kind} {mode}:socket={kind}:mtu=9000{extra}"


def _commandPort(service: Any) -> Any:
    """The cmd: spec's connector."""
    (connector,) = service.specs.values()
    return connector


def _fakePort(service: Any) -> FakeLink:
    link = FakeLink()
    plug(service.switch, link).setMtu(9000)
    return link


@pytest.mark.parametrize("kind", ["stream", "dgram", "seqpacket"])
@pytest_twisted.ensureDeferred
async def test_theCommandGetsItsSocketAloneAndJumboFramesCrossWhole(switch, shortdir,
                                                                    kind) -> None:
    """
    The command inherits descriptor 3 (of the kind asked) besides its
    standard input, output and error, and nothing else of the switch's;
    a 9000-byte frame crosses whole each way; port/print's description
    names the command, its pid and the socket.
    """
    with capturedLogs() as events:
        service = switch(_peer(shortdir, kind))
        fake = _fakePort(service)
        connector = _commandPort(service)
        await until(lambda: fake.sent, timeout=10, what="the command's frame")
        [jumbo] = fake.takeSent()
        assert len(jumbo) == 9000 and jumbo[6:12] == bytes.fromhex("020000000001")
        [link] = connector.links
        assert link.description.endswith(f"(pid {link.linkId}, {kind} socket on fd 3)")
        assert f"peer.py 3 {kind} wait" in link.description
        fake.receive(frame(bytes.fromhex("020000000001"), mac(9),
                           b"r" * 8982 + b"LAST", 0x0800))

        def said() -> list[str]:
            return [str(event.get("line", "")) for event in events]

        await until(lambda: any(line.startswith("got ") for line in said()), timeout=10,
                    what="the command's report")
    assert "fds [0, 1, 2, 3]" in said(), said()
    assert f"type SOCK_{kind.upper()}" in said(), said()
    assert "got 9000 LAST" in said(), said()


@pytest.mark.parametrize("kind", ["dgram", "seqpacket"])
@pytest_twisted.ensureDeferred
async def test_anOversizeMessageIsCountedAndTheNextFrameStillCrosses(switch, shortdir,
                                                                     kind) -> None:
    """A 70000-byte message is an oversize drop; the socket keeps its boundaries."""
    service = switch(_peer(shortdir, kind, "oversize"))
    fake = _fakePort(service)
    await until(lambda: fake.sent, timeout=10, what="the frame after the oversize one")
    assert [len(f) for f in fake.sent] == [9000]
    [link] = _commandPort(service).links
    assert link.port.counters.drops["oversize"] == 1


@pytest_twisted.ensureDeferred
async def test_aBadStreamLengthClosesTheRunAndTheCommandIsRunAgain(switch, shortdir) -> None:
    """
    As on a qemu: port, a length over QEMU's limit is malformed and closes
    the link: the switch ends that run (closing its socket and input) and
    starts the command again.
    """
    service = switch(_peer(shortdir, "stream", "badlength"))
    connector = _commandPort(service)
    await until(lambda: connector.links, timeout=10, what="the first run")
    first = connector.links[0]
    await until(lambda: connector.links and connector.links[0] is not first, timeout=10,
                what="the command run again")
    assert first.port.counters.drops["malformed"] == 1


@pytest.mark.parametrize(("restart", "again"), [("off", False), ("on-failure", False),
                                                ("on", True)])
@pytest_twisted.ensureDeferred
async def test_aCommandThatExitsIsRunAgainAsRestartSays(switch, shortdir, restart,
                                                        again) -> None:
    """
    A command that carried frames and exited with status 0 (a VM powered
    off) is left down with restart=off and on-failure, run again with on.
    """
    service = switch(_peer(shortdir, "seqpacket", "exit0", f":restart={restart}"))
    fake = _fakePort(service)
    connector = _commandPort(service)
    await until(lambda: fake.sent, timeout=10, what="the first run's frame")
    fake.receive(frame(bytes.fromhex("020000000001"), mac(9), b"end!" * 12))
    await until(lambda: not connector.links, timeout=10, what="the command to exit")
    fake.takeSent()
    if again:
        await until(lambda: fake.sent, timeout=10, what="the second run's frame")
    else:
        await sleep(1.5)
        assert not fake.sent and not connector.links
        assert connector.downState().startswith(
            f"the command exited with status 0; not started again (restart={restart})")


def specFor(argv: list[str], kind: str, extra: str = "") -> str:
    """
    A cmd: spec running C{argv}, its colons escaped; its equals signs are
    not (QEMU's options, as the README's recipe writes them).
    """
    command = shlex.join(argv).replace("\\", "\\\\").replace(":", "\\:")
    return f"cmd:{command}:socket={kind}{extra}"


def _guestOutput(serial: Path, timeout: float) -> tuple[int, str]:
    """Wait for the guest's script to end: its status and what it printed."""
    def text() -> str:
        return serial.read_bytes().replace(b"\r\n", b"\n").decode(errors="replace")

    waitFor(lambda: END.search(text()), timeout=timeout, what=f"the guest's script ({serial})")
    output = text()
    match = END.search(output)
    assert match is not None
    return int(match.group(1)), output.partition("VTW-BEGIN\n")[2][: match.start()]


@pytest.mark.parametrize(("kind", "netdev"), [
    ("stream", "stream,id=n0,addr.type=fd,addr.str={fd}"),
    ("dgram", "dgram,id=n0,local.type=fd,local.str={fd}"),
])
def test_aGuestTheSwitchStartsPingsANamespaceBehindItsTap(vswitch, namespaces, shortdir,
                                                          kind, netdev) -> None:
    """
    QEMU started by the switch (cmd:qemu-system-x86_64 ... -netdev
    stream,addr.type=fd,addr.str={fd} or dgram,local.type=fd,local.str={fd})
    boots a guest that pings a namespace behind the switch's TAP; the log
    names QEMU, its pid and the socket (as port/print does: the guest is
    too quick to be sure to catch it there); the guest's poweroff ends
    QEMU, which restart=off leaves down.
    """
    needRoot()
    need("qemu-system-x86_64")
    argv, serial = guestCommand(
        ["-netdev", netdev],
        "ip link set eth0 up\nip addr add 10.219.8.2/24 dev eth0\nping -c 3 -W 5 10.219.8.1\n",
        "52:54:00:76:74:31", directory=shortdir, name=f"fd{kind}")
    tap = uniqueName("vtq")
    sw = vswitch("--port", f"tap:{tap}",
                 "--port", specFor(argv, kind, ":restart=off"))
    moveTap(tap, namespaces.add("vtq"), "10.219.8.1/24")
    rc, output = _guestOutput(serial, timeout=120)
    assert re.search(rf": qemu-system-x86_64 .*(addr|local)\.str=3.* \(pid \d+, {kind} socket "
                     r"on fd 3\) on port 2", sw.logText()), sw.logText()
    assert rc == 0 and "3 packets received" in output, output + sw.logText()
    waitFor(lambda: "not started again (restart=off)" in sw.logText(), timeout=30,
            what="QEMU's exit")
    assert "the command exited with status 0; not started again (restart=off)" in sw.logText()
    assert "Traceback" not in sw.logText(), sw.logText()


def test_vdePlugOnASeqpacketDescriptorBridgesANamespace(vswitch, namespaces, shortdir) -> None:
    """
    cmd:ip netns exec NS vde_plug seqpacket://{fd} tap://NAME:socket=seqpacket:
    vdeplug4's plug, run in a namespace with a TAP of its own, joins it to
    the switch: it pings a namespace behind the switch's TAP, with jumbo
    frames whole.
    """
    needRoot()
    need("vde_plug")
    far, near = namespaces.add("vtq"), namespaces.add("vtq")
    theirs, ours, mgmt = uniqueName("vtq"), uniqueName("vtq"), shortdir / "mgmt"
    sw = vswitch("--mgmt", str(mgmt), "--port", f"tap:{ours}:mtu=9000",
                 "--port", f"cmd:ip netns exec {far} vde_plug seqpacket://{{fd}} "
                           f"tap://{theirs}:socket=seqpacket:mtu=9000")
    moveTap(ours, near, "10.219.9.1/24", up=False)
    run("ip", "-n", near, "link", "set", ours, "mtu", "9000", "up")
    waitFor(lambda: run("ip", "-n", far, "link", "show", theirs, check=False).returncode == 0,
            timeout=20, what=f"vde_plug's {theirs} in {far}")
    run("ip", "-n", far, "addr", "add", "10.219.9.2/24", "dev", theirs)
    run("ip", "-n", far, "link", "set", theirs, "mtu", "9000", "up")
    waitForPing(near, "10.219.9.2", timeout=20)
    big = run("ip", "netns", "exec", near, "ping", "-c", "3", "-i", "0.2", "-M", "do", "-s",
              "8972", "-W", "2", "10.219.9.2", check=False)
    assert big.returncode == 0, big.stdout + big.stderr + sw.logText()
    assert "seqpacket socket on fd 3)" in console(mgmt, "port/print")
    assert "Traceback" not in sw.logText(), sw.logText()
