"""
C{twistd vswitch --stdin}: a line too long is answered once and skipped, the
commands after it run; when nobody reads its standard output, the switch
stops reading commands instead of piling up their replies in memory, and
every reply arrives, in order, once the reader comes back.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import procStatus, socketListening, sourceEnv, twistdArgv, waitFor

pytestmark = pytest.mark.integration

#: Rounds of commands fed: three C{help} (4.4 KB each) and a numbered VLAN,
#: about 55 MB of replies in all.
ROUNDS = 4000
#: How much the switch may grow while its replies are not read.
GROWTH_LIMIT = 16 * 1024 * 1024


def bytesRead(pid: int) -> int:
    """
    How many bytes process C{pid} has read so far (C{/proc/PID/io}).
    """
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar for {pid}")


def waitUntilIdle(pid: int, feeder: threading.Thread, quiet: float = 1.5) -> None:
    """
    Wait until the switch has read everything fed, or has read nothing more
    for C{quiet} seconds (it stopped reading).
    """
    last, since, deadline = bytesRead(pid), time.monotonic(), time.monotonic() + 60
    while feeder.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
        now = bytesRead(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > quiet:
            return


def expectedReplies(help: str) -> str:
    return "".join(
        help * 3 + f"1000 Success\n0000 DATA END WITH '.'\nVLAN {n:04d}\n.\n1000 Success\n"
        for n in range(1, ROUNDS + 1)
    )


def startStdinSwitch(processes, shortdir) -> subprocess.Popen:
    """
    A C{twistd vswitch --stdin} that is ready, its standard input and
    output pipes left to the caller.
    """
    sock = shortdir / "sw"
    process = processes.start(
        twistdArgv("--sock", str(sock), "--stdin", logfile=str(shortdir / "sw.log")),
        env=sourceEnv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    waitFor(lambda: socketListening(sock / "ctl"), what="the switch")
    return process


def test_unreadRepliesStayBoundedThenAllArriveInOrder(processes, shortdir) -> None:
    """
    Commands fed while standard output is not read: the switch's memory
    stays within a few MB (about 55 MB of replies would pile up otherwise);
    once read, every reply comes, in order, and the end of input stops it.
    """
    process = startStdinSwitch(processes, shortdir)
    assert process.stdin is not None and process.stdout is not None
    baseline = procStatus(process.pid, "VmRSS")
    commands = "".join(f"help\nhelp\nhelp\nvlan/create {n}\nvlan/print {n}\n"
                       for n in range(1, ROUNDS + 1)).encode()
    stdin = process.stdin
    feeder = threading.Thread(target=lambda: (stdin.write(commands), stdin.flush()), daemon=True)
    feeder.start()
    waitUntilIdle(process.pid, feeder)
    growth = procStatus(process.pid, "VmHWM") - baseline
    stdout = process.stdout
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(stdout.read()), daemon=True)
    reader.start()
    feeder.join(60)
    assert not feeder.is_alive(), "the switch stopped reading commands for good"
    stdin.close()
    assert process.wait(60) == 0
    reader.join(30)
    assert growth < GROWTH_LIMIT, f"grew by {growth >> 20} MB while its replies were not read"
    text = output[0].decode()
    help = text[: text.index("\n.\n1000 Success\n") + len("\n.\n1000 Success\n")]
    assert help.startswith("0000 DATA END WITH '.'\n") and "port/print" in help
    expected = expectedReplies(help)
    if text != expected:
        at = next(i for i, (a, b) in enumerate(zip(text, expected, strict=False)) if a != b)
        pytest.fail(f"{len(text)} bytes of replies, {len(expected)} expected; first "
                    f"difference at {at}: {text[at - 80 : at + 80]!r}")


class Stdout:
    """
    What the switch writes to standard output, collected by a thread.
    """

    def __init__(self, stream) -> None:
        self.data = bytearray()
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := self._stream.read1(65536):
            self.data += chunk

    def waitFor(self, expected: bytes) -> None:
        try:
            waitFor(lambda: bytes(self.data) == expected, timeout=5)
        except AssertionError:
            pytest.fail(f"standard output: {bytes(self.data)!r}, expected {expected!r}")

    def join(self) -> bytes:
        self._thread.join(30)
        return bytes(self.data)


TOO_LONG = b"1007 Argument list too long\n"
#: Longer than any line limit the console ever had (4096 bytes, then 64 KB).
LONG = 70000


def stdinSwitch(processes, shortdir) -> tuple[subprocess.Popen, Stdout]:
    """
    A C{twistd vswitch --stdin} that is ready, and its standard output.
    """
    process = startStdinSwitch(processes, shortdir)
    assert process.stdout is not None
    return process, Stdout(process.stdout)


def vlanList(*vlans: int) -> bytes:
    return (b"0000 DATA END WITH '.'\n" + b"".join(b"VLAN %04d\n" % n for n in vlans)
            + b".\n1000 Success\n")


def test_tooLongLineInOneWriteWithCommands(processes, shortdir) -> None:
    """
    A line too long between good commands in the same write is answered
    1007 once, and every command after it runs.
    """
    process, stdout = stdinSwitch(processes, shortdir)
    assert process.stdin is not None
    process.stdin.write(b"vlan/create 5\n" + b"x" * LONG + b"\nvlan/create 6\nvlan/print\n")
    process.stdin.close()
    assert process.wait(30) == 0
    assert stdout.join() == b"1000 Success\n" + TOO_LONG + b"1000 Success\n" + vlanList(0, 5, 6)


def test_tooLongLineSplitOverWritesIsSkippedToItsNewline(processes, shortdir) -> None:
    """
    A line too long whose newline comes in later writes is answered 1007
    once, as soon as it is too long; no part of it runs as a command (its
    tail looks like one); the commands after its newline run.
    """
    process, stdout = stdinSwitch(processes, shortdir)
    stdin = process.stdin
    assert stdin is not None
    stdin.write(b"vlan/create 7\n" + b"y" * LONG)
    stdin.flush()
    stdout.waitFor(b"1000 Success\n" + TOO_LONG)
    stdin.write(b"y" * 3000 + b"vlan/create 99")
    stdin.flush()
    time.sleep(0.3)
    stdin.write(b"\nvlan/create 8\nvlan/print\n")
    stdin.close()
    assert process.wait(30) == 0
    assert stdout.join() == b"1000 Success\n" + TOO_LONG + b"1000 Success\n" + vlanList(0, 7, 8)
