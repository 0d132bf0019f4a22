"""
The eventfds a C{vhostuser:} front-end hands the switch for a ring: the
one the guest kicks, which the reactor polls, and the one the switch writes
to interrupt the guest.  Whatever else a front-end sends in their place is
refused before it is polled or written.
"""

from __future__ import annotations

import os

from vtwisted.wire.vhostuser import VhostUserError

#: What C{/proc/self/fd} says an eventfd is.
_EVENTFD = "anon_inode:[eventfd]"


def checkEventfd(fd: int, name: str, index: int) -> None:
    """
    Make a ring's kick or call descriptor non-blocking, or close it and
    refuse it if it is no eventfd (read from C{/proc}, where there is one):
    a regular file or a pipe at its end would be readable for ever, a
    descriptor opened C{O_PATH} can be neither polled nor written; nor is a
    kick descriptor taken in semaphore mode (L{isSemaphore}).

    @raise VhostUserError: it is not an eventfd.
    """
    try:
        kind = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        kind = _EVENTFD
    if kind != _EVENTFD:
        os.close(fd)
        raise VhostUserError(f"the {name} descriptor of queue {index} is not an eventfd "
                             f"({kind})")
    if name == "kick" and isSemaphore(fd):
        os.close(fd)
        raise VhostUserError(f"the kick descriptor of queue {index} is an eventfd in "
                             "semaphore mode (one kick would keep the switch busy for ever)")
    os.set_blocking(fd, False)


def isSemaphore(fd: int) -> bool:
    """
    Whether eventfd C{fd} is in semaphore mode (C{EFD_SEMAPHORE}): a read
    takes 1 from its count, not all of it, so a count of 2**62 written once
    keeps it readable for ever.  Read from C{/proc/self/fdinfo}; kernels
    too old to say there are not asked further, and the eventfd is taken.
    """
    try:
        with open(f"/proc/self/fdinfo/{fd}") as info:
            return "eventfd-semaphore: 1" in info.read()
    except OSError:
        return False
