"""
Console scripts (C{load} and C{--rcfile}): reading them without ever
waiting, and bounding what their replies may hold.

Theory of operation
-------------------
L{readScript} reads only a regular file (or a link to one) of at most
L{MAX_SCRIPT_BYTES}, at once, and hands out its lines one at a time.  A
C{load} reply is collected whole in a L{ScriptOutput}, which stops the
script once the reply passes L{MAX_SCRIPT_OUTPUT} (a script loaded from
another one has what is left of its limit); L{DISCARD} collects nothing,
for C{--rcfile}, whose output nobody reads.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from vtwisted.errors import SwitchError

if TYPE_CHECKING:
    from collections.abc import Iterator

#: How big a script may be.
MAX_SCRIPT_BYTES = 1024 * 1024
#: The longest reply a C{load} collects, nested scripts included: the
#: script stops once its reply is longer.
MAX_SCRIPT_OUTPUT = 1024 * 1024


class ScriptOutput:
    """
    The reply a C{load} collects, up to C{limit} bytes (characters).  With
    no limit nothing is collected: C{--rcfile} discards its output.

    @ivar chunks: the text so far, one chunk per reply or echoed line,
        each without its last newline.
    @ivar over: the text passed the limit.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.chunks: list[str] = []
        self.size = 0
        self.over = False

    def nested(self) -> ScriptOutput:
        """
        The output of a script loaded from this one: what is left of the
        limit.
        """
        return ScriptOutput(None if self.limit is None else self.limit - self.size)

    def add(self, text: str) -> None:
        """
        Add the text of a reply (empty for a blank line) or an echoed line.
        """
        if self.limit is None or not text:
            return
        self.chunks.append(text[:-1] if text.endswith("\n") else text)
        self.size += len(text)
        self.over = self.size > self.limit


#: The output of lines whose replies nobody reads (C{--rcfile}): a C{load}
#: there collects nothing.
DISCARD = ScriptOutput(None)


#: How a script is opened: never waiting for a FIFO's writer, never taking
#: a terminal as the switch's own.
SCRIPT_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


def fileKind(mode: int) -> str | None:
    """
    What a file that is not a regular one is (C{"a FIFO"}...), from its
    C{st_mode}; L{None} for a regular file.
    """
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a file")


def _requireRegular(path: str, mode: int) -> None:
    kind = fileKind(mode)
    if kind is not None:
        code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
        raise SwitchError(code, f"{path}: {kind}, not a regular file")


def readScript(path: str) -> Iterator[str]:
    """
    The lines of a console script, read at once, handed out one at a time
    (a list of them would take ten times the file's size).

    Only a regular file (or a link to one) is read: a FIFO, a device or a
    socket could keep the switch waiting, so they are refused before and
    after opening (the path may be replaced in between), and the file is
    opened without blocking.

    @raise SwitchError: with the OS error's number if it cannot be read,
        C{EINVAL} (C{EISDIR}) if it is not a regular file (a directory),
        C{EFBIG} if it is larger than L{MAX_SCRIPT_BYTES}.
    """
    try:
        _requireRegular(path, os.stat(path).st_mode)
        fd = os.open(path, SCRIPT_OPEN_FLAGS)
        try:
            _requireRegular(path, os.fstat(fd).st_mode)
            data = _readAtMost(fd, MAX_SCRIPT_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise SwitchError(e.errno or errno.EIO, f"{path}: {e.strerror}") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise SwitchError(errno.EFBIG, f"{path}: larger than {MAX_SCRIPT_BYTES} bytes")
    return _lines(data.decode("utf-8", "surrogateescape"))


def _lines(text: str) -> Iterator[str]:
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        yield text[start:end]
        start = end + 1


def _readAtMost(fd: int, limit: int) -> bytes:
    data = bytearray()
    while len(data) < limit:
        chunk = os.read(fd, limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)
