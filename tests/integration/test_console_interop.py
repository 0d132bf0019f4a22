"""
The management console against the real thing: the same command scripts run
against Debian's C{vde_switch -M} and C{twistd vswitch --mgmt}, replies
compared; Debian's C{unixcmd}, C{unixterm} and C{vdeterm} (on a pty) used on
both.

Normalisations applied before comparing (L{normalise}), all of them values
that differ between any two runs of the same switch:
  - the second banner line (vde_switch's copyright line, our version line);
  - C{showinfo}'s pid, MAC address and uptime, and socket paths
    (C{mgmt PATH}, C{ctl dir DIR}, vdeterm's C{vde[PATH]:} prompt);
  - endpoint IDs (the switch's file descriptor numbers) and the C{pid=} in
    client descriptions;
  - MAC entry ages;
  - the age C{fstp/print} shows for a tree whose root is the switch
    itself (C{rootport 0000}): the switch's uptime, in both.
Intentional differences are tested on their own, not normalised away:
C{hash/find} prints the port (vde_switch 2.3.2 prints port+1), and
C{help} lists only the commands we have, plus ours.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import StreamPlug, need, socketListening, waitFor

from vtwisted.testing import frame

pytestmark = pytest.mark.integration

PROMPT = b"\nvde$ "
EOS = b"9999 END OF SESSION"
SENDER = bytes.fromhex("02000000000a")

#: Commands vde_switch has, with answers we must match: errors, ranges,
#: C parsing quirks, VLAN membership rules, counters.
SCRIPT = [
    "port/showinfo", "hash/showinfo", "ds/showinfo", "showinfo", "vlan/print", "port/print",
    "port/allprint", "port/print 40", "port/print 3", "port/print -1",
    "vlan/create 10", "vlan/create 10", "vlan/create 4094", "vlan/create 0", "vlan/create 4093",
    "port/create 9", "port/create 9", "port/create 99", "port/setvlan 9 10", "port/setvlan 9 11",
    "port/setvlan 9", "port/setvlan 0x9 012", "port/setvlan 9 4096", "port/setvlan 40 0",
    "vlan/addport 10 9", "vlan/addport 20 9", "vlan/addport 4094 9", "vlan/delport 10 9",
    "vlan/delport 7 9", "vlan/addport 0 9", "vlan/allprint", "vlan/delport 0 9",
    "vlan/print", "vlan/allprint", "vlan/allprint 0", "vlan/allprint 10", "vlan/print 4094",
    "vlan/print 11", "vlan/print 10xyz", "port/allprint 9", "port/setuser 9 root",
    "port/setgroup 9 nosuchgroup", "port/setuser 9 \u00b2", "port/setgroup 9 \u0663",
    "port/setuser 9", "port/setgroup 9 0",
    "port/allocatable 9 1", "port/allprint 9", "port/setuser 9 NONE", "port/setgroup 9 ANY",
    "port/epclose 9 3", "port/epclose 20 3", "port/epclose 9", "port/resetcounter 99",
    "port/resetcounter 9", "port/resetcounter", "port/setnumports 0", "port/setnumports 5",
    "port/sethub 1", "port/showinfo", "port/sethub 0", "hash/setexpire 50", "hash/setminper 5",
    "hash/setsize 100", "hash/showinfo", "hash/setexpire 100", "hash/setminper 3",
    "hash/find zz", "hash/find 1:2:3:4:5:6", "hash/print", "nosuchcmd", "hash/showinfoXYZ",
    "", "# a comment", "   port/showinfo", "\x0b", "\x0c\x1c", "\x85", "port/remove 9",
    "port/remove 9", "vlan/remove 10", "vlan/remove 10", "vlan/remove 5000", "vlan/remove 4093",
    "port/createauto", "port/allprint 1", "port/remove 1",
]

#: With two vde_plug clients that exchanged a broadcast.
TRAFFIC_SCRIPT = [
    "port/print", "port/print 2", "vlan/print", "vlan/allprint", "hash/print",
    "port/resetcounter 1", "port/print 1", "port/remove 1", "port/createauto",
]


def normalise(text: str) -> str:
    """
    Replace what differs between any two runs (see the module docstring).
    """
    text = re.sub(r"^\(C\) Virtual Square Team.*$|^vtwisted \S+ \(Twisted.*$", "<BANNER>",
                  text, flags=re.M)
    text = re.sub(r"pid \d+ MAC [0-9a-f:]{17} uptime \d+", "pid P MAC M uptime U", text)
    text = re.sub(r"^(mgmt|ctl dir) \S+", r"\1 PATH", text, flags=re.M)
    text = re.sub(r"endpoint ID \d{4}", "endpoint ID NNNN", text)
    text = re.sub(r"pid=\d+", "pid=P", text)
    text = re.sub(r"vde\[[^\]]*\]:", "vde[PATH]:", text)
    text = re.sub(r"rootport 0000 cost 0 age \d+ ", "rootport 0000 cost 0 age U ", text)
    return re.sub(r"age \d+ secs", "age A secs", text)


class ConsoleClient:
    """
    A raw console session: one write per command, read up to the prompt.
    """

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.settimeout(timeout)
        self.socket.connect(str(path))
        self.banner = self.read()

    def read(self) -> bytes:
        data = b""
        while not (data.endswith(PROMPT) or data.endswith(EOS)):
            chunk = self.socket.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    def command(self, text: str | bytes) -> bytes:
        raw = text if isinstance(text, bytes) else text.encode()
        self.socket.sendall(raw + b"\n")
        return self.read()

    def close(self) -> None:
        self.socket.close()


def transcript(path: Path, script: list[str]) -> list[tuple[str, str]]:
    client = ConsoleClient(path)
    try:
        return [(line, normalise(client.command(line).decode())) for line in script]
    finally:
        client.close()


def startRealSwitch(processes, directory: Path, name: str = "real"):
    """
    Debian's vde_switch with a console, stdin kept open (EOF would stop it).
    """
    need("vde_switch")
    mgmt = directory / f"{name}.mgmt"
    process = processes.start(
        ["vde_switch", "-s", str(directory / name), "-M", str(mgmt)], stdin=subprocess.PIPE
    )
    waitFor(lambda: socketListening(mgmt), what="vde_switch console")
    process.mgmt = mgmt
    process.sock = directory / name
    return process


@pytest.fixture
def realSwitch(processes, shortdir):
    return startRealSwitch(processes, shortdir)


@pytest.fixture
def ourSwitch(vswitch, shortdir):
    mgmt = shortdir / "ours.mgmt"
    sw = vswitch("--mgmt", str(mgmt))
    waitFor(lambda: socketListening(mgmt), what="vswitch console")
    sw.mgmt = mgmt
    return sw


def assertSameTranscripts(real: list, ours: list) -> None:
    mismatches = [(r[0], r[1], o[1]) for r, o in zip(real, ours) if r != o]
    assert not mismatches, "\n".join(
        f"--- {cmd!r}\nvde_switch:\n{r}\nvswitch:\n{o}" for cmd, r, o in mismatches
    )


def test_scriptRepliesMatchVdeSwitch(realSwitch, ourSwitch) -> None:
    """Every reply of the comparison script is the same as vde_switch's."""
    assertSameTranscripts(
        transcript(realSwitch.mgmt, SCRIPT), transcript(ourSwitch.mgmt, SCRIPT)
    )


