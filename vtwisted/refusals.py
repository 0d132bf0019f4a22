"""
Logging refused manhole logins, and what each SSH connection logs, without
letting a scanner fill the log.

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

The same goes for the other lines a connection brings (a malformed
message, a disconnect with an error, a connection lost): L{PeerLogger}
stands in for the C{Logger} of Twisted's SSH classes and for the
manhole's own, and hands each line to a L{RefusalLog} under its peer
address and its kind (its format), so that a peer gets at most two lines
of each kind per interval, the first of each in full with its address.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

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
                 maxPeers: int = MAX_PEERS, what: str = "refused login(s)") -> None:
        """
        @param clock: schedules the summaries (C{callLater}).
        @param what: what is counted, for the summaries.
        """
        self.clock = clock
        self.interval = interval
        self.maxPeers = maxPeers
        self.what = what
        # (peer, kind) -> [lines not logged yet, the delayed call of its summary]
        self._peers: dict[tuple[str, str], list[Any]] = {}
        self._overflow = 0
        self._overflowCall: Any = None

    def refused(self, peer: str, format: str, /, **fields: Any) -> None:
        """
        A login from C{peer} was refused: log C{format} with C{fields} if
        it is the peer's first in its interval, else count it.
        """
        self.note(peer, "", format, **fields)

    def note(self, peer: str, kind: str, format: str, /, level: LogLevel = LogLevel.warn,
             failure: Failure | None = None, **fields: Any) -> None:
        """
        Log C{format} with C{fields} at C{level} (with C{failure}'s
        traceback, if given) if it is C{peer}'s first line of this C{kind}
        in its interval, else count it.
        """
        key = (peer, kind)
        entry = self._peers.get(key)
        if entry is not None:
            entry[0] += 1
        elif len(self._peers) < self.maxPeers:
            if failure is not None:
                log.failure(format, failure, level, **fields)
            else:
                log.emit(level, format, **fields)
            self._peers[key] = [0, self.clock.callLater(self.interval, self._summarise, key)]
        else:
            self._overflow += 1
            if self._overflowCall is None:
                self._overflowCall = self.clock.callLater(self.interval, self._summariseOthers)

    def _summarise(self, key: tuple[str, str]) -> None:
        entry = self._peers[key]
        if entry[0] == 0:
            del self._peers[key]
            return
        peer, kind = key
        what = f"{self.what} like {kind!r}" if kind else self.what
        log.warn("manhole: {count} more {what} from {peer} in the last {interval:g} s",
                 count=entry[0], what=what, peer=peer, interval=self.interval)
        entry[0] = 0
        entry[1] = self.clock.callLater(self.interval, self._summarise, key)

    def _summariseOthers(self) -> None:
        log.warn("manhole: {count} {what} in the last {interval:g} s from peers "
                 "beyond the {limit} followed", count=self._overflow, what=self.what,
                 interval=self.interval, limit=self.maxPeers)
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


class PeerLogger:
    """
    A stand-in for a C{Logger} of one connection's (Twisted's SSH
    transport's C{_log}, say): each line goes through a L{RefusalLog}
    under the peer's address and the line's kind (its format, or C{manhole_kind}),
    with C{manhole: PEER: } in front.
    """

    def __init__(self, limiter: RefusalLog, peer: Any) -> None:
        """
        @param peer: the connection's peer address (its C{host} is the key).
        """
        self.limiter = limiter
        self.host = str(getattr(peer, "host", peer))
        port = getattr(peer, "port", None)
        #: C{HOST:PORT} (C{[HOST]:PORT} for IPv6), as the lines name it.
        self.peer = self.host if port is None else (
            f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}")

    def emit(self, level: LogLevel, format: str | None = None, /, manhole_kind: str = "",
             failure: Failure | None = None, **fields: Any) -> None:
        """
        Log a line, a bounded number of times per peer, kind and interval.

        @param manhole_kind: the kind the line is counted under, if not its
            format (not C{kind}: Twisted's own lines have a C{kind} field).
        """
        text = (format or "").replace("\n", "; ")
        self.limiter.note(self.host, manhole_kind or text, "manhole: {manhole_peer}: " + text,
                          level, failure, manhole_peer=self.peer, **fields)

    def debug(self, format: str | None = None, /, **fields: Any) -> None:
        self.emit(LogLevel.debug, format, **fields)

    def info(self, format: str | None = None, /, **fields: Any) -> None:
        self.emit(LogLevel.info, format, **fields)

    def warn(self, format: str | None = None, /, **fields: Any) -> None:
        self.emit(LogLevel.warn, format, **fields)

    def error(self, format: str | None = None, /, **fields: Any) -> None:
        self.emit(LogLevel.error, format, **fields)

    def critical(self, format: str | None = None, /, **fields: Any) -> None:
        self.emit(LogLevel.critical, format, **fields)

    def failure(self, format: str, failure: Failure | None = None,
                level: LogLevel = LogLevel.critical, **fields: Any) -> None:
        self.emit(level, format, failure=failure or Failure(), **fields)
