"""
Where a command's standard output and error go (C{cmd:...:stdout=WHERE},
C{stderr=WHERE}): the switch's log, nowhere, or a file.

Theory of operation
-------------------
A C{cmd:} command's standard error, and its standard output when that is
not the frame channel (C{socket=} runs), are pipes the switch reads and
logs line by line with the spec (L{vtwisted.processes.CommandEndpoint.say}):
standard error as warnings, standard output as information.  That suits a
command that says little and only when something is wrong (C{ssh},
C{vde_plug}), not a QEMU guest with C{-serial stdio}, whose whole console
would be logged.

L{parseOutput} reads the option: C{log} (the default), C{off} (the
command's descriptor is C{/dev/null}) or a file's path, made absolute
against the switch's working directory when the spec is read (a file
named C{log} or C{off} is C{./log}, C{./off}).  L{openOutput} opens it for
each run, appending and created if missing (as a shell's C{>>} would, its
mode C{0666} less the umask), and the command inherits it as that
descriptor: the switch neither reads nor copies what goes there, and a file
renamed away (log rotation) is opened anew at the next run; a FIFO is
opened without waiting for a reader (none: C{ENXIO}).  A file that
cannot be opened fails the run with an L{OutputError} naming the option,
the path and the errno, which the port logs as any failed connection
attempt, and tries again.  L{checkOutput} checks as the spec is read,
without making or opening anything, that it could be opened (the
directory exists, the switch may write there), so that a typo in the path
refuses the spec there and then, not at a run.
"""

from __future__ import annotations

import errno
import os

__all__ = ["LOG", "OFF", "OutputError", "OutputFiles", "checkOutput", "openOutput",
           "parseOutput"]

class OutputError(ValueError):
    """
    A C{stdout=} or C{stderr=} option is wrong, or its file cannot be
    opened: the message says which and why.
    """


#: Read and logged with the spec.
LOG = "log"
#: C{/dev/null}.
OFF = "off"


def parseOutput(name: str, value: str | None) -> str:
    """
    What C{name=value} (C{stdout=} or C{stderr=}) asks: L{LOG}, L{OFF} or
    an absolute path.

    @raise OutputError: C{value} is empty.
    """
    if value is None:
        return LOG
    if value in (LOG, OFF):
        return value
    if not value:
        raise OutputError(f"{name}= is empty: expected {LOG}, {OFF} or a file's path "
                           f"(for example {name}=/var/log/vm1.console)")
    return os.path.abspath(value)


def checkOutput(name: str, where: str) -> None:
    """
    Check, as the spec is read, that what C{name=where} names could be
    opened for appending by the switch's user, without making or opening
    it: a file must be no directory and be writable; a file not there yet,
    in a directory that exists and the switch may write to.  A typo in the
    path refuses the spec there and then, not at the first run.

    @raise OutputError: it could not be opened (the message names C{name},
        the path and the errno, as L{openOutput}'s).
    """
    if where in (LOG, OFF):
        return
    path = where
    if os.path.exists(path):
        if os.path.isdir(path):
            raise _openError(name, where, path, errno.EISDIR)
        if not _mayWrite(path, os.W_OK):
            raise _openError(name, where, path, _denied(path))
        return
    directory = os.path.dirname(path) or "."
    if not os.path.exists(directory):
        raise _openError(name, where, path, errno.ENOENT)
    if not os.path.isdir(directory):
        raise _openError(name, where, path, errno.ENOTDIR)
    if not _mayWrite(directory, os.W_OK | os.X_OK):
        raise _openError(name, where, path, _denied(directory))


def _mayWrite(path: str, mode: int) -> bool:
    """
    Whether the switch (its effective user, where the OS tells) may
    C{mode} C{path}.
    """
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def _denied(path: str) -> int:
    """
    Why writing to C{path} is refused: a read-only file system, or rights.
    """
    try:
        readOnly = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        readOnly = False
    return errno.EROFS if readOnly else errno.EACCES


def _openError(name: str, where: str, path: str, number: int, strerror: str | None = None
               ) -> OutputError:
    """
    The error of C{name=where} whose file C{path} cannot be opened for
    appending (errno C{number}).
    """
    code = errno.errorcode.get(number, str(number))
    return OutputError(f"{name}={where}: cannot open {path} for appending: "
                       f"{strerror or os.strerror(number)} (errno {number}, {code})")


def openOutput(name: str, where: str) -> int | None:
    """
    Open what C{name=where} names for a run, or L{None} for L{LOG}.

    @return: a descriptor the caller hands the command, then closes.
    @raise OutputError: it cannot be opened (the message names C{name},
        the path and the errno).
    """
    if where == LOG:
        return None
    path = os.devnull if where == OFF else where
    try:
        # Not blocking: a FIFO nobody reads would hold the whole switch
        # here (it is refused, ENXIO); the command gets a blocking one.
        opened = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NONBLOCK, 0o666)
    except OSError as e:
        raise _openError(name, where, path, e.errno or 0, e.strerror) from None
    os.set_blocking(opened, True)
    return opened


class OutputFiles:
    """
    The descriptors a run's standard output and error go to
    (C{spawnProcess}'s C{childFDs} entries), opened together: the files
    opened are closed by L{close} once the command has them.
    """

    def __init__(self, stdout: str, stderr: str) -> None:
        """
        @param stdout: L{LOG}, L{OFF} or a path (see L{parseOutput}).
        @param stderr: the same, for standard error.
        @raise OutputError: one cannot be opened (none is left open).
        """
        self.opened: list[int] = []
        #: C{childFDs} entries for descriptors 1 and 2: C{"r"} (read and
        #: logged) or an open descriptor.
        self.childFDs: dict[int, int | str] = {}
        try:
            for fd, name, where in ((1, "stdout", stdout), (2, "stderr", stderr)):
                opened = openOutput(name, where)
                if opened is None:
                    self.childFDs[fd] = "r"
                else:
                    self.opened.append(opened)
                    self.childFDs[fd] = opened
        except OutputError:
            self.close()
            raise

    def close(self) -> None:
        """
        Close the switch's copies of the files opened.
        """
        opened, self.opened = self.opened, []
        for fd in opened:
            os.close(fd)
