"""
C{twistd vswitch --mgmt} as a user meets it: socket permissions, stale and
live sockets, shutdown, C{--rcfile}, bad input and many sessions, and ports
added and deleted at run time (a TAP device, a VDE directory, listeners
deleted and added again in one write).
"""

from __future__ import annotations

import grp
import os
import random
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import (
    Processes,
    StreamPlug,
    copiesOf,
    need,
    needRoot,
    procStatus,
    run,
    socketListening,
    sourceEnv,
    twistdArgv,
    uniqueName,
    waitFor,
)
from test_console_interop import EOS, PROMPT, ConsoleClient

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration


def start(vswitch, shortdir, *args: str):
    mgmt = shortdir / "mgmt"
    sw = vswitch("--mgmt", str(mgmt), *args)
    waitFor(lambda: socketListening(mgmt), what="console")
    sw.mgmt = mgmt
    return sw


def test_defaultModeIs0600AndGroupApplies(vswitch, shortdir) -> None:
    """The console socket is 0600 by default; --mgmt-mode and --mgmt-group apply."""
    sw = start(vswitch, shortdir)
    assert stat.S_IMODE(os.stat(sw.mgmt).st_mode) == 0o600
    other = shortdir / "mgmt2"
    vswitch("--mgmt", str(other), "--mgmt-mode", "0660", "--mgmt-group", "daemon")
    waitFor(lambda: socketListening(other), what="second console")
    st = os.stat(other)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam("daemon").gr_gid


