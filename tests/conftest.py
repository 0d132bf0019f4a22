"""
Shared fixtures: a guard that fails any test whose sockets would send off
the machine, temporary directories with short paths, processes stopped
by PID, network namespaces deleted even when a test fails, a running
C{twistd vswitch}, and switch services in this process's reactor.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import (
    Namespaces,
    Processes,
    socketListening,
    sourceEnv,
    twistdArgv,
    unixListening,
    waitFor,
)
from netguard import networkGuard
from unprivileged import ThrowawayUser, throwawayUser

# Timing goals live in the benchmarks: no property test fails for being slow
# on a loaded machine (Hypothesis's default is 200 ms an example).
settings.register_profile("vtwisted", deadline=None)
settings.load_profile("vtwisted")


@pytest.fixture(autouse=True)
def offTheMachine() -> Iterator[None]:
    """
    Every test: no socket of this process may send off the machine (see
    L{netguard}); one that tried fails, even if the code took the refusal.
    """
    with networkGuard() as guard:
        yield
    assert not guard.refused, guard.refused


@pytest.fixture
def shortdir() -> Iterator[Path]:
    """
    A fresh directory under /tmp with a short path (socket paths are
    limited to 107 bytes).
    """
    path = Path(tempfile.mkdtemp(prefix="vtw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def processes() -> Iterator[Processes]:
    """
    Start processes; every one is stopped by PID after the test.
    """
    procs = Processes()
    yield procs
    procs.stopAll()


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    """
    Make network namespaces; every one is deleted after the test.
    """
    spaces = Namespaces()
    yield spaces
    spaces.deleteAll()


class RunningSwitch:
    """
    A C{twistd vswitch} started for a test.
    """

    def __init__(self, process: object, sock: Path, log: Path) -> None:
        self.process = process
        self.sock = sock
        self.ctl = sock / "ctl"
        self.log = log

    def logText(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def vswitch(processes: Processes, shortdir: Path) -> Callable[..., RunningSwitch]:
    """
    Start C{twistd -n vswitch --sock DIR ARGS} from this source tree and wait
    until its control socket (and the console's, given C{--mgmt PATH})
    listens.
    """
    count = [0]

    def start(*args: str, sock: Path | None = None, wait: bool = True) -> RunningSwitch:
        count[0] += 1
        directory = sock or shortdir / f"sw{count[0]}"
        log = shortdir / f"sw{count[0]}.log"
        process = processes.start(
            twistdArgv("--sock", str(directory), *args, logfile=str(log)), env=sourceEnv()
        )
        running = RunningSwitch(process, directory, log)
        # The console's socket too, which a loaded machine may see listen
        # after the control socket.
        consoles = [Path(args[i + 1]) for i, arg in enumerate(args[:-1]) if arg == "--mgmt"]
        if wait:
            try:
                waitFor(
                    lambda: (socketListening(running.ctl)
                             and all(unixListening(each) for each in consoles))
                    or process.poll() is not None,
                    what=f"switch on {running.ctl}",
                )
            finally:
                if process.poll() is not None:
                    raise AssertionError(f"switch exited early:\n{running.logText()}")
        return running

    return start


@pytest_twisted.async_yield_fixture
async def switch() -> AsyncIterator[Callable[..., object]]:
    """
    Start a switch service in this process's reactor from port specs
    (C{switch("qemu:unix:/x")}); every one still running is stopped at the end.
    """
    from twisted.internet import reactor

    from vtwisted.app import buildService

    started = []

    def start(*specs: str) -> object:
        service = buildService(reactor, list(specs), defaultSock=False)
        service.startService()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.running:
            await service.stopService()


@pytest.fixture
def user(shortdir: Path, processes: Processes) -> Iterator[ThrowawayUser]:
    """A throwaway user; its processes are stopped before it is deleted."""
    with throwawayUser(shortdir) as made:
        try:
            yield made
        finally:
            processes.stopAll()