def test_repliesWithClientsAndTrafficMatch(realSwitch, ourSwitch, processes) -> None:
    """With two vde_plug clients after a broadcast: ports, counters, VLANs, MACs match."""
    need("vde_plug")
    transcripts: list[list[tuple[str, str]]] = []
    found: list[str] = []
    for sock, mgmt in ((realSwitch.sock, realSwitch.mgmt), (ourSwitch.sock, ourSwitch.mgmt)):
        a = StreamPlug(processes, f"vde://{sock}")
        waitFor(lambda m=mgmt: b"Port 0001" in ConsoleClient(m).command("port/print"),
                what="client A")
        b = StreamPlug(processes, f"vde://{sock}")
        waitFor(lambda m=mgmt: b"Port 0002" in ConsoleClient(m).command("port/print"),
                what="client B")
        a.send(frame(b"\xff" * 6, SENDER))
        assert b.receive() is not None
        transcripts.append(transcript(mgmt, TRAFFIC_SCRIPT))
        findReply = ConsoleClient(mgmt).command("hash/find 02:00:00:00:00:0a").decode()
        port = re.search(r"to port: (\d+)", findReply)
        assert port is not None, findReply
        found.append(port.group(1))
    real, ours = transcripts
    realFound, ourFound = found
    assertSameTranscripts(real, ours)
    assert "Port 0001 untagged_vlan=0000 ACTIVE" in ours[0][1]
    assert (realFound, ourFound) == ("002", "001")  # vde_switch 2.3.2 prints port+1