def test_staleSocketReplacedAndRemovedOnStop(vswitch, processes, shortdir) -> None:
    """A socket left by a dead switch is replaced; SIGTERM removes it again."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(shortdir / "mgmt"))
    stale.close()
    sw = start(vswitch, shortdir)
    assert ConsoleClient(sw.mgmt).command("port/showinfo").startswith(b"0000 DATA")
    processes.stop(sw.process, signal.SIGTERM)
    assert not sw.mgmt.exists()
    assert "replacing stale socket" in sw.logText()


def test_liveSocketStopsASecondSwitch(vswitch, shortdir) -> None:
    """A second switch on a live console socket fails clearly; the first goes on."""
    sw = start(vswitch, shortdir)
    second = run(*twistdArgv("--sock", str(shortdir / "other"), "--mgmt", str(sw.mgmt)),
                 check=False, timeout=60)
    output = second.stdout + second.stderr
    assert second.returncode != 0
    assert f"--mgmt {sw.mgmt}: another console is listening there" in output, output
    assert ConsoleClient(sw.mgmt).command("vlan/print").endswith(PROMPT)


def test_shutdownStopsTheSwitchAndCleansUp(vswitch, shortdir) -> None:
    """shutdown answers 9999, the switch exits 0 and removes its sockets."""
    sw = start(vswitch, shortdir)
    assert ConsoleClient(sw.mgmt).command("shutdown") == EOS
    assert sw.process.wait(20) == 0
    assert not sw.mgmt.exists() and not sw.sock.exists()
    assert "shutdown requested" in sw.logText()


def test_rcfileConfiguresAtStartAndLogsBadLines(vswitch, shortdir) -> None:
    """--rcfile runs at start: good lines apply, a bad one is logged with its number."""
    rc = shortdir / "vswitch.rc"
    lab = shortdir / "rclab"
    rc.write_text("vlan/create 10\nport/setvlan 5 10\nport/create 5\nport/setvlan 5 10\n"
                  f"port/add vde:{lab}\nlogout\n")
    sw = start(vswitch, shortdir, "--rcfile", str(rc))
    client = ConsoleClient(sw.mgmt)
    reply = client.command("port/allprint 5").decode()
    assert "Port 0005 untagged_vlan=0010 INACTIVE - NOT Unnamed Allocatable" in reply
    assert f"Spec vde:{lab} ports=none listening runtime" in client.command("port/specs").decode()
    assert socketListening(lab / "ctl")
    log = sw.logText()
    assert f"rcfile {rc} line 2: 'port/setvlan 5 10': 1006 No such device or address" in log
    assert "6 lines run, 1 failed" in log and "Traceback" not in log


#: A C{load} reply is cut a little past 1 MiB; more than this is a failure.
MOST_REPLY = 2 * 1024 * 1024
#: How much the switch may grow while it answers a load of the largest script.
LOAD_GROWTH = 16 * 1024 * 1024


def readReply(client: ConsoleClient) -> bytes:
    """
    One reply, read up to the prompt, failing once it is past L{MOST_REPLY}.
    """
    data = bytearray()
    while not data.endswith(PROMPT) and len(data) <= MOST_REPLY:
        chunk = client.socket.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    assert len(data) <= MOST_REPLY, f"a reply of more than {MOST_REPLY} bytes"
    return bytes(data)


def test_loadOfTheLargestScriptStaysSmallAndTheSwitchAnswers(vswitch, shortdir) -> None:
    """
    load of a 1 MiB script of help lines (900 MB of replies, were they all
    kept) answers about 1 MiB, ending 1105 No buffer space available, within
    seconds; the switch's peak memory grows by a few MB; the lines after the
    cut did not run, and the switch answers the next command.
    """
    sw = start(vswitch, shortdir)
    script = shortdir / "help.rc"
    script.write_bytes(b"help\n" * (1024 * 1024 // 5 - 4) + b"vlan/create 14\n")
    assert script.stat().st_size <= 1024 * 1024
    client = ConsoleClient(sw.mgmt, timeout=30)
    before = procStatus(sw.process.pid, "VmHWM")
    client.socket.sendall(f"load {script}\n".encode())
    reply = readReply(client)
    growth = procStatus(sw.process.pid, "VmHWM") - before
    assert reply.startswith(f"vde[{script}]: help\n0000 DATA END WITH '.'\n".encode())
    assert reply.endswith(b"1000 Success\n1105 No buffer space available\n" + PROMPT)
    assert len(reply) > 1024 * 1024
    assert growth < LOAD_GROWTH, f"grew by {growth >> 20} MB"
    assert client.command("vlan/print").endswith(b"VLAN 0000\n.\n1000 Success\n" + PROMPT)


def test_rcfileThatIsAFifoStopsStartUpSayingSo(processes, shortdir) -> None:
    """
    --rcfile naming a FIFO nobody writes to stops twistd at once with a
    message (it would otherwise hold the switch until written to).
    """
    fifo = shortdir / "rc.fifo"
    os.mkfifo(fifo)
    process = processes.start(
        twistdArgv("--sock", str(shortdir / "sw"), "--rcfile", str(fifo),
                   logfile=str(shortdir / "rc.log")),
        env=sourceEnv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # free it before failing
        raise
    assert process.returncode != 0
    assert f"--rcfile {fifo}: a FIFO, not a regular file" in output.decode(), output


def test_badInputGetsConsoleAnswersOnly(vswitch, shortdir) -> None:
    """Huge lines and binary junk get 1NNN answers; another session never notices."""
    sw = start(vswitch, shortdir)
    bystander = ConsoleClient(sw.mgmt)
    bystander.command("vlan/create 10")
    client = ConsoleClient(sw.mgmt)
    assert client.command(b"x" * 300_000) == b"1007 Argument list too long\n" + PROMPT
    rng = random.Random(20261125)
    for _ in range(20):
        junk = bytes(b for b in rng.randbytes(4000) if b not in b"\n")[:3000]
        reply = client.command(junk)
        assert reply in (b"1038 Function not implemented\n" + PROMPT, PROMPT), (junk, reply)
    assert client.command(b"\x0b\x00" + bytes(range(1, 10))) == (
        b"1038 Function not implemented\n" + PROMPT)
    assert client.command(b"\x00\x01\x02port/print") == PROMPT
    assert client.command("port/showinfo").endswith(b"1000 Success\n" + PROMPT)
    assert b"VLAN 0010" in bystander.command("vlan/print")
    assert "Traceback" not in sw.logText()


def test_clientsVanishingMidCommand(vswitch, shortdir) -> None:
    """Clients closing halfway through a command change nothing."""
    sw = start(vswitch, shortdir)
    for partial in (b"vlan/create 7", b"port/create", b"\xff" * 100_000):
        client = ConsoleClient(sw.mgmt)
        client.socket.sendall(partial)
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        client.close()
    reply = ConsoleClient(sw.mgmt).command("vlan/print 7")
    assert reply.endswith(b"1006 No such device or address\n" + PROMPT)
    assert "Traceback" not in sw.logText()


def test_manySessionsAtOnce(vswitch, shortdir) -> None:
    """64 sessions are served at once; the 65th reads 1024 and is closed."""
    sw = start(vswitch, shortdir)
    sessions = [ConsoleClient(sw.mgmt) for _ in range(64)]
    for i, session in enumerate(sessions):
        session.socket.sendall(f"vlan/create {i + 1}\n".encode())
    assert all(s.read() == b"1000 Success\n" + PROMPT for s in sessions)
    extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    extra.settimeout(5)
    extra.connect(str(sw.mgmt))
    assert extra.recv(100) == b"1024 Too many open files\n"
    assert extra.recv(100) == b""
    sessions.pop().close()
    waitFor(lambda: ConsoleClient(sw.mgmt).banner.endswith(PROMPT), what="a free session")
    assert sessions[0].command("vlan/print 64").startswith(b"0000 DATA END WITH '.'\nVLAN 0064")


def test_tapPortAddedAndDeletedAtRunTime(vswitch, shortdir) -> None:
    """port/add tap:NAME opens the device on a port; port/del removes both."""
    needRoot()
    name = uniqueName("vtwc")
    sw = start(vswitch, shortdir)
    client = ConsoleClient(sw.mgmt)
    reply = client.command(f"port/add tap:{name}:vlan=20").decode()
    assert reply.startswith(f"0000 DATA END WITH '.'\nSpec tap:{name}:vlan=20\nPort 0001\n.\n")
    assert run("ip", "link", "show", name, check=False).returncode == 0
    port = client.command("port/print 1").decode()
    assert re.search(rf"  -- endpoint ID 0000 module tuntap      : {name} offload=\S+", port)
    assert "untagged_vlan=0020 ACTIVE" in port
    assert " -- Port 0001 tagged=0 active=1 status=Forwarding" in client.command(
        "vlan/print 20").decode()
    assert client.command("port/del 1").decode().startswith(
        f"0000 DATA END WITH '.'\nPort 0001\nSpec tap:{name}:vlan=20\n.\n1000 Success")
    waitFor(lambda: run("ip", "link", "show", name, check=False).returncode != 0,
            what=f"{name} to go")
    assert client.command("port/allprint 1").endswith(b"1006 No such device or address\n"
                                                      + PROMPT)
    assert f"tap:{name}" not in client.command("port/specs").decode()


def test_vdeDirectoryAddedAtRunTime(vswitch, processes, shortdir) -> None:
    """port/add vde:DIR listens; port/del N kicks its client; port/del SPEC removes it."""
    need("vde_plug")
    sw = start(vswitch, shortdir)
    client = ConsoleClient(sw.mgmt)
    lab = shortdir / "lab"
    spec = f"vde:{lab}:vlan=all"
    assert client.command(f"port/add {spec}") == (
        f"0000 DATA END WITH '.'\nSpec {spec}\n.\n1000 Success\n".encode() + PROMPT
    )
    plug = StreamPlug(processes, f"vde://{lab}")
    waitFor(lambda: b"module unix prog" in client.command("port/print"), what="client")
    assert f"Spec {spec} ports=0001 listening runtime" in client.command("port/specs").decode()
    stats = client.command("port/stats 1").decode()
    assert "all_vlans=1" in stats and f" spec: {spec}" in stats
    assert client.command("port/del 1").decode().startswith(
        "0000 DATA END WITH '.'\nPort 0001\n.\n1000 Success")
    waitFor(plug.exited, what="vde_plug to be kicked")
    assert lab.is_dir()
    assert client.command(f"port/del {spec}").startswith(b"0000 DATA END WITH '.'\nSpec ")
    waitFor(lambda: not lab.exists(), what="the directory to go")
    assert client.command(f"port/del {spec}").endswith(
        b"1002 No such file or directory\n" + PROMPT)


def _endpoints(mgmt: Path) -> int:
    return ConsoleClient(mgmt).command("port/print").count(b"-- endpoint ID")


def _broadcast(tag: bytes) -> tuple[bytes, bytes]:
    payload = tag + bytes(40)
    return frame(b"\xff" * 6, mac(0x31), payload=payload), payload


def _qemuClient(mgmt: Path, path: Path, host: StreamPlug, processes: Processes) -> None:
    """A client of QEMU's stream format (4-byte length) sends a broadcast."""
    with socket.socket(socket.AF_UNIX) as guest:
        guest.connect(str(path))
        waitFor(lambda: _endpoints(mgmt) == 2, what="the guest's port")  # and the host's
        sent, payload = _broadcast(b"from-the-guest-")
        guest.sendall(len(sent).to_bytes(4, "big") + sent)
        assert copiesOf(host, payload) == 1


