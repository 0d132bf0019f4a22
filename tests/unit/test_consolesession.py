"""
The console's session protocol under good and bad input: banners and
prompts, framing, limits and logging out (fakes: StringTransport and
Clock).
"""

from __future__ import annotations

from typing import cast

import pytest
from consolefakes import PROMPT, makeOperations
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, globalLogPublisher

from vtwisted import console
from vtwisted.console import CommandInterpreter, ConsoleFactory
from vtwisted.consolelines import MAX_LINE

# The session protocol


class Session:
    """
    One console session on a StringTransport.
    """

    def __init__(self, factory: ConsoleFactory) -> None:
        self.transport = StringTransport()
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.transport.clear()
        self.protocol.dataReceived(data)
        return self.transport.value()

    def lose(self) -> None:
        self.protocol.connectionLost(None)


class StoppableFactory(ConsoleFactory):
    """
    A console factory that keeps the fake switch's record of calls to stop it.
    """

    stopped: list[int]


@pytest.fixture
def factory():
    ops, _, stopped = makeOperations()
    clock = Clock()
    made = StoppableFactory(CommandInterpreter(ops), clock, maxSessions=3)
    made.stopped = stopped
    return made


def test_bannerAndPromptInOneWrite(factory) -> None:
    """A new session reads the two banner lines and the prompt at once."""
    session = Session(factory)
    assert session.transport.value() == (
        b"VDE switch V.2.3.2\n" + console.fmt.BANNER_LINES[1].encode() + b"\n" + PROMPT
    )
    assert session.transport.producer is session.protocol


def test_eachLineGetsReplyAndPrompt(factory) -> None:
    """Two commands in one write are two replies, each followed by the prompt."""
    session = Session(factory)
    out = session.send(b"vlan/create 10\nvlan/create 10\n")
    assert out == b"1000 Success\n" + PROMPT + b"1017 File exists\n" + PROMPT
    assert session.send(b"\n") == PROMPT


def test_commandWithoutNewlineRunsAfterADelay(factory) -> None:
    """vdeterm sends commands without a newline: they run after FRAGMENT_DELAY."""
    session = Session(factory)
    assert session.send(b"vlan/cre") == b""
    session.protocol.dataReceived(b"ate 7")
    factory.clock.advance(console.FRAGMENT_DELAY)
    assert session.transport.value() == b"1000 Success\n" + PROMPT


def test_hugeLineIsRefusedOnceAndSkipped(factory) -> None:
    """A line over MAX_LINE gets 1007 once; its rest is skipped; the session goes on."""
    session = Session(factory)
    out = session.send(b"x" * (MAX_LINE + 10))
    assert out == b"1007 Argument list too long\n" + PROMPT
    assert session.send(b"y" * 5000) == b""
    assert session.send(b"tail\nvlan/create 5\n") == b"1000 Success\n" + PROMPT
    factory.clock.advance(1)
    assert session.transport.value() == b"1000 Success\n" + PROMPT


def test_binaryJunkIsAnUnknownCommand(factory) -> None:
    """Random bytes answer 1038 and leave the switch as it was."""
    session = Session(factory)
    ops = factory.interpreter.ops
    before = (dict(ops.switch.ports), sorted(ops.switch.vlans.vlans))
    out = session.send(bytes(range(1, 256)).replace(b"\n", b"") + b"\n")
    assert out == b"1038 Function not implemented\n" + PROMPT
    assert (dict(ops.switch.ports), sorted(ops.switch.vlans.vlans)) == before


def test_interpreterFailureIsAnsweredAndTheSessionGoesOn(factory, monkeypatch) -> None:
    """
    Should the interpreter itself raise, the line gets 1005 and a logged
    traceback, and the session keeps working.
    """
    session = Session(factory)
    real = factory.interpreter.execute

    def failing(line: str, depth: int = 0, session: object = None) -> console.Reply:
        if line == "boom":
            raise RuntimeError("interpreter bug")
        return real(line, depth, session)

    monkeypatch.setattr(factory.interpreter, "execute", failing)
    logged: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, logged.append))
    try:
        assert session.send(b"boom\n") == b"1005 Input/output error\n" + PROMPT
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, logged.append))
    assert any(e.get("log_failure") and e.get("line") == b"boom" for e in logged)
    assert session.send(b"vlan/create 4\n") == b"1000 Success\n" + PROMPT
    assert not session.transport.disconnecting


def test_logoutEndsWithoutNewline(factory) -> None:
    """logout writes 9999 END OF SESSION (no newline) and closes; later input is ignored."""
    session = Session(factory)
    assert session.send(b"logout\nvlan/create 3\n") == b"9999 END OF SESSION"
    assert session.transport.disconnecting
    assert 3 not in factory.interpreter.ops.switch.vlans
    session.lose()
    assert factory.sessions == set()


