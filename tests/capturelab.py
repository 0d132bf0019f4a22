"""
A real ``twistd vswitch`` with a capture port (number 9) and, unless given
other ports, two ``vde_plug`` clients that exchange numbered broadcasts:
what the live-capture tests (``pcap:FIFO``, ``pcap:listen:``) share.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

from helpers import StreamPlug, need, run, socketListening, sourceEnv, twistdArgv, waitFor
from taphelpers import console

from vtwisted.testing import frame, mac
from vtwisted.wire import pcap

#: The length of each numbered broadcast.
FRAME_LENGTH = 1000


class CaptureLab:
    """
    The switch, its capture port's spec C{capture} (C{:port=9} added), and
    frames marked with C{mark} and numbered from 0.
    """

    def __init__(self, processes: Any, shortdir: Path, capture: str, mark: bytes,
                 ports: tuple[str, ...] = ()) -> None:
        self.processes = processes
        self.dir = shortdir
        self.mark = mark
        self.mgmt, self.log = shortdir / "sw.mgmt", shortdir / "sw.log"
        sock = shortdir / "sw"
        args = [f"--port={spec}" for spec in ports]
        self.switch = processes.start(twistdArgv(
            "--sock", str(sock), "--mgmt", str(self.mgmt), *args,
            "--port", f"{capture}:port=9", logfile=str(self.log)), env=sourceEnv())
        waitFor(lambda: socketListening(self.mgmt), what="the switch")
        self.sent = 0
        if not ports:
            need("vde_plug")
            self.one = StreamPlug(processes, f"vde://{sock}")
            self.two = StreamPlug(processes, f"vde://{sock}")
            waitFor(lambda: console(self.mgmt, "port/print").count("module unix prog") >= 2,
                    what="two clients")

    def logged(self, text: str) -> int:
        return self.log.read_text().count(text) if self.log.exists() else 0

    def exchange(self, count: int) -> float:
        """
        Client one sends C{count} numbered broadcasts, in rounds (the
        clients' socket buffers are small); every one reaches client two.

        @return: how long it took, in seconds.
        """
        started = time.monotonic()
        padding = bytes(FRAME_LENGTH - 14 - len(self.mark) - 4)
        got = 0
        for n in range(count):
            payload = self.mark + self.sent.to_bytes(4, "big") + padding
            self.one.send(frame(b"\xff" * 6, mac(0x61), payload=payload))
            self.sent += 1
            if n % 50 == 49 or n == count - 1:
                while got <= n and self.two.receive(timeout=5.0) is not None:
                    got += 1
                assert got == n + 1, f"frames stopped after {got}"
        return time.monotonic() - started

    def busy(self) -> int:
        """
        The capture port's C{busy} drops.
        """
        stats = console(self.mgmt, "port/stats 9")
        found = re.search(r"busy=(\d+)", stats)
        assert found, stats
        return int(found.group(1))

    def stop(self) -> str:
        """
        Stop the switch (which ends every capture stream); its log, which
        must hold no traceback.
        """
        assert self.processes.stop(self.switch) in (0, -signal.SIGTERM)  # twistd: the signal
        text = self.log.read_text()
        assert "Traceback" not in text, text
        return text

    def numbers(self, path: Path) -> list[int]:
        """
        The numbers of this lab's frames in a capture tcpdump wrote, which
        tcpdump itself must read back whole.
        """
        dump = run("tcpdump", "-n", "-r", str(path), check=False)
        assert dump.returncode == 0 and "truncated" not in dump.stderr, dump.stderr
        at = 14 + len(self.mark)
        return [int.from_bytes(kept[at:at + 4], "big")
                for _, kept, _ in pcap.readRecords(path.read_bytes())
                if kept[14:at] == self.mark]


def records(path: Path) -> int:
    """
    How many records tcpdump has written to C{path} so far.
    """
    try:
        return len(pcap.readRecords(path.read_bytes()))
    except (FileNotFoundError, ValueError):
        return 0
