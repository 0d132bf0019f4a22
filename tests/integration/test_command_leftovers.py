"""
What port/del leaves of a C{cmd:} command: a command stopped with
C{SIGSTOP} is ended by its C{TERM} (a C{CONT} follows it), not by the
C{KILL} 3 s later; a command that left its process group (C{setsid -f}, a
daemon) keeps no pipe or socket of the switch's open (the switch's
descriptors in /proc).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from helpers import waitFor
from taphelpers import console

pytestmark = pytest.mark.integration

PID = re.compile(r"module command\s*: .*\(pid (\d+)")


def _commandPid(mgmt: Path) -> int | None:
    found = PID.search(console(mgmt, "port/print"))
    return int(found.group(1)) if found else None


def _state(pid: int) -> str:
    """The state letter of process C{pid} (C{T}: stopped), C{?} if gone."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def _groupAlive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_aStoppedCommandIsEndedByItsTerm(vswitch, shortdir: Path) -> None:
    """
    A command whose process group is stopped (SIGSTOP) when its port is
    deleted gets TERM and CONT 3 s later: its TERM trap runs (writing a
    file), which a KILL would never let it do.
    """
    mgmt, mark = shortdir / "mgmt", shortdir / "ended"
    # Its output and error go nowhere: the switch closes its pipes first
    # (a write to them would end it on SIGPIPE, not its TERM).
    command = (f"sh -c 'exec >/dev/null 2>&1; "
               f"trap \"echo TERM > {mark}; exit 0\" TERM; while true; do sleep 0.2; done'")
    vswitch("--mgmt", str(mgmt), "--port", f"cmd:{command}")
    waitFor(lambda: _commandPid(mgmt) is not None, timeout=20, what="the command on port 1")
    pid = _commandPid(mgmt)
    assert pid is not None
    try:
        os.killpg(pid, signal.SIGSTOP)
        waitFor(lambda: _state(pid) == "T", timeout=20, what="the command stopped")
        console(mgmt, "port/del 1")
        waitFor(mark.exists, timeout=30, what="the command's TERM trap")
        assert mark.read_text() == "TERM\n"
        waitFor(lambda: not _groupAlive(pid), timeout=30, what="the command gone")
    finally:
        if _groupAlive(pid):
            os.killpg(pid, signal.SIGKILL)
