"""
A connection the switch closes whose peer reads nothing is aborted after
a grace (L{vtwisted.closing}), for every stream link (C{qemu:},
C{cable:}, C{vhostuser:}), and a link's watches stop as it is closed, not
only once its connection is gone; on a fake clock with string transports.
The real thing (a guest that never reads, C{port/del}, C{twistd} stopping):
tests/integration/test_stream_linger.py.  The console's sessions too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from consolefakes import makeOperations
from test_cableprobe import cableFrom, connectedPair, pairs  # noqa: F401
from test_cableprobe import listening as cableListening
from test_qemu import Transport
from test_qemukeepalive import guestFrom
from test_qemukeepalive import listening as qemuListening
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from vhostfakes import FakeDriver

from vtwisted import closing, console
from vtwisted.ports import streamkeepalive

GRACE = closing.CLOSE_GRACE


@pytest.fixture
def drivers() -> Iterator[list[FakeDriver]]:
    """
    The fake vhost-user front-ends a test made; all closed after it.
    """
    made: list[FakeDriver] = []
    yield made
    for driver in made:
        driver.close()


def abortLines(events: Sequence[Any]) -> list[str]:
    return [formatEvent(e) for e in events if "aborted after" in e.get("log_format", "")]


def test_aConnectionThatGoesInTimeIsNeverAborted() -> None:
    """
    The peer reads what was queued and the connection goes: no abort, no
    line in the log, no timer left.
    """
    clock = Clock()
    transport = StringTransport()
    graceful = closing.GracefulClose(clock)
    graceful.close(transport, "qemu:test: guest")
    assert transport.disconnecting and graceful.pending
    graceful.lost()
    assert not clock.getDelayedCalls() and not graceful.pending
    with capturedLogs() as events:
        clock.advance(GRACE * 2)
    assert not transport.disconnected and not abortLines(events)


def test_aPeerThatReadsNothingIsAbortedAfterTheGraceLoggedOnce() -> None:
    """
    Still there after the grace: aborted, and said once at info level with
    what it was; closing it again changes nothing.
    """
    clock = Clock()
    transport = StringTransport()
    graceful = closing.GracefulClose(clock)
    with capturedLogs() as events:
        graceful.close(transport, "qemu:test: guest")
        graceful.close(transport, "qemu:test: guest")
        clock.advance(GRACE - 0.5)
        assert not transport.disconnected
        clock.advance(0.5)
        assert transport.disconnected
        clock.advance(GRACE * 2)
    (line,) = abortLines(events)
    assert line == f"qemu:test: guest: peer not reading; connection aborted after {GRACE:g} s"
    (event,) = [e for e in events if "aborted after" in e.get("log_format", "")]
    assert event["log_level"] is LogLevel.info
    graceful.lost()
    assert not clock.getDelayedCalls()


def qemuGuest(pairs: Any, drivers: Any) -> tuple[Any, Any, Clock]:  # noqa: F811
    listener, clock = qemuListening()
    link = guestFrom(listener, "10.0.0.2", connectedPair(pairs)[0])
    return listener, link, clock


def cableLink(pairs: Any, drivers: Any) -> tuple[Any, Any, Clock]:  # noqa: F811
    listener, clock = cableListening()
    link = cableFrom(listener, "10.0.0.2", connectedPair(pairs)[0])
    return listener, link, clock


def vhostLink(pairs: Any, drivers: Any) -> tuple[Any, Any, Clock]:  # noqa: F811
    clock = Clock()
    driver = FakeDriver(reactor=clock)
    drivers.append(driver)
    return driver.owner, driver.link, clock


@pytest.mark.parametrize("make", [qemuGuest, cableLink, vhostLink])
def test_aLinkClosedByTheSwitchIsAbortedIfItsPeerReadsNothing(pairs, drivers, make) -> None:  # noqa: F811
    """
    C{port/del} closes a link (a QEMU stopped with C{-S}, a stuck far
    switch, a QEMU not reading its vhost-user replies): still there after
    the grace, it is aborted; once its connection is lost, no timer is left.
    """
    owner, link, clock = make(pairs, drivers)
    transport = link.transport
    link.close()
    assert link not in owner.links and transport.disconnecting
    clock.advance(GRACE - 0.5)
    assert not transport.disconnected
    with capturedLogs() as events:
        clock.advance(0.5)
    assert transport.disconnected
    (line,) = abortLines(events)
    assert line.startswith(f"{owner.spec}: {link.description}: peer not reading"), line
    link.connectionLost(None)
    assert not [call for call in clock.getDelayedCalls() if call.active()]


@pytest.mark.parametrize("make", [qemuGuest, cableLink, vhostLink])
def test_aLinkThatGoesAfterItsCloseLeavesNoTimer(pairs, drivers, make) -> None:  # noqa: F811
    """
    The peer lets the connection go within the grace: nothing is aborted.
    """
    owner, link, clock = make(pairs, drivers)
    transport = link.transport
    link.close()
    assert link.closing is not None and link.closing.pending
    link.connectionLost(None)
    assert not [call for call in clock.getDelayedCalls() if call.active()]
    clock.advance(GRACE)
    assert not transport.disconnected


def test_aMalformedMessageClosesWithTheGraceToo() -> None:
    """
    A guest that sent a length over the limit, and reads nothing: its
    connection goes after the grace.
    """
    listener, clock = qemuListening()
    link = listener.factory.buildProtocol(None)
    assert link is not None
    transport = Transport()
    link.makeConnection(transport)
    link.dataReceived(b"\xff\xff\xff\xff")
    assert transport.disconnecting and link not in listener.links
    clock.advance(GRACE)
    assert transport.disconnected


def test_aGuestClosedByTheSwitchIsNoLongerWatched(pairs, monkeypatch) -> None:  # noqa: F811
    """
    A TCP guest's keepalive watch stops as the switch closes its link, not
    only once the connection is gone: a closed link lingering is never
    dropped again as silent, and the only timer left is the grace.
    """
    listener, link, clock = qemuGuest(pairs, [])
    watching = set(clock.getDelayedCalls())
    assert watching  # the watch (and the link's trial)
    link.close()
    assert not [call for call in watching if call.active()]
    monkeypatch.setattr(streamkeepalive, "silentFor", lambda info: 31.0)
    with capturedLogs() as events:
        clock.advance(GRACE - 0.5)
    assert not [e for e in events if "acknowledged" in e.get("log_format", "")]
    assert link.closing is not None and link.closing.pending


def test_aCableClosedByTheSwitchStopsItsStallTimer(pairs) -> None:  # noqa: F811
    """
    A cable closed in the middle of a message has no stall deadline left.
    """
    listener, link, clock = cableLink(pairs, [])
    link.dataReceived(b"\x00\x00\x01\x00" + b"x" * 10)  # half a message
    stall = link._stall
    assert stall is not None and stall.active()
    link.close()
    assert not stall.active()


def test_aConsoleClientThatSendsWithoutReadingIsAbortedAfterTheGrace(monkeypatch) -> None:
    """
    A console client that sends too much without reading is told so and
    its session closed; reading nothing, it is aborted after the grace.
    """
    monkeypatch.setattr(console, "MAX_PENDING", 100)
    clock = Clock()
    ops, _, _ = makeOperations()
    factory = console.ConsoleFactory(console.CommandInterpreter(ops), clock)
    session = factory.buildProtocol(None)
    transport = StringTransport()
    session.makeConnection(transport)
    session.pauseProducing()  # the client reads nothing
    session.dataReceived(b"vlan/create 4\n" * 10)
    assert transport.disconnecting and not transport.disconnected
    with capturedLogs() as events:
        clock.advance(GRACE)
    assert transport.disconnected
    assert abortLines(events) == [
        f"management console: peer not reading; connection aborted after {GRACE:g} s"]
    session.connectionLost(None)
    assert not [call for call in clock.getDelayedCalls() if call.active()]
