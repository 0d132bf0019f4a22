"""
A C{cmd:} command's last words, without processes: ending a run closes
its frame channel (its input and output) but not its standard error,
which is read and logged until the command is gone
(L{vtwisted.processes.CommandTransport.stop}).  Real commands are in
C{tests/integration/test_command_lastwords.py}.
"""

from __future__ import annotations

from typing import Any

from commandfakes import PipesTransport
from twisted.internet.error import ProcessDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from vtwisted import processgroups as groups
from vtwisted.closing import CLOSE_GRACE
from vtwisted.ports import command
from vtwisted.processes import STOP_GRACE, CommandTransport
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch


class FakeProcess(PipesTransport):
    """
    A command's process transport, as Twisted's closes its pipes: what the
    command writes to a pipe the switch closed is lost.
    """

    def __init__(self, protocol: Any, pid: int) -> None:
        super().__init__(pid)
        self.protocol = protocol
        self.pipes: dict[int, Any] = {}

    def loseConnection(self) -> None:
        # Twisted's Process.loseConnection: every pipe at once.
        self.closeStdin()
        self.closeStderr()
        self.closeStdout()

    def says(self, childFD: int, data: bytes) -> None:
        """The command writes C{data} on C{childFD}: read unless that pipe is closed."""
        if childFD not in self.closed:
            self.protocol.childDataReceived(childFD, data)

    def ends(self) -> None:
        """The command exits: reaped, and its pipes' ends are at their end."""
        self.pid = None
        self.protocol.processEnded(Failure(ProcessDone(0)))


class Spawner(MemoryReactorClock):
    """A reactor whose commands are L{FakeProcess}es, kept in C{runs}."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[FakeProcess] = []

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> None:
        process = FakeProcess(protocol, pid=1000 + len(self.runs))
        protocol.makeConnection(process)
        self.runs.append(process)


def test_aStoppedCommandsLastWordsAreLogged(monkeypatch) -> None:
    """
    The port stopping (port/del, the switch stopping) closes the command's
    input and output, not its standard error: what it says as it ends
    (at the end of its input, or on its TERM 3 s later) is logged.
    """
    signalled: list[tuple[int | None, str]] = []
    monkeypatch.setattr(groups, "signalGroup",
                        lambda group, name: signalled.append((group, name)))
    reactor = Spawner()
    monkeypatch.setattr(groups, "groupAlive", lambda group: reactor.runs[0].pid is not None)
    service = command.makeService(Switch(), PortSpec("cmd:vde_plug /tmp/sw"), reactor)
    service.startService()
    [process] = reactor.runs
    with capturedLogs() as events:
        stopped = service.stopService()
        assert process.closed == [0, 1], "its standard error is still read"
        process.says(2, b"bye-from-eof\n")
        reactor.advance(STOP_GRACE)
        assert signalled == [(1000, "TERM"), (1000, "CONT")]
        process.says(2, b"last-words-on-term\n")
        process.ends()
        reactor.advance(0.1)
    said = [formatEvent(event) for event in events if "the command says" in formatEvent(event)]
    assert said == ["cmd:vde_plug /tmp/sw: the command says: bye-from-eof",
                    "cmd:vde_plug /tmp/sw: the command says: last-words-on-term"]
    assert stopped.called and process.closed == [0, 1]


def test_aCommandThatLeftItsStandardErrorWithAnotherHasItClosed(monkeypatch) -> None:
    """
    Standard error is read only until the command's group is gone: if
    something that left the group still holds it, the switch closes its
    end CLOSE_GRACE seconds later (as it does its input and output).
    """
    monkeypatch.setattr(groups, "signalGroup", lambda group, name: None)
    monkeypatch.setattr(groups, "groupAlive", lambda group: False)
    reactor = MemoryReactorClock()
    transport = CommandTransport(FakeProcess(None, pid=2000), "setsid -f sleep 100")
    process: Any = transport.process
    lost: list[int] = []

    class HeldPipe:
        def connectionLost(self, reason: Failure) -> None:
            lost.append(2)
            del process.pipes[2]

    process.pipes[2] = HeldPipe()
    process.pid = None  # the command itself exited at once
    stopped = transport.stop(reactor)
    assert stopped.called and process.closed == [0, 1] and not lost
    reactor.advance(CLOSE_GRACE)
    assert lost == [2]


def test_aConnectionClosedWithoutAStopClosesStandardErrorToo() -> None:
    """
    A command connection closed by its user (a slirp guest forward whose
    guest closed), with no stop to see the command end, closes all its
    pipes, as Twisted does: none is left open by the switch.
    """
    transport = CommandTransport(FakeProcess(None, pid=3000), "nc host 80")
    transport.loseConnection()
    process: Any = transport.process
    assert sorted(process.closed) == [0, 1, 2] and transport.disconnecting
