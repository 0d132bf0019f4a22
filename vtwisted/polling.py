"""
Busy polling of devices a switch writes to.

Theory of operation
-------------------
A write into a TAP device runs the receiving namespace's network stack in
the writer's system call, so the answer (a TCP ACK, a ping reply) is often
queued on that device by the time the write returns; and a sender on another
CPU pays the scheduler's wake-up latency on every packet if the switch sleeps
between packets.  L{Drainer} removes both costs for the devices of one
switch: it re-reads the devices written to, then keeps polling all of them
for a short while after the last packet, within a bound that keeps the
reactor turning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol
from weakref import WeakKeyDictionary


class Pollable(Protocol):
    """
    What a L{Drainer} needs of a device link.
    """

    touched: bool
    busyPoll: float
    connected: int

    def readBatch(self) -> bool:
        """
        Read what is waiting without blocking; true if anything was read.
        """


class Drainer:
    """
    The devices of one switch, read in a tight loop while traffic flows.

    @ivar pending: devices written to since they were last read.
    @ivar links: every device, polled for L{spin} seconds after the last
        packet (the largest C{busyPoll} of the devices).
    """

    #: Rounds of draining per wake-up, to bound the time away from the reactor.
    ROUNDS = 8
    #: The longest time spent polling before giving the reactor a turn.
    MAX_SPIN = 0.002

    def __init__(self, spin: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.pending: list[Pollable] = []
        self.links: list[Pollable] = []
        self.spin = spin
        self.clock = clock

    def run(self) -> None:
        """
        Drain the devices written to, then poll while traffic flows.
        """
        self.drain()
        if self.spin <= 0:
            return
        clock = self.clock
        start = last = clock()
        links = self.links
        while True:
            got = False
            for link in links:
                if link.readBatch():
                    got = True
            self.drain()
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

    def drain(self) -> None:
        """
        Read the devices written to until none has anything more.
        """
        pending = self.pending
        for _ in range(self.ROUNDS):
            if not pending:
                return
            links = pending[:]
            pending.clear()
            progress = False
            for link in links:
                link.touched = False
            for link in links:
                if link.connected and link.readBatch():
                    progress = True
            if not progress:
                return


_drainers: WeakKeyDictionary[Any, Drainer] = WeakKeyDictionary()


def drainerFor(switch: Any) -> Drainer:
    """
    The L{Drainer} shared by the devices of C{switch}.
    """
    drainer = _drainers.get(switch)
    if drainer is None:
        drainer = _drainers[switch] = Drainer()
    return drainer
