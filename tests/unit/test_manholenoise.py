"""
What each SSH connection to the manhole logs (Twisted's missing-moduli,
disconnect and connection-lost lines, malformed messages) is bounded per
peer address and interval, on a fake clock with string transports.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from test_manhole import checkerFor, newKey
from twisted.cred import portal
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from vtwisted.manhole import ManholeFactory, ManholeRealm

#: A good version line, then a KEXINIT cut short: a malformed message.
MALFORMED = b"SSH-2.0-scanner\r\n" + struct.pack(">IB", 12, 8) + b"\x14ab" + bytes(8)


def knock(factory: ManholeFactory, host: str, port: int, send: bytes) -> None:
    address = IPv4Address("TCP", host, port)
    protocol: Any = factory.buildProtocol(address)
    protocol.makeConnection(StringTransport(peerAddress=address))
    protocol.dataReceived(send)
    protocol.connectionLost(Failure(ConnectionDone()))


def shown(events: Sequence[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]


def test_aPeerKnockingManyTimesGetsFewLinesThenACount(tmp_path) -> None:
    clock = Clock()
    checker = checkerFor(tmp_path, newKey().public().toString("openssh"))
    factory = ManholeFactory(portal.Portal(ManholeRealm({}, clock), [checker]), newKey(), clock)
    factory.startFactory()
    with capturedLogs() as events:
        for number in range(100):
            for send in (b"", b"GET / HTTP/1.0\r\n\r\n", b"SSH-1.5-x\r\n", MALFORMED):
                knock(factory, "192.0.2.7", 40000 + number, send)
    lines = shown(events)
    # moduli, disconnecting, connection lost, malformed: each once, naming the peer
    assert len(lines) == 4, lines
    assert all(line.startswith("manhole: 192.0.2.7:40000: ") for line in lines[:1]), lines
    assert any("malformed SSH message 20" in line for line in lines), lines
    with capturedLogs() as events:
        knock(factory, "198.51.100.1", 1, b"GET / HTTP/1.0\r\n\r\n")
    assert len(shown(events)) == 3, "another address gets its own first lines"
    with capturedLogs() as events:
        clock.advance(60)
    summaries = shown(events)
    assert len(summaries) == 4, summaries
    assert any(s.startswith("manhole: 99 more line(s) like 'malformed SSH message") and
               "from 192.0.2.7 in the last 60 s" in s for s in summaries), summaries
    assert any(s.startswith("manhole: 399 more line(s) like 'connection lost'") for s in summaries)
    with capturedLogs() as events:
        clock.advance(60)
    assert shown(events) == [] and clock.getDelayedCalls() == []
