"""
A command line as a C{cmd:} spec (or slirp's C{guestfwd=cmd:}) gives it:
split as a shell would and checked against the C{PATH} before anything
runs (L{parseCommand}), shown cut to a length C{port/print} keeps whole
(L{shownLine}), and named with its pid as a run's peer (L{CommandAddress}).
"""

from __future__ import annotations

import shlex
import shutil

__all__ = ["SHOWN_LINE", "CommandAddress", "CommandError", "parseCommand", "shownLine"]

#: The longest command line a run's description shows whole.
SHOWN_LINE = 300


def shownLine(commandLine: str) -> str:
    """
    C{commandLine}, its middle cut out (C{...}) if it is longer than
    L{SHOWN_LINE}: a QEMU's runs past what C{port/print} shows of a
    description, and the pid and socket after it would be lost.
    """
    if len(commandLine) <= SHOWN_LINE:
        return commandLine
    tail = SHOWN_LINE // 3
    return f"{commandLine[:SHOWN_LINE - tail - 5]} ... {commandLine[-tail:]}"


class CommandError(ValueError):
    """
    A command line cannot be run: the message says why.
    """


def parseCommand(text: str) -> list[str]:
    """
    Split C{text} as a shell would, and check that its program is on the
    C{PATH}.

    @raise CommandError: bad quoting, nothing to run, or no such program.
    """
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise CommandError(f"cannot read the command {text!r}: {e}") from None
    if not argv:
        raise CommandError("names no command")
    if shutil.which(argv[0]) is None:
        raise CommandError(f"no command {argv[0]!r} on the PATH")
    return argv


class CommandAddress:
    """
    The peer of a command's connection: the command and its pid.
    """

    type = "command"

    def __init__(self, commandLine: str, pid: int | None) -> None:
        self.commandLine = commandLine
        self.pid = pid

    def __str__(self) -> str:
        return f"{shownLine(self.commandLine)} (pid {self.pid})"
