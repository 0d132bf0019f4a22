"""
C{cmd:} ports (L{vtwisted.ports.command}) without processes: the spec,
the records of C{vde_plug}'s stream, exits and stopping.  Real commands
are in C{tests/integration/test_command_cable.py}.
"""

from __future__ import annotations

from typing import Any

import pytest
from commandfakes import PipesTransport
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from vtwisted import processes
from vtwisted import processgroups as groups
from vtwisted.ports import command
from vtwisted.processes import CommandTransport
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug


class FakeProcess(PipesTransport):
    """A command's transport: its pipes, its pid, the signals it got."""

    def __init__(self, pid: int = 4242) -> None:
        super().__init__(pid)
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        raise AssertionError("commands are signalled by process group")


def _service(text: str = "cmd:vde_plug /tmp/sw") -> tuple[Any, Any]:
    switch = Switch()
    service = command.makeService(switch, PortSpec(text), MemoryReactorClock())
    service.running = True
    return switch, service


def _link(service: Any) -> tuple[Any, FakeProcess]:
    link = command.CommandLink(service)
    process = FakeProcess()
    link.makeConnection(CommandTransport(process, service.endpoint.commandLine))
    return link, process


def test_theCommandIsTheSpecsArgumentsSplitAsAShellWould() -> None:
    """Unescaped colons belong to the command; quotes group; options stay the port's."""
    _, service = _service(r"cmd:ssh -o ConnectTimeout\=5 'my host' vde_plug vde:///tmp/sw:vlan=10")
    assert service.endpoint.argv == ["ssh", "-o", "ConnectTimeout=5", "my host", "vde_plug",
                                     "vde:///tmp/sw"]
    assert service.options.vlan == 10


@pytest.mark.parametrize(("text", "problem"), [
    ("cmd:", "names no command"),
    ("cmd:no-such-command-here x", "no command 'no-such-command-here' on the PATH"),
    ("cmd:ssh 'host", "cannot read the command"),
    ("cmd:FOO=bar", r"unknown option FOO \(known: .*\); if FOO= is part of the command, "
                    r"escape its = as FOO\\="),
    ("cmd:vde_plug /tmp/sw:colour=red", "unknown option colour"),
])
def test_badSpecsSayWhatIsWrong(text: str, problem: str) -> None:
    """Errors name the spec and the problem."""
    with pytest.raises(SpecError, match=problem):
        _service(text)


def test_recordsAreFramesWhateverTheReadsAreCutLike() -> None:
    """
    Two records cut at every byte reach the switch as two frames; a frame
    for the command is written as one record, length first.
    """
    switch, service = _service()
    link, process = _link(service)
    other = FakeLink()
    plug(switch, other)
    one, two = frame(b"\xff" * 6, mac(1), payload=b"one"), frame(b"\xff" * 6, mac(1))
    stream = len(one).to_bytes(2, "big") + one + len(two).to_bytes(2, "big") + two
    for i in range(len(stream)):
        link.dataReceived(stream[i:i + 1])
    assert other.takeSent() == [one, two]
    assert link.port.counters.inFrames == 2
    back = frame(mac(1), mac(2), payload=b"back")
    other.receive(back)
    assert process.value() == len(back).to_bytes(2, "big") + back
    assert link.description == "vde_plug /tmp/sw (pid 4242)"


def test_aRecordTooLongForVdePlugClosesTheCommand() -> None:
    """Past 9236 bytes the stream cannot be resynchronised: malformed, closed."""
    _, service = _service()
    link, process = _link(service)
    link.dataReceived((9237).to_bytes(2, "big") + bytes(100))
    assert link.port.counters.drops["malformed"] == 1
    assert process.closed == [0, 1], "its input and output; its standard error is still read"


def test_aCommandEndingInsideARecordCountsItAsMalformed() -> None:
    """A command that exits with half a record written: counted, and told with its size."""
    _, service = _service()
    link, _ = _link(service)
    port = link.port
    link.dataReceived((60).to_bytes(2, "big") + bytes(25))
    with capturedLogs() as events:
        link.connectionLost(Failure(ProcessDone(0)))
    assert port.counters.drops["malformed"] == 1
    assert any("ended inside a message (25 of 60 bytes of a frame received)"
               in formatEvent(e) for e in events)


