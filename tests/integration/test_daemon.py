"""
C{twistd vswitch} run as a daemon (no C{-n}) and as C{twistd -n}, as an
administrator runs it: start-up failures, a second instance, signals.
Every daemon is found by its pid file and stopped by that pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import socketListening, sourceEnv, waitFor

TWISTD = [sys.executable, "-c",
          "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]


def twistd(*args: str, foreground: bool = False) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd ARGS} from this tree until it returns (a daemon's parent
    returns once the daemon has started, or failed to).
    """
    argv = [*TWISTD, *(["-n"] if foreground else []), *args]
    return subprocess.run(argv, env=sourceEnv(), capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def daemons() -> Iterator[list[Path]]:
    """
    Pid files of daemons a test starts; those still running are stopped.
    """
    pidFiles: list[Path] = []
    yield pidFiles
    for path in pidFiles:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(path.read_text()), signal.SIGKILL)


def nobodysHome(shortdir: Path, daemons: list[Path]) -> tuple[Any, Path, Path, Path]:
    """
    A directory C{nobody} owns under C{shortdir} for a switch that drops
    privileges to C{nobody}; skips unless root.

    @return: nobody's password entry, the directory, the pid file to give
        twistd (stopped after the test) and the log file (outside it).
    """
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    nobody = pwd.getpwnam("nobody")
    shortdir.chmod(0o711)  # nobody may pass through
    home = shortdir / "run"
    home.mkdir(mode=0o750)
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    pidFile, log = home / "sw.pid", shortdir / "sw.log"
    daemons.append(pidFile)
    return nobody, home, pidFile, log


@pytest.mark.parametrize("foreground", [False, True], ids=["daemon", "twistd -n"])
@pytest.mark.parametrize("failing", ["qemu:unix:{d}/missing/vm.sock", "vde:{d}/missing/sw"])
def test_aPortThatCannotStartLeavesNothingBehind(
    shortdir: Path, daemons: list[Path], foreground: bool, failing: str
) -> None:
    """
    A port that cannot start (here after a Unix listener and the console
    have started, and before or after the VDE directory was made) ends
    twistd with status 1 and one line naming the spec, the path and the
    errno, in the log and (a daemon's parent prints what it is told) on
    standard error; no traceback, and no socket, lock, directory or pid
    file of the switch is left.
    """
    spec = failing.format(d=shortdir)
    pidFile, log = shortdir / "sw.pid", shortdir / "sw.log"
    daemons.append(pidFile)
    ran = twistd(f"--pidfile={pidFile}", f"--logfile={log}", "vswitch",
                 "--sock", str(shortdir / "sw"), "--mgmt", str(shortdir / "mgmt"),
                 "--port", f"qemu:unix:{shortdir}/vm.sock", "--port", spec,
                 foreground=foreground)
    assert ran.returncode == 1, (ran, log.read_text())
    what = "cannot listen" if spec.startswith("qemu") else f"cannot create {shortdir}/missing/sw"
    line = f"vswitch: {spec}: {what}: No such file or directory (errno 2)"
    text = log.read_text()
    assert sorted(p.name for p in shortdir.iterdir()) == ["sw.log"], text
    assert line in text and "Traceback" not in text, text
    if foreground:  # its log is a file: the line is on its own standard error too
        assert ran.stderr == line + "\n", ran.stderr
    else:
        assert f"An error has occurred: b'{spec}: {what}: No such file" in ran.stderr, ran.stderr


