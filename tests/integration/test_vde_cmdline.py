"""
A C{vde_switch} command line, as scripts and init files have it (the manual
page's single-dash spelling, C{-daemon}, C{-p}), given to C{twistd vswitch}
unchanged: both switches start as daemons with the same settings, and stop
on SIGTERM from their pid files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import need, socketListening, sourceEnv, waitFor
from taphelpers import console

pytestmark = pytest.mark.integration

TWISTD = [sys.executable, "-c",
          "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]


@pytest.fixture
def pidFiles() -> Iterator[list[Path]]:
    """Pid files of daemons a test starts; those still running are killed."""
    files: list[Path] = []
    yield files
    for path in files:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(path.read_text()), signal.SIGKILL)


def vdeSwitchLine(directory: Path, name: str) -> list[str]:
    """A vde_switch command line with its files in C{directory}."""
    return ["-vdesock", str(directory / name), "-daemon", "-p", str(directory / f"{name}.pid"),
            "-hub", "-numports", "8", "--hashsize", "100", "-mgmt", str(directory / f"{name}.m"),
            "-mgmtmode", "0660", "-D", "2"]


def test_vdeSwitchCommandLineRunsUnchanged(shortdir: Path, pidFiles: list[Path]) -> None:
    """
    The same vde_switch command line (-vdesock, -daemon, -p, -hub,
    -numports, --hashsize, -mgmt, -mgmtmode, -D) starts vde_switch and,
    after C{twistd vswitch}, vtwisted: both detach, write their pid files,
    answer port/showinfo and hash/showinfo alike, and remove their files
    on SIGTERM.
    """
    need("vde_switch")
    real = subprocess.run(["vde_switch", *vdeSwitchLine(shortdir, "real")],
                          capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    pidFiles.append(shortdir / "real.pid")
    assert real.returncode == 0, real
    ours = subprocess.run([*TWISTD, f"--logfile={shortdir}/ours.log", "vswitch",
                           *vdeSwitchLine(shortdir, "ours")],
                          capture_output=True, text=True, timeout=20, env=sourceEnv(),
                          stdin=subprocess.DEVNULL)
    pidFiles.append(shortdir / "ours.pid")
    assert ours.returncode == 0, ours
    answers = []
    for name in ("real", "ours"):
        waitFor(lambda n=name: socketListening(shortdir / n / "ctl")
                and socketListening(shortdir / f"{n}.m"), what=f"{name} switch")
        answers.append(console(shortdir / f"{name}.m", "port/showinfo", "hash/showinfo"))
        assert os.stat(shortdir / f"{name}.m").st_mode & 0o777 == 0o660
    assert answers[0] == answers[1]
    assert "Numports=8\nHUB=true" in answers[1] and "Hash size 128\n" in answers[1]
    for name in ("real", "ours"):
        pid = shortdir / f"{name}.pid"
        os.kill(int(pid.read_text()), signal.SIGTERM)
        waitFor(lambda p=pid: not p.exists(), what=f"{name} switch to stop")
        assert not (shortdir / name).exists()


def test_daemonOptionWithTwistdsNoDaemonSaysSo(shortdir: Path) -> None:
    """
    vde_switch's -d under twistd -n is refused, naming twistd's -n, not as
    an unknown option.
    """
    ran = subprocess.run([*TWISTD, "-n", f"--logfile={shortdir}/log", "vswitch",
                          "-s", str(shortdir / "sw"), "-d"],
                         capture_output=True, text=True, timeout=20, env=sourceEnv())
    assert ran.returncode != 0
    assert "-d/--daemon: twistd runs the switch as a daemon unless given -n" in ran.stdout
    assert not (shortdir / "sw").exists()
