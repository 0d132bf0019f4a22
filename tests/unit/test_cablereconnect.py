"""
Connecting stream ports whose connections end at once: a cable
(C{cable:tcp:...}) whose far side closes before its hello (TLS refused,
not a cable), and C{qemu:connect:} to a peer that accepts and closes;
their reconnecting services, on a fake clock with a fake endpoint.
"""

from __future__ import annotations

from typing import Any

from test_qemu import Transport
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from vtwisted.portoptions import PortOptions
from vtwisted.ports import cable, qemu
from vtwisted.switch import Switch


class Endpoint:
    """
    Connects at once, on a fake transport; remembers each connection.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[Any, Transport]] = []

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        transport = Transport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


def closeAndWait(endpoint: Endpoint, clock: Clock) -> float:
    """
    Close the latest connection; how long until the service connects again.
    """
    count = len(endpoint.connections)
    protocol, _ = endpoint.connections[-1]
    protocol.connectionLost(Failure(ConnectionDone()))
    lost = clock.seconds()
    while len(endpoint.connections) == count:
        clock.advance(0.05)
    return clock.seconds() - lost


def test_connectionsLostBeforeTheHelloAreRetriedQuietlyWithABackoff() -> None:
    """
    A far side that closes before its hello, again and again, is logged
    once; the cable retries with a growing delay and nothing fails inside
    the reconnecting service (whose state machine took the loss of a
    connection it was still preparing for an error, with a traceback per
    attempt).
    """
    clock = Clock()
    endpoint = Endpoint()
    connector = cable.CableConnector(Switch(), clock, endpoint, PortOptions(), "cable:test")
    with capturedLogs() as events:
        connector.startService()
        delays = [closeAndWait(endpoint, clock) for _ in range(8)]
        connector.stopService()
    # 0.2 s growing by half each time up to 5 s, and up to 1 s of jitter
    assert delays[0] < 2 and delays[-1] >= 3.4, delays
    failures = [e for e in events if e.get("log_failure") is not None]
    assert failures == [], failures[0]["log_failure"].getTraceback()
    warnings = [e for e in events if e.get("log_level") is not None
                and e["log_level"].name in ("warn", "error", "critical")]
    assert len(warnings) == 1, [e.get("log_format") for e in warnings]
    assert "closed before its hello" in warnings[0]["problem"]
    assert not connector.links


def test_aFarSideThatNeverSaysHelloIsLeftAndTriedAgain() -> None:
    """
    A far side that accepts the connection and then says nothing (a hung
    switch, a service that waits for its client to speak) is given up
    after HELLO_TIMEOUT seconds, logged once, and connected to again.
    """
    clock = Clock()
    endpoint = Endpoint()
    connector = cable.CableConnector(Switch(), clock, endpoint, PortOptions(), "cable:test")
    with capturedLogs() as events:
        connector.startService()
        clock.advance(cable.HELLO_TIMEOUT)
        protocol, transport = endpoint.connections[0]
        assert transport.disconnecting
        protocol.connectionLost(Failure(ConnectionDone()))
        clock.advance(5 + 1)
        assert len(endpoint.connections) == 2
        connector.stopService()
    problems = [e["problem"] for e in events if "problem" in e]
    assert len(problems) == 1 and "no hello within" in problems[0], problems


def test_somethingElseAnsweringWithJunkIsLoggedOnce() -> None:
    """
    A cable pointed at another service (an HTTP server, say, whose answer
    reads as an impossible length) is refused as not a cable, logged once
    per series, not with an error at every attempt.
    """
    clock = Clock()
    endpoint = Endpoint()
    connector = cable.CableConnector(Switch(), clock, endpoint, PortOptions(), "cable:test")
    with capturedLogs() as events:
        connector.startService()
        for attempt in range(1, 6):
            protocol, transport = endpoint.connections[-1]
            protocol.dataReceived(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            assert transport.disconnecting
            protocol.connectionLost(Failure(ConnectionDone()))
            while len(endpoint.connections) == attempt:
                clock.advance(0.05)
        connector.stopService()
    loud = [e for e in events if e.get("log_level") is not None
            and e["log_level"].name in ("warn", "error", "critical")]
    assert len(loud) == 1, [e.get("log_format") for e in loud]
    assert "not a vtwisted cable" in loud[0]["problem"]


def test_aQemuPeerThatAcceptsAndClosesIsRetriedWithAGrowingDelay() -> None:
    """
    qemu:connect: to a peer that accepts each connection and closes it at
    once: each such connection counts as a failed attempt, so the delays
    grow to the maximum instead of staying at about a second; one that
    lasted resets them.
    """
    clock = Clock()
    endpoint = Endpoint()
    connector = qemu.QemuConnector(Switch(), clock, endpoint, PortOptions(), "qemu:connect:x")
    connector.startService()
    delays = [closeAndWait(endpoint, clock) for _ in range(8)]
    assert delays[0] < 2 and min(delays[-3:]) >= 3.4, delays
    clock.advance(connector.SHORT_LINK)
    assert closeAndWait(endpoint, clock) < 2, "a link that lasted starts the delays over"
    connector.stopService()
