"""
The live capture server (C{pcap:listen:ENDPOINT}) on a memory reactor, its
readers on string transports that pause them as Twisted's do: each reader
gets a stream of its own, a slow one loses whole records (counted), the
port monitors only while a reader is connected.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from vtwisted import closing
from vtwisted.ports import pcap as pcapport
from vtwisted.ports import pcaplisten
from vtwisted.ports.pcapbuffer import BUFFER
from vtwisted.ports.pcaplisten import CaptureReader, ListenLink, PcapListener
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import pcap

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Lan:
    """
    A started switch with two client ports and a capture server.
    """

    def __init__(self, extra: str = "") -> None:
        self.switch = Switch()
        self.reactor = MemoryReactorClock()
        service = pcapport.makeService(
            self.switch, PortSpec(f"pcap:listen:tcp:5556{extra}:port=9"), self.reactor)
        assert isinstance(service, PcapListener)
        self.service = service
        service.privilegedStartService()
        service.startService()
        self.one = plug(self.switch, FakeLink("one"))
        self.two = plug(self.switch, FakeLink("two"))
        self.sent = 0

    @property
    def link(self) -> ListenLink:
        assert self.service.link is not None
        return self.service.link

    @property
    def busy(self) -> int:
        return int(self.switch.port(9).counters.drops["busy"])

    def connect(self) -> tuple[CaptureReader, StringTransport]:
        """
        A reader connects, as the listening port would connect it.
        """
        factory = self.reactor.tcpServers[0][1]
        reader = factory.buildProtocol(PEER)
        assert isinstance(reader, CaptureReader)
        transport = StringTransport(peerAddress=PEER)
        reader.makeConnection(transport)
        return reader, transport

    def send(self, count: int, size: int = 1000) -> None:
        """
        Client one sends C{count} numbered frames to client two (a learned
        unicast flow); the reactor turns.
        """
        for _ in range(count):
            payload = self.sent.to_bytes(4, "big") + bytes(size - 18)
            self.switch.frameReceived(self.one, frame(mac(2), mac(1), payload=payload))
            self.sent += 1
        self.reactor.advance(0)

    def learn(self) -> None:
        """
        Each client speaks once, so that the switch knows where both are.
        """
        self.switch.frameReceived(self.two, frame(b"\xff" * 6, mac(2)))
        self.switch.frameReceived(self.one, frame(b"\xff" * 6, mac(1)))
        self.reactor.advance(0)


def _numbers(data: bytes) -> list[int]:
    """
    The numbers of the test's frames in a whole stream, which must parse
    with nothing left over.
    """
    records = pcap.readRecords(data)
    length = pcap.FILE_HEADER_LENGTH + sum(pcap.RECORD.size + len(kept)
                                           for _, kept, _ in records)
    assert length == len(data), "no half record"
    return [int.from_bytes(kept[14:18], "big") for _, kept, _ in records
            if kept[:6] == mac(2)]


def _lose(reader: CaptureReader) -> None:
    reader.connectionLost(Failure(ConnectionError("gone")))


def test_noReaderNoMonitorRoutesKept() -> None:
    """
    With no reader the capture port monitors nothing, so a unicast flow
    keeps its route; a reader turns the monitor on (no route) and its
    leaving turns it off again.
    """
    lan = Lan()
    lan.learn()
    lan.send(3)
    assert lan.switch.monitors == () and lan.one.routes
    reader, transport = lan.connect()
    assert list(lan.switch.monitors) == [lan.switch.port(9)]
    lan.send(3)
    assert not lan.one.routes
    _lose(reader)
    assert lan.switch.monitors == ()
    lan.send(3)
    assert lan.one.routes
    assert _numbers(transport.value()) == [3, 4, 5]


def test_eachReaderGetsAStreamOfItsOwn() -> None:
    """
    Two readers: each gets a header and the frames from when it connected,
    whole; the first leaving does not end the second's stream.
    """
    lan = Lan()
    first, firstOut = lan.connect()
    lan.send(5)
    second, secondOut = lan.connect()
    lan.send(5)
    _lose(first)
    lan.send(5)
    assert list(lan.switch.monitors) == [lan.switch.port(9)]
    assert _numbers(firstOut.value()) == list(range(10))
    assert _numbers(secondOut.value()) == list(range(5, 15))
    assert lan.link.frames == 20 and lan.busy == 0


def test_aPausedReaderLosesWholeRecordsCounted() -> None:
    """
    A reader whose transport paused it (it does not read) keeps a megabyte
    of records; later ones are dropped whole, counted on the reader and as
    busy, logged once; the other reader loses nothing; once resumed the
    paused one gets what waited, a stream that parses whole.
    """
    lan = Lan()
    with capturedLogs() as events:
        slow, slowOut = lan.connect()
        fast, fastOut = lan.connect()
        slow.pauseProducing()
        lan.send(1500)
        assert len(slow.out.pending) <= BUFFER
        slow.resumeProducing()
        lan.send(10)
    logged = [formatEvent(event) for event in events]
    assert sum("does not keep up" in line for line in logged) == 1, logged
    assert _numbers(fastOut.value()) == list(range(1510))
    numbers = _numbers(slowOut.value())
    assert numbers == sorted(numbers) and numbers[-10:] == list(range(1500, 1510))
    assert slow.dropped == lan.busy == 1510 - len(numbers) > 400
    assert fast.dropped == 0


def test_aReaderLeavingFreesItsRecords() -> None:
    """
    A paused reader that leaves with records waiting: they are freed and
    counted as dropped, and the port stops monitoring.
    """
    lan = Lan()
    reader, _ = lan.connect()
    reader.pauseProducing()
    lan.send(100)
    assert reader.out.waiting == 100
    _lose(reader)
    assert lan.link.readers == [] and reader.out.waiting == 0 and not reader.out.pending
    assert lan.busy == 100 and lan.switch.monitors == ()


def test_stoppingEndsEveryStreamWhole() -> None:
    """
    When the port is deleted, what waits for a paused reader is handed
    over before its connection is closed.
    """
    lan = Lan()
    reader, transport = lan.connect()
    reader.pauseProducing()
    lan.send(20)
    lan.service.stopService()
    assert transport.disconnecting
    assert _numbers(transport.value()) == list(range(20))
    assert lan.switch.monitors == ()


def test_aReaderThatReadsNothingMoreIsAbortedAfterTheGrace() -> None:
    """
    When the port is deleted, a reader that reads nothing more (stopped,
    its connection's buffer full) does not keep its connection for ever:
    it is aborted after the grace, once, and logged; one that goes in time
    is not.
    """
    lan = Lan()
    stuck, stuckTransport = lan.connect()
    quick, quickTransport = lan.connect()
    lan.send(3)
    with capturedLogs() as events:
        lan.service.stopService()
        assert stuckTransport.disconnecting and not stuckTransport.disconnected
        _lose(quick)
        lan.reactor.advance(closing.CLOSE_GRACE)
    assert stuckTransport.disconnected
    assert not quickTransport.disconnected
    lines = [formatEvent(e) for e in events if "aborted after" in e.get("log_format", "")]
    assert len(lines) == 1 and "pcap:listen:" in lines[0], lines
    assert not lan.reactor.getDelayedCalls()


def test_aReaderThatStopsSendingAndReadingIsAbortedAfterTheGrace() -> None:
    """
    A reader whose sending half ends is taken as gone: its connection is
    closed, and aborted after the grace if it reads nothing more (a client
    that half-closes and never reads, over TCP, told nothing more).
    """
    lan = Lan()
    reader, transport = lan.connect()
    lan.send(3)
    with capturedLogs() as events:
        reader.readConnectionLost()
        assert transport.disconnecting and not transport.disconnected
        lan.reactor.advance(closing.CLOSE_GRACE)
    assert transport.disconnected
    assert not reader.halfClosed  # not a Unix socket: a close is not told apart
    lines = [formatEvent(e) for e in events if "aborted after" in e.get("log_format", "")]
    assert len(lines) == 1 and "pcap:listen:" in lines[0], lines


def test_snaplenKeepsTheFirstBytes() -> None:
    """snaplen= cuts each record, as pcap:PATH's does."""
    lan = Lan(":snaplen=100")
    _, transport = lan.connect()
    lan.send(2)
    records = pcap.readRecords(transport.value())
    assert [(len(kept), length) for _, kept, length in records] == [(100, 1000)] * 2


def test_readersBeyondTheLimitAreRefused() -> None:
    """More than MAX_READERS connections: the rest are closed at once, logged once."""
    lan = Lan()
    factory: Any = lan.reactor.tcpServers[0][1]
    with capturedLogs() as events:
        for _ in range(pcaplisten.MAX_READERS):
            lan.connect()
        assert factory.buildProtocol(PEER) is None
        assert factory.buildProtocol(PEER) is None
    logged = [formatEvent(event) for event in events]
    assert sum("the most there may be" in line for line in logged) == 1


def test_listensOnLoopbackAndModes() -> None:
    """A TCP server without interface= listens on 127.0.0.1; a Unix one is made 0600."""
    lan = Lan()
    assert lan.reactor.tcpServers[0][3] == "127.0.0.1"
    reactor = MemoryReactorClock()
    service = pcapport.makeService(Switch(), PortSpec("pcap:listen:unix:/tmp/vtw-nowhere"),
                                   reactor)
    assert isinstance(service, PcapListener) and service.unixPath == "/tmp/vtw-nowhere"
    assert service.endpoint._mode == 0o600


@pytest.mark.parametrize("options, problem", [
    (":maxsize=10", "bounds capture files"),
    (":files=2", "bounds capture files"),
    (":vlan=3", "not for a capture port"),
    (":delay=10", "not for a capture port"),
    (":snaplen=10", "snaplen"),
    (":snaplne=96", r"unknown option snaplne=: neither pcap: nor Twisted's tcp: endpoint "
                    r"takes it \(pcap: takes snaplen=, port=; "),
])
def test_optionsThatMakeNoSenseAreRefused(options: str, problem: str) -> None:
    with pytest.raises(SpecError, match=problem):
        pcapport.makeService(Switch(), PortSpec(f"pcap:listen:tcp:5556{options}"),
                             MemoryReactorClock())


def test_aBareListenNamesAnEndpoint() -> None:
    """pcap:listen with no endpoint says what to give."""
    with pytest.raises(SpecError, match="names no endpoint"):
        pcapport.makeService(Switch(), PortSpec("pcap:listen"), MemoryReactorClock())
