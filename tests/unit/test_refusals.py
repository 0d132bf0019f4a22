"""
Refused manhole logins are logged a bounded number of lines per peer and
interval, for a bounded number of peers.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from vtwisted.refusals import PeerLogger, RefusalLog


def test_refusalsAreLoggedOncePerPeerAndInterval() -> None:
    """
    A peer's first refusal is logged; those following it are counted and
    summed up in one line an interval later; a quiet interval forgets it.
    """
    clock = Clock()
    refusals = RefusalLog(clock, interval=60, maxPeers=8)
    with capturedLogs() as events:
        for _ in range(500):
            refusals.refused("192.0.2.7", "refused {n} {peer}", n=1, peer="192.0.2.7:1")
        refusals.refused("192.0.2.8", "refused {n}", n=2)
    assert [event["n"] for event in events] == [1, 2]
    with capturedLogs() as events:
        clock.advance(60)
    assert [(event["peer"], event["count"]) for event in events] == [("192.0.2.7", 499)]
    with capturedLogs() as events:
        clock.advance(60)
        refusals.refused("192.0.2.7", "refused {n}", n=3)
    assert [event.get("n") for event in events] == [3]
    refusals.stop()
    assert clock.getDelayedCalls() == []


def test_followedPeersAreCapped() -> None:
    """
    Past maxPeers, refusals from further peers are only counted, and summed
    up in one line: memory and log lines stay bounded.
    """
    clock = Clock()
    refusals = RefusalLog(clock, interval=60, maxPeers=4)
    with capturedLogs() as events:
        for number in range(1000):
            refusals.refused(f"2001:db8::{number:x}", "refused {n}", n=number)
    assert [event["n"] for event in events] == [0, 1, 2, 3]
    assert len(clock.getDelayedCalls()) == 5
    with capturedLogs() as events:
        clock.advance(60)
    (summary,) = events
    assert summary["count"] == 996 and summary["limit"] == 4
    assert clock.getDelayedCalls() == []


def test_aConnectionsLineWithAKindFieldKeepsIt() -> None:
    """
    Twisted's SSH classes log C{kind} as a field of their own ("{user!r}
    trying auth {kind!r}"): through a connection's L{PeerLogger} the line
    still names it, and its lines for several methods count as one kind.
    """
    clock = Clock()
    limiter = RefusalLog(clock, interval=60, what="line(s)")
    logger = PeerLogger(limiter, IPv4Address("TCP", "192.0.2.7", 40000))
    with capturedLogs() as events:
        logger.debug("{user!r} trying auth {kind!r}", user=b"root", kind=b"none")
        logger.debug("{user!r} trying auth {kind!r}", user=b"root", kind=b"publickey")
    assert [formatEvent(e) for e in events if e["log_level"] == LogLevel.debug] == [
        "manhole: 192.0.2.7:40000: b'root' trying auth b'none'"]
    with capturedLogs() as events:
        clock.advance(60)
    (summary,) = events
    assert summary["what"] == "line(s) like '{user!r} trying auth {kind!r}'"
    limiter.stop()
