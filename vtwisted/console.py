"""
vde_switch's management console: the command interpreter and the session
protocol.

Theory of operation
-------------------
L{CommandInterpreter} runs one command line against the table of
L{vtwisted.consolecommands} and returns the reply text vde_switch would
send: nothing for a blank or C{#} line, else the optional DATA block
(C{0000 DATA END WITH '.'}, lines, C{.}) and the result line (C{1000
Success} or C{1NNN <strerror>}).  C{load} scripts and C{--rcfile} (see
L{vtwisted.consoleservice}) go through the same interpreter; a script must
be a regular file of at most 1 MiB (L{vtwisted.consolescript}): a FIFO, a
device or a socket is refused with C{1022 Invalid argument} rather than
left to block the switch until someone writes to it.  A C{load} reply is
built whole (echoed lines and replies, as vde_switch writes them), so it is
bounded (L{ScriptOutput}): past C{MAX_SCRIPT_OUTPUT} bytes, nested scripts
included, the script stops and its reply ends with C{1105 No buffer space
available}; C{--rcfile} collects no output at all.

Commands are synchronous: a handler's reply is complete when it returns
(nothing waits on a L{Deferred}), so the lines of one read, or of a
C{load} script, run one after the other in one reactor turn.  What a
command undoes is undone by then: C{port/del SPEC} of a listening spec has
closed its socket (L{vtwisted.sockettools.stopListeningNow}), so a
C{port/add SPEC} right after it, in the same batch, finds its path free.

L{ConsoleProtocol} is one session on the UNIX socket (listened on by
L{vtwisted.consoleservice.ConsoleService}): the banner and the
prompt (C{\\nvde$ }) in one write (C{vdeterm} wants a read ending in
C{$ }), then one reply and one prompt per command.  A command is a line;
C{vdeterm} sends its commands without a newline, so text left without one
for L{FRAGMENT_DELAY} seconds is a command too, which is how vde_switch
reads ("one read, one command").  C{logout} and C{shutdown} answer
C{9999 END OF SESSION} without a newline and close; C{shutdown} stops the
switch once that is sent.

Bad input gets an answer in the console's own format and changes nothing
else: a line longer than L{MAX_LINE} bytes gets C{1007 Argument list too
long} (the rest of it, up to its newline, is skipped: see
L{vtwisted.consolelines}), an unknown command
C{1038 Function not implemented}, and a session the switch cannot take
(more than C{maxSessions}) C{1024 Too many open files}.  Memory per session
is bounded: the session registers itself as the producer of its own
transport, so a client that does not read its replies is not read from
either, and at most one read's worth of commands waits; debug events for
it are dropped meanwhile (counted, logged once).  A session the switch
ends (C{logout}, C{shutdown}, too much input unread) whose client reads
nothing is aborted after L{vtwisted.closing.CLOSE_GRACE} seconds.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from vtwisted import consoleformat as fmt
from vtwisted import consolescript
from vtwisted.closing import GracefulClose
from vtwisted.consolecommands import COMMANDS, Command, CommandContext, EndSession, findCommand
from vtwisted.consolelines import LineConsole
from vtwisted.consolescript import ScriptOutput, readScript
from vtwisted.errors import SwitchError
from vtwisted.sockettools import peerCredentials

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vtwisted.operations import SwitchOperations

log = Logger()

#: Bytes a session may hold unprocessed before it is closed.
MAX_PENDING = 256 * 1024
#: Seconds text without a newline waits before it runs as a command.
FRAGMENT_DELAY = 0.05
#: Sessions served at once.
MAX_SESSIONS = 64
#: Seconds a C{shutdown} waits for its session to close before stopping.
SHUTDOWN_GRACE = 2.0
#: How deep C{load} scripts may nest.
MAX_SCRIPT_DEPTH = 8


@dataclass(frozen=True)
class Reply:
    """
    The outcome of one command line.

    @ivar text: what the session reads before its next prompt.
    @ivar command: the command that ran, if any.
    @ivar error: why it failed, if it did.
    @ivar end: set by C{logout} and C{shutdown}.
    """

    text: str
    command: Command | None = None
    error: SwitchError | None = None
    end: EndSession | None = None


class CommandInterpreter:
    """
    Runs console command lines against a switch's operations.
    """

    def __init__(self, ops: SwitchOperations, commands: Sequence[Command] = COMMANDS) -> None:
        self.ops = ops
        self.commands = commands

    def execute(self, line: str, depth: int = 0, session: Any = None,
                script: ScriptOutput | None = None) -> Reply:
        """
        Run one command line.

        @param depth: how many C{load} scripts deep the line is.
        @param session: the console session it came from, if any.
        @param script: the output of the script the line is in, if any (a
            C{load} there shares its limit, or discards as it does).
        """
        line = line.partition("\0")[0].lstrip(" \t").rstrip(" \t\r\n")
        if not line or line.startswith("#"):
            return Reply("")
        command = findCommand(self.commands, line)
        if command is None or command.handler is None:
            unknown = SwitchError(errno.ENOSYS, f"unknown command {(line.split() or [line])[0]!r}")
            return Reply(fmt.resultLine(unknown.errno) + "\n", None, unknown)
        argument = line[len(command.path) :].lstrip(" \t")
        context = CommandContext(self.ops, self, depth, session, script)
        error: SwitchError | None = None
        try:
            lines = command.handler(context, argument) or []
        except EndSession as e:
            return Reply("", command, None, e)
        except SwitchError as e:
            error = e
            lines = list(e.partial) if command.vde else [*e.partial, e.message]
            if command.vde and e.message != e.strerror and session is not None:
                # vde_switch's reply carries only the errno: say why in the log
                # (start-up scripts, without a session, log their own failures).
                log.info("console: {line!r}: {why}", line=line, why=e.message)
        except Exception as e:
            log.failure("console command {line!r} failed", line=line)
            error = SwitchError(errno.EIO, f"internal error: {e}")
            lines = []
        if command.data:
            lines = [fmt.DATA_HEADER, *lines, fmt.DATA_END]
        lines.append(fmt.resultLine(error.errno if error else 0))
        return Reply("\n".join(lines) + "\n", command, error)

    def runScript(self, path: str, depth: int, echo: bool, session: Any = None,
                  within: ScriptOutput | None = None) -> list[str]:
        """
        C{load PATH}: run every line of a file, each echoed as
        C{vde[PATH]: LINE} and followed by its reply.

        @param within: the output of the script this one is loaded from,
            if any: this one takes what is left of its limit, or discards
            its output as it does.
        @return: the reply's lines (chunks of lines, each without its last
            newline).
        @raise SwitchError: the file cannot be read, scripts nest too deep,
            or (C{ENOBUFS}, with the output so far) the reply passed
            L{consolescript.MAX_SCRIPT_OUTPUT} bytes: the script stopped there.
        """
        if depth > MAX_SCRIPT_DEPTH:
            raise SwitchError(errno.ELOOP, f"{path}: scripts nested more than {MAX_SCRIPT_DEPTH}")
        output = (ScriptOutput(consolescript.MAX_SCRIPT_OUTPUT) if within is None
                  else within.nested())
        for number, line in enumerate(readScript(path), 1):
            if echo:
                output.add(f"vde[{path}]: {line}\n")
            output.add(self.execute(line, depth, session, output).text)
            if output.over:
                error = SwitchError(errno.ENOBUFS, f"{path}: reply over {output.limit} bytes; "
                                    f"stopped after line {number}")
                error.partial = tuple(output.chunks)
                raise error
        return output.chunks


class ConsoleProtocol(LineConsole):
    """
    One management session.
    """

    droppedWarning = "management console: a session listening to debug events stopped reading"

    def __init__(self, factory: ConsoleFactory) -> None:
        super().__init__()
        self.factory = factory
        self._fragmentCall: IDelayedCall | None = None
        self._shutdown = False
        self.closing = GracefulClose(factory.clock)

    #: Whether the peer may add ports that run commands: it runs as the
    #: switch's user or as root (C{SO_PEERCRED}).
    trusted = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.trusted = peerUid(transport) in (0, os.geteuid())
        if not self.factory.admit(self):
            self.ended = True
            transport.write(fmt.resultLine(errno.EMFILE).encode() + b"\n")
            transport.loseConnection()
            return
        transport.registerProducer(self, True)
        self.writeText(fmt.banner() + fmt.PROMPT)

    # Input

    def dataReceived(self, data: bytes) -> None:
        if self.ended:
            return
        self._lines.add(data)
        if len(self._lines) > MAX_PENDING:
            log.warn("management console: a client sent {n} bytes without reading; closing",
                     n=len(self._lines))
            self.writeText(fmt.resultLine(errno.ENOBUFS) + "\n")
            self._end(shutdown=False)
            return
        self._process()

    def _process(self) -> None:
        self._cancelFragment()
        if self.processLines() and self._lines:
            self._fragmentCall = self.factory.clock.callLater(FRAGMENT_DELAY, self._fragment)

    def _fragment(self) -> None:
        """
        Text without a newline waited long enough: it is a command.
        """
        self._fragmentCall = None
        if self.ended or self.paused or not self._lines:
            return
        self.runLine(self._lines.takeRest())
        self._process()

    def _cancelFragment(self) -> None:
        if self._fragmentCall is not None and self._fragmentCall.active():
            self._fragmentCall.cancel()
        self._fragmentCall = None

    def tooLong(self) -> None:
        self.writeText(fmt.resultLine(errno.E2BIG) + "\n" + fmt.PROMPT)

    def runLine(self, line: bytes) -> None:
        try:
            reply = self.factory.interpreter.execute(line.decode("utf-8", "surrogateescape"),
                                                     session=self)
        except Exception:
            log.failure("management console: the interpreter failed on {line!r}", line=line)
            self.writeText(fmt.resultLine(errno.EIO) + "\n" + fmt.PROMPT)
            return
        if reply.end is not None:
            self._end(reply.end.shutdown)
            return
        self.writeText(reply.text + fmt.PROMPT)

    def _end(self, shutdown: bool) -> None:
        transport: Any = self.transport
        self.ended = True
        self._lines.clear()
        self._cancelFragment()
        transport.write(fmt.END_OF_SESSION.encode())
        transport.unregisterProducer()
        self.closing.close(transport, "management console")
        if shutdown:
            self._shutdown = True
            self.factory.shutdownSoon()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.interpreter.ops.forgetDebugListener(self)
        self.closing.lost()
        self.ended = True
        self._lines.clear()
        self._cancelFragment()
        self.factory.leave(self)
        if self._shutdown:
            self.factory.shutdownNow()

    # IPushProducer: the transport pauses us when the client stops reading.

    def resumed(self) -> None:
        self._process()

    def stopProducing(self) -> None:
        self.ended = True


def peerUid(transport: Any) -> int | None:
    """
    The user id of the process at the other end of a Unix socket, if known.
    """
    try:
        handle = transport.getHandle()
    except AttributeError:
        return None
    credentials = peerCredentials(handle)
    return None if credentials is None else credentials[1]


class ConsoleFactory(Factory):
    """
    Makes sessions, counts them and stops the switch after a C{shutdown}.

    @ivar sessions: the sessions served now.
    """

    def __init__(
        self, interpreter: CommandInterpreter, clock: Any, maxSessions: int = MAX_SESSIONS
    ) -> None:
        self.interpreter = interpreter
        self.clock = clock
        self.maxSessions = maxSessions
        self.sessions: set[ConsoleProtocol] = set()
        self.refused = 0
        self._shutdownCall: IDelayedCall | None = None

    def buildProtocol(self, addr: Any) -> ConsoleProtocol:
        return ConsoleProtocol(self)

    def admit(self, session: ConsoleProtocol) -> bool:
        """
        Take a new session if there is room.
        """
        if len(self.sessions) >= self.maxSessions:
            self.refused += 1
            if self.refused == 1:
                log.warn("management console: more than {n} sessions; refusing new ones",
                         n=self.maxSessions)
            return False
        self.sessions.add(session)
        return True

    def leave(self, session: ConsoleProtocol) -> None:
        self.sessions.discard(session)

    def shutdownSoon(self) -> None:
        """
        A session asked for C{shutdown}: stop once it has closed, or after
        L{SHUTDOWN_GRACE} seconds if its client does not read.
        """
        if self._shutdownCall is None:
            self._shutdownCall = self.clock.callLater(SHUTDOWN_GRACE, self.shutdownNow)

    def shutdownNow(self) -> None:
        if self._shutdownCall is not None and self._shutdownCall.active():
            self._shutdownCall.cancel()
        self.clock.callLater(0, self.interpreter.ops.shutdown)

    def closeAll(self) -> None:
        """
        Close every session (the switch is stopping).
        """
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.loseConnection()
