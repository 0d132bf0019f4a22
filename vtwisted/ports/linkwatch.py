"""
Hearing of changes to one network interface (its MTU, say) as the kernel
announces them: a C{NETLINK_ROUTE} socket in the link group.

Theory of operation
-------------------
The kernel sends every member of C{RTMGRP_LINK} an C{RTM_NEWLINK} message
whenever an interface of the member's network namespace changes (its MTU,
its flags, its name) and C{RTM_DELLINK} when one goes.  L{LinkWatcher}
opens such a socket (no privilege needed), reads it in the reactor, and
calls back for every message about its interface, by index: the caller
asks the kernel what it wants to know again (an C{ioctl}), so no attribute
is parsed here.  If the kernel had to drop messages (C{ENOBUFS}: the
socket's buffer was full), the callback runs too, as one of them may have
been about the interface.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()
NETLINK_ROUTE = 0
RTMGRP_LINK = 1
RTM_NEWLINK = 16
RTM_DELLINK = 17
#: struct nlmsghdr: length, type, flags, sequence, port id.
NLMSGHDR = struct.Struct("=IHHII")
#: struct ifinfomsg: family, pad, type, index, flags, change.
IFINFOMSG = struct.Struct("=BxHiII")
_READ = 65536


def indicesChanged(data: bytes) -> list[int]:
    """
    The interface indices that the link messages in C{data} (one read of
    the socket) are about, in order.
    """
    indices = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            break
        body = offset + NLMSGHDR.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and body + IFINFOMSG.size <= len(data):
            indices.append(IFINFOMSG.unpack_from(data, body)[2])
        offset += (length + 3) & ~3
    return indices


class LinkWatcher:
    """
    Calls C{changed()} whenever the kernel announces a change to the
    interface with index C{index}, until L{stop}.
    """

    def __init__(self, reactor: Any, index: int, changed: Callable[[], None]) -> None:
        """
        Open the socket and start reading it.

        @raise OSError: from the system.
        """
        self.reactor = reactor
        self.index = index
        self.changed = changed
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            sock.bind((0, RTMGRP_LINK))
        except BaseException:
            sock.close()
            raise
        self.socket: socket.socket | None = sock
        reactor.addReader(self)

    def fileno(self) -> int:
        return -1 if self.socket is None else self.socket.fileno()

    def logPrefix(self) -> str:
        return "LinkWatcher"

    def doRead(self) -> None:
        """
        Read every message waiting; call back once if any was about the
        interface (or some were lost).
        """
        sock = self.socket
        ours = False
        while sock is not None:
            try:
                data = sock.recv(_READ)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    log.warn("reading link changes failed: {error}; no more are heard",
                             error=e)
                    self.stop()
                    return
                ours = True
                continue
            if not data:
                break
            ours = ours or self.index in indicesChanged(data)
        if ours:
            self.changed()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.stop()

    def stop(self) -> None:
        """
        Stop reading, and close the socket.
        """
        sock, self.socket = self.socket, None
        if sock is not None:
            self.reactor.removeReader(self)
            sock.close()
