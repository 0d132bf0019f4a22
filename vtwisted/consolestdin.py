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
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted import consoleformat as fmt
from vtwisted.console import CommandInterpreter
from vtwisted.consolelines import LineConsole

log = Logger()


@implementer(IHalfCloseableProtocol)
class StdinConsole(LineConsole):
    """
    Commands from standard input, replies to standard output.
    """

    droppedWarning = "standard output: its reader stopped reading"

    def __init__(self, interpreter: CommandInterpreter, prompt: bool) -> None:
        super().__init__()
        self.interpreter = interpreter
        self.prompt = prompt

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self._prompt()

    def _prompt(self) -> None:
        if self.prompt:
            self.writeText(fmt.PROMPT.lstrip("\n"))

    def dataReceived(self, data: bytes) -> None:
        if self.ended:
            return
        self._lines.add(data)
        self.processLines()

    def runLine(self, line: bytes) -> None:
        """
        Run one command and write its reply.
        """
        reply = self.interpreter.execute(line.decode("utf-8", "surrogateescape"), session=self)
        if reply.end is not None:
            self.writeText(fmt.END_OF_SESSION + "\n")
            self.ended = True
            self._lines.clear()
            if reply.end.shutdown:
                self.interpreter.ops.shutdown()
            return
        self.writeText(reply.text)
        self._prompt()

    def tooLong(self) -> None:
        """
        A line too long: answered as the socket console answers it.
        """
        self.writeText(fmt.resultLine(errno.E2BIG) + "\n")
        self._prompt()

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
        self.processLines()
        rest = self._lines.takeRest()
        if rest and not self.ended:
            self.runLine(rest)
        transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Standard output is gone; the switch goes on, and so do the commands
        waiting for its reader.
        """
        if self.paused and not self.ended:
            self.resumeProducing()

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
