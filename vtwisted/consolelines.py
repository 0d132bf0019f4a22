"""
Command lines out of a console's input stream, for the socket console and
the one on standard input alike.

Theory of operation
-------------------
L{CommandLines} buffers what a console reads and hands out its whole lines
(without the newline) one at a time, so that the console may stop between
two of them (its reader is not reading) and go on later, in order.  A line
longer than C{maxLine} bytes is handed out once as L{TOO_LONG}, whether its
newline is in the buffer or not yet: in the second case the rest of it, up
to its newline, is skipped as it arrives and never runs as a command.  The
lines after it go on as usual.  At most C{maxLine} bytes without a newline
are kept.

L{LineConsole} is what both consoles do with those lines: it runs them one
at a time while its reader keeps up.  It is the producer of its own output
(C{IPushProducer}): when the transport's buffer is full it pauses the
console, which stops running commands and reading input until it resumes,
and drops debug events meanwhile (counted, the first one logged), as
vde_switch's failed writes drop them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

#: The longest command line, in bytes (vde_switch reads 128 at a time).
MAX_LINE = 4096


class _TooLong:
    """
    The type of L{TOO_LONG}.
    """

    def __repr__(self) -> str:
        return "TOO_LONG"


#: Stands for a line longer than the limit: the console answers E2BIG.
TOO_LONG: Final = _TooLong()


class CommandLines:
    """
    A console's unprocessed input.

    @ivar maxLine: the longest line handed out, in bytes.
    @ivar skipping: the rest of a too-long line, up to its newline, is
        still to be skipped.
    """

    def __init__(self, maxLine: int = MAX_LINE) -> None:
        self.maxLine = maxLine
        self.skipping = False
        self._buffer = bytearray()

    def __len__(self) -> int:
        """
        How many bytes wait.
        """
        return len(self._buffer)

    def add(self, data: bytes) -> None:
        """
        Some input was read.
        """
        self._buffer += data

    def lines(self) -> Iterator[bytes | _TooLong]:
        """
        The whole lines waiting, each removed as it is handed out, then
        L{TOO_LONG} if the text left without a newline is already too long
        (it is dropped and its rest will be skipped).  Stop iterating at
        any time: the next call goes on from the line after the last one.
        """
        buffer = self._buffer
        while (newline := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            if self.skipping:
                self.skipping = False
            elif len(line) > self.maxLine:
                yield TOO_LONG
            else:
                yield line
        if self.skipping:
            buffer.clear()
        elif len(buffer) > self.maxLine:
            buffer.clear()
            self.skipping = True
            yield TOO_LONG

    def takeRest(self) -> bytes:
        """
        Remove and return the text without a newline (a command that
        C{vdeterm} sent alone).
        """
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def clear(self) -> None:
        """
        Forget everything waiting (the session ended).
        """
        self._buffer.clear()


@implementer(IPushProducer)
class LineConsole(Protocol):
    """
    A console's commands run one line at a time while its reader keeps up.

    @ivar paused: the reader is behind (the transport paused us): no
        command runs and no input is read meanwhile.
    @ivar ended: the session is over: nothing more runs.
    """

    paused = False
    ended = False

    #: Debug events dropped because the reader was behind.
    debugDropped = 0

    #: Who stopped reading, logged when the first debug event is dropped.
    droppedWarning = "a console listening to debug events stopped reading"

    def __init__(self) -> None:
        self._lines = CommandLines(MAX_LINE)

    def runLine(self, line: bytes) -> None:
        """
        Run one command and write its reply.
        """
        raise NotImplementedError

    def tooLong(self) -> None:
        """
        Answer a line longer than L{MAX_LINE} bytes.
        """
        raise NotImplementedError

    def writeText(self, text: str) -> None:
        transport: Any = self.transport
        transport.write(text.encode("utf-8", "surrogateescape"))

    def processLines(self) -> bool:
        """
        Run the whole lines read, in order, until the reader falls behind
        or the session ends; whether every one of them ran.
        """
        if self.paused or self.ended:
            return False
        for line in self._lines.lines():
            if isinstance(line, bytes):
                self.runLine(line)
            else:
                self.tooLong()
            if self.paused or self.ended:
                return False
        return True

    def debugLine(self, line: str) -> None:
        """
        A debug event this console listens to (C{debug/add}): written
        between replies, as vde_switch does, or dropped and counted while
        the reader is behind (traffic makes events: a reader that stopped
        must not make the switch queue them all).
        """
        if self.ended:
            return
        if self.paused:
            self.debugDropped += 1
            if self.debugDropped == 1:
                log.warn("{who}: dropping debug events until it reads again",
                         who=self.droppedWarning)
            return
        self.writeText(line)

    # IPushProducer

    def pauseProducing(self) -> None:
        self.paused = True
        transport: Any = self.transport
        transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        transport: Any = self.transport
        transport.resumeProducing()
        self.resumed()

    def resumed(self) -> None:
        """
        The reader caught up: run what waits.
        """
        self.processLines()

    def stopProducing(self) -> None:
        """
        The output is gone.
        """
