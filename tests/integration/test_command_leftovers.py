"""
What port/del leaves of a C{cmd:} command: a command stopped with
C{SIGSTOP} is ended by its C{TERM} (a C{CONT} follows it), not by the
C{KILL} 3 s later; a command that left its process group (C{setsid -f}, a
daemon) keeps no pipe or socket of the switch's open (the switch's
descriptors in /proc).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from commandhelpers import commandPid, groupAlive
from helpers import waitFor
from taphelpers import console

pytestmark = pytest.mark.integration


def _state(pid: int) -> str:
    """The state letter of process C{pid} (C{T}: stopped), C{?} if gone."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"



def test_aStoppedCommandIsEndedByItsTerm(vswitch, shortdir: Path) -> None:
    """
    A command whose process group is stopped (SIGSTOP) when its port is
    deleted gets TERM and CONT 3 s later: its TERM trap runs (writing a
    file, and a line on its standard error that the switch logs), which a
    KILL would never let it do.
    """
    mgmt, mark = shortdir / "mgmt", shortdir / "ended"
    # Its standard error is still the switch's, read until it is gone (the
    # shell may say there that its sleep was "Terminated", then the trap
    # speaks): were it closed with its input and output, a write to it
    # would end the shell on SIGPIPE, not its TERM.
    command = (f"sh -c 'trap \"echo TERM > {mark}; echo stopped-and-termed >&2; exit 0\" "
               f"TERM; while true; do sleep 0.2; done'")
    sw = vswitch("--mgmt", str(mgmt), "--port", f"cmd:{command}")
    waitFor(lambda: commandPid(mgmt) is not None, timeout=20, what="the command on port 1")
    pid = commandPid(mgmt)
    assert pid is not None
    try:
        os.killpg(pid, signal.SIGSTOP)
        waitFor(lambda: _state(pid) == "T", timeout=20, what="the command stopped")
        console(mgmt, "port/del 1")
        waitFor(mark.exists, timeout=30, what="the command's TERM trap")
        assert mark.read_text() == "TERM\n"
        waitFor(lambda: not groupAlive(pid), timeout=30, what="the command gone")
        waitFor(lambda: "the command says: stopped-and-termed" in sw.logText(), timeout=15,
                what="what its trap said in the log")
    finally:
        if groupAlive(pid):
            os.killpg(pid, signal.SIGKILL)


def _descriptors(pid: int) -> set[str]:
    """What the descriptors of process C{pid} are (C{pipe:[123]}, ...)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found


def _escapee(mark: Path) -> int | None:
    """The pid the command that left its group wrote down, once it did."""
    try:
        return int(mark.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("options", ["", ":socket=stream"])
def test_aCommandThatLeftItsGroupKeepsNothingOfTheSwitch(vswitch, shortdir: Path,
                                                         options: str) -> None:
    """
    A command that starts a process in a session of its own (setsid -f)
    which keeps the command's pipes (and socket) and never reads: while
    another command floods the switch with broadcasts, so frames wait for
    it in the switch, its port is deleted.  Killing the group cannot reach
    it, yet a little later none of the pipes or the socket it holds is
    open in the switch any more (the switch's /proc/PID/fd), and that is
    logged once; the process itself runs on (not the switch's to end).
    """
    mgmt, mark = shortdir / "mgmt", shortdir / "escapee"
    flood = shortdir / "flood.py"
    flood.write_text(
        "import os, time\n"
        "frame = b'\\xff' * 6 + b'\\x02' * 6 + b'\\x08\\x00' + b'x' * 1400\n"
        "record = len(frame).to_bytes(2, 'big') + frame\n"
        "for _ in range(4000):\n"
        "    os.write(1, record)\n"
        "time.sleep(3600)\n")
    descriptor = " {fd}" if options else ""
    # setsid -f: the process that stays leaves the group at once, and holds
    # standard input, output, error (and the socket) until it is killed.
    command = f"setsid -f sh -c 'echo $$ > {mark}; exec sleep 3600{descriptor}'"
    sw = vswitch("--mgmt", str(mgmt))
    switchPid = sw.process.pid
    # Once the console answers the reactor runs, and has made what it makes
    # as it starts (its SIGCHLD waker's pipe, after the sockets listen).
    console(mgmt, "port/print")
    before = _descriptors(switchPid)
    console(mgmt, f"port/add cmd:{command}{options}")
    escapee = None
    try:
        waitFor(lambda: _escapee(mark) is not None, timeout=20, what="the process that left")
        escapee = _escapee(mark)
        assert escapee is not None
        # The switch's ends of the run's pipes (the same as the process's)
        # and socket (its own: a pair's ends are two sockets; the console
        # session that added the port may not be closed yet, and is one).
        kinds = ("pipe:", "socket:") if options else ("pipe:",)
        held = {name for name in _descriptors(switchPid) - before if name.startswith(kinds)}
        pipes = {name for name in _descriptors(escapee) if name.startswith("pipe:")}
        assert pipes and pipes <= held, "the process that left holds the run's pipes"
        assert any(name.startswith("socket:") for name in held) == bool(options)
        console(mgmt, f"port/add cmd:{sys.executable} {flood}")
        waitFor(lambda: "pkts       4000" in console(mgmt, "port/print 2"), timeout=30,
                what="the flood in")
        console(mgmt, "port/del 1")
        waitFor(lambda: not held & _descriptors(switchPid), timeout=30,
                what="the switch's ends of what the process that left holds closed")
        waitFor(lambda: "left its process group and still holds its" in sw.logText(),
                timeout=10, what="the log")
        assert sw.logText().count("left its process group") == 1
        assert _state(escapee) not in ("?", "Z"), "it runs on: not the switch's to end"
    finally:
        if escapee is not None and _state(escapee) != "?":
            os.kill(escapee, signal.SIGKILL)
