"""
The console on standard input (C{--stdin}), as C{vde_switch} has it when it
does not run as a daemon.

Theory of operation
-------------------
Each line read is a command for the same interpreter the socket console
uses; its reply is written to standard output, without the banner, and
with the C{vde$ } prompt only when standard input is a terminal (a script
piping commands in reads replies alone).  C{debug/add} works here too.
Lines are cut as on the socket console (L{vtwisted.consolelines}): a line
longer than L{MAX_LINE} bytes is answered C{1007 Argument list too long}
once, skipped up to its newline however it arrives, and the commands after
it run.
The end of standard input stops the switch, as it stops C{vde_switch}: run
it with C{--stdin} only where standard input stays open.

Memory is bounded when nobody reads standard output: the console is the
producer of its own standard output, so once Twisted holds more than its
write buffer (64 KB) of unwritten replies it stops running commands and
reading standard input; it resumes, in order, when the reader catches up.
Debug events for it are dropped meanwhile (counted, logged once).  If
standard output is closed, replies are discarded and commands still run.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import stdio
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted import consoleformat as fmt
from vtwisted.console import CommandInterpreter
from vtwisted.consolelines import MAX_LINE, CommandLines

log = Logger()


@implementer(IHalfCloseableProtocol, IPushProducer)
class StdinConsole(Protocol):
    """
    Commands from standard input, replies to standard output.

    @ivar paused: standard output is full; no command runs meanwhile.
    """

    def __init__(self, interpreter: CommandInterpreter, prompt: bool) -> None:
        self.interpreter = interpreter
        self.prompt = prompt
        self.ended = False
        self.paused = False
        self._lines = CommandLines(MAX_LINE)

    #: Debug events dropped because standard output was not read.
    debugDropped = 0

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self._prompt()

    def _prompt(self) -> None:
        if self.prompt:
            self._write(fmt.PROMPT.lstrip("\n"))

    def _write(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(text.encode("utf-8", "surrogateescape"))

    def dataReceived(self, data: bytes) -> None:
        if self.ended:
            return
        self._lines.add(data)
        self._process()

    def _process(self) -> None:
        """
        Run the whole lines read, as the socket console does (a line too
        long is answered once and skipped up to its newline), until
        standard output is full or the console ends.
        """
        if self.paused or self.ended:
            return
        for line in self._lines.lines():
            if isinstance(line, bytes):
                self._runLine(line)
            else:
                self._tooLong()
            if self.paused or self.ended:
                return

    def _runLine(self, line: bytes) -> None:
        """
        Run one command and write its reply.
        """
        reply = self.interpreter.execute(line.decode("utf-8", "surrogateescape"), session=self)
        if reply.end is not None:
            self._write(fmt.END_OF_SESSION + "\n")
            self.ended = True
            self._lines.clear()
            if reply.end.shutdown:
                self.interpreter.ops.shutdown()
            return
        self._write(reply.text)
        self._prompt()

    def _tooLong(self) -> None:
        """
        A line over L{MAX_LINE} bytes: answered as the socket console answers.
        """
        self._write(fmt.resultLine(errno.E2BIG) + "\n")
        self._prompt()

    def debugLine(self, line: str) -> None:
        """
        A debug event this console listens to.
        """
        if self.ended:
            return
        if self.paused:
            self.debugDropped += 1
            if self.debugDropped == 1:
                log.warn("standard output is not read: dropping debug events while it is not")
            return
        self._write(line)

    def readConnectionLost(self) -> None:
        """
        Standard input ended: run what it still holds (commands that waited
        for standard output's reader, and a last line without its newline,
        as vde_switch runs it), let the replies reach standard output, then
        stop (in L{connectionLost}).  What waits was read while standard
        output had room, so it is bounded.
        """
        transport: Any = self.transport
        transport.unregisterProducer()  # else a full buffer's drain would not close
        self.paused = False
        self._process()
        rest = self._lines.takeRest()
        if rest and not self.ended:
            self._runLine(rest)
        transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Standard output is gone; the switch goes on, and so do the commands
        waiting for its reader.
        """
        if self.paused and not self.ended:
            self.resumeProducing()

    # IPushProducer: the standard output transport pauses us while its
    # buffer is full.

    def pauseProducing(self) -> None:
        self.paused = True
        transport: Any = self.transport
        transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        transport: Any = self.transport
        transport.resumeProducing()
        if not self.ended:
            self._process()

    def stopProducing(self) -> None:
        """
        Standard output is gone: nothing to wait for (see
        L{writeConnectionLost}).
        """

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.interpreter.ops.forgetDebugListener(self)
        if not self.ended:
            log.info("standard input closed: stopping the switch, as vde_switch does")
            self.interpreter.ops.shutdown()


class StdinConsoleService(Service):
    """
    Reads the console from standard input while running.
    """

    def __init__(self, ops: Any, reactor: Any) -> None:
        self.ops = ops
        self.reactor = reactor
        self._io: Any = None

    def startService(self) -> None:
        super().startService()
        console = StdinConsole(CommandInterpreter(self.ops), os.isatty(0))
        self._io = stdio.StandardIO(console, reactor=self.reactor)

    def stopService(self) -> None:
        super().stopService()
        io, self._io = self._io, None
        if io is not None:
            io.protocol.ended = True
            io.unregisterProducer()
            io.loseConnection()