def test_stoppingClosesThePipesThenTerminatesThenKills(monkeypatch) -> None:
    """
    close() unplugs and closes the command's input and output (its standard
    error is read until it is gone); 3 s later TERM, 6 s later KILL go to
    the command's process group (to whatever of it is left).
    """

    sent: list[tuple[int | None, str]] = []

    def signalGroup(group: int | None, name: str) -> None:
        sent.append((group, name))
        if name == "KILL":
            process.pid = None  # it ends, and is reaped

    monkeypatch.setattr(groups, "signalGroup", signalGroup)
    monkeypatch.setattr(groups, "groupAlive", lambda group: "KILL" not in dict(sent).values())
    _, service = _service()
    link, process = _link(service)
    port = link.port
    link.close()
    assert process.closed == [0, 1] and not port.links
    service.reactor.advance(processes.STOP_GRACE)
    assert sent == [(4242, "TERM"), (4242, "CONT")], "TERM, and CONT for a stopped command"
    service.reactor.pump([0.1] * 31)
    assert sent == [(4242, "TERM"), (4242, "CONT"), (4242, "KILL")]
    [stopped] = service.stopping
    service.reactor.pump([0.1] * 2)
    assert stopped.called, "it is over once the group is empty"
    assert not service.stopping, "a run stopped is forgotten"


class Spawner(MemoryReactorClock):
    """A reactor whose spawned commands are fake processes, kept in C{runs}."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Any] = []

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> None:
        process = FakeProcess(pid=1000 + len(self.runs))
        process.pipes = {}  # type: ignore[attr-defined]
        protocol.makeConnection(process)
        self.runs.append(protocol)

    def nextRunAfter(self, ended: Failure) -> float:
        """End the latest run with C{ended}: the seconds until the next starts."""
        before, start = len(self.runs), self.seconds()
        self.runs[-1].processEnded(ended)
        while len(self.runs) == before:
            calls = self.getDelayedCalls()
            assert calls, "the command was not run again"
            self.advance(min(call.getTime() for call in calls) - self.seconds())
        return round(self.seconds() - start, 2)


def test_runsThatFailWaitLongerEachTime() -> None:
    """
    A command that ends before it carried a frame is run again after 0.5 s,
    then 1, 2, 4, and 5 s at most: one wait, not the endpoint's and the
    reconnecting service's added up.  After a run that carried frames and
    lasted 5 s, the service's short wait (0.3 s and a random second at
    most), and the next failure waits 0.5 s again.
    """
    reactor = Spawner()
    service = command.makeService(Switch(), PortSpec("cmd:vde_plug /tmp/sw"), reactor)
    service.startService()
    assert len(reactor.runs) == 1 and reactor.seconds() == 0
    failed = Failure(ProcessTerminated(exitCode=1))
    waits = [reactor.nextRunAfter(failed) for _ in range(6)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    reactor.runs[-1].protocol.dataReceived(b"\x00\x3c" + frame(b"\xff" * 6, mac(1)))
    reactor.advance(command.CommandConnector.STEADY_RUN)
    assert 0.3 <= reactor.nextRunAfter(Failure(ProcessDone(0))) <= 1.35
    assert reactor.nextRunAfter(failed) == 0.5
    service.stopService()


def test_aCommandThatCrashesRightAfterItsFirstFramesBacksOffAndIsLoggedOnce() -> None:
    """
    A command that carries frames and crashes at once, again and again,
    is no command that works: each run waits longer (0.5 s, then up to
    5 s), and the crash is logged once, not at every run, as is a run
    coming up (the first, then the one that lasted); a run that lasts
    ends the series, and its crash is logged.
    """
    reactor = Spawner()
    service = command.makeService(Switch(), PortSpec("cmd:vde_plug /tmp/sw"), reactor)
    crash = Failure(ProcessTerminated(signal=11))
    with capturedLogs() as events:
        service.startService()
        waits = []
        for _ in range(6):
            reactor.runs[-1].protocol.dataReceived(b"\x00\x3c" + frame(b"\xff" * 6, mac(1)))
            reactor.advance(1.0)
            waits.append(reactor.nextRunAfter(crash))
        assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
        assert service.downState().startswith("starting the command again, 6 failures in a "
                                              "row, last: the command was killed by signal "
                                              "11 (SIGSEGV) less than 5 s after it started")
        reactor.runs[-1].protocol.dataReceived(b"\x00\x3c" + frame(b"\xff" * 6, mac(1)))
        reactor.advance(command.CommandConnector.STEADY_RUN)
        reactor.runs[-1].processEnded(crash)
    lines = [formatEvent(event) for event in events]
    crashed = [line for line in lines if "signal 11" in line]
    once = ("the command was killed by signal 11 (SIGSEGV) less than 5 s after it started; "
            "starting it again, every 5 s at most")
    assert crashed == [
        f"cmd:vde_plug /tmp/sw: {once}",
        "cmd:vde_plug /tmp/sw: a link works again after 6 failures (5 of them not logged; "
        f"the last: {once})",
        "cmd:vde_plug /tmp/sw: the command was killed by signal 11 (SIGSEGV); starting it "
        "again"], lines
    ups = [line for line in lines if line.endswith("on port 1")]
    assert ups == ["cmd:vde_plug /tmp/sw: vde_plug /tmp/sw (pid 1000) on port 1",
                   "cmd:vde_plug /tmp/sw: vde_plug /tmp/sw (pid 1006) on port 1"], lines
    assert [e["log_level"].name for e in events if "signal 11" in formatEvent(e)] == [
        "warn", "info", "warn"]
    assert service.downState() == ("starting the command again: its last run was killed "
                                   "by signal 11 (SIGSEGV)")
    service.stopService()


@pytest.mark.parametrize(("reason", "text"), [
    (ProcessTerminated(exitCode=255), "exited with status 255"),
    (ProcessTerminated(signal=9), "was killed by signal 9 (SIGKILL)"),
    (ProcessTerminated(signal=11, status=11 | 0x80), "was killed by signal 11 (SIGSEGV, "
                                                     "core dumped)"),
    (ProcessDone(0), "exited with status 0"),
])
def test_exitsAreToldAsTheyHappened(reason: Exception, text: str) -> None:
    """A command that never carried a frame is a failure, told with how it ended."""
    _, service = _service()
    link, _ = _link(service)
    link.connectionLost(Failure(reason))
    assert service.failures.last == (f"the command {text} before it carried a frame; "
                                     "starting it again, every 5 s at most")


def test_aLoopbackPairIsOneTcpConnection() -> None:
    """The two ends loopbackPair() gives are connected to each other, over TCP."""
    import socket

    from vtwisted.processes import loopbackPair

    ours, theirs = loopbackPair()
    try:
        assert ours.family == socket.AF_INET and ours.type == socket.SOCK_STREAM
        assert ours.getsockname() == theirs.getpeername()
        ours.sendall(b"ping")
        assert theirs.recv(4) == b"ping"
    finally:
        ours.close()
        theirs.close()


def test_smbConfigurationSharesTheDirectoryAsQemusShare() -> None:
    """One writable guest share named qemu; Samba's files in the private directory."""
    from vtwisted.slirp.smb import configuration

    text = configuration("/srv/share", "/tmp/state", "alice")
    assert "[qemu]\n  path = /srv/share\n  read only = no\n  guest ok = yes\n" \
           "  force user = alice\n" in text
    assert "  lock directory = /tmp/state\n" in text and "printing = bsd" in text


