"""
C{cmd:COMMAND:socket=KIND} specs (L{vtwisted.commanddescriptor},
L{vtwisted.ports.command}) and C{restart=}, without processes.  Real
commands handed sockets are in
C{tests/integration/test_command_sockets.py}.
"""

from __future__ import annotations

import pytest
from test_commandport import Spawner
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from vtwisted.commanddescriptor import DescriptorEndpoint, placeDescriptor
from vtwisted.ports import command
from vtwisted.ports.commandlinks import SocketPacketLink, SocketStreamLink
from vtwisted.processes import CommandError
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import frame, mac


def _service(text: str, reactor: object = None) -> command.CommandConnector:
    return command.makeService(Switch(), PortSpec(text), reactor or MemoryReactorClock())


def test_fdIsTheDescriptorsNumberAndDoubledBracesAreBraces() -> None:
    """{fd} becomes 3 wherever it is in a word; {{ and }} are literal braces."""
    assert placeDescriptor(["qemu", "-netdev", "stream,addr.str={fd}", "x{{y}}", "{fd}{fd}"],
                           3) == ["qemu", "-netdev", "stream,addr.str=3", "x{y}", "33"]


@pytest.mark.parametrize(("argv", "problem"), [
    (["qemu", "-netdev", "stream,id=n"], "has no {fd} where the command takes"),
    (["vde_plug", "seqpacket://{fd}", "{url}"], r"unknown placeholder \{url\} in '\{url\}'"),
    (["sh", "-c", "echo {fd} }"], r"a lone '\}' in 'echo \{fd\} \}': write \}\} for a brace"),
    (["sh", "-c", "f() { x; }", "{fd}"], r"unknown placeholder \{ x; \}"),
])
def test_aCommandWithoutItsDescriptorOrWithStrayBracesIsRefused(argv: list[str],
                                                               problem: str) -> None:
    """A command that could not know its descriptor, or has stray braces, says so."""
    with pytest.raises(CommandError, match=problem):
        placeDescriptor(argv, 3)


@pytest.mark.parametrize(("kind", "link"), [
    ("stream", SocketStreamLink), ("dgram", SocketPacketLink), ("seqpacket", SocketPacketLink),
])
def test_aSocketSpecHandsTheCommandItsDescriptor(kind: str, link: type) -> None:
    """socket=KIND: the command gets {fd} as 3 and the port that kind's framing."""
    service = _service(f"cmd:vde_plug seqpacket://{{fd}} tap://t0:socket={kind}:vlan=3")
    assert isinstance(service.endpoint, DescriptorEndpoint)
    assert service.endpoint.argv == ["vde_plug", "seqpacket://3", "tap://t0"]
    assert service.endpoint.kind == kind and service.protocol is link
    assert service.options.vlan == 3
    assert repr(service.endpoint) == f"cmd:vde_plug seqpacket://3 tap://t0 (socket={kind})"


@pytest.mark.parametrize(("text", "problem"), [
    ("cmd:vde_plug vde:///tmp/sw:socket=stream", "has no {fd} where the command takes its "
     r"descriptor's number .*\(for example cmd:qemu-system-x86_64 .*addr.str=\{fd\} "),
    ("cmd:vde_plug seqpacket://{fd}", "has {fd} but no socket= to hand it: add :socket=stream"),
    ("cmd:vde_plug seqpacket://{fd}:socket=pipe", "socket=pipe: expected stream, dgram, "
     "seqpacket"),
    ("cmd:vde_plug seqpacket://{fd}:socket=seqpacket:restart=sometimes",
     "restart=sometimes: expected on, on-failure, off"),
    ("cmd:vde_plug seqpacket://{x}:socket=seqpacket", r"unknown placeholder \{x\}"),
    ("cmd:vde_plug /tmp/sw:socket=stream:socket=dgram", "socket= is given 2 times"),
])
def test_badSocketSpecsSayWhatIsWrong(text: str, problem: str) -> None:
    """Errors name the spec and what to write instead."""
    with pytest.raises(SpecError, match=problem):
        _service(text)


def test_restartOffLeavesACommandThatEndedDown() -> None:
    """
    restart=off: a command that ended (a VM powered off) is not run again,
    and its spec says so; the default runs it again.
    """
    reactor = Spawner()
    service = _service("cmd:vde_plug /tmp/sw:restart=off", reactor)
    service.startService()
    reactor.runs[-1].protocol.dataReceived(b"\x00\x3c" + frame(b"\xff" * 6, mac(1)))
    reactor.runs[-1].processEnded(Failure(ProcessDone(0)))
    reactor.pump([1.0] * 30)
    assert len(reactor.runs) == 1
    assert service.downState() == ("the command exited with status 0; not started again "
                                   "(restart=off): delete and add the port to run it")
    service.stopService()


