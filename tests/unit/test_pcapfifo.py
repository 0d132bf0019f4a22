"""
A live capture into a FIFO (C{pcap:FIFO}), against a real FIFO read by the
test, on a memory reactor: the switch waits for a reader without blocking,
a slow reader loses whole records (counted), and a reader that leaves is
followed by the next one with a stream of its own.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from vtwisted.ports import pcap as pcapport
from vtwisted.ports import pcapfifo
from vtwisted.ports.pcapfifo import FifoLink
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import pcap


class Lan:
    """
    A switch with a client port and a capture port to a FIFO, started.
    """

    def __init__(self, path: Path, extra: str = "") -> None:
        self.path = path
        self.switch = Switch()
        self.reactor = MemoryReactorClock()
        self.service = pcapport.makeService(self.switch, PortSpec(f"pcap:{path}{extra}"),
                                            self.reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.client = plug(self.switch, FakeLink("client"))
        self.sent = 0

    @property
    def link(self) -> FifoLink:
        link = self.service.link
        assert isinstance(link, FifoLink)
        return link

    @property
    def busy(self) -> int:
        return int(self.link.port.counters.drops["busy"])

    def send(self, count: int, size: int = 1000) -> None:
        """
        The client sends C{count} numbered broadcasts; the reactor turns.
        """
        for _ in range(count):
            payload = self.sent.to_bytes(4, "big") + bytes(size - 18)
            self.switch.frameReceived(self.client, frame(b"\xff" * 6, mac(1), payload=payload))
            self.sent += 1
        self.reactor.advance(0)

    def pumpWrites(self) -> None:
        """
        What a reactor does while the pipe takes more: write.
        """
        watcher = self.link._watcher
        while watcher in self.reactor.writers:
            before = len(self.link.out.pending) if self.link.out else 0
            watcher.doWrite()
            if self.link.out is None or len(self.link.out.pending) == before:
                return


class Reader:
    """
    The reading end of a FIFO, opened without blocking.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = b""

    def read(self) -> bytes:
        """
        Everything the pipe holds now.
        """
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return self.data
            if not chunk:
                return self.data
            self.data += chunk

    def numbers(self) -> list[int]:
        """
        The numbers of the frames of a whole stream read, which must parse.
        """
        records = pcap.readRecords(self.data)
        assert _length(records) == len(self.data), "no half record"
        return [int.from_bytes(kept[14:18], "big") for _, kept, _ in records]

    def close(self) -> None:
        os.close(self.fd)


def _length(records: list[tuple[float, bytes, int]]) -> int:
    return pcap.FILE_HEADER_LENGTH + sum(pcap.RECORD.size + len(kept) for _, kept, _ in records)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "cap"
    os.mkfifo(path)
    return path


@pytest.fixture
def readers() -> Iterator[list[Reader]]:
    opened: list[Reader] = []
    yield opened
    for reader in opened:
        try:
            reader.close()
        except OSError:
            pass


def test_theSwitchWaitsForAReaderWithoutBlocking(fifo: Path, readers: list[Reader]) -> None:
    """
    With nobody reading the FIFO, the switch starts and forwards (the port
    is no monitor: no slow path), logs once that it waits, tries once a
    second; the first reader gets a header and the frames from then on.
    """
    with capturedLogs() as events:
        lan = Lan(fifo)
        lan.send(5)
        assert lan.switch.monitors == ()
        lan.reactor.advance(3)
        readers.append(Reader(fifo))
        lan.reactor.advance(1)
        assert lan.link.port in lan.switch.monitors
        lan.send(3)
    logged = [formatEvent(event) for event in events]
    assert sum("waiting for a reader" in line for line in logged) == 1, logged
    assert any("a reader opened" in line for line in logged), logged
    assert readers[0].read()[:4] == pcap.MAGIC.to_bytes(4, "little")
    assert readers[0].numbers() == [5, 6, 7]
    assert lan.link.frames == 3 and lan.busy == 0


