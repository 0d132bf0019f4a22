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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

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
