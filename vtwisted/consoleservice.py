"""
The services around the console: the management socket (C{--mgmt}) and the
start-up script (C{--rcfile}).

Theory of operation
-------------------
L{ConsoleService} listens on a UNIX stream socket with vde_switch's
C{--mgmtmode} (0600 by default) and C{--mgmtgroup}, serving
L{vtwisted.console.ConsoleProtocol} sessions.  A stale socket left by a dead
switch is replaced; a live one (a console answers there) or anything that
is not a socket stops start-up with a message naming the path.  Stopping
closes every session and removes the socket file.

L{RcFileService} runs a script of console commands once when the switch
starts, after every port spec (vde_switch's C{-f}): output is discarded (a
C{load} in it does not collect its script's output either), a
failing line is logged with its number and result and the rest still run;
C{logout} and C{shutdown} are ignored there, as vde_switch does.  The file
must be a regular one (L{checkRcFile}): a FIFO or a pipe (C{<(...)}) stops
start-up with a message rather than hold the switch until it is written.
"""

from __future__ import annotations

import errno
import grp
import os
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from vtwisted import consoleformat as fmt
from vtwisted.console import MAX_SESSIONS, CommandInterpreter, ConsoleFactory
from vtwisted.consolescript import DISCARD, fileKind, readScript
from vtwisted.errors import SwitchError
from vtwisted.sockettools import claimSocketPath

if TYPE_CHECKING:
    from vtwisted.operations import SwitchOperations
    from vtwisted.service import SwitchService

log = Logger()

DEFAULT_MODE = 0o600
#: The longest path a UNIX socket can have.
MAX_SOCKET_PATH = 107


class ConsoleService(Service):
    """
    Listens on the management socket.
    """

    def __init__(
        self,
        ops: SwitchOperations,
        reactor: Any,
        path: str,
        mode: int = DEFAULT_MODE,
        group: int | None = None,
        maxSessions: int = MAX_SESSIONS,
    ) -> None:
        """
        @param ops: the operations the commands call.
        @param reactor: provides C{listenUNIX} and C{callLater}.
        @param path: the socket's path (vde_switch's C{-M}).
        @param mode: the socket's permissions (C{--mgmtmode}).
        @param group: the socket's group id (C{--mgmtgroup}), if any.
        @param maxSessions: sessions served at once; more are refused.
        @raise ValueError: the path is too long or the mode is not one.
        """
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ValueError(f"--mgmt {path}: longer than {MAX_SOCKET_PATH} bytes")
        if not 0 <= mode <= 0o777:
            raise ValueError(f"--mgmt-mode {mode:o}: not a permission mode")
        self.ops = ops
        self.reactor = reactor
        self.path = os.path.abspath(path)
        self.mode = mode
        self.group = group
        self.interpreter = CommandInterpreter(ops)
        self.factory = ConsoleFactory(self.interpreter, reactor, maxSessions)
        self._listening: Any = None

    def startService(self) -> None:
        claimSocketPath(self.path, "--mgmt", "another console")
        try:
            self._listening = self.reactor.listenUNIX(
                self.path, self.factory, backlog=15, mode=self.mode, wantPID=False
            )
        except Exception as e:
            cause = getattr(e, "socketError", e)
            code = getattr(cause, "errno", None) or errno.EIO
            raise OSError(
                code, f"--mgmt {self.path}: cannot listen: {os.strerror(code)} (errno {code})"
            ) from e
        if self.group is not None:
            try:
                os.chown(self.path, -1, self.group)
            except OSError as e:
                self._listening.stopListening()
                raise OSError(
                    e.errno, f"--mgmt {self.path}: cannot set its group: {e.strerror}"
                ) from e
        self.ops.registerConsole(self.path, self.mode)
        super().startService()
        log.info("management console on {path} (mode {mode:04o})", path=self.path,
                 mode=self.mode)

    def stopService(self) -> Any:
        super().stopService()
        self.ops.unregisterConsole(self.path)
        self.factory.closeAll()
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        # Twisted removes the socket file once the port has stopped.
        return maybeDeferred(listening.stopListening)