def test_aSecondSwitchOnTheSameDirectoryIsRefused(shortdir: Path, daemons: list[Path]) -> None:
    """
    A second daemon on a running switch's directory is refused with a
    message saying so; the first one's files stay, and it keeps running
    until SIGTERM, which removes its sockets, directory and pid file.
    """
    first, second = shortdir / "a.pid", shortdir / "b.pid"
    daemons += [first, second]
    sock = shortdir / "sw"
    ran = twistd(f"--pidfile={first}", f"--logfile={shortdir}/a.log", "vswitch",
                 "--sock", str(sock), "--port", f"qemu:unix:{shortdir}/a.sock")
    assert ran.returncode == 0, ran
    waitFor(lambda: socketListening(sock / "ctl"), what="the first switch")
    ran = twistd(f"--pidfile={second}", f"--logfile={shortdir}/b.log", "vswitch",
                 "--sock", str(sock), "--port", f"qemu:unix:{shortdir}/b.sock")
    assert ran.returncode == 1
    assert "another switch is listening there" in ran.stderr, ran.stderr
    assert socketListening(sock / "ctl") and socketListening(shortdir / "a.sock")
    assert not (shortdir / "b.sock").exists() and not second.exists()
    os.kill(int(first.read_text()), signal.SIGTERM)
    waitFor(lambda: not first.exists(), what="the first switch to stop")
    assert sorted(p.name for p in shortdir.iterdir()) == ["a.log", "b.log"]


def gone(pid: int) -> bool:
    """
    Whether process C{pid} is gone, reaped by init: until then twistd takes
    its zombie for a running switch.
    """
    return not Path(f"/proc/{pid}").exists()