def helpRows(reply: bytes) -> list[str]:
    lines = reply.decode().splitlines()
    return lines[3 : lines.index(".")]


def test_helpListsVdeRowsVerbatim(realSwitch, ourSwitch) -> None:
    """Our help rows for vde_switch's commands are its rows, in its order."""
    realReply = ConsoleClient(realSwitch.mgmt).command("help")
    ourReply = ConsoleClient(ourSwitch.mgmt).command("help")
    assert ourReply.splitlines()[:3] == realReply.splitlines()[:3]
    real, ours = helpRows(realReply), helpRows(ourReply)
    realPaths = [row.split()[0] for row in real]
    ourPaths = [row.split()[0] for row in ours]
    # The one row we word differently: vde_switch 2.3.2 says "add port to the
    # vlan N (tagged)" for vlan/delport; its later releases fixed it as we do.
    fixed = "vlan/delport       N PORT          delete port from the vlan N (tagged)"
    assert fixed in ours
    shared = [row for row in ours if row.split()[0] in realPaths and row != fixed]
    assert shared == [row for row in real if row in shared]
    assert len(shared) == len([p for p in ourPaths if p in realPaths]) - 1
    extras = [p for p in ourPaths if p not in realPaths]
    assert extras == ["hash/stats", "port/stats", "port/impair", "port/specs", "port/types",
                      "port/add",
                      "port/del", "slirp",
                      "slirp/print", "slirp/hostfwd_add", "slirp/hostfwd_remove", "vxlan",
                      "vxlan/print"]
    assert set(realPaths) - set(ourPaths) == set(), "every vde_switch command is there"


def test_bannerAndLogoutBytes(realSwitch, ourSwitch) -> None:
    """Banner shape and the logout bytes match."""
    replies = []
    for mgmt in (realSwitch.mgmt, ourSwitch.mgmt):
        client = ConsoleClient(mgmt)
        replies.append((normalise(client.banner.decode()), client.command("logout")))
        assert client.socket.recv(10) == b""
    assert replies[0] == replies[1] == ("VDE switch V.2.3.2\n<BANNER>\n\nvde$ ", EOS)


def test_loadScriptMatches(realSwitch, ourSwitch, shortdir) -> None:
    """load PATH echoes and answers as vde_switch does."""
    script = shortdir / "cmds.rc"
    script.write_text("vlan/create 30\nbogus\nport/create 4\nport/setvlan 4 30\nvlan/allprint\n")
    assertSameTranscripts(
        transcript(realSwitch.mgmt, [f"load {script}", "load /no/such/file"]),
        transcript(ourSwitch.mgmt, [f"load {script}", "load /no/such/file"]),
    )


def test_loadOfAFifoAnswersAtOnceAndTheSwitchGoesOn(ourSwitch, processes, shortdir) -> None:
    """
    load of a FIFO nobody writes to (vde_switch would wait for a writer,
    frozen) answers 1022 Invalid argument at once; the switch still answers
    and forwards between two vde_plug clients.
    """
    need("vde_plug")
    fifo = shortdir / "script.fifo"
    os.mkfifo(fifo)
    a = StreamPlug(processes, f"vde://{ourSwitch.sock}")
    b = StreamPlug(processes, f"vde://{ourSwitch.sock}")
    client = ConsoleClient(ourSwitch.mgmt, timeout=3.0)
    waitFor(lambda: b"Port 0002" in client.command("port/print"), what="two clients")
    started = time.monotonic()
    try:
        reply = client.command(f"load {fifo}")
    finally:
        with contextlib.suppress(OSError):  # free a switch left waiting, if it was
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert reply == b"1022 Invalid argument\n" + PROMPT
    assert time.monotonic() - started < 1.0
    assert b"Port 0001" in client.command("port/print")
    a.send(frame(b"\xff" * 6, SENDER))
    assert b.receive() is not None


# The stock clients


@pytest.mark.parametrize("command", ["port/showinfo", "vlan/print", "hash/showinfo", "nosuch"])
def test_unixcmdSeesTheSameAsWithVdeSwitch(realSwitch, ourSwitch, command) -> None:
    """unixcmd with Debian's script prints the same bytes and exits alike."""
    need("unixcmd")
    results = []
    for mgmt in (realSwitch.mgmt, ourSwitch.mgmt):
        done = subprocess.run(["unixcmd", "-s", str(mgmt), "-f", "/etc/vde2/vdecmd", command],
                              capture_output=True, timeout=20)
        results.append((done.returncode, done.stdout))
    assert results[0] == results[1]