def test_shutdownStopsTheSwitchAfterTheSessionCloses(factory) -> None:
    """shutdown answers 9999, closes, then stops the switch."""
    session = Session(factory)
    assert session.send(b"shutdown\n") == b"9999 END OF SESSION"
    factory.clock.advance(0)
    assert factory.stopped == []
    session.lose()
    factory.clock.advance(0)
    assert factory.stopped == [1]


def test_shutdownHappensEvenIfTheClientNeverCloses(factory) -> None:
    """A client that does not read its 9999 cannot keep the switch alive."""
    session = Session(factory)
    session.send(b"shutdown\n")
    factory.clock.advance(console.SHUTDOWN_GRACE)
    factory.clock.advance(0)
    assert factory.stopped == [1]


def test_clientDisconnectingMidCommand(factory) -> None:
    """A half-sent command is dropped with the session; nothing runs later."""
    session = Session(factory)
    session.send(b"vlan/create 9")
    session.lose()
    factory.clock.advance(1)
    assert 9 not in factory.interpreter.ops.switch.vlans
    assert factory.sessions == set()


def test_tooManySessionsAreRefusedPolitely(factory) -> None:
    """Beyond maxSessions a client reads 1024 Too many open files and is closed."""
    sessions = [Session(factory) for _ in range(3)]
    extra = Session(factory)
    assert extra.transport.value() == b"1024 Too many open files\n"
    assert extra.transport.disconnecting
    extra.lose()
    sessions[0].lose()
    assert Session(factory).transport.value().endswith(PROMPT)
    assert sessions[1].send(b"vlan/create 4\n") == b"1000 Success\n" + PROMPT


def test_aClientThatDoesNotReadIsNotReadEither(factory) -> None:
    """When the transport pauses us, commands wait (and reading stops) until resumed."""
    session = Session(factory)
    session.protocol.pauseProducing()
    assert session.transport.producerState == "paused"
    assert session.send(b"vlan/create 4\nvlan/create 5\n") == b""
    session.protocol.resumeProducing()
    assert session.transport.producerState == "producing"
    assert session.transport.value().count(b"1000 Success") == 2


def test_pendingInputIsBounded(factory, monkeypatch) -> None:
    """More than MAX_PENDING unprocessed bytes closes the session with 1105."""
    monkeypatch.setattr(console, "MAX_PENDING", 100)
    session = Session(factory)
    session.protocol.pauseProducing()
    out = session.send(b"vlan/create 4\n" * 10)
    assert out == b"1105 No buffer space available\n9999 END OF SESSION"
    assert session.transport.disconnecting


def test_crlfLinesWork(factory) -> None:
    """A trailing carriage return (telnet-style clients) is ignored."""
    session = Session(factory)
    assert session.send(b"vlan/create 6\r\n") == b"1000 Success\n" + PROMPT


def test_debugEventsForAClientThatDoesNotReadAreDroppedNotQueued(factory) -> None:
    """
    A session listening to debug events whose client stops reading (its
    transport paused us) does not queue them without bound: while paused
    they are dropped and counted, logged once; then they flow again.
    """
    from twisted.logger import capturedLogs

    from vtwisted.testing import FakeLink, frame, mac, plug

    session = Session(factory)
    assert session.send(b"debug/add hash/+\n").startswith(b"1000 Success")
    switch = factory.interpreter.ops.switch
    sender = FakeLink()
    plug(switch, sender)
    session.transport.clear()
    session.protocol.pauseProducing()
    with capturedLogs() as events:
        for n in range(1000):
            sender.receive(frame(b"\xff" * 6, mac(n + 1)))
    assert session.transport.value() == b""
    assert session.protocol.debugDropped == 1000
    assert len([e for e in events if "debug" in e.get("log_format", "")]) == 1
    session.protocol.resumeProducing()
    sender.receive(frame(b"\xff" * 6, mac(5000)))
    assert session.transport.value().startswith(b"3011 hash/+ ")


def test_commandsWaitingForAReaderAreNeverTakenForALongLine(factory) -> None:
    """
    More than MAX_LINE bytes of whole commands waiting while the client does
    not read all run, in order, once it reads again (none is answered 1007).
    """
    session = Session(factory)
    session.protocol.pauseProducing()
    commands = b"".join(b"vlan/create %d\n" % n for n in range(1, 501))
    assert len(commands) > MAX_LINE
    assert session.send(commands) == b""
    session.protocol.resumeProducing()
    assert session.transport.value() == (b"1000 Success\n" + PROMPT) * 500
