"""
C{cmd:...:socket=dgram:stdout=WHERE}: a real command's standard output
logged as information, sent nowhere, or appended to a file (a guest's
console log), and C{stderr=FILE} (L{vtwisted.commandoutput}).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import pytest_twisted
from helpers import sourceEnv, twistdArgv, waitFor
from reactortools import sleep, until
from taphelpers import console
from twisted.logger import LogLevel, capturedLogs

from vtwisted.spec import quoted

pytestmark = pytest.mark.integration

#: Three console lines on standard output, one on standard error, then
#: waits for the end of its input (the switch closes it when the port stops).
SCRIPT = ("import sys; [print('console line', i, flush=True) for i in range(3)]; "
          "print('the command warns', file=sys.stderr, flush=True); sys.stdin.read()")
CONSOLE = [f"console line {i}" for i in range(3)]


def _spec(options: str) -> str:
    return f"cmd:{sys.executable} -c \"{SCRIPT}\" {{fd}}:socket=dgram{options}"


def _logged(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {str(event["line"]): event["log_level"] for event in events if "line" in event}


@pytest_twisted.ensureDeferred
async def test_stdoutToAFileAppendsTheConsoleAndLogsNoneOfIt(switch, shortdir) -> None:
    """
    stdout=FILE: the lines are appended to the file (opened by the switch:
    what was there stays) and none is logged; standard error still is, as
    a warning.
    """
    console = shortdir / "vm1.console"
    console.write_text("before\n")
    with capturedLogs() as events:
        switch(_spec(f":stdout={console}"))
        await until(lambda: console.read_text().count("\n") == 4, timeout=10,
                    what="the console lines in the file")
        await until(lambda: "the command warns" in _logged(events), timeout=10,
                    what="the command's standard error in the log")
        await sleep(0.3)
    assert console.read_text().splitlines() == ["before", *CONSOLE]
    logged = _logged(events)
    assert not set(CONSOLE) & set(logged), logged
    assert logged["the command warns"] == LogLevel.warn


@pytest_twisted.ensureDeferred
async def test_stdoutOffLogsNothingOfIt(switch) -> None:
    """stdout=off: the console goes nowhere; standard error is still logged."""
    with capturedLogs() as events:
        switch(_spec(":stdout=off"))
        await until(lambda: "the command warns" in _logged(events), timeout=10,
                    what="the command's standard error in the log")
        await sleep(0.5)
    assert not set(CONSOLE) & set(_logged(events)), _logged(events)


@pytest_twisted.ensureDeferred
async def test_stdoutIsLoggedAsInformationByDefault(switch) -> None:
    """Without stdout=, console lines are logged, at the info level (not warnings)."""
    with capturedLogs() as events:
        switch(_spec(""))
        await until(lambda: set(CONSOLE) <= set(_logged(events)), timeout=10,
                    what="the console lines in the log")
    logged = _logged(events)
    assert {logged[line] for line in CONSOLE} == {LogLevel.info}


@pytest_twisted.ensureDeferred
async def test_stderrToAFileTakesWhatTheCommandSays(switch, shortdir) -> None:
    """stderr=FILE (with stdout=off): the warning is in the file, not the log."""
    errors = shortdir / "vm1.errors"
    with capturedLogs() as events:
        switch(_spec(f":stdout=off:stderr={errors}"))
        await until(lambda: errors.exists() and errors.read_text() == "the command warns\n",
                    timeout=10, what="the command's standard error in the file")
        await sleep(0.3)
    assert not _logged(events), _logged(events)


def test_aFileThatCannotBeOpenedRefusesTheSpecAtStartAndOnTheConsole(vswitch,
                                                                      shortdir) -> None:
    """
    stdout= or stderr= naming a file in no directory: --port refuses to
    start the switch, port/add refuses the spec, each naming the spec, the
    path and the errno (not a run that fails later); a good path works.
    """
    missing = shortdir / "nowhere" / "vm1.console"
    spec = _spec(f":stdout={missing}")
    problem = (f"port spec {quoted(spec)}: stdout={missing}: cannot open {missing} for appending: "
               "No such file or directory (errno 2, ENOENT)")
    started = subprocess.run(twistdArgv("--sock", str(shortdir / "refused"), "--port", spec),
                             env=sourceEnv(), capture_output=True, text=True, timeout=30)
    said = started.stdout + started.stderr  # twistd's usage errors go to stdout
    assert started.returncode != 0 and problem in said, said
    mgmt = shortdir / "mgmt"
    sw = vswitch("--mgmt", str(mgmt))
    errors = _spec(f":stdout=off:stderr={missing}")
    reply = console(mgmt, f"port/add {errors}", "port/specs")
    assert f"stderr={missing}: cannot open {missing} for appending: No such file or " \
           "directory (errno 2, ENOENT)" in reply, reply
    assert "Spec cmd:" not in reply, reply
    good = shortdir / "vm1.console"
    reply = console(mgmt, f"port/add {_spec(f':stdout={good}')}")
    assert "1000 Success" in reply, reply
    waitFor(lambda: good.exists() and good.read_text().count("\n") == 3, timeout=15,
            what="the console lines in the file")
    assert sw.process.poll() is None
