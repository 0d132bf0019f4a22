"""
The switch's ends of a command's pipes are closed once nothing of its
process group is left, if something that left the group keeps them open
(L{vtwisted.processgroups.stopGroup}, L{vtwisted.processgroups.closePipes}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from vtwisted import processgroups as groups
from vtwisted.closing import CLOSE_GRACE


class FakePipe:
    """One pipe end: closing it tells its process, as Twisted's do."""

    def __init__(self, process: FakeProcess, childFD: int) -> None:
        self.process = process
        self.childFD = childFD

    def connectionLost(self, reason: Failure) -> None:
        del self.process.pipes[self.childFD]
        self.process.closed.append(self.childFD)


class FakeProcess:
    """A process transport, reaped, whose pipes someone still holds."""

    def __init__(self, fds: tuple[int, ...]) -> None:
        self.pid: int | None = None
        self.pipes: dict[int, Any] = {fd: FakePipe(self, fd) for fd in fds}
        self.closed: list[int] = []


def test_pipesLeftOpenAreClosedAGraceAfterTheGroupIsGone(monkeypatch) -> None:
    """
    The group gone at once (its command ran setsid -f and exited): the
    stop is over, and CLOSE_GRACE later the pipes still open (standard
    input, error) are closed, logged once, naming the spec; nothing is
    signalled.  A command with no pipe left has nothing scheduled; one
    whose pipes closed within the grace is neither touched nor logged.
    """
    sent: list[tuple[int | None, str]] = []
    monkeypatch.setattr(groups, "signalGroup", lambda group, name: sent.append((group, name)))
    monkeypatch.setattr(groups, "groupAlive", lambda group: False)
    reactor = MemoryReactorClock()
    process = FakeProcess((0, 2))
    with capturedLogs() as events:
        stopped = groups.stopGroup(reactor, 4242, 3.0, process, "cmd:setsid -f sleep 1000")
        assert stopped.called and not process.closed
        reactor.advance(CLOSE_GRACE - 0.1)
        assert not process.closed
        reactor.advance(0.1)
    assert process.closed == [0, 2] and not process.pipes and not sent
    [event] = [e for e in events if "left its process group" in e.get("log_format", "")]
    assert event["log_level"] == LogLevel.info
    assert event["what"] == "cmd:setsid -f sleep 1000"
    assert event["fds"] == "standard input, standard error"
    closedInTime = FakeProcess((1,))
    assert groups.stopGroup(reactor, 4243, 0.0, FakeProcess(())).called
    assert not reactor.getDelayedCalls(), "no pipe left: nothing to close"
    with capturedLogs() as events:
        groups.stopGroup(reactor, 4244, 0.0, closedInTime)
        closedInTime.pipes.clear()  # its output ended after all
        reactor.advance(CLOSE_GRACE)
    assert not closedInTime.closed and not events

