"""
The guests' MAC addresses as a slirp router knows them, for ARP
(L{vtwisted.slirp.arpcache}) and for IPv6 neighbour discovery
(L{vtwisted.slirp.neighbours6}): bounded, and forgetting guests that went
silent.

Theory of operation
-------------------
A slirp port outlives its guests: VMs are killed, namespaces and TAPs
deleted, MACs changed, and nothing tells the router.  So an entry lasts
while its guest is heard from (any frame from its address, an ARP packet, a
DHCP lease acknowledged) and goes once it has been silent for
L{NEIGHBOUR_AGE} seconds, give or take a sweep: a sweep every
L{NEIGHBOUR_SWEEP} seconds on the router's clock forgets what was last
heard before then, and counts it.  Five minutes is the ageing time of
802.1D bridges (and Linux's C{bridge} default), which the guests' own
switches use for the same question; it is well past the kernel's
C{gc_stale_time} (60 s), because here forgetting a guest that is alive
costs more than a stale line in C{slirp/print}: its next packet from the
router waits for one ARP or neighbour solicitation round trip (as for any
guest not known yet: the packet is held while the router asks), and DHCP
then probes its address before offering it rather than passing it over
(an ARP probe that a live guest answers).  A guest that sends anything at
all, even a TCP ACK or a DNS query once in five minutes, is never forgotten.

The frame path does not pay for the ageing: the router learns from a
guest's frames only when its address is not in L{NeighbourTable.heard}
(the guests heard since the last sweep, which the sweep empties), the same
one dictionary lookup as before; so a talking guest's time is taken once a
sweep, from its first frame after it.  The sweeps run only while the table
holds anyone.  The times are kept in a dictionary
in the order heard, so the sweep stops at the first guest heard recently
(and the guest heard from longest ago makes room when the table is full).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall

#: Seconds a guest may stay silent before the router forgets its MAC (the
#: 802.1D bridges' ageing time; see the module's docstring).
NEIGHBOUR_AGE = 300.0
#: Seconds between two sweeps for silent guests.
NEIGHBOUR_SWEEP = 60.0


class NeighbourTable:
    """
    Guest addresses to MACs, at most C{capacity}, each forgotten once its
    guest has been silent for L{NEIGHBOUR_AGE} seconds.

    @ivar macs: guest address to MAC.
    @ivar heard: the guests heard since the last sweep (address to MAC):
        frames from them need not be learned from again.
    @ivar forgotten: entries forgotten so far, their guests silent.
    """

    def __init__(self, reactor: Any, capacity: int) -> None:
        self.reactor = reactor
        self.capacity = capacity
        self.macs: dict[bytes, bytes] = {}
        self.heard: dict[bytes, bytes] = {}
        self.forgotten = 0
        #: Address to when its guest was last heard, the earliest first.
        self._lastHeard: dict[bytes, float] = {}
        #: Sweeps while the table holds anyone.
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = reactor

    def remember(self, address: bytes, mac: bytes) -> None:
        """
        Guest C{address} was heard from, at C{mac}: keep it (making room
        by forgetting the guest heard from longest ago if need be).
        """
        macs, lastHeard = self.macs, self._lastHeard
        if address not in macs and len(macs) >= self.capacity:
            oldest = next(iter(lastHeard))
            del lastHeard[oldest], macs[oldest]
            self.heard.pop(oldest, None)
        macs[address] = self.heard[address] = mac
        lastHeard.pop(address, None)
        lastHeard[address] = self.reactor.seconds()
        if not self._sweeper.running:
            self._sweeper.start(NEIGHBOUR_SWEEP, now=False)

    def sweep(self) -> None:
        """
        Forget the guests silent for L{NEIGHBOUR_AGE} seconds, and start
        taking the time of the others anew.
        """
        self.heard.clear()
        lastHeard = self._lastHeard
        cutoff = self.reactor.seconds() - NEIGHBOUR_AGE
        for address, when in list(lastHeard.items()):
            if when > cutoff:
                break
            del lastHeard[address]
            self.macs.pop(address, None)
            self.forgotten += 1
        if not lastHeard:
            self._sweeper.stop()

    def close(self) -> None:
        """
        Stop sweeping.
        """
        if self._sweeper.running:
            self._sweeper.stop()