def catchesSigterm(pid: int) -> bool:
    """
    Whether process C{pid} has its SIGTERM handler: twistd installs it when
    its event loop starts, just after a daemon's parent has returned and
    its sockets listen; until then SIGTERM kills it as SIGKILL would.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_sigusr1RotatesTheLogAndAKilledSwitchIsReplaced(
    shortdir: Path, daemons: list[Path]
) -> None:
    """
    SIGUSR1 makes the daemon rotate its log (C{vswitch.log} becomes
    C{vswitch.log.1}); after SIGKILL, the next start on the same pid file
    and directory replaces the stale pid file and sockets.
    """
    pidFile, log, sock = shortdir / "sw.pid", shortdir / "vswitch.log", shortdir / "sw"
    daemons.append(pidFile)
    argv = [f"--pidfile={pidFile}", f"--logfile={log}", "vswitch", "--sock", str(sock)]
    assert twistd(*argv).returncode == 0
    waitFor(lambda: socketListening(sock / "ctl"), what="the switch")
    pid = int(pidFile.read_text())
    waitFor(lambda: catchesSigterm(pid), what="twistd's event loop to run")
    os.kill(pid, signal.SIGUSR1)
    rotated = Path(f"{log}.1")
    waitFor(lambda: rotated.exists() and log.exists(), what="the log to rotate")
    assert f"vde:{sock}: listening on {sock}/ctl" in rotated.read_text()
    os.kill(pid, signal.SIGKILL)
    waitFor(lambda: gone(pid), what="init to reap the killed switch", timeout=30)
    ran = twistd(*argv)
    assert ran.returncode == 0, (ran, log.read_text())
    waitFor(lambda: socketListening(sock / "ctl"), what="the second switch")
    assert int(pidFile.read_text()) != pid
    second = int(pidFile.read_text())
    waitFor(lambda: catchesSigterm(second), what="twistd's event loop to run")
    os.kill(second, signal.SIGTERM)
    waitFor(lambda: not pidFile.exists(), what="the second switch to stop")
    assert not sock.exists()


def test_afterTwistdDropsPrivilegesTheSwitchsFilesAreItsUsers(
    shortdir: Path, daemons: list[Path]
) -> None:
    """
    C{twistd --uid nobody --gid nogroup} as root, in a directory of
    nobody's: the Unix sockets of C{qemu:} and C{vhostuser:} belong to
    nobody as the VDE directory and the console do (root's, they were of
    no use to guests of the switch's user), and SIGTERM removes every one
    of them and the pid file (it could not: nobody may not remove root's
    files, and the stop logged tracebacks).
    """
    nobody, home, pidFile, log = nobodysHome(shortdir, daemons)
    ran = twistd(f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}", f"--pidfile={pidFile}",
                 f"--logfile={log}", "vswitch", "--sock", str(home / "sw"),
                 "--mgmt", str(home / "mgmt"), "--port", f"qemu:unix:{home}/vm.sock",
                 "--port", f"vhostuser:unix:{home}/vm.vhost")
    assert ran.returncode == 0, (ran, log.read_text())
    waitFor(lambda: socketListening(home / "sw" / "ctl"), what="the switch")
    for name in ("sw", "sw/ctl", "mgmt", "vm.sock", "vm.vhost"):
        assert (home / name).stat().st_uid == nobody.pw_uid, name
    os.kill(int(pidFile.read_text()), signal.SIGTERM)
    waitFor(lambda: not pidFile.exists(), what="the switch to stop")
    waitFor(lambda: "Server Shut Down" in log.read_text(), what="its last line")
    assert list(home.iterdir()) == [] and "Traceback" not in log.read_text(), log.read_text()


@pytest.mark.parametrize("foreground", [False, True], ids=["daemon", "twistd -n"])
def test_aFailedStartAfterDroppingPrivilegesLeavesNothingBehind(
    shortdir: Path, daemons: list[Path], foreground: bool
) -> None:
    """
    README's service recipe with a group the switch's user is not in:
    C{twistd --uid nobody ... vswitch --sock DIR --group root} cannot give
    the directory it made that group (EPERM, after twistd dropped
    privileges) and ends with one line naming the spec, the path and the
    errno; the directory it made and the pid file (root's, 0600, which
    nobody cannot read) are gone (both were left behind).
    """
    nobody, home, pidFile, log = nobodysHome(shortdir, daemons)
    ran = twistd(f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}", f"--pidfile={pidFile}",
                 f"--logfile={log}", "vswitch", "--sock", str(home / "lab"),
                 "--group", "root", "--mode", "0660", foreground=foreground)
    text = log.read_text()
    assert ran.returncode == 1, (ran, text)
    line = (f"vswitch: vde:{home}/lab:mode=0660:group=root: cannot set group of "
            f"{home}/lab: Operation not permitted (errno 1)")
    assert line in text and "Traceback" not in text, text
    assert sorted(p.name for p in home.iterdir()) == [], text


def test_aVdeDirectoryOfAnotherUserIsNamedWhenItsModeCannotBeSet(
    shortdir: Path, daemons: list[Path]
) -> None:
    """
    A VDE directory left by a switch of root's (a client's stale socket
    kept it from being removed) and a switch started as C{nobody} on the
    same path: C{chmod} fails with EPERM and the one line says which spec,
    which directory and whose it is (it said only C{vswitch: Operation not
    permitted (errno 1)}).
    """
    nobody, home, pidFile, log = nobodysHome(shortdir, daemons)
    stale = shortdir / "lab"
    stale.mkdir(mode=0o2700)
    ran = twistd(f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}", f"--pidfile={pidFile}",
                 f"--logfile={log}", "vswitch", "--sock", str(stale), foreground=True)
    text = log.read_text()
    assert ran.returncode == 1, (ran, text)
    line = (f"vswitch: vde:{stale}: cannot set the mode of {stale} (it is root's): "
            "Operation not permitted (errno 1)")
    assert line in text and "Traceback" not in text, text
    assert stale.is_dir()


def test_theTacAsShippedIgnoresHangups(shortdir: Path, daemons: list[Path]) -> None:
    """
    C{twistd -y etc/vswitch.tac} as a daemon: SIGHUP leaves it running, as
    it does C{twistd vswitch} (it killed it, leaving its socket, directory
    and pid file); SIGTERM stops it and removes them.
    """
    pidFile, log, sock = shortdir / "sw.pid", shortdir / "sw.log", shortdir / "sw"
    daemons.append(pidFile)
    tac = Path(__file__).resolve().parents[2] / "etc" / "vswitch.tac"
    env = dict(sourceEnv(), VSWITCH_SOCK=str(sock))
    ran = subprocess.run([*TWISTD, f"--pidfile={pidFile}", f"--logfile={log}", "-y", str(tac)],
                         env=env, capture_output=True, text=True, timeout=20)
    assert ran.returncode == 0, ran
    waitFor(lambda: socketListening(sock / "ctl"), what="the switch")
    pid = int(pidFile.read_text())
    os.kill(pid, signal.SIGHUP)
    waitFor(lambda: "SIGHUP ignored" in log.read_text(), what="the hangup noted")
    assert socketListening(sock / "ctl")
    os.kill(pid, signal.SIGTERM)
    waitFor(lambda: not pidFile.exists(), what="the switch to stop")
    assert sorted(p.name for p in shortdir.iterdir()) == ["sw.log"]


@pytest.mark.parametrize("foreground", [False, True], ids=["daemon", "twistd -n"])
def test_aTacWhosePortCannotStartEndsWithOneLine(
    shortdir: Path, daemons: list[Path], foreground: bool
) -> None:
    """
    C{twistd -y etc/vswitch.tac} whose VDE directory cannot be made ends as
    C{twistd vswitch} does: status 1, one line naming the spec, the path and
    the errno in the log and on standard error, no traceback, nothing left
    behind (it printed a traceback, and a daemon's parent C{b''}).
    """
    pidFile, log = shortdir / "sw.pid", shortdir / "sw.log"
    daemons.append(pidFile)
    sock = shortdir / "missing" / "sw"
    tac = Path(__file__).resolve().parents[2] / "etc" / "vswitch.tac"
    env = dict(sourceEnv(), VSWITCH_SOCK=str(sock))
    argv = [*TWISTD, *(["-n"] if foreground else []), f"--pidfile={pidFile}",
            f"--logfile={log}", "-y", str(tac)]
    ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20,
                         stdin=subprocess.DEVNULL)
    assert ran.returncode == 1, (ran, log.read_text())
    spec = f"vde:{sock}:mode=0660"
    what = f"cannot create {sock}: No such file or directory (errno 2)"
    text = log.read_text()
    assert f"vswitch: {spec}: {what}" in text and "Traceback" not in text, text
    assert sorted(p.name for p in shortdir.iterdir()) == ["sw.log"], text
    if foreground:
        assert ran.stderr == f"vswitch: {spec}: {what}\n", ran.stderr
    else:
        assert f"An error has occurred: b'{spec}: cannot create" in ran.stderr, ran.stderr


@pytest.mark.parametrize(("wrong", "error"), [
    (["--port", "tap:bad name!!"],
     "port spec 'tap:bad name!!': TAP name 'bad name!!' is not a valid"),
    (["--numports", "x"], "--numports needs a whole number, not 'x'"),
], ids=["spec", "option"])
def test_aWrongSettingSaysSoWithoutTheWholeUsage(
    shortdir: Path, wrong: list[str], error: str
) -> None:
    """
    A port spec or option value that is wrong stops C{twistd vswitch} with
    its error and a pointer to C{--help}, not after the 60 lines of every
    option and port type, where the one line that matters was easy to miss.
    """
    result = twistd("--pidfile=", "vswitch", "--sock", str(shortdir / "sw"), *wrong,
                    foreground=True)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert error in lines[-1], result.stdout
    assert "twistd vswitch --help lists the options." in lines
    assert len(lines) <= 5, result.stdout


def test_aSigtermAsSoonAsTheDaemonStartedStopsItCleanly(
    shortdir: Path, daemons: list[Path]
) -> None:
    """
    SIGTERM sent the moment a daemon's parent twistd returns, before the
    event loop has its handler (a script stopping the switch as soon as it
    started): the switch stops as it does later, removing its pid file and
    sockets (it was killed with both left behind, about one time in three).
    """
    pidFile, log, sock = shortdir / "sw.pid", shortdir / "vswitch.log", shortdir / "sw"
    daemons.append(pidFile)
    for _ in range(3):
        assert twistd(f"--pidfile={pidFile}", f"--logfile={log}", "vswitch",
                      "--sock", str(sock)).returncode == 0
        pid = int(pidFile.read_text())
        os.kill(pid, signal.SIGTERM)
        waitFor(lambda pid=pid: gone(pid), what="the switch to end", timeout=30)
        assert not pidFile.exists() and not sock.exists(), log.read_text()
