"""
Forwarding at real-time priority (C{twistd vswitch --realtime N}).

Theory of operation
-------------------
The Linux bridge forwards in softirq context, which runs before any task
the moment a packet is there.  A switch in a process waits its turn: when a
TAP wakes it while the sending or receiving program has the CPU (two cores
shared by sender, switch and receiver), the frame waits for the scheduler,
and TCP's round trip grows by that wait.  Measured with iperf3 between two
namespaces behind offload TAPs, the same switch forwarded about 9 % more
under C{SCHED_FIFO} than under the default policy (see README.rst,
Performance).

L{RealtimeService} sets C{SCHED_FIFO} at the priority given for the switch's
thread in C{privilegedStartService}, before C{twistd --uid} drops the
privileges it needs (root, C{CAP_SYS_NICE} or an C{RLIMIT_RTPRIO} of at
least C{N}); the policy stays after the drop.  It is set with
C{SCHED_RESET_ON_FORK}, so the commands the switch starts (C{cmd:} ports,
slirp's C{smbd} and C{guestfwd} commands) run at the default policy.  A
policy it may not set stops the start with one line naming the option,
the errno and what grants it.

Linux keeps 5 % of each second for other tasks whatever real-time tasks
do (C{kernel.sched_rt_runtime_us}), and the switch sleeps in C{epoll} when
no frame waits, so it takes no more CPU than it did; what changes is who
waits when it is woken.  A flood of small frames may then leave the other
programs on its core less time than before (as softirq work does).  Busy
polling (C{busypoll=}) at real-time priority spins ahead of everything on
its core while traffic flows: give it a short spin.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()

#: The highest priority C{--realtime} takes (Linux's C{SCHED_FIFO} range).
MAX_PRIORITY = 99


def realtimePriority(value: str) -> int:
    """
    Read C{--realtime}'s priority.

    @raise ValueError: not a whole number from 1 to L{MAX_PRIORITY}.
    """
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PRIORITY:
        raise ValueError(f"--realtime needs a priority from 1 to {MAX_PRIORITY} "
                         f"(1 is enough: above every ordinary task), not {value!r}")
    return number


class RealtimeService(Service):
    """
    Put the switch's thread under C{SCHED_FIFO} at L{priority} when it starts.

    @ivar setScheduler: C{os.sched_setscheduler}, or a stand-in for tests.
    """

    name = "realtime"

    def __init__(self, priority: int,
                 setScheduler: Callable[[int, int, Any], None] | None = None) -> None:
        self.priority = priority
        self.setScheduler = setScheduler or os.sched_setscheduler
        self.applied = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.apply()

    def startService(self) -> None:
        self.apply()  # no privileged start (a test, a switch built by hand)
        super().startService()

    def apply(self) -> None:
        """
        Set the policy, once.

        @raise OSError: it may not be set, naming C{--realtime}, the errno
            and what would allow it.
        """
        if self.applied:
            return
        policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
        try:
            self.setScheduler(0, policy, os.sched_param(self.priority))
        except OSError as e:
            raise OSError(e.errno, _refusal(self.priority, e)) from None
        self.applied = True
        log.info("forwarding at real-time priority {priority} (SCHED_FIFO; commands started "
                 "by the switch keep the default policy)", priority=self.priority)


def _refusal(priority: int, e: OSError) -> str:
    """
    The line for a policy the kernel refused.
    """
    line = f"--realtime {priority}: cannot use SCHED_FIFO: {e.strerror} (errno {e.errno})"
    if e.errno == errno.EPERM:
        line += (f"; it needs root (twistd --uid USER sets it before dropping privileges), "
                 f"CAP_SYS_NICE, or a real-time priority limit of {priority} or more "
                 f"(ulimit -r, limits.conf's rtprio)")
    return line
