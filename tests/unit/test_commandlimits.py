"""
The limits that keep commands from costing the switch without end
(L{vtwisted.processes}): runs at once, what is remembered and logged of
their standard error, and Samba's private directory for C{smb=}
(L{vtwisted.slirp.smb}), removed once its runs are gone.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
from test_commandport import Spawner
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from vtwisted import processes
from vtwisted import processgroups as groups
from vtwisted.slirp.smb import SmbShare


class Said:
    """Stands in for the processes module's logger: keeps the lines warned."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def emit(self, level: Any, format: str, **fields: Any) -> None:
        self.lines.append(fields["line"])


@pytest.fixture
def said(monkeypatch) -> Said:
    fake = Said()
    monkeypatch.setattr(processes, "log", fake)
    return fake


def test_atMostMaxRunsAtOnce() -> None:
    """
    A connection beyond C{maxRuns} running commands fails with EAGAIN and
    says why; once a run ends, the next one starts again.
    """
    reactor = Spawner()
    endpoint = processes.CommandEndpoint(reactor, ["vde_plug", "/tmp/sw"], "cmd:vde_plug",
                                         maxRuns=2)
    factory = Factory.forProtocol(Protocol)
    endpoint.connect(factory)
    endpoint.connect(factory)
    refused: list[Failure] = []
    endpoint.connect(factory).addErrback(refused.append)
    [failure] = refused
    assert isinstance(failure.value, OSError) and failure.value.errno == errno.EAGAIN
    assert "2 runs of vde_plug /tmp/sw at once already" in str(failure.value)
    assert len(reactor.runs) == 2 and len(endpoint.runs) == 2
    reactor.runs[0].processEnded(Failure(ProcessDone(0)))
    endpoint.connect(factory)
    assert len(reactor.runs) == 3 and len(endpoint.runs) == 2


def test_anEndlessLineIsLoggedCut(said: Said) -> None:
    """
    Standard error without a newline is kept only up to C{LINE} bytes: such
    a line is logged cut there, with an ellipsis, and what is past the cut
    is neither kept nor logged.
    """
    endpoint = processes.CommandEndpoint(None, ["sh"], "cmd:sh")
    pending = endpoint.heard(b"", b"x" * (processes.LINE - 10))
    assert said.lines == [] and len(pending) == processes.LINE - 10
    pending = endpoint.heard(pending, b"x" * 20)
    assert pending == b""
    assert said.lines == ["x" * processes.LINE + "..."]
    assert endpoint.heard(b"", b"short\nand pending") == b"and pending"
    assert said.lines[1:] == ["short"]


def test_linesAreToldOnceWhileRemembered(said: Said) -> None:
    """
    Each line is logged once until the command works, of the latest
    C{SAID} lines: an older one is news again.
    """
    endpoint = processes.CommandEndpoint(None, ["sh"], "cmd:sh")
    for n in range(processes.SAID + 1):
        endpoint.say(f"line {n}".encode())
    endpoint.say(b"line 1")
    endpoint.say(b"line 0")
    assert said.lines == [f"line {n}" for n in range(processes.SAID + 1)] + ["line 0"]
    assert len(endpoint.said) == processes.SAID
    endpoint.worked()
    endpoint.say(b"line 1")
    assert said.lines[-1] == "line 1"


def test_sambasDirectoryGoesOnceItsRunsHaveEnded(tmp_path, monkeypatch) -> None:
    """
    C{smb=} keeps smbd's configuration and state in a private directory,
    removed when the port stops, once the runs of smbd still going are gone
    (TERM at once, KILL 3 s later).
    """
    alive = {5150}
    sent: list[tuple[int | None, str]] = []
    monkeypatch.setattr(groups, "groupAlive", lambda group: group in alive)
    monkeypatch.setattr(groups, "signalGroup", lambda group, name: sent.append((group, name)))
    reactor = MemoryReactorClock()
    share = SmbShare(reactor, str(tmp_path), "/usr/sbin/smbd", "slirp:smb")
    share._prepare()
    state = share.state
    assert state is not None and os.path.isfile(os.path.join(state, "smb.conf"))

    class Run:
        pid = 5150

    assert share._endpoint is not None
    run = Run()
    share._endpoint.runs.add(run)
    closed = share.close()
    reactor.pump([0.1] * 10)
    assert sent == [(5150, "TERM"), (5150, "CONT")] and os.path.isdir(state) and not closed.called
    alive.clear()
    run.pid = None  # type: ignore[assignment]  # reaped
    reactor.advance(0.1)
    assert closed.called and not os.path.exists(state)
