"""
Logging refused manhole logins without letting a scanner fill the log.

Theory of operation
-------------------
L{RefusalLog} logs the first refused login from a peer address (the host,
not the port: a scanner's connections each come from a new port) in full,
and counts the ones that follow.  An interval after that first line, a
summary line gives the count, if there is one, and the next interval is
counted the same way; an interval with no refusal forgets the peer, whose
next refusal is logged in full again.  So a peer costs at most two lines per
interval however fast it knocks.

At most C{maxPeers} peers are followed (each with one delayed call on the
injected clock); refusals from peers beyond them are only counted, and the
count is logged in one line per interval, so memory stays bounded when
addresses are many (an IPv6 scanner, a botnet).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger()

#: Seconds over which a peer's refusals after the first are counted.
REFUSAL_INTERVAL = 60.0
#: How many peers are followed at once.
MAX_PEERS = 256


class RefusalLog:
    """
    Logs refused logins, a bounded number of lines per peer and interval.
    """

    def __init__(self, clock: Any, interval: float = REFUSAL_INTERVAL,
                 maxPeers: int = MAX_PEERS) -> None:
        """
        @param clock: schedules the summaries (C{callLater}).
        """
        self.clock = clock
        self.interval = interval
        self.maxPeers = maxPeers
        # peer -> [refusals not logged yet, the delayed call of its summary]
        self._peers: dict[str, list[Any]] = {}
        self._overflow = 0
        self._overflowCall: Any = None

    def refused(self, peer: str, format: str, /, **fields: Any) -> None:
        """
        A login from C{peer} was refused: log C{format} with C{fields} if
        it is the peer's first in its interval, else count it.
        """
        entry = self._peers.get(peer)
        if entry is not None:
            entry[0] += 1
        elif len(self._peers) < self.maxPeers:
            log.warn(format, **fields)
            self._peers[peer] = [0, self.clock.callLater(self.interval, self._summarise, peer)]
        else:
            self._overflow += 1
            if self._overflowCall is None:
                self._overflowCall = self.clock.callLater(self.interval, self._summariseOthers)

    def _summarise(self, peer: str) -> None:
        entry = self._peers[peer]
        if entry[0] == 0:
            del self._peers[peer]
            return
        log.warn("manhole: {count} more refused login(s) from {peer} in the last {interval:g} s",
                 count=entry[0], peer=peer, interval=self.interval)
        entry[0] = 0
        entry[1] = self.clock.callLater(self.interval, self._summarise, peer)

    def _summariseOthers(self) -> None:
        log.warn("manhole: {count} refused login(s) in the last {interval:g} s from peers "
                 "beyond the {limit} followed", count=self._overflow, interval=self.interval,
                 limit=self.maxPeers)
        self._overflow, self._overflowCall = 0, None

    def stop(self) -> None:
        """
        Cancel the pending summaries and forget the peers.
        """
        for _, call in self._peers.values():
            if call.active():
                call.cancel()
        if self._overflowCall is not None and self._overflowCall.active():
            self._overflowCall.cancel()
        self._peers.clear()
        self._overflow, self._overflowCall = 0, None
