"""
Commands as connections: a Twisted client endpoint whose connection is a
command's standard input and output, what C{cmd:} ports and slirp's
C{guestfwd=...-cmd:COMMAND} (as QEMU's) are made of.

Theory of operation
-------------------
L{CommandEndpoint} spawns the command with the switch's environment (so
C{ssh} finds its agent) in a session of its own: signals for the switch's
terminal or process group (Ctrl-C) do not reach it, signals it sends its
group (C{smbd} does, when it exits) do not reach the switch, and a command
that would ask the terminal for a password fails instead of waiting.
L{CommandTransport} makes the process look like a stream connection:
writes go to its standard input, its standard output is the data
received, C{loseWriteConnection} closes its input (a half close, which a
protocol providing L{IHalfCloseableProtocol} hears of as
C{readConnectionLost} when the command closes its output), pausing stops
reading its output, C{abortConnection} kills it, and C{getPeer} names it.
What the command writes to its standard error is logged with the spec,
each line once until the endpoint's owner calls L{CommandEndpoint.worked}:
a command that fails again and again says each thing once; or it goes
nowhere or to a file (C{stderr=}, L{vtwisted.commandoutput}).  Runs that
failed (L{CommandEndpoint.failed}) make the next one wait longer
(L{CommandEndpoint.delay}, for whoever runs it again), at most
32 runs of one command go at once (guests cannot make the switch fork
without end), and a command is ended by process group: its input and
output closed, C{TERM} and then C{KILL} to whatever of it is left, until
nothing is (L{vtwisted.processgroups.stopGroup}); its standard error is
read until then, so what it says as it ends (C{ssh} at the end of its
input, a C{TERM} trap) is logged.

Some programs serve a network connection on their standard input only if
it is a TCP socket (Samba's C{smbd} in inetd mode, which QEMU's C{smb=}
runs, asks for its peer's address): with C{socket=True} the command's
input and output are one end of a TCP connection over the loopback
(L{vtwisted.commandsocket}), and the switch's connection is the other end,
an ordinary Twisted TCP connection; the command's standard error is still
logged.  Such a run lasts as long as its connection: once the connection
is over (closed both ways, reset, given up) the command's input has ended,
and if it has not exited L{ENDED_GRACE} seconds later its process group
gets C{TERM}, then C{KILL} (L{CommandEndpoint.connectionEnded}).
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import sys
from socket import AF_INET
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted import processgroups
from vtwisted.commandline import CommandAddress, CommandError, parseCommand, shownLine
from vtwisted.commandoutput import LOG, OutputFiles
from vtwisted.commandsocket import RunConnection, loopbackPair
from vtwisted.processgroups import STOP_GRACE, exitText, stopGroup

__all__ = ["STOP_GRACE", "CommandEndpoint", "CommandError", "CommandRun", "CommandTransport",
           "exitText", "loopbackPair", "parseCommand", "shownLine", "stopGroup"]

log = Logger()

#: Bytes queued for a command's input before its writer pauses producers.
INPUT_BUFFER = 2 * 1024 * 1024
#: Runs of one command at once, at most.
MAX_RUNS = 32
#: The pause before a run after failed ones: first, factor, longest (s).
BACKOFF = (0.5, 2.0, 5.0)
#: Lines of standard error remembered (each is logged once while it is).
SAID = 256
#: The longest line of standard error logged.
LINE = 4096
#: Seconds a socket run may take to exit once its connection is over, before
#: C{TERM}: enough to flush what it was sent (C{cat}, C{nc} exit at once),
#: short enough that strays (counted in L{MAX_RUNS}) do not pile up.
ENDED_GRACE = 5.0


class CommandTransport:
    """
    A running command as a stream transport (see the module docstring).
    """

    def __init__(self, process: Any, commandLine: str, spec: str = "cmd:") -> None:
        self.process = process
        self.commandLine = commandLine
        #: The spec, for the log.
        self.spec = spec
        self.pid: int | None = process.pid
        self.disconnecting = False
        #: Whether L{stop} is ending the command.
        self.stopping = False

    @property
    def bufferSize(self) -> int:
        writer = self.process.pipes.get(0)
        return int(writer.bufferSize) if writer is not None else 0

    @bufferSize.setter
    def bufferSize(self, size: int) -> None:
        writer = self.process.pipes.get(0)
        if writer is not None:
            writer.bufferSize = size

    def describe(self) -> str:
        """
        C{vde_plug /tmp/sw (pid 1234)}, for C{port/print}.
        """
        return str(self.getPeer())

    def write(self, data: bytes) -> None:
        self.process.write(data)

    def writeSequence(self, data: Any) -> None:
        self.process.writeSequence(data)

    def loseConnection(self) -> None:
        """
        Close the command's input (once what is queued is written) and
        output, and its standard error unless L{stop} reads it until the
        command is gone (a port's C{ClientService} closes it again after).
        """
        self.disconnecting = True
        self.process.closeStdin()
        self.process.closeStdout()
        if not self.stopping:
            self.process.closeStderr()

    def loseWriteConnection(self) -> None:
        self.process.closeStdin()

    def abortConnection(self) -> None:
        self.loseConnection()
        processgroups.signalGroup(self.pid, "KILL")

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{TERM}, C{KILL}) to the command and whatever it
        started (its process group, which is its own).
        """
        processgroups.signalGroup(self.pid, name)

    def stop(self, clock: Any) -> Deferred[None]:
        """
        End the command: close its input and output (C{vde_plug} ends at
        the end of its input), then if anything of it still runs, C{TERM}
        after L{STOP_GRACE} seconds and C{KILL} after twice that
        (L{stopGroup}).  Its standard error is read until then: its last
        words are logged.

        @return: fires once nothing of it is left.
        """
        self.stopping = True
        run = getattr(self.process, "proto", None)
        if isinstance(run, CommandRun):
            run.ending = True
        self.loseConnection()
        return processgroups.stopGroup(clock, self.pid, STOP_GRACE, self.process, self.spec)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.process.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.process.unregisterProducer()

    def pauseProducing(self) -> None:
        self.process.pauseProducing()

    def resumeProducing(self) -> None:
        self.process.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    def getPeer(self) -> CommandAddress:
        return CommandAddress(self.commandLine, self.pid)

    def getHost(self) -> CommandAddress:
        return CommandAddress("vswitch", os.getpid())


class CommandRun(ProcessProtocol):
    """
    A run of a command, counted by its endpoint; its standard error logged
    (all a command whose connection is a socket needs).
    """

    def __init__(self, endpoint: CommandEndpoint) -> None:
        self.endpoint = endpoint
        self._error = b""
        #: The command's pid, which is its process group's number.
        self.pid: int | None = None
        #: Whether nothing of it was left when its process was reaped.
        self.over = False
        #: Whether the switch is ending it: what it says then is its
        #: answer (C{Terminated}, QEMU's C{terminating on signal 15}),
        #: logged as information, not as a warning.
        self.ending = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.pid = transport.pid
        self.endpoint.runs.add(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._error = self.endpoint.heard(self._error, data, self.errorLevel())

    def errorLevel(self) -> LogLevel:
        """
        How what it says on standard error is logged: as warnings, as
        information once the switch ends it.
        """
        return LogLevel.info if self.ending else LogLevel.warn

    def processExited(self, reason: Failure) -> None:
        # Looked at as it is reaped, before its number can be another's:
        # once gone, the group is never signalled (L{CommandEndpoint.connectionEnded}).
        self.over = self.pid is None or not processgroups.groupAlive(self.pid)

    def processEnded(self, reason: Failure) -> None:
        self.endpoint.say(self._error, self.errorLevel())
        self.endpoint.ended(self.transport)


class _CommandPipes(CommandRun):
    """
    Connects a protocol to a command's pipes; logs its standard error.
    """

    def __init__(self, protocol: Any, endpoint: CommandEndpoint) -> None:
        super().__init__(endpoint)
        self.protocol = protocol

    def connectionMade(self) -> None:
        super().connectionMade()
        transport = CommandTransport(self.transport, self.endpoint.commandLine,
                                     self.endpoint.spec)
        transport.bufferSize = INPUT_BUFFER
        self.protocol.makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.protocol.dataReceived(data)
        elif childFD == 2:
            super().childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 1 and IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.readConnectionLost()

    def processEnded(self, reason: Failure) -> None:
        try:
            self.protocol.connectionLost(reason)
        finally:
            super().processEnded(reason)


#: A session of its own for the command in argv[1:], without util-linux.
_SETSID = "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"


@implementer(IStreamClientEndpoint)
class CommandEndpoint:
    """
    A client endpoint whose connections are runs of a command.
    """

    def __init__(self, reactor: Any, argv: list[str], spec: str, socket: bool = False,
                 maxRuns: int = MAX_RUNS, stderr: str = LOG) -> None:
        """
        @param socket: give the command a socket, not pipes (see the
            module docstring).
        @param stderr: where its standard error goes: C{log}, C{off} or a
            file's absolute path (L{vtwisted.commandoutput.parseOutput}).
        @param maxRuns: runs of the command at once at most; a connection
            beyond fails with C{EAGAIN} (guests cannot make the switch fork
            without end).
        """
        self.reactor = reactor
        self.argv = argv
        self.spec = spec
        self.socket = socket
        self.maxRuns = maxRuns
        self.stderr = stderr
        #: The runs not ended yet (their process transports).
        self.runs: set[Any] = set()
        #: Runs in a row that failed (see L{failed}).
        self.failures = 0
        self._waiting: list[Deferred[None]] = []
        setsid = shutil.which("setsid")
        #: What is run: the command in a session of its own, through
        #: util-linux's setsid (which runs it in place, with the same pid)
        #: or else Python doing the same.
        self.running = [setsid, *argv] if setsid else [sys.executable, "-c", _SETSID, *argv]
        self.commandLine = shlex.join(argv)
        #: The command line as descriptions show it (L{shownLine}).
        self.shownLine = shownLine(self.commandLine)
        #: What the command said on standard error since it last worked
        #: (the latest L{SAID} lines).
        self.said: dict[str, None] = {}

    def __repr__(self) -> str:
        return f"cmd:{self.commandLine}"

    def delay(self) -> float:
        """
        The pause the next run should wait: none if the last one worked,
        else one that grows with the runs in a row that failed (L{BACKOFF}),
        so a command that cannot work is not run without end.  Whoever runs
        the command again waits it (see L{vtwisted.ports.command}).
        """
        if not self.failures:
            return 0.0
        return min(BACKOFF[0] * BACKOFF[1] ** (self.failures - 1), BACKOFF[2])

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """
        Run the command now.
        """
        if len(self.runs) >= self.maxRuns:
            return fail(OSError(errno.EAGAIN, f"{self.maxRuns} runs of {self.commandLine} "
                                              "at once already"))
        protocol = protocolFactory.buildProtocol(None)
        if self.socket:
            return self._connectSocket(protocol)
        try:
            outputs = OutputFiles(LOG, self.stderr)
        except ValueError as e:
            return fail(e)
        try:
            self.reactor.spawnProcess(_CommandPipes(protocol, self), self.running[0],
                                      self.running, env=dict(os.environ),
                                      childFDs={0: "w", 1: "r", 2: outputs.childFDs[2]})
        except OSError as e:
            return fail(e)
        finally:
            outputs.close()
        return succeed(protocol)

    def _connectSocket(self, protocol: Any) -> Deferred[Any]:
        try:
            ours, theirs = loopbackPair()
        except OSError as e:
            return fail(e)
        run = CommandRun(self)
        outputs: OutputFiles | None = None
        try:
            outputs = OutputFiles(LOG, self.stderr)
            self.reactor.spawnProcess(
                run, self.running[0], self.running, env=dict(os.environ),
                childFDs={0: theirs.fileno(), 1: theirs.fileno(), 2: outputs.childFDs[2]})
            factory = Factory.forProtocol(
                lambda: RunConnection(protocol, lambda: self.connectionEnded(run)))
            ours.setblocking(False)
            self.reactor.adoptStreamConnection(ours.fileno(), AF_INET, factory)
        except (OSError, ValueError) as e:
            if run.pid is not None:
                self.connectionEnded(run)
            return fail(e)
        finally:
            if outputs is not None:
                outputs.close()
            ours.close()
            theirs.close()
        return succeed(protocol)

    def connectionEnded(self, run: CommandRun) -> Deferred[None]:
        """
        The connection of C{run} is over: its input has ended; if anything
        of it is still there L{ENDED_GRACE} seconds later, C{TERM} its
        process group, and C{KILL} it L{STOP_GRACE} seconds after
        (L{stopGroup}, which signals nothing once the group is gone).  A
        run whose group was gone when its process was reaped is left
        alone: its number may be another's by now.

        @return: fires once nothing of the run is left.
        """
        if run.over:
            # Nothing of its group left; its pipes closed soon if something
            # that left it holds them.
            return processgroups.stopGroup(self.reactor, None, 0, run.transport, self.spec)
        return processgroups.stopGroup(self.reactor, run.pid, ENDED_GRACE, run.transport,
                                       self.spec)

    def say(self, line: bytes, level: LogLevel = LogLevel.warn) -> None:
        """
        Log a line of the command's standard error (or, at C{level}, of
        its standard output), unless it said it already since it last worked.
        """
        text = line.decode(errors="replace").rstrip()
        if text and text not in self.said:
            if len(self.said) >= SAID:
                del self.said[next(iter(self.said))]
            self.said[text] = None
            log.emit(level, "{spec}: the command says: {line}", spec=self.spec, line=text)

    def heard(self, pending: bytes, data: bytes, level: LogLevel = LogLevel.warn) -> bytes:
        """
        Standard error data after C{pending} (a line not ended yet): log
        the complete lines at C{level}, return what is left (a line longer
        than L{LINE} bytes is logged cut).
        """
        *lines, pending = (pending + data).split(b"\n")
        if len(pending) > LINE:
            lines.append(pending[:LINE] + b"...")
            pending = b""
        for line in lines:
            self.say(line, level)
        return pending

    def worked(self) -> None:
        """
        The command did its job: what it says next is news again, and the
        next run starts at once.
        """
        self.said.clear()
        self.failures = 0

    def failed(self) -> None:
        """
        A run ended without doing its job: the next one waits longer.
        """
        self.failures += 1

    def ended(self, process: Any) -> None:
        """
        A run ended (its process and pipes are gone).
        """
        self.runs.discard(process)
        if not self.runs:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def whenAllEnded(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once no run is left.
        """
        if not self.runs:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def stopAll(self) -> Deferred[Any]:
        """
        End every run (the slirp port stops): C{TERM} now, C{KILL}
        L{STOP_GRACE} seconds later to what is left.

        @return: fires once nothing of them is left.
        """
        return DeferredList([processgroups.stopGroup(self.reactor, process.pid, 0, process,
                                                     self.spec)
                             for process in self.runs])

