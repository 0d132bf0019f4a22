"""
Ending a command by process group: each command runs in a session of its
own (L{vtwisted.processes}), so its process group holds the command and
whatever it started, and is signalled as a whole.

Theory of operation
-------------------
A group is only ever signalled while something of it is left, looked at
just before (L{groupAlive}), so that a number whose processes are all gone,
and which could be another's by now, is never signalled.  A command just
spawned may not have made its session yet: until its own process is
reaped (L{unreaped}) it counts as alive, and a signal due then goes to that
process alone (L{signalLeader}).  L{stopGroup} sends C{TERM}, then
C{KILL}, to what is left, polling ten times a second; C{TERM} is followed
at once by C{CONT}, as systemd does, so that a command stopped with
C{SIGSTOP} (or C{^Z}, C{gdb}) gets its C{TERM} now rather than its C{KILL}
3 s later (a stopped process takes no signal but C{KILL} and C{CONT}).

Killing the group misses what left it: a command that daemonises, or runs
C{setsid -f}, leaves a process in a session of its own that may hold the
command's standard input, output or error (or its socket) open for as
long as it runs, so the switch's ends of those pipes never see their end,
and Twisted keeps them, and the run, until the switch stops.  So once
L{stopGroup} is over (nothing of the group left, or C{KILL} sent), what is
still open of the switch's ends of the command's pipes is closed
L{CLOSE_GRACE} seconds later (L{closePipes}: time to read what the
command wrote before it ended, and for what was queued for its input to
be taken), logged once at info: nothing of that run stays in the switch.
Until then the switch reads the command's standard error (a stop closes
its input and output, or its socket, only: L{vtwisted.processes}), so
what it says as it ends, on its C{TERM} too, is logged.
L{exitText} says how a command's process ended, for the log and the
console.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure

from vtwisted.closing import CLOSE_GRACE

log = Logger()

#: Seconds a command is given to end before C{TERM}, and after it before C{KILL}.
STOP_GRACE = 3.0


def signalGroup(group: int | None, name: str) -> None:
    """
    Send signal C{name} to process group C{group} (a command's: it leads
    its own session), if anything is left in it.
    """
    if group is None:
        return
    try:
        os.killpg(group, getattr(signal, f"SIG{name}"))
    except (ProcessLookupError, PermissionError):
        pass


def signalLeader(pid: int, name: str) -> None:
    """
    Send signal C{name} to the command's own process alone: one that has
    not made its session (and group) yet.  Only for a process not reaped
    yet, whose pid cannot be another's.
    """
    try:
        os.kill(pid, getattr(signal, f"SIG{name}"))
    except (ProcessLookupError, PermissionError):
        pass


def groupAlive(group: int) -> bool:
    """
    Whether process group C{group} has a process left (one of ours: not
    one we may not signal).
    """
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def unreaped(process: Any) -> bool:
    """
    Whether C{process} (a Twisted process transport) has not been reaped
    yet: Twisted forgets its pid once it has.
    """
    return process is not None and getattr(process, "pid", None) is not None


def openPipes(process: Any) -> dict[int, Any]:
    """
    The switch's ends of C{process}'s pipes still open, by child descriptor
    (a Twisted process transport's C{pipes}; none for anything else).
    """
    pipes = getattr(process, "pipes", None)
    return dict(pipes) if isinstance(pipes, dict) else {}


def closePipes(process: Any, what: str) -> None:
    """
    Close at once the switch's ends of C{process}'s pipes still open, what
    is queued for its input dropped, what it wrote and was not read lost:
    only something that left the command's group holds them now.  Logged
    once, at info, naming C{what} (the spec) and the pid.
    """
    pipes = openPipes(process)
    if not pipes:
        return
    log.info("{what}: something the command (pid {pid}) started left its process group and "
             "still holds its {fds}; the switch closed its ends",
             what=what, pid=getattr(process, "pid", None) or "gone",
             fds=", ".join(_NAMES.get(fd, f"descriptor {fd}") for fd in sorted(pipes)))
    for childFD, pipe in sorted(pipes.items()):
        if childFD in process.pipes:
            pipe.connectionLost(Failure(ConnectionDone("the command's group is gone")))


_NAMES = {0: "standard input", 1: "standard output", 2: "standard error"}


def stopGroup(clock: Any, group: int | None, termAfter: float,
              process: Any = None, what: str = "a command") -> Deferred[None]:
    """
    End what is left of a command's process group: C{TERM} (and C{CONT},
    for a stopped command) after C{termAfter} seconds, C{KILL}
    L{STOP_GRACE} seconds after that, to whatever of it is still there.

    A command just spawned has no group yet: its process makes its
    session (C{setsid}) only once it runs, which may be after this is
    called (a port deleted, or the switch stopped, just as a command is
    started again).  So while C{process}, the command's own, is not reaped
    the command is taken for alive even with no group, and a signal due
    then goes to that process itself.

    Whatever of the switch's ends of C{process}'s pipes is still open
    L{CLOSE_GRACE} seconds after that is closed then (L{closePipes}, which
    logs it naming C{what}): something that left the group holds them.

    @return: fires once the group is empty and the command's process
        reaped (looked at every tenth of a second, so no signal ever goes
        to a group that is gone and whose number could be another's), or
        L{STOP_GRACE} after the C{KILL}.
    """
    done: Deferred[None] = Deferred()

    def over() -> None:
        if openPipes(process):
            clock.callLater(CLOSE_GRACE, closePipes, process, what)
        done.callback(None)

    if group is None:
        over()
        return done
    start, sent = clock.seconds(), set()

    def look() -> None:
        grouped = groupAlive(group)
        if not grouped and not unreaped(process):
            over()
            return
        elapsed = clock.seconds() - start
        for name, after in (("TERM", termAfter), ("KILL", termAfter + STOP_GRACE)):
            if elapsed >= after and name not in sent:
                sent.add(name)
                # A stopped process takes its TERM only once continued.
                for each in (name, "CONT") if name == "TERM" else (name,):
                    if grouped:
                        signalGroup(group, each)
                    else:
                        signalLeader(group, each)
        if elapsed >= termAfter + 2 * STOP_GRACE:
            over()
            return
        clock.callLater(0.1, look)

    look()
    return done


def exitText(reason: Failure | None) -> str:
    """
    C{exited with status 1}, C{was killed by signal 9 (SIGKILL)}, C{was
    killed by signal 11 (SIGSEGV, core dumped)}, or C{exited}.
    """
    if reason is not None and reason.check(ProcessTerminated):
        error: Any = reason.value
        if error.signal is not None:
            try:
                name = signal.Signals(error.signal).name
            except ValueError:
                name = "unknown"
            status = error.status
            if status is not None and os.WIFSIGNALED(status) and os.WCOREDUMP(status):
                name += ", core dumped"
            return f"was killed by signal {error.signal} ({name})"
        return f"exited with status {error.exitCode}"
    if reason is not None and reason.check(ProcessDone):
        return "exited with status 0"
    return "exited"