def test_commandsRunInASessionOfTheirOwn(monkeypatch) -> None:
    """Through setsid, or Python doing the same where util-linux is missing."""
    import os
    import subprocess
    import sys


    probe = ["sh", "-c", "ps -o sid= -p $$"]
    endpoint = processes.CommandEndpoint(None, probe, "cmd:test")
    assert endpoint.running[1:] == probe
    monkeypatch.setattr(processes.shutil, "which", lambda name: None)
    fallback = processes.CommandEndpoint(None, probe, "cmd:test")
    assert fallback.running[0] == sys.executable
    for argv in (endpoint.running, fallback.running):
        session = int(subprocess.run(argv, capture_output=True, text=True).stdout)
        assert session != os.getsid(0)


def test_stopAllTerminatesAtOnceThenKills(monkeypatch) -> None:
    """
    slirp's runs (guest forwards, smbd) are all ended at once when the port
    stops: TERM now, KILL 3 s later to any group still there, and the
    answer fires once they are all gone.
    """
    sent: list[tuple[int | None, str]] = []
    alive = {7001, 7002}
    monkeypatch.setattr(groups, "signalGroup", lambda group, name: sent.append((group, name)))
    monkeypatch.setattr(groups, "groupAlive", lambda group: group in alive)
    reactor = MemoryReactorClock()
    endpoint = processes.CommandEndpoint(reactor, ["smbd"], "slirp:smb")
    first, second = FakeProcess(7001), FakeProcess(7002)
    endpoint.runs.update({first, second})
    stopped = endpoint.stopAll()
    assert sorted(sent) == [(7001, "CONT"), (7001, "TERM"), (7002, "CONT"), (7002, "TERM")]
    alive.discard(7001)
    first.pid = None  # reaped
    reactor.pump([0.1] * 29)
    assert len(sent) == 4
    reactor.pump([0.1] * 2)
    assert sent[4:] == [(7002, "KILL")] and not stopped.called
    alive.clear()
    second.pid = None
    reactor.advance(0.1)
    assert stopped.called

