"""
Busy polling of the TAP devices of one switch (C{tap:NAME:busypoll=USEC}).

Theory of operation
-------------------
A sender on another CPU pays the scheduler's wake-up latency on every packet
if the switch sleeps between packets.  When busy polling is asked for,
L{BusyPoller} keeps reading every device of the switch for a short while after
the last packet instead of going back to the reactor, within a bound that
keeps the reactor turning.  It is off by default: on the two-core machine
it was measured on, the CPU it burns is taken from the namespaces' own
network stacks, and it gained nothing.  Re-reading the devices just written
to (the write runs the receiving stack, so an answer is often queued by the
time it returns) was measured too, gained nothing and was removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol
from weakref import WeakKeyDictionary


class Pollable(Protocol):
    """
    What a L{BusyPoller} needs of a device link.
    """

    busyPoll: float
    connected: int

    def readBatch(self) -> bool:
        """
        Read what is waiting without blocking; true if anything was read.
        """


class BusyPoller:
    """
    The devices of one switch, read in a tight loop while traffic flows.

    @ivar links: every device, polled for L{spin} seconds after the last
        packet (the largest C{busyPoll} of the devices).
    """

    #: The longest time spent polling before giving the reactor a turn.
    MAX_SPIN = 0.002

    def __init__(self, spin: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.links: list[Pollable] = []
        self.spin = spin
        self.clock = clock

    def run(self) -> None:
        """
        Poll every device while traffic flows, if busy polling is on.
        """
        if self.spin <= 0:
            return
        clock = self.clock
        start = last = clock()
        links = self.links
        while True:
            got = False
            for link in links:
                if link.connected and link.readBatch():
                    got = True
            now = clock()
            if got:
                last = now
            elif now - last > self.spin:
                return
            if now - start > self.MAX_SPIN:
                return

    def updateSpin(self) -> None:
        """
        Poll as long as the most patient device asks (C{busypoll=}).
        """
        self.spin = max((link.busyPoll for link in self.links), default=0.0)


_pollers: WeakKeyDictionary[Any, BusyPoller] = WeakKeyDictionary()


def pollerFor(switch: Any) -> BusyPoller:
    """
    The L{BusyPoller} shared by the devices of C{switch}.
    """
    poller = _pollers.get(switch)
    if poller is None:
        poller = _pollers[switch] = BusyPoller()
    return poller