def _pcapClient(mgmt: Path, path: Path, host: StreamPlug, processes: Processes) -> None:
    """A capture reader gets the file header, then the frame a host sends."""
    with socket.socket(socket.AF_UNIX) as reader:
        reader.settimeout(10)
        reader.connect(str(path))
        assert reader.recv(24, socket.MSG_WAITALL)[:4] == b"\xd4\xc3\xb2\xa1"
        sent, payload = _broadcast(b"captured-")
        host.send(sent)
        record = b""
        while payload not in record:
            chunk = reader.recv(65536)
            assert chunk, "the capture ended"
            record += chunk


def _vdeClient(mgmt: Path, path: Path, host: StreamPlug, processes: Processes) -> None:
    """C{vde_plug} joins the directory and sends a broadcast."""
    plug = StreamPlug(processes, f"vde://{path.parent}")
    waitFor(lambda: _endpoints(mgmt) == 2, what="vde_plug's port")
    sent, payload = _broadcast(b"from-the-plug-")
    plug.send(sent)
    assert copiesOf(host, payload) == 1


@pytest.mark.parametrize("kind", ["qemu", "pcap", "vde"])
def test_listenerDeletedAndAddedAgainInOneWrite(vswitch, processes, shortdir, kind) -> None:
    """
    C{port/del SPEC} and C{port/add SPEC} of a spec listening on a Unix
    socket, sent in one write (as from a script piped to the console): the
    spec listens again at once, where the add found its own socket still
    there before (Twisted closed it on the reactor's next turn), and a
    client of the new listener is served.
    """
    need("vde_plug")
    sw = start(vswitch, shortdir)
    spec, path, client = {
        "qemu": (f"qemu:unix:{shortdir}/vm.sock", shortdir / "vm.sock", _qemuClient),
        "pcap": (f"pcap:listen:unix:{shortdir}/lab.cap", shortdir / "lab.cap", _pcapClient),
        "vde": (f"vde:{shortdir}/lab", shortdir / "lab" / "ctl", _vdeClient),
    }[kind]
    console = ConsoleClient(sw.mgmt)
    assert console.command(f"port/add {spec}").endswith(b"1000 Success\n" + PROMPT)
    console.socket.sendall(f"port/del {spec}\nport/add {spec}\n".encode())
    replies = b""
    while replies.count(PROMPT) < 2:
        chunk = console.socket.recv(65536)
        assert chunk, replies
        replies += chunk
    removed, added, _ = replies.decode().split(PROMPT.decode())
    assert removed == f"0000 DATA END WITH '.'\nSpec {spec}\n.\n1000 Success\n", removed
    assert added.startswith(f"0000 DATA END WITH '.'\nSpec {spec}\n"), added
    assert added.endswith("1000 Success\n"), added
    before = _endpoints(sw.mgmt)
    host = StreamPlug(processes, f"vde://{sw.sock}")
    waitFor(lambda: _endpoints(sw.mgmt) == before + 1, what="the host's port")
    client(sw.mgmt, path, host, processes)


