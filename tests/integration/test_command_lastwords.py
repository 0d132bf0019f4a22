"""
A C{cmd:} command's last words: what it writes to its standard error as
the switch ends it (C{port/del}, the switch stopping) is logged, with its
pipes or with a socket (C{socket=stream}).  The switch closes the frame
channel first but reads standard error until the command is gone.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from commandhelpers import commandPid, groupAlive
from helpers import waitFor
from taphelpers import console

pytestmark = pytest.mark.integration

#: Each test with the command's pipes, and with a socket for its frames.
MODES = pytest.mark.parametrize("options", ["", ":socket=stream"])




def _command(script: str, options: str) -> str:
    """A C{cmd:} spec running C{sh -c SCRIPT} (handed a socket with C{options})."""
    descriptor = " sh {fd}" if options else ""
    return f"cmd:sh -c '{script}'{descriptor}{options}"


def _started(vswitch, shortdir: Path, spec: str) -> tuple[Any, Path, int]:
    """A switch with a console and C{spec}, once its command runs: switch, console, pid."""
    mgmt = shortdir / "mgmt"
    sw = vswitch("--mgmt", str(mgmt), "--port", spec)
    waitFor(lambda: commandPid(mgmt) is not None, timeout=20, what="the command on port 1")
    pid = commandPid(mgmt)
    assert pid is not None
    return sw, mgmt, pid


def _waitForWords(sw: Any, line: str) -> None:
    """Wait until the switch logged C{line} as the command's (the log shown if not)."""
    said = f"the command says: {line}"
    try:
        waitFor(lambda: said in sw.logText(), timeout=15, what=f"{line!r} in the log")
    except AssertionError as e:
        raise AssertionError(f"{e}; the log:\n{sw.logText()}") from None
    # The switch ended it: its answer is news, not a warning.
    lines = [each for each in sw.logText().splitlines() if said in each]
    assert all("#info]" in each for each in lines), lines


@MODES
def test_wordsOnTermAreLoggedAsPortDelEndsIt(vswitch, shortdir: Path, options: str) -> None:
    """
    port/del of a command that ignores the end of its input and says
    something on its TERM (3 s later) before it exits: that line is in
    the switch's log.
    """
    script = ('trap "echo last-words-on-term >&2; exit 0" TERM; '
              "while true; do sleep 0.2; done")
    sw, mgmt, pid = _started(vswitch, shortdir, _command(script, options))
    try:
        console(mgmt, "port/del 1")
        waitFor(lambda: not groupAlive(pid), timeout=30, what="the command gone")
        _waitForWords(sw, "last-words-on-term")
    finally:
        if groupAlive(pid):
            os.killpg(pid, signal.SIGKILL)


@MODES
def test_wordsOnTheEndOfItsInputAreLogged(vswitch, shortdir: Path, options: str) -> None:
    """
    port/del of a command that says goodbye at the end of its input (as
    vde_plug or ssh say why they exit): the line is in the log, and the
    command ends without TERM (its exit status is 0: no SIGPIPE).
    """
    script = "cat >/dev/null; echo bye-from-eof >&2"
    sw, mgmt, pid = _started(vswitch, shortdir, _command(script, options))
    try:
        console(mgmt, "port/del 1")
        _waitForWords(sw, "bye-from-eof")
        waitFor(lambda: not groupAlive(pid), timeout=30, what="the command gone")
    finally:
        if groupAlive(pid):
            os.killpg(pid, signal.SIGKILL)


@MODES
def test_aCommandThatIgnoresTermStillEndsOnKill(vswitch, shortdir: Path, options: str) -> None:
    """
    port/del of a command whose TERM trap speaks but does not exit: what
    it says is logged, and it is still ended (KILL, 3 s after the TERM);
    its port is gone from port/print.
    """
    script = 'trap "echo term-ignored >&2" TERM; while true; do sleep 0.2; done'
    sw, mgmt, pid = _started(vswitch, shortdir, _command(script, options))
    try:
        console(mgmt, "port/del 1")
        _waitForWords(sw, "term-ignored")
        waitFor(lambda: not groupAlive(pid), timeout=30, what="the command killed")
        assert commandPid(mgmt) is None
        assert "left its process group" not in sw.logText(), sw.logText()
    finally:
        if groupAlive(pid):
            os.killpg(pid, signal.SIGKILL)


@MODES
def test_wordsOnTermAreLoggedAsTheSwitchStops(vswitch, shortdir: Path, options: str) -> None:
    """
    The switch stopping (SIGTERM to twistd) ends the command as port/del
    does: what it says on its TERM is in the log the switch leaves.
    """
    script = ('trap "echo last-words-at-stop >&2; exit 0" TERM; '
              "while true; do sleep 0.2; done")
    sw, _, pid = _started(vswitch, shortdir, _command(script, options))
    try:
        sw.process.send_signal(signal.SIGTERM)
        sw.process.wait(timeout=30)
        _waitForWords(sw, "last-words-at-stop")
    finally:
        if groupAlive(pid):
            os.killpg(pid, signal.SIGKILL)