def test_unixtermRelaysASession(realSwitch, ourSwitch) -> None:
    """unixterm shows the same session with either switch."""
    need("unixterm")
    outputs = []
    for mgmt in (realSwitch.mgmt, ourSwitch.mgmt):
        term = subprocess.Popen(["unixterm", str(mgmt)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        output = b""
        assert term.stdin is not None
        for line in (b"port/showinfo\n", b"vlan/print 0\n", b"logout\n"):
            time.sleep(0.2)
            term.stdin.write(line)
            term.stdin.flush()
        try:
            output, _ = term.communicate(timeout=10)
        finally:
            if term.poll() is None:
                term.kill()
        # unixterm exits on the hang-up and may or may not show the 9999 first.
        outputs.append(normalise(output.decode()).removesuffix(EOS.decode()))
    assert outputs[0] == outputs[1]
    assert "Numports=32" in outputs[1] and "VLAN 0000" in outputs[1]


def vdetermSession(mgmt: Path, keys: list[bytes]) -> str:
    """
    Drive vdeterm on a pty: wait for its prompt, type each key sequence and
    collect what the terminal shows until the result line.
    """
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execvp("vdeterm", ["vdeterm", str(mgmt)])
    seen = b""

    def readUntil(marker: bytes, start: int, timeout: float = 10) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen[start:] and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    return

    try:
        readUntil(b"]: ", 0)
        for key in keys:
            start = len(seen)
            os.write(fd, key)
            readUntil(b"Success", start)
            readUntil(b"]: ", seen.index(b"Success", start))
            assert b"Success" in seen[start:], seen
            readUntil(b"\0never\0", len(seen), timeout=0.3)  # let redraws settle
    finally:
        os.write(fd, b"logout\n")
        os.waitpid(pid, 0)
        os.close(fd)
    return seen.decode(errors="replace")


def screenLines(screen: str) -> list[str]:
    """
    The lines vdeterm's terminal shows in the end.  vdeterm erases and
    redraws its prompt line (backspaces, spaces, backspaces) each time the
    switch's output wakes it up, and how often that happens depends on how
    a reply was split into reads (vde_switch writes the reply and the prompt
    separately), so the bytes differ from run to run; the screen does not.
    """
    lines: list[list[str]] = [[]]
    column = 0
    for ch in screen:
        if ch == "\n":
            lines.append([])
            column = 0
        elif ch == "\r":
            column = 0
        elif ch == "\x08":
            column = max(0, column - 1)
        elif ch.isprintable():
            line = lines[-1]
            line.extend(" " * (column + 1 - len(line)))
            line[column] = ch
            column += 1
    return [normalise("".join(line).rstrip()) for line in lines if "".join(line).strip()]


def test_vdetermCompletesAndRunsCommands(realSwitch, ourSwitch) -> None:
    """vdeterm builds its prompt, completes from help, runs commands: same screen."""
    need("vdeterm")
    keys = [b"hash/showi\t\n", b"port/showinfo\n"]
    screens = [screenLines(vdetermSession(m, keys)) for m in (realSwitch.mgmt, ourSwitch.mgmt)]
    assert screens[0] == screens[1]
    assert screens[1][2:] == [
        "vde[PATH]: hash/showinfo", "Hash size 128", "GC interval 2 secs",
        "GC expire 100 secs", "Min persistence 3 secs", "Success", "vde[PATH]: port/showinfo",
        "Numports=32", "HUB=false", "counters=true", "Success", "vde[PATH]:",
    ]


#: The FSTP menu: settings, errors, hub mode, trees with and without FSTP.
FSTP_SCRIPT = [
    "fstp/showinfo", "fstp/print", "fstp/print 0", "vlan/create 10", "fstp/print 10",
    "fstp/print 11", "fstp/print 5000", "fstp/print -1", "fstp/setedge 0 1 1",
    "fstp/setedge 11 1 1", "fstp/setedge 0 99 1", "fstp/setedge 0", "fstp/bonus 0 1 100",
    "fstp/bonus 12 1 100", "fstp/bonus 0 1", "fstp/print 0", "fstp/setfstp 1",
    "fstp/showinfo", "fstp/print", "port/sethub 1", "fstp/setfstp 1", "fstp/showinfo",
    "port/sethub 0", "fstp/setfstp 1", "fstp/setfstp 0", "fstp/showinfo",
]


def test_fstpRepliesMatchVdeSwitch(vswitch, processes, shortdir) -> None:
    """The fstp/ menu answers as vde_switch's does, for the same switch address."""
    need("vde_switch")
    realMgmt, ourMgmt = shortdir / "real.mgmt", shortdir / "ours.mgmt"
    processes.start(["vde_switch", "-s", str(shortdir / "real"), "-M", str(realMgmt),
                     "--macaddr", "02:00:00:00:00:07"], stdin=subprocess.PIPE)
    vswitch("--mgmt", str(ourMgmt), "--macaddr", "02:00:00:00:00:07")
    waitFor(lambda: socketListening(realMgmt) and socketListening(ourMgmt), what="consoles")
    assertSameTranscripts(transcript(realMgmt, FSTP_SCRIPT), transcript(ourMgmt, FSTP_SCRIPT))


#: The debug and plugin menus, and hash/setgcint, on a fresh session.
DEBUG_SCRIPT = [
    "debug/list", "debug/list port", "debug/list zz", "debug/del port", "debug/add zz",
    "debug/add port", "debug/add port", "debug/list", "debug/del zz", "debug/del port",
    "debug/del port", "debug/add fstp/s", "debug/list fstp", "debug/add", "debug/add",
    "debug/list", "debug/del", "plugin/list", "plugin/list x", "plugin/add", "plugin/del x",
    "plugin/del", "hash/setgcint 5", "hash/showinfo", "hash/setgcint abc", "hash/showinfo",
    "hash/setgcint 2",
]


def test_debugAndPluginMenusMatchVdeSwitch(realSwitch, ourSwitch) -> None:
    """debug/*, plugin/* and hash/setgcint answer as vde_switch's do."""
    assertSameTranscripts(transcript(realSwitch.mgmt, DEBUG_SCRIPT),
                          transcript(ourSwitch.mgmt, DEBUG_SCRIPT))


def _readUntil(client: ConsoleClient, marker: bytes, timeout: float = 10.0) -> bytes:
    """
    What the session reads until a line with C{marker} arrives (or the time
    is up), and a moment more.
    """
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError, socket.timeout):
            data += client.socket.recv(65536)
    with contextlib.suppress(TimeoutError, socket.timeout):
        data += client.socket.recv(65536)
    return data


def debugLines(mgmt: Path, sock: Path, processes) -> list[str]:
    """
    Listen to every debug event while a vde_plug client joins, sends a
    broadcast and leaves; the event lines, with descriptors and pids made
    alike.
    """
    client = ConsoleClient(mgmt, timeout=0.5)
    client.command("debug/add")
    plug = StreamPlug(processes, f"vde://{sock}", "--descr=dbg-client")
    waitFor(lambda: b"Port 0001" in ConsoleClient(mgmt).command("port/print"), what="client")
    plug.send(frame(b"\xff" * 6, SENDER))
    data = _readUntil(client, b"hash/+")
    processes.stop(plug.process)
    data += _readUntil(client, b"hash/-")
    client.close()
    text = re.sub(r"FD +\d+", "FD N", data.decode())
    text = re.sub(r"pid=\d+", "pid=P", text)
    return [line for line in text.splitlines() if line.startswith("3")]


def test_debugEventsMatchVdeSwitch(realSwitch, ourSwitch, processes, shortdir) -> None:
    """A client's life shows as the same debug event lines as with vde_switch."""
    need("vde_plug")
    real = debugLines(realSwitch.mgmt, realSwitch.sock, processes)
    if not any(" hash/- " in line for line in real):
        # Once in a CI run, vde_switch showed no event at all in the 10 s
        # after its client ended.  The reference is only a reference when
        # complete: take it once more from a fresh vde_switch.
        again = startRealSwitch(processes, shortdir, "again")
        real = debugLines(again.mgmt, again.sock, processes)
    ours = debugLines(ourSwitch.mgmt, ourSwitch.sock, processes)
    assert real == ours
    assert ours[0] == "3021 port/+ 01" and "3011 hash/+ 02:00:00:00:00:0a VLAN 00:00 Port 1" in ours