class RcFileService(Service):
    """
    Runs a console script when the switch starts (vde_switch's C{-f}): the
    output is discarded; a failing line is logged with its number and the
    next ones still run.

    The script runs in the reactor's first turn, once every service has
    started: a C{port/add} in it would otherwise add a service to the
    L{SwitchService} while it is still starting its children, which would
    start the new one twice.  No client is served before that turn ends.
    """

    def __init__(self, interpreter: CommandInterpreter, path: str, clock: Any) -> None:
        self.interpreter = interpreter
        self.path = path
        self.clock = clock
        self.failures = 0
        self._call: Any = None

    def startService(self) -> None:
        super().startService()
        self._call = self.clock.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        self.failures = runRcFile(self.interpreter, self.path)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def runRcFile(interpreter: CommandInterpreter, path: str) -> int:
    """
    Run every line of C{path}; log each failure.

    @return: how many lines failed.
    """
    try:
        lines = readScript(path)
    except SwitchError as e:
        log.error("rcfile {path}: {message} (errno {errno})", path=path, message=e.message,
                  errno=e.errno)
        return 1
    failures = number = 0
    for number, line in enumerate(lines, 1):
        reply = interpreter.execute(line, script=DISCARD)  # a load in it collects nothing
        if reply.end is not None:
            log.warn("rcfile {path} line {number}: {line!r} ignored in a script", path=path,
                     number=number, line=line.strip())
        elif reply.error is not None:
            failures += 1
            log.error("rcfile {path} line {number}: {line!r}: {result} ({message})",
                      path=path, number=number, line=line.strip(),
                      result=fmt.resultLine(reply.error.errno), message=reply.error.message)
    log.info("rcfile {path}: {n} lines run, {failures} failed", path=path, n=number,
             failures=failures)
    return failures


#: Where vde_switch looks for its rc file when C{-f} is not given.
DEFAULT_RCFILES = ("~/.vde2/vde_switch.rc", "/etc/vde2/vde_switch.rc")


def defaultRcFile(candidates: tuple[str, ...] = DEFAULT_RCFILES) -> str | None:
    """
    The first of vde_switch's default rc files that exists, if any.
    """
    for candidate in candidates:
        path = os.path.expanduser(candidate)
        if os.path.isfile(path):
            return path
    return None


def groupId(name: str) -> int:
    """
    A group given by name or number.

    @raise ValueError: no such group.
    """
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"--mgmt-group {name}: no such group") from None


def checkRcFile(path: str) -> None:
    """
    Refuse at start-up an rc file that could not be run: missing,
    unreadable, or not a regular file (a FIFO would hold the switch until
    someone writes to it, so it is refused as C{load} refuses it).

    @raise ValueError: why, naming the path.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"--rcfile {path}: no such file") from None
    except OSError as e:
        raise ValueError(f"--rcfile {path}: {e.strerror} (errno {e.errno})") from None
    kind = fileKind(mode)
    if kind is not None:
        raise ValueError(f"--rcfile {path}: {kind}, not a regular file "
                         "(write the commands to a file)")
    if not os.access(path, os.R_OK):
        raise ValueError(f"--rcfile {path}: not readable")


def addManagement(
    service: SwitchService,
    mgmt: str | None = None,
    mgmtMode: int = DEFAULT_MODE,
    mgmtGroup: int | None = None,
    rcfile: str | None = None,
    stdin: bool = False,
) -> None:
    """
    Give C{service} a console on C{mgmt} and run C{rcfile} at start, after
    the port specs (add this after them).

    @param mgmt: the console socket's path, or L{None} for no console.
    @param mgmtMode: its permissions.
    @param mgmtGroup: its group id, if any.
    @param rcfile: console commands to run at start, or L{None}.
    @param stdin: read the console from standard input too (C{--stdin}).
    @raise ValueError: a setting is wrong or the rc file is unreadable.
    """
    ops = service.operations
    service.consoleMode, service.consoleGroup = mgmtMode, mgmtGroup
    if mgmt is not None:
        ConsoleService(ops, service.reactor, mgmt, mgmtMode, mgmtGroup).setServiceParent(service)
    if rcfile is not None:
        checkRcFile(rcfile)
        rc = RcFileService(CommandInterpreter(ops), rcfile, service.clock)
        rc.setServiceParent(service)
    if stdin:
        from vtwisted.consolestdin import StdinConsoleService

        StdinConsoleService(ops, service.reactor).setServiceParent(service)
