"""
Who opens and closes a FIFO, as Linux's inotify reports it: how a live
capture (L{vtwisted.ports.pcapfifo}) learns that its reader left even when
another reader took its place before the switch could look.

Theory of operation
-------------------
A pipe's writing end is told of its reader only through its error
(C{POLLERR}, C{EPIPE}), and only while no reader has it open: a reader that
leaves and one that opens the FIFO before the switch polls again (the same
reactor turn, a busy or stopped switch) leave no trace on the descriptor,
and the new reader would read on from the old stream, with no header.

inotify does keep that trace: every open of the FIFO's path is an
C{IN_OPEN} event and every close an C{IN_CLOSE_NOWRITE} (a reader) or
C{IN_CLOSE_WRITE} (a writer), queued in the order they happened, and a
read an C{IN_ACCESS} (a new reader that read before the switch looked
took what was left of the old stream; the kernel merges reads in a row
into one event, so a reader reading all the time queues one event
between two looks, not one per read).  An
L{OpenWatch} is made just after the switch opened the FIFO for its reader
and closed just before the switch closes it, so the switch's own open and
close are not among its events.  It is read without blocking, by
L{OpenWatch.events}, when the capture wants to know (before each write):
no descriptor for the reactor, no callback.

Linux only (C{inotify_init1} through C{ctypes}); where it cannot be had
(another system, C{fs.inotify.max_user_instances} reached) L{OpenWatch}
raises L{OSError} and the capture goes on without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_ACCESS = 0x00000001
IN_CLOSE_WRITE = 0x00000008  # a writer's close: watched, so that no event is mistaken
IN_CLOSE_NOWRITE = 0x00000010
IN_OPEN = 0x00000020
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, length of the name after it
#: Bytes asked of each read, and the largest event (a name only comes with
#: a directory's watch, but a read returns whole events only).
_READ, _LARGEST = 4096, _EVENT.size + 256

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc = libc
    return _libc


class OpenWatch:
    """
    The opens and closes of one path since this watch began.
    """

    def __init__(self, path: str) -> None:
        """
        @raise OSError: inotify cannot watch C{path} (its errno).
        """
        try:
            libc = _lib()
            init = libc.inotify_init1
        except (OSError, AttributeError) as e:
            raise OSError(0, f"no inotify here ({e})") from None
        fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))
        mask = IN_ACCESS | IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
        if libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            number = ctypes.get_errno()
            os.close(fd)
            raise OSError(number, os.strerror(number))
        self.fd = fd

    def events(self) -> list[int]:
        """
        The masks of the events queued since the last call, oldest first
        (each C{IN_ACCESS}, C{IN_OPEN}, C{IN_CLOSE_NOWRITE} or
        C{IN_CLOSE_WRITE}, or the watch's end: C{IN_IGNORED}, when the path
        was removed).  One read when they fit in it, as they do but for a
        burst of opens and closes.
        """
        masks: list[int] = []
        while True:
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                return masks
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                masks.append(mask)
                offset += _EVENT.size + length
            if len(data) <= _READ - _LARGEST:  # the queue was empty after these
                return masks

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
