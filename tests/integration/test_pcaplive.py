"""
A live capture (``pcap:FIFO``) read by a real tcpdump while two
``vde_plug`` clients exchange frames through ``twistd vswitch``: a reader
stopped for a while holds up no frame and leaves a stream tcpdump reads,
and a reader that exits is followed by the next one with a stream of its
own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from capturelab import CaptureLab, records
from helpers import need, waitFor
from taphelpers import console

pytestmark = pytest.mark.integration

MARK = b"vtwfifo"


class Lan(CaptureLab):
    """
    A switch with a capture port (number 9) to a FIFO, and two clients.
    """

    def __init__(self, processes, shortdir: Path) -> None:
        need("vde_plug", "tcpdump")
        self.fifo = shortdir / "cap"
        os.mkfifo(self.fifo)
        super().__init__(processes, shortdir, f"pcap:{self.fifo}", MARK)

    def reader(self, name: str, *options: str) -> tuple[subprocess.Popen[bytes], Path]:
        """
        Start tcpdump reading the FIFO into a file; wait until the switch
        has opened the FIFO for it.
        """
        out = self.dir / name
        before = self.logged("a reader opened")
        process = self.processes.start(["tcpdump", "-n", "-U", *options, "-r", str(self.fifo),
                                        "-w", str(out)], stderr=subprocess.PIPE)
        waitFor(lambda: self.logged("a reader opened") > before, what="the switch to open it")
        return process, out


def test_aStoppedReaderHoldsUpNoFrame(processes, shortdir) -> None:
    """
    tcpdump stopped (SIGSTOP) while 3 MB cross the switch: the clients'
    frames all get through, at the pace of a switch with a reader that
    keeps up; records that found no room are counted as busy; once
    tcpdump runs again it reads a stream it can parse, every frame in it
    or counted.
    """
    lan = Lan(processes, shortdir)
    status = Path(f"/proc/{lan.switch.pid}/status").read_text()
    ignored = int(re.search(r"SigIgn:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
    assert ignored & (1 << (signal.SIGPIPE - 1)), "the switch ignores SIGPIPE"
    tcpdump, out = lan.reader("slow.pcap")
    reading = lan.exchange(1000)
    os.kill(tcpdump.pid, signal.SIGSTOP)
    try:
        stopped = lan.exchange(3000)
    finally:
        os.kill(tcpdump.pid, signal.SIGCONT)
    busy = lan.busy()
    assert busy > 1000, "a megabyte and a pipe's worth waited, the rest was dropped"
    assert stopped < 3 * 3 * reading + 5, (reading, stopped)
    lan.exchange(200)
    waitFor(lambda: records(out) >= 4200 - busy, what="tcpdump to read the last frames")
    lan.stop()
    assert tcpdump.wait(10) == 0
    numbers = lan.numbers(out)
    assert numbers == sorted(numbers) and numbers[-200:] == list(range(4000, 4200))
    assert len(numbers) + busy == 4200


def test_theNextReaderGetsAStreamOfItsOwn(processes, shortdir) -> None:
    """
    A tcpdump that exits after 50 frames is noticed at once; frames sent
    with no reader are not captured (nor counted); the next tcpdump gets a
    stream of its own, header first, which it reads whole.
    """
    lan = Lan(processes, shortdir)
    first, firstOut = lan.reader("first.pcap", "-c", "50")
    lan.exchange(50)
    assert first.wait(10) == 0
    waitFor(lambda: lan.logged("went away") == 1, what="the switch to see it go")
    lan.exchange(100)
    second, secondOut = lan.reader("second.pcap")
    lan.exchange(100)
    waitFor(lambda: records(secondOut) == 100, what="tcpdump to read 100 frames")
    assert lan.busy() == 0
    lan.stop()
    assert second.wait(10) == 0
    assert lan.numbers(firstOut) == list(range(50))
    assert lan.numbers(secondOut) == list(range(150, 250))
    assert lan.logged("waiting for a reader") == 1


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _hasOpen(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fds / fd) == str(path) for fd in os.listdir(fds))
    except FileNotFoundError:
        return False



def test_aReaderTakingTheLastOnesPlaceAtOnceGetsAStreamOfItsOwn(processes, shortdir) -> None:
    """
    A tcpdump that has read 50 frames stopped and the next one started
    while the switch cannot run (stopped: the pipe's error is gone before
    it looks, as in one busy reactor turn): the switch still sees the first
    leave, and the second gets a stream of its own, header first, which it
    reads whole.
    """
    lan = Lan(processes, shortdir)
    first, firstOut = lan.reader("first.pcap")
    lan.exchange(50)
    waitFor(lambda: records(firstOut) == 50, what="tcpdump to read all 50")
    console(lan.mgmt, "showinfo")  # the switch is past the turn that wrote them
    os.kill(lan.switch.pid, signal.SIGSTOP)
    try:
        waitFor(lambda: _stopped(lan.switch.pid), what="the switch to stop")
        processes.stop(first)
        secondOut = shortdir / "second.pcap"
        second = processes.start(["tcpdump", "-n", "-U", "-r", str(lan.fifo), "-w",
                                  str(secondOut)], stderr=subprocess.PIPE)
        waitFor(lambda: _hasOpen(second.pid, lan.fifo), what="tcpdump to open the FIFO")
    finally:
        os.kill(lan.switch.pid, signal.SIGCONT)
    lan.exchange(100)
    waitFor(lambda: records(secondOut) == 100, what="the second tcpdump to read 100 frames")
    lan.stop()
    assert second.wait(10) == 0, lan.log.read_text()
    assert lan.numbers(firstOut) == list(range(50))
    assert lan.numbers(secondOut) == list(range(50, 150))
    assert lan.logged("another opened it at once") == 1, lan.log.read_text()


def test_aReaderStartedAsTheLastOneExitsGetsAHeader(processes, shortdir) -> None:
    """
    ``tcpdump -c 5 -r FIFO; tcpdump -c 1 -r FIFO``, over and over: the
    second tcpdump, started as soon as the first exited, always reads a
    stream that begins with its header.  Its open came while the switch
    was closing the last stream (the switch once closed the inotify watch
    first, which waits some 15 ms for the kernel, keeping the pipe open
    meanwhile): it was handed the end of its input, 'truncated dump file;
    tried to read 4 file header bytes, only got 0', most times.
    """
    lan = Lan(processes, shortdir)
    for round in range(6):
        first = processes.start(["tcpdump", "-n", "-c", "5", "-r", str(lan.fifo), "-w",
                                 str(shortdir / f"first{round}.pcap")], stderr=subprocess.PIPE)
        waitFor(lambda: _hasOpen(first.pid, lan.fifo),  # noqa: B023
                what="the first tcpdump to open the FIFO")
        lan.exchange(5)
        assert first.wait(10) == 0
        second = processes.start(["tcpdump", "-n", "-c", "1", "-r", str(lan.fifo), "-w",
                                  str(shortdir / f"second{round}.pcap")],
                                 stderr=subprocess.PIPE)
        waitFor(lambda: second.poll() is not None or _hasOpen(second.pid, lan.fifo),  # noqa: B023
                what="the second tcpdump to open the FIFO or fail")
        if second.poll() is None:
            lan.exchange(1)
        assert second.stderr is not None
        assert second.wait(10) == 0, (round, second.stderr.read().decode())
    lan.stop()
