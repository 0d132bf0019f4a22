"""
The files of a VDE switch directory: which ones the switch makes, with
what owner, group and mode, and which ones it removes.  Part of the
C{vde:} port type (L{vtwisted.ports.vde}).

Theory of operation
-------------------
A directory C{DIR} holds the switch's control socket C{DIR/ctl}, one
datagram socket C{DIR/NNN.F} per client (the switch's end, named after the
port and its descriptor), and, during each client's handshake, the
client's own datagram socket C{DIR/.PPPPP-SSSSS} (libvdeplug's name: the
client's pid and a sequence number), which the client unlinks as soon as
the switch has answered.

L{DirectoryFiles.prepare} makes C{DIR} as C{vde_switch -s} does (C{mkdir}
0777, an existing directory is taken as it is, then the group and the
mode: see L{deriveModes}, and the wire spec's section 1.6 for the modes of
the data sockets, which L{DirectoryFiles.bindDataSocket} sets).

The switch removes only the files it made, as C{vde_switch} does: its
control socket (Twisted does, when the port stops listening), each data
socket when its client goes (L{vtwisted.ports.vdelink.VdeDataLink.close}),
one it bound for a client it then had to refuse, and C{DIR} at the stop
(L{DirectoryFiles.remove}), which goes only if nothing else is in it.  At
start it also removes the data sockets a switch killed there left
(L{DirectoryFiles.removeStale}): names of the switch's C{NNN.F} form that
nothing holds any more.  A client's own socket is never removed: a client
killed in its handshake (before it unlinked it) leaves it, and C{DIR}
stays, as with C{vde_switch}; the stop says so in the log, naming what is
left.
"""

from __future__ import annotations

import errno
import os
import re
import socket

from twisted.logger import Logger

from vtwisted.consoleformat import userName
from vtwisted.sockettools import removeStaleDatagramSockets

log = Logger()

DEFAULT_MODE = 0o600
DEFAULT_DIRMODE = 0o2700
#: The names of the switch's data sockets in its directory (C{NNN.F}).
DATA_SOCKET_NAME = re.compile(r"\d{3,}\.\d+$")
#: How many of the names left in a directory its stop logs.
NAMES_LOGGED = 5


def defaultDirectory() -> str:
    """
    Where vde_switch listens by default: C{/var/run/vde.ctl} for root,
    C{/tmp/vde.ctl} for anyone else.
    """
    return "/var/run/vde.ctl" if os.geteuid() == 0 else "/tmp/vde.ctl"


def deriveModes(mode: int | None, dirmode: int | None) -> tuple[int, int]:
    """
    The control socket and directory modes, following vde_switch's rules:
    C{-m} alone opens the directory to whoever the socket is open to,
    C{--dirmode} alone sets the socket to the directory's read/write bits.
    """
    if mode is None and dirmode is None:
        return DEFAULT_MODE, DEFAULT_DIRMODE
    if dirmode is None:
        assert mode is not None
        derived = 0o2000
        for shift in (6, 3, 0):
            if mode & (0o7 << shift):
                derived |= ((mode >> shift) & 0o7 | 0o1) << shift
        return mode, derived
    if mode is None:
        return dirmode & 0o666, dirmode
    return mode, dirmode


class DirectoryFiles:
    """
    The files of one VDE directory, as its switch makes and removes them.

    @ivar made: whether the last L{prepare} made the directory.
    """

    def __init__(self, path: str, mode: int, dirmode: int, group: int | None,
                 spec: str) -> None:
        self.path = path
        self.mode = mode
        self.dirmode = dirmode
        self.group = group
        self.spec = spec
        self.made = False

    def prepare(self) -> None:
        """
        Make the directory (or take the one there), then set its group and
        mode.

        @raise OSError: it cannot be made or set; the message names the
            spec and the path.
        """
        self.made = False
        try:
            os.mkdir(self.path, 0o777)
            self.made = True
        except FileExistsError:
            pass
        except OSError as e:
            raise OSError(e.errno, f"{self.spec}: cannot create {self.path}: {e.strerror}") from e
        if not os.path.isdir(self.path):
            raise OSError(errno.ENOTDIR, f"{self.spec}: {self.path} exists and is not a directory")
        self.chgrp(self.path)
        try:
            os.chmod(self.path, self.dirmode)
        except OSError as e:  # a directory another user left (EPERM)
            owner = userName(os.stat(self.path).st_uid)
            raise OSError(e.errno, f"{self.spec}: cannot set the mode of {self.path} "
                          f"(it is {owner}'s): {e.strerror}") from e

    def removeStale(self) -> None:
        """
        Remove the data sockets a switch killed here left (nothing holds
        them), so that the directory can go at the stop.
        """
        stale = removeStaleDatagramSockets(self.path, DATA_SOCKET_NAME)
        if stale:
            log.info("{spec}: removed {n} data sockets a switch left in {dir} ({names})",
                     spec=self.spec, n=len(stale), dir=self.path, names=" ".join(stale))

    def chgrp(self, path: str) -> None:
        """
        Give C{path} the spec's group, if it has one.
        """
        if self.group is not None:
            try:
                os.chown(path, -1, self.group)
            except OSError as e:
                raise OSError(
                    e.errno, f"{self.spec}: cannot set group of {path}: {e.strerror}"
                ) from e

    def bindDataSocket(self, sock: socket.socket, path: str, uid: int,
                       console: tuple[int, int | None] | None = None) -> None:
        """
        Bind a client's data socket as vde_switch does: the client's as
        owner when the switch is root, the control socket's mode (only its
        owner bits when root) and the switch's group; port 0's, the
        management port's, C{console}'s mode and group instead (the group
        of the switch if the console has none).  A socket bound but not
        set up is unlinked again.

        @param console: the console's mode and group, for port 0's socket.
        @raise OSError: it cannot be bound or set up.
        """
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        mode = self.mode
        group = self.group
        if console is not None:
            mode = console[0]
            if console[1] is not None:
                group = console[1]
        sock.bind(path)
        try:
            if os.geteuid() == 0:
                os.chown(path, uid, -1)
                os.chmod(path, mode if console is not None else mode & 0o700)
            else:
                os.chmod(path, mode)
            if group is not None:
                os.chown(path, -1, group)
        except OSError:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise

    def remove(self) -> None:
        """
        Remove the directory if nothing is left in it; else log that it
        stays, and what is in it (a client's socket, say, or anything a
        user put there), which is not the switch's to remove.
        """
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            try:
                names = sorted(os.listdir(self.path))
            except OSError:
                names = []
            if e.errno == errno.ENOTEMPTY and names:
                shown = " ".join(names[:NAMES_LOGGED])
                if len(names) > NAMES_LOGGED:
                    shown += f" and {len(names) - NAMES_LOGGED} more"
                log.warn("{spec}: {dir} stays: it holds files the switch did not make "
                         "({names})", spec=self.spec, dir=self.path, names=shown)
            else:
                log.warn("{spec}: cannot remove {dir}: {error} (errno {errno})",
                         spec=self.spec, dir=self.path, error=e.strerror, errno=e.errno)