def test_aSlowReaderLosesWholeRecordsCounted(fifo: Path, readers: list[Reader]) -> None:
    """
    A reader that does not read fills the pipe and a megabyte more: later
    frames are dropped whole, counted as busy and logged once; the switch
    waits for nothing, and when the reader reads again the stream parses,
    with every frame either read or counted.
    """
    readers.append(Reader(fifo))
    with capturedLogs() as events:
        lan = Lan(fifo)
        lan.send(3000, size=1001)  # odd sizes: the pipe takes parts of records
        assert lan.link._watcher in lan.reactor.writers, "waits until the pipe takes more"
        assert lan.busy > 1000
        lan.send(1000)
        for _ in range(200):
            readers[0].read()
            lan.pumpWrites()
        lan.send(10)
        readers[0].read()
    numbers = readers[0].numbers()
    assert numbers == sorted(numbers) and numbers[-10:] == list(range(4000, 4010))
    assert len(numbers) + lan.busy == 4010 == lan.link.frames + lan.busy
    logged = [formatEvent(event) for event in events]
    assert sum("busy" in line for line in logged) == 1, logged
    assert lan.link._watcher not in lan.reactor.writers


def test_aReaderThatLeavesIsFollowedByTheNext(fifo: Path, readers: list[Reader]) -> None:
    """
    When the reader closes the FIFO (seen by the reactor as the pipe's
    error, with no frame to write), the switch stops monitoring, logs it,
    and the next reader gets a fresh stream, header first.
    """
    readers.append(Reader(fifo))
    with capturedLogs() as events:
        lan = Lan(fifo)
        lan.send(4)
        readers[0].read()
        readers.pop().close()
        lan.link._watcher.doRead()  # a select reactor's view of the pipe's error
        assert lan.switch.monitors == () and lan.link.out is None
        lan.send(2)
        readers.append(Reader(fifo))
        lan.reactor.advance(1)
        lan.send(3)
    assert readers[0].read()[:4] == pcap.MAGIC.to_bytes(4, "little")
    assert readers[0].numbers() == [6, 7, 8]
    logged = [formatEvent(event) for event in events]
    assert sum("went away after 4 frames" in line for line in logged) == 1, logged
    assert lan.link.frames == 7 and lan.link.readers == 2 and lan.busy == 0


def test_aWriteToAPipeWithoutReaderIsNoCrash(fifo: Path, readers: list[Reader]) -> None:
    """
    A reader gone found by a write (EPIPE) rather than the reactor: the
    records it did not get are counted, and the switch waits for the next.
    """
    readers.append(Reader(fifo))
    lan = Lan(fifo)
    lan.send(2)
    readers.pop().close()
    lan.send(3)
    assert lan.link.out is None and lan.switch.monitors == ()
    assert lan.link.frames == 2 and lan.busy == 3
    lan.service.stopService()


def test_theReactorSeesTheReaderLeave(fifo: Path, readers: list[Reader]) -> None:
    """
    The FIFO's descriptor is watched by the reactor from the start (its
    error is how a reader leaving shows when no frame is written).
    """
    readers.append(Reader(fifo))
    lan = Lan(fifo)
    watcher = lan.link._watcher
    assert watcher in lan.reactor.readers and watcher.fileno() >= 0
    readers.pop().close()
    _reactorSawTheError(lan)
    assert watcher not in lan.reactor.readers and lan.link.out is None


