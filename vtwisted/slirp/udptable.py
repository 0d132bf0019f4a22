"""
Room in a full UDP mapping table of a slirp port (L{vtwisted.slirp.udp}).

Theory of operation
-------------------
A guest that sends from a fresh source port each time (a stub resolver, a
scanner, a game's NAT probes, a test script) opens a host socket per port,
and those mappings stay until they have been idle for 240 s.  Refusing new
sources once the table is full would let such a burst cut every guest of
the port off from UDP, DNS included, for minutes.  So, as Linux conntrack's
C{early_drop} does for a full connection table, a new source takes the
place of the mapping whose loss costs least (L{worth}):

  0. one that only asked the DNS proxy and got an answer to every query
     (a stub resolver's finished lookup);
  1. one never answered (a one-shot flow, a probe nobody answered), or a
     DNS-only one whose query went unanswered for a sweep or more (its
     client has given up);
  2. one with a single exchange (one datagram sent, answered), or a DNS
     query still waiting for its answer;
  3. a stream: answered, and sending again since.

Within one kind the mapping idle for the most sweeps goes first, then one
not marked active since the last sweep, then the oldest.  A stream active
in the last sweep goes only when every other mapping is one as well: a
burst of one-shot flows pushes out its own kind first, never a busy
stream, and no new source, DNS queries included, is ever refused for want
of room (only for want of descriptors).

The datagram path does not pay for any of this: a mapping is found as
before, in a plain dictionary, and marked as before (its counters and its
C{active} flag, which the sweep turns into C{idle}).  The work is done
only when a new source meets a full table: one look at every mapping
ranks the L{CANDIDATES} least worth keeping, and the next new sources take
their places in turn, skipping any that carried a datagram since it was
ranked (the next sweep, which changes the idle counts, drops the ranking).
A burst of new sources at a full table so costs one look at the table per
L{CANDIDATES} of them, not one each.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vtwisted.slirp.udpmapping import UdpMapping

#: Mappings ranked by one look at a full table.
CANDIDATES = 64

_Key = tuple[bytes, int]


def worth(mapping: UdpMapping) -> int:
    """
    How much closing C{mapping} would cost its guest, from 0 (nothing: a
    DNS lookup that is over) to 3 (a stream that is answered and goes on).
    """
    if mapping.onlyDns:
        if mapping.received >= mapping.sent:
            return 0
        return 1 if mapping.idle else 2
    if not mapping.received:
        return 1
    return 2 if mapping.sent < 2 else 3


class EvictionOrder:
    """
    Which mapping of a full table gives its place to a new guest source.

    @ivar mappings: the UDP engine's table, guest source to mapping.
    @ivar evicted: mappings given up for new sources so far.
    """

    def __init__(self, mappings: dict[_Key, UdpMapping]) -> None:
        self.mappings = mappings
        self.evicted = 0
        #: The ranked candidates, the least worth keeping last, each with
        #: its counters when ranked.
        self._candidates: list[tuple[_Key, UdpMapping, int, int]] = []

    def evictOne(self) -> UdpMapping | None:
        """
        Take the mapping least worth keeping out of the table and return it
        (the caller closes its socket), or L{None} if the table is empty.
        """
        candidates, mappings = self._candidates, self.mappings
        while candidates:
            key, mapping, sent, received = candidates.pop()
            if mappings.get(key) is mapping and mapping.sent == sent \
                    and mapping.received == received:
                break
        else:
            if not self._rank():
                return None
            key, mapping, _, _ = self._candidates.pop()
        del mappings[key]
        self.evicted += 1
        return mapping

    def _rank(self) -> bool:
        """
        Look at every mapping and keep the L{CANDIDATES} least worth
        keeping; return whether there was any.
        """
        items = list(self.mappings.items())
        ranks = heapq.nsmallest(CANDIDATES, (
            (worth(mapping), -mapping.idle, mapping.active, n)
            for n, (_, mapping) in enumerate(items)))
        self._candidates = [(items[n][0], items[n][1], items[n][1].sent, items[n][1].received)
                            for *_, n in reversed(ranks)]
        return bool(self._candidates)

    def forget(self) -> None:
        """
        Drop the ranking (a sweep changed the idle counts it rests on).
        """
        self._candidates = []
