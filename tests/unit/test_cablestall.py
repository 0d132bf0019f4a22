"""
A far switch that begins a message and never finishes it (alive, its
kernel acknowledging, so keepalive sees nothing wrong): the link is
dropped after C{keepalive=} seconds, logged once, and the connecting side
dials again.  On a fake clock with a fake endpoint.
"""

from __future__ import annotations

from test_cablereconnect import Endpoint
from test_qemu import encode
from twisted.internet.error import ConnectionAborted
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from vtwisted.portoptions import PortOptions
from vtwisted.ports import cable
from vtwisted.switch import Switch
from vtwisted.testing import frame, mac

BROADCAST = b"\xff" * 6


def connected(keepalive: int = cable.KEEPALIVE) -> tuple[cable.CableConnector, Endpoint, Clock]:
    clock = Clock()
    endpoint = Endpoint()
    connector = cable.CableConnector(Switch(), clock, endpoint, PortOptions(), "cable:test")
    connector.keepalive = keepalive
    connector.startService()
    endpoint.connections[0][0].dataReceived(encode(cable.HELLO))
    assert connector.links
    return connector, endpoint, clock


def test_halfAFrameThenSilenceDropsTheLinkAndDialsAgain() -> None:
    """
    Half a frame after the hello, then nothing: after keepalive= seconds
    the link goes with one line naming the spec and what came of which
    length, the frame counts as malformed, and the cable connects again.
    """
    connector, endpoint, clock = connected()
    link, transport = endpoint.connections[0]
    port = link.port
    message = encode(bytes(10) + frame(BROADCAST, mac(1), bytes(200)))
    with capturedLogs() as events:
        link.dataReceived(message[:100])
        clock.advance(cable.KEEPALIVE - 1)
        assert connector.links and not transport.disconnected
        clock.advance(1)
        assert transport.disconnected and not connector.links
        link.connectionLost(Failure(ConnectionAborted()))
        clock.advance(5 + 1)
        connector.stopService()
    assert len(endpoint.connections) == 2, "the cable dials again"
    assert port.counters.drops["malformed"] == 1
    lines = [e for e in events if e.get("log_level") is not None
             and e["log_level"].name in ("warn", "error", "critical")]
    assert len(lines) == 1, [e.get("log_format") for e in lines]
    text = lines[0]["log_format"].format(**lines[0])
    assert text.startswith("cable:test: ") and "after 30 s" in text, text
    assert f"96 of {len(message) - 4} bytes of a frame" in text, text


def test_aStuckLengthPrefixIsNamedAsSuch() -> None:
    connector, endpoint, clock = connected(keepalive=5)
    link, transport = endpoint.connections[0]
    with capturedLogs() as events:
        link.dataReceived(b"\x00\x00")
        clock.advance(5)
    assert transport.disconnected
    link.connectionLost(Failure(ConnectionAborted()))
    assert any("2 of the 4 bytes of a length prefix" in e["log_format"].format(**e)
               for e in events if "problem" in e)
    connector.stopService()


def test_framesThatKeepCompletingAreNotDropped() -> None:
    """
    A busy cable whose reads always end inside some message (large frames
    in pieces) stays up: only a message that itself stays incomplete counts.
    """
    connector, endpoint, clock = connected(keepalive=5)
    link, transport = endpoint.connections[0]
    message = encode(bytes(10) + frame(BROADCAST, mac(1), bytes(1000)))
    stream = message * 100
    for start in range(0, len(stream), 700):  # a read every second, never on a boundary
        link.dataReceived(stream[start:start + 700])
        clock.advance(1)
    assert not transport.disconnected and connector.links
    assert link.port.counters.drops["malformed"] == 0
    connector.stopService()


def test_keepaliveOffMeansNoDeadline() -> None:
    connector, endpoint, clock = connected(keepalive=0)
    link, transport = endpoint.connections[0]
    link.dataReceived(b"\x00\x00\x01")
    clock.advance(3600)
    assert not transport.disconnected and connector.links
    connector.stopService()