def _reactorSawTheError(lan: Lan) -> None:
    """
    What a real reactor does when its poll reported the pipe's error:
    drop the descriptor from its watch, then tell the watcher.
    """
    watcher = lan.link._watcher
    lan.reactor.removeReader(watcher)
    lan.reactor.removeWriter(watcher)
    watcher.connectionLost(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("readAll", [True, False])
def test_aReaderThatOpensBeforeTheReactorsReportIsNotCutOff(
        fifo: Path, readers: list[Reader], readAll: bool) -> None:
    """
    A reader leaves and the next opens the FIFO before the switch handles
    the reactor's report of the pipe's error (polled when the first left):
    the new reader is there, so the stream goes on, the descriptor watched
    again.  It gets a stream of its own if the last reader read it all
    (else the log says it reads on from the last one), never the end of
    its input (the switch closing the FIFO under it: tcpdump's 'truncated
    dump file; tried to read 4 file header bytes, only got 0').
    """
    readers.append(Reader(fifo))
    with capturedLogs() as events:
        lan = Lan(fifo)
        lan.send(4)
        if readAll:
            readers[0].read()
        readers.pop().close()
        readers.append(Reader(fifo))
        _reactorSawTheError(lan)
        assert lan.link.out is not None
        assert lan.link._watcher in lan.reactor.readers
        lan.send(1)
    logged = [formatEvent(event) for event in events]
    assert not any("waiting for the next reader" in line for line in logged), logged
    if readAll:
        assert any("another opened it at once: a stream of its own" in line
                   for line in logged), logged
        readers[0].read()
        assert readers[0].numbers() == [4]
    else:
        assert any("before the switch saw the last one leave" in line
                   for line in logged), logged


def test_stoppingLogsWhatReadersGot(fifo: Path, readers: list[Reader]) -> None:
    """The last log line says how many frames the readers got."""
    readers.append(Reader(fifo))
    with capturedLogs() as events:
        lan = Lan(fifo)
        lan.send(5)
        lan.service.stopService()
    logged = [formatEvent(event) for event in events]
    assert any(f"5 frames written to {fifo} for 1 reader" in line for line in logged), logged
    readers[0].read()
    assert readers[0].numbers() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("options", [":maxsize=1", ":maxsize=1:files=2"])
def test_aFifoTakesNoSizeLimit(fifo: Path, options: str) -> None:
    """maxsize= and files= bound files: on a FIFO they are refused, saying why."""
    with pytest.raises(SpecError, match="is a FIFO"):
        pcapport.makeService(Switch(), PortSpec(f"pcap:{fifo}{options}"), MemoryReactorClock())


def test_aReaderThatTakesTheLastOnesPlaceGetsAStreamOfItsOwn(
    fifo: Path, readers: list[Reader]
) -> None:
    """
    A reader that reads all, then leaves, and another that opens the FIFO
    before the switch looked (the same reactor turn: the pipe never showed
    its error): the new one gets a stream of its own, header first, and
    the records that waited go to it.
    """
    readers.append(Reader(fifo))
    with capturedLogs() as events:
        lan = Lan(fifo)
        lan.send(4)
        readers[0].read()
        readers.pop().close()
        readers.append(Reader(fifo))
        lan.send(3)
    assert readers[0].read()[:4] == pcap.MAGIC.to_bytes(4, "little")
    assert readers[0].numbers() == [4, 5, 6]
    logged = [formatEvent(event) for event in events]
    assert sum("went away after 4 frames and another opened it at once" in line
               for line in logged) == 1, logged
    assert not any("share" in line or "start it again" in line for line in logged), logged
    assert lan.link.frames == 7 and lan.link.readers == 2 and lan.busy == 0
    readers.pop().close()
    lan.send(1)
    readers.append(Reader(fifo))
    lan.reactor.advance(1)
    lan.send(1)
    readers[0].read()
    assert readers[0].numbers() == [8]


def test_aRecordBegunIsNotHandedOver(fifo: Path, readers: list[Reader]) -> None:
    """
    A record the pipe took only the start of, read by the reader that
    left: its rest is dropped (counted), the next reader's stream begins
    with the header and the records that followed it.
    """
    readers.append(Reader(fifo))
    lan = Lan(fifo)
    lan.send(3000, size=1001)  # the pipe fills, ending inside a record
    out = lan.link.out
    assert out is not None and out._begun, "a record partly written"
    readers[0].read()
    readers.pop().close()
    readers.append(Reader(fifo))
    busy = lan.busy
    lan.pumpWrites()
    lan.send(2)
    for _ in range(100):
        readers[0].read()
        lan.pumpWrites()
    numbers = readers[0].numbers()
    assert numbers == sorted(numbers) and numbers[-2:] == [3000, 3001]
    assert lan.busy == busy + 1


def test_aReaderJoiningAnUnreadStreamIsLogged(fifo: Path, readers: list[Reader]) -> None:
    """
    A reader that leaves records unread in the pipe, replaced before the
    switch looked: the new reader reads the rest of the old stream (no
    writer can take it back); the log says so.  So does a reader leaving
    while a second one, opened before, has the FIFO (two readers share one
    stream).  Once they have left, the next reader gets a stream of its own.
    """
    readers.append(Reader(fifo))
    with capturedLogs() as events:
        lan = Lan(fifo)
        lan.send(4)
        readers.pop().close()
        readers.append(Reader(fifo))
        lan.send(1)
        readers.append(Reader(fifo))
        lan.send(1)
        readers.pop(0).close()
        lan.send(1)
        assert lan.link.out is not None
        readers.pop().close()
        lan.send(1)
        assert lan.link.out is None
        readers.append(Reader(fifo))
        lan.reactor.advance(1)
        lan.send(1)
    readers[0].read()
    logged = [formatEvent(event) for event in events]
    assert sum("before the switch saw the last one leave" in line
               and "with no header; start it again" in line for line in logged) == 1, logged
    assert sum("readers of one FIFO share one stream" in line for line in logged) == 1, logged
    assert readers[0].numbers() == [8]


def test_aReaderBlockedInOpenIsTheStreamsOwn(fifo: Path, readers: list[Reader]) -> None:
    """
    A reader blocked in C{open} until the switch opens the FIFO (tcpdump,
    Wireshark) is reported open only after the switch began to watch:
    it is the stream's own reader, not a second one, and when it leaves
    the switch sees it go.
    """
    # A blocking open of the FIFO for reading, a read, and an exit once told
    # (else, on a loaded machine, it could read, leave and be seen gone all
    # while the switch turns once, before the test looks).
    opener = subprocess.Popen(
        [sys.executable, "-c", "import sys; f = open(sys.argv[1], 'rb'); "
         "sys.stdout.buffer.write(f.read(24)); sys.stdout.flush(); sys.stdin.read()",
         str(fifo)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert opener.stdin is not None and opener.stdout is not None
    try:
        with capturedLogs() as events:
            lan = Lan(fifo)
            deadline = time.monotonic() + 60  # the opener is a Python starting up
            while lan.link.out is None and opener.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
                lan.reactor.advance(1)
            assert lan.link.out is not None
            assert select.select([opener.stdout], [], [], 10)[0], "the opener read nothing"
            header = opener.stdout.read(24)
            assert header[:4] == pcap.MAGIC.to_bytes(4, "little")
            lan.send(2)
            opener.stdin.close()
            opener.wait(timeout=10)
            lan.send(1)
        logged = [formatEvent(event) for event in events]
        assert not any("share" in line or "start it again" in line for line in logged), logged
        assert any("went away" in line for line in logged), logged
        assert lan.link.out is None
    finally:
        if opener.poll() is None:
            opener.kill()
            opener.wait()


def test_withoutInotifyTheCaptureGoesOn(
    fifo: Path, readers: list[Reader], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Where the FIFO's opens cannot be watched (no inotify, its limit
    reached), the log says once what goes unnoticed and capturing goes on.
    """
    def refuse(path: str) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(pcapfifo, "OpenWatch", refuse)
    readers.append(Reader(fifo))
    with capturedLogs() as events:
        lan = Lan(fifo)
        lan.send(2)
        readers.pop().close()
        lan.send(1)
        readers.append(Reader(fifo))
        lan.reactor.advance(1)
        lan.send(1)
    readers[0].read()
    assert readers[0].numbers() == [3]
    logged = [formatEvent(event) for event in events]
    assert sum(f"cannot watch who opens {fifo}" in line and "errno 24" in line
               for line in logged) == 1, logged


def test_aReaderThatDrainedTheLastStreamIsNotGivenANewOne(
    fifo: Path, readers: list[Reader]
) -> None:
    """
    A reader that leaves records unread, and the next one, opened before
    the switch looked, that has read them already (the pipe is empty
    again, nothing new written): it is reading the old stream, so it is
    told to start again, not handed a header in the middle of it.
    """
    readers.append(Reader(fifo))
    with capturedLogs() as events:
        lan = Lan(fifo)
        lan.send(4)
        readers.pop().close()
        readers.append(Reader(fifo))
        leftover = readers[0].read()
        assert leftover[:4] == pcap.MAGIC.to_bytes(4, "little")
        lan.send(1)
    readers[0].read()
    logged = [formatEvent(event) for event in events]
    assert sum("before the switch saw the last one leave" in line
               and "with no header; start it again" in line for line in logged) == 1, logged
    assert not any("a stream of its own" in line for line in logged), logged
    assert readers[0].data.count(pcap.MAGIC.to_bytes(4, "little")) == 1