@pytest.mark.parametrize(("ended", "again"), [
    (ProcessDone(0), False), (ProcessTerminated(exitCode=1), True),
    (ProcessTerminated(signal=9), True),
])
def test_restartOnFailureRunsAgainUnlessTheCommandExitedWithZero(ended: Exception,
                                                                  again: bool) -> None:
    """restart=on-failure: a poweroff (status 0) stays down, a crash runs again."""
    reactor = Spawner()
    service = _service("cmd:vde_plug /tmp/sw:restart=on-failure", reactor)
    service.startService()
    reactor.runs[-1].protocol.dataReceived(b"\x00\x3c" + frame(b"\xff" * 6, mac(1)))
    reactor.runs[-1].processEnded(Failure(ended))
    reactor.pump([1.0] * 30)
    assert len(reactor.runs) == (2 if again else 1)
    assert bool(service.ended) is not again
    service.stopService()


def _carries(run: object) -> None:
    """The command (C{vde_plug}'s records) sends a frame."""
    run.protocol.dataReceived(b"\x00\x3c" + frame(b"\xff" * 6, mac(1)))  # type: ignore


def test_restartOffLeavesACrashedCommandDownAndSaysHowItEndedOnce() -> None:
    """
    restart=off, a crash: one warning with the signal's name; the port
    stays, down, and says how the command ended.
    """
    reactor = Spawner()
    service = _service("cmd:vde_plug /tmp/sw:restart=off", reactor)
    with capturedLogs() as events:
        service.startService()
        _carries(reactor.runs[-1])
        reactor.advance(10)
        reactor.runs[-1].processEnded(Failure(ProcessTerminated(signal=11, status=11 | 0x80)))
        reactor.pump([1.0] * 30)
    ended = [(e["log_level"].name, formatEvent(e)) for e in events if "signal" in formatEvent(e)]
    assert ended == [("warn", "cmd:vde_plug /tmp/sw:restart=off: the command was killed by "
                              "signal 11 (SIGSEGV, core dumped); not started again "
                              "(restart=off)")]
    assert len(reactor.runs) == 1 and service.lastPort.number == 1
    assert service.downState().startswith("the command was killed by signal 11 (SIGSEGV, ")
    service.stopService()


def test_aCommandRunAgainGetsThePortItHad() -> None:
    """
    A command run again is plugged into its port again, though a lower
    one is free (another spec's, left down): port numbers, and what the
    console set on a port, stay with their command.
    """
    reactor, switch = Spawner(), Switch()
    first = command.makeService(switch, PortSpec("cmd:vde_plug /tmp/a:restart=off"), reactor)
    second = command.makeService(switch, PortSpec("cmd:vde_plug /tmp/b"), reactor)
    first.startService()
    second.startService()
    runA, runB = reactor.runs
    assert [first.links[0].port.number, second.links[0].port.number] == [1, 2]
    runA.processEnded(Failure(ProcessTerminated(signal=9)))
    runB.processEnded(Failure(ProcessTerminated(signal=9)))
    reactor.pump([1.0] * 10)
    assert len(reactor.runs) == 3 and second.links[0].port.number == 2
    assert not switch.port(1).links and first.lastPort is switch.port(1)
    first.stopService()
    second.stopService()


def test_aRunTheSwitchEndedIsRunAgainUnderOnFailureThoughItExitedWithZero() -> None:
    """
    restart=on-failure: the switch ends a run for a record vde_plug could
    not have sent; vde_plug then exits with status 0 at the end of its
    input, which is no poweroff: it is run again, and the log says why.
    """
    reactor = Spawner()
    service = _service("cmd:vde_plug /tmp/sw:restart=on-failure", reactor)
    with capturedLogs() as events:
        service.startService()
        reactor.runs[-1].protocol.dataReceived(b"\xff\xff" + b"x" * 100)
        reactor.runs[-1].processEnded(Failure(ProcessDone(0)))
        reactor.pump([1.0] * 10)
    assert len(reactor.runs) == 2 and not service.ended
    assert any("the command exited with status 0 once the switch had ended its run"
               in formatEvent(event) for event in events), [formatEvent(e) for e in events]
    service.stopService()
