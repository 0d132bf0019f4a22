"""
Errors shared by the switch core, the port types and the console.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from vtwisted.spec import SpecError


class SwitchError(Exception):
    """
    An operation on the switch failed.  C{errno} is the Linux error number
    the vde_switch console reports for the same failure (C{1022 Invalid
    argument} and so on).

    @ivar partial: lines a console command printed before failing (in its
        DATA block, as vde_switch's C{debug/list} does).
    """

    partial: tuple[str, ...] = ()

    def __init__(self, code: int, message: str = "") -> None:
        self.errno = code
        self.message = message or os.strerror(code)
        super().__init__(self.message)

    @property
    def strerror(self) -> str:
        """
        The C library's text for C{errno}, as the console prints it.
        """
        return os.strerror(self.errno)


def invalid(message: str) -> SwitchError:
    """
    An argument out of range (C{EINVAL}).
    """
    return SwitchError(errno.EINVAL, message)


def missing(message: str) -> SwitchError:
    """
    No such port or VLAN (C{ENXIO}).
    """
    return SwitchError(errno.ENXIO, message)


def exists(message: str) -> SwitchError:
    """
    The port or VLAN already exists (C{EEXIST}).
    """
    return SwitchError(errno.EEXIST, message)


def busy(message: str) -> SwitchError:
    """
    The port or VLAN is in use (C{EADDRINUSE}).
    """
    return SwitchError(errno.EADDRINUSE, message)


def requireTrusted(session: Any, what: str) -> None:
    """
    Refuse C{what} to a console session from another user than the
    switch's (or root), with C{EPERM}: with C{--mgmt-group} the console may
    be shared with users who must not make the switch write files, open
    devices, listen or run commands as its own user (root, often).
    Sessions without a C{trusted} attribute (standard input, start-up
    scripts) are the operator's.
    """
    if not getattr(session, "trusted", True):
        raise SwitchError(errno.EPERM, f"{what}: only the switch's own user (or root) may do "
                          "this from the console")


def osErrorText(error: OSError) -> str:
    """
    What an OS error says, as the switch reports it: its text (without
    Python's C{[Errno N]} in front), after the file it names if the text
    does not name it, with the errno once at the end.
    """
    message = error.strerror or str(error)
    if error.filename is not None and str(error.filename) not in message:
        message = f"{error.filename}: {message}"
    if error.errno and "errno" not in message.lower():
        message += f" (errno {error.errno})"
    return message


def startFailure(error: BaseException, spec: str | None) -> str:
    """
    One line saying why a service could not start: an L{OSError} as
    L{osErrorText} words it, a L{SwitchError}'s or L{SpecError}'s message,
    anything else its type and text; naming C{spec} (the port spec whose service failed) if the
    error does not already (a port type of another distribution raising
    what C{open()} raised, say).
    """
    if isinstance(error, SwitchError):
        message = error.message
    elif isinstance(error, OSError):
        message = osErrorText(error)
    elif isinstance(error, SpecError):
        message = str(error)
    else:
        message = f"{type(error).__name__}: {error}"
    if spec is not None and spec not in message:
        message = f"{spec}: {message}"
    return message