@pytest.mark.parametrize("termAfter", [0.0, processes.STOP_GRACE])
def test_aCommandStoppedBeforeItMadeItsSessionIsStoppedStill(monkeypatch, termAfter) -> None:
    """
    A command stopped just after it was spawned (a port deleted as its
    command is started again) has no process group yet: it makes its
    session only once it runs.  It is not taken for gone: its own process
    gets the signals due (not the group, which does not exist), and the
    stop is over only once it is reaped.
    """
    toGroups: list[tuple[int | None, str]] = []
    toLeaders: list[tuple[int, str]] = []
    monkeypatch.setattr(groups, "signalGroup",
                        lambda group, name: toGroups.append((group, name)))
    monkeypatch.setattr(groups, "signalLeader",
                        lambda pid, name: toLeaders.append((pid, name)))
    monkeypatch.setattr(groups, "groupAlive", lambda group: False)
    reactor = MemoryReactorClock()
    process = FakeProcess(7100)
    stopped = processes.stopGroup(reactor, 7100, termAfter, process)
    assert not stopped.called, "not gone: not even started"
    reactor.pump([0.1] * int(termAfter * 10 + 1))
    assert toLeaders == [(7100, "TERM"), (7100, "CONT")]
    assert not toGroups and not stopped.called
    process.pid = None
    reactor.advance(0.1)
    assert stopped.called and toLeaders == [(7100, "TERM"), (7100, "CONT")]


def test_aSocketRunIsEndedAGraceAfterItsConnection(monkeypatch) -> None:
    """
    A socket run (slirp's guest forwards) whose connection is over gets
    ENDED_GRACE seconds to exit by itself, then TERM, then KILL 3 s later;
    one whose group was gone when it was reaped is never signalled (its
    number may be another's by then).
    """
    from vtwisted.commandsocket import RunConnection

    sent: list[tuple[int | None, str]] = []
    alive = {7200, 7300}
    monkeypatch.setattr(groups, "signalGroup", lambda group, name: sent.append((group, name)))
    monkeypatch.setattr(groups, "groupAlive", lambda group: group in alive)
    reactor = MemoryReactorClock()
    endpoint = processes.CommandEndpoint(reactor, ["sleep"], "slirp:guestfwd")
    stubborn, finished = processes.CommandRun(endpoint), processes.CommandRun(endpoint)
    stubborn.makeConnection(FakeProcess(7200))
    finished.makeConnection(FakeProcess(7300))
    alive.discard(7300)
    finished.processExited(Failure(ProcessDone(0)))
    alive.add(7300)  # another's group now
    inner = StringTransport()

    def ender(run: Any) -> Any:
        return lambda: endpoint.connectionEnded(run)

    for run in (stubborn, finished):
        protocol = Protocol()
        connection = RunConnection(protocol, ender(run))
        connection.makeConnection(inner)
        assert protocol.transport is inner
        connection.connectionLost(Failure(ProcessDone(0)))
    reactor.pump([0.1] * int(processes.ENDED_GRACE * 10 - 1))
    assert sent == []
    reactor.pump([0.1] * 2)
    assert sent == [(7200, "TERM"), (7200, "CONT")]
    reactor.pump([0.1] * int(processes.STOP_GRACE * 10))
    assert sent == [(7200, "TERM"), (7200, "CONT"), (7200, "KILL")]


def test_aLongCommandLineIsShownCutInTheMiddleSoItsPidStays() -> None:
    """
    A QEMU's command line runs past what port/print shows of a
    description (512 characters): its middle is cut, so the pid after it
    (and the socket) is still shown.
    """
    long = "cmd:qemu-system-x86_64 " + " ".join(f"-opt{i} {'x' * 20}" for i in range(40))
    _, service = _service(f"{long} -last")
    link, process = _link(service)
    description = link.description
    assert len(description) < 330 and description.endswith(" -last (pid 4242)"), description
    assert description.startswith("qemu-system-x86_64 -opt0 ") and " ... " in description
    _, short = _service()
    assert _link(short)[0].description == "vde_plug /tmp/sw (pid 4242)"