def test_startupSpecsShowInPortSpecs(vswitch, shortdir) -> None:
    """Specs from the command line are listed as startup ones."""
    sw = start(vswitch, shortdir)
    reply = ConsoleClient(sw.mgmt).command("port/specs").decode()
    assert f"Spec vde:{sw.sock} ports=none listening startup" in reply


def test_twistdHelpDocumentsManagementOptions() -> None:
    """twistd vswitch --help lists the console and manhole options."""
    done = subprocess.run(twistdArgv("--help"), capture_output=True, text=True,
                          env=sourceEnv(), timeout=60)
    for option in ("--mgmt=", "--mgmt-mode=", "--rcfile=", "--manhole=", "--manhole-keys="):
        assert option in done.stdout


def test_stdinConsoleAnswersAndItsEndStopsTheSwitch(processes, shortdir) -> None:
    """
    With --stdin, commands piped in are answered on standard output (no
    banner, no prompt: it is not a terminal), and the end of input stops
    the switch cleanly, as with vde_switch; a last line without its newline
    runs too, as there.
    """
    sock = shortdir / "stdin-sw"
    process = processes.start(
        twistdArgv("--sock", str(sock), "--stdin", logfile=str(shortdir / "stdin.log")),
        env=sourceEnv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    waitFor(lambda: socketListening(sock / "ctl"), what="the switch")
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"vlan/create 7\nvlan/print 7\nnosuch")
    process.stdin.close()
    assert process.wait(20) == 0
    output = process.stdout.read().decode()
    assert output == ("1000 Success\n"
                      "0000 DATA END WITH '.'\nVLAN 0007\n.\n1000 Success\n"
                      "1038 Function not implemented\n"), output
    assert not sock.exists(), "a clean stop removes the switch's directory"


def test_anotherUserOnASharedConsoleMayNotAddPorts(vswitch, shortdir) -> None:
    """
    With the console open to all (--mgmt-mode 0666), a session of user
    nobody may print ports but not add a capture port, which would make the
    switch write a file as root; root's session may.
    """
    need("unixcmd")
    need("setpriv")
    mgmt, capture = shortdir / "mgmt", shortdir / "stranger.pcap"
    os.chmod(shortdir, 0o755)
    vswitch("--mgmt", str(mgmt), "--mgmt-mode", "0666")

    def ask(*user: str, command: str) -> str:
        done = subprocess.run([*user, "unixcmd", "-s", str(mgmt), "-f", "/etc/vde2/vdecmd",
                               command], capture_output=True, text=True, timeout=20)
        return done.stdout + done.stderr

    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    assert "Hash size" in ask(*nobody, command="hash/showinfo")
    refused = ask(*nobody, command=f"port/add pcap:{capture}")
    assert "only the switch's own user (or root)" in refused and not capture.exists(), refused
    ask(command=f"port/add pcap:{capture}")
    assert capture.exists()
