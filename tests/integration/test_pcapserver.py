"""
The live capture server (``pcap:listen:ENDPOINT``) of a real ``twistd
vswitch``, read by real ``socat -u ... - | tcpdump -r -`` pipelines: pings
between two namespaces behind TAP ports, two readers at once each with a
whole stream of the same frames, a stopped reader that holds up no frame
(its drops counted), and a server on TCP's loopback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from capturelab import CaptureLab, records
from helpers import (
    need,
    needRoot,
    uniqueName,
    waitFor,
)
from taphelpers import moveTap, ping, quietNamespace

pytestmark = pytest.mark.integration

MARK = b"vtwsrv"


class Server(CaptureLab):
    """
    A switch with a capture server on port 9 and, unless given other
    ports, two ``vde_plug`` clients.
    """

    def __init__(self, processes, shortdir: Path, endpoint: str = "",
                 ports: tuple[str, ...] = ()) -> None:
        need("socat", "tcpdump")
        self.path = shortdir / "cap"
        super().__init__(processes, shortdir,
                         f"pcap:listen:{endpoint or f'unix:{self.path}'}", MARK, ports)

    def reader(self, output: Path, *tcpdump: str,
               address: str = "") -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
        """
        Start ``socat -u ADDRESS - | tcpdump -n -r - ARGS`` (tcpdump's
        standard output to C{output}); wait until the switch has it.

        @return: socat and tcpdump.
        """
        before = self.logged("connected: capturing")
        socat = self.processes.start(["socat", "-u", address or f"UNIX-CONNECT:{self.path}",
                                      "-"], stdout=subprocess.PIPE)
        with open(output, "wb") as out:
            tcpdump_ = self.processes.start(["tcpdump", "-n", "-l", "-U", *tcpdump, "-r", "-"],
                                            stdin=socat.stdout, stdout=out,
                                            stderr=subprocess.PIPE)
        assert socat.stdout is not None
        socat.stdout.close()  # tcpdump's now: it ends when socat does
        waitFor(lambda: self.logged("connected: capturing") > before,
                what="the switch to take the reader")
        return socat, tcpdump_


def _finished(tcpdump: subprocess.Popen[bytes]) -> None:
    """
    tcpdump read its stream to the end, without complaint.
    """
    assert tcpdump.wait(10) == 0
    assert tcpdump.stderr is not None
    errors = tcpdump.stderr.read().decode()
    assert "truncated" not in errors and "error" not in errors.lower(), errors


def test_tcpdumpSeesPingsBetweenTwoNamespaces(processes, namespaces, shortdir) -> None:
    """
    ``socat -u UNIX-CONNECT:PATH - | tcpdump -r -`` shows every echo
    request and reply between two namespaces behind TAP ports, live.
    """
    needRoot()
    need("ping")
    taps = (uniqueName("vps"), uniqueName("vps"))
    server = Server(processes, shortdir, ports=tuple(f"tap:{tap}" for tap in taps))
    spaces = []
    for tap, address in zip(taps, ("10.8.1.1/24", "10.8.1.2/24")):
        ns = quietNamespace(namespaces, "vps")
        moveTap(tap, ns, address)
        spaces.append(ns)
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    text = shortdir / "dump.txt"
    _, tcpdump = server.reader(text)
    assert ping(spaces[0], "10.8.1.2", count=4).returncode == 0
    waitFor(lambda: text.read_text().count("ICMP echo reply") == 4, what="tcpdump to print")
    server.stop()
    _finished(tcpdump)
    lines = text.read_text().splitlines()
    assert sum("10.8.1.1 > 10.8.1.2: ICMP echo request" in line for line in lines) == 4
    assert sum("10.8.1.2 > 10.8.1.1: ICMP echo reply" in line for line in lines) == 4


def test_twoReadersEachGetAWholeStream(processes, shortdir) -> None:
    """
    Two readers at once (the server's stale socket from a crash replaced
    first): each tcpdump reads a whole stream of the same frames; once
    both have gone the capture is off.
    """
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(shortdir / "cap"))
    stale.close()
    server = Server(processes, shortdir)
    assert server.logged("replacing stale socket") == 1
    readers = [server.reader(shortdir / f"r{n}.txt", "-w", str(shortdir / f"r{n}.pcap"))
               for n in (1, 2)]
    server.exchange(300)
    time.sleep(0.5)
    assert server.busy() == 0
    server.stop()
    for _, tcpdump in readers:
        _finished(tcpdump)
    first, second = (server.numbers(shortdir / name) for name in ("r1.pcap", "r2.pcap"))
    assert first == second == list(range(300))
    assert server.logged("no reader: capture off") == 1


def test_aStoppedReaderHoldsUpNoFrame(processes, shortdir) -> None:
    """
    One reader's socat stopped (SIGSTOP) while 3 MB cross the switch:
    every frame still reaches the other client, the other reader gets
    them all, the stopped one's lost records are counted as busy (and
    logged once); when it runs again it reads a whole stream, every frame
    in it or counted.
    """
    server = Server(processes, shortdir)
    slowSocat, slow = server.reader(shortdir / "slow.txt", "-w", str(shortdir / "slow.pcap"))
    _, fast = server.reader(shortdir / "fast.txt", "-w", str(shortdir / "fast.pcap"))
    server.exchange(500)
    os.kill(slowSocat.pid, signal.SIGSTOP)
    try:
        server.exchange(3000)
    finally:
        os.kill(slowSocat.pid, signal.SIGCONT)
    busy = server.busy()
    assert busy > 1000, "a megabyte and the socket's buffers waited, the rest was dropped"
    waitFor(lambda: records(shortdir / "slow.pcap") == 3500 - busy,
            what="the slow reader to read what waited")
    server.exchange(200)
    time.sleep(1.0)
    assert server.busy() == busy
    text = server.stop()
    for tcpdump in (slow, fast):
        _finished(tcpdump)
    assert server.numbers(shortdir / "fast.pcap") == list(range(3700))
    numbers = server.numbers(shortdir / "slow.pcap")
    assert numbers == sorted(numbers) and numbers[-200:] == list(range(3500, 3700))
    assert len(numbers) + busy == 3700
    assert text.count("does not keep up") == 1, text
    assert f"({busy} dropped, counted as busy)" in text, text


def test_aServerOnTcpLoopback(processes, shortdir) -> None:
    """
    ``pcap:listen:tcp:0`` listens on 127.0.0.1 only; ``socat -u
    TCP:127.0.0.1:PORT -`` feeds tcpdump a whole stream.
    """
    server = Server(processes, shortdir, endpoint="tcp:0")
    found = re.search(r"listening on tcp ([\d.]+):(\d+)", server.log.read_text())
    assert found, server.log.read_text()
    assert found.group(1) == "127.0.0.1"
    socat, tcpdump = server.reader(shortdir / "tcp.txt", "-w", str(shortdir / "tcp.pcap"),
                                   address=f"TCP:127.0.0.1:{found.group(2)}")
    server.exchange(100)
    time.sleep(0.5)
    server.stop()
    _finished(tcpdump)
    assert server.numbers(shortdir / "tcp.pcap") == list(range(100))


def test_plainSocatIsToldWhyItGotNothing(processes, shortdir) -> None:
    """
    ``socat UNIX-CONNECT:PATH -`` without ``-u`` whose standard input ends
    closes its sending half: the switch takes it as gone, and its log line
    says why and what to run instead; a ``socat -u`` reader that is
    stopped leaves without that hint.
    """
    server = Server(processes, shortdir)
    plain = processes.start(["socat", f"UNIX-CONNECT:{server.path}", "-"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert plain.stdout is not None
    assert plain.stdout.read(24)[:4] == b"\xd4\xc3\xb2\xa1"  # the header, then the end
    waitFor(lambda: server.logged(" left after ") == 1, what="the switch to see it go")
    assert server.logged("left after 0 frames (it closed its sending half, as socat without "
                         "-u does when its input ends: read with socat -u); no reader: "
                         "capture off") == 1
    socat, tcpdump = server.reader(shortdir / "u.txt")
    processes.stop(socat)
    tcpdump.wait(10)
    waitFor(lambda: server.logged(" left after ") == 2, what="the -u reader to go")
    text = server.stop()
    assert text.count("closed its sending half") == 1, text
