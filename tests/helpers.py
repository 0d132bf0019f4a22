"""
Helpers for the integration tests: real peers, namespaces, running switches.

Interop tests need Debian's vde2/vdeplug binaries, iproute2, iperf3 and root.
Where one is missing they skip, unless C{VTWISTED_REQUIRE_PEERS=1} (set by
CI), which turns every such skip into a failure: CI must never pass by
testing nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRE = os.environ.get("VTWISTED_REQUIRE_PEERS") == "1"
_counter = itertools.count()


def unavailable(reason: str) -> None:
    """
    Skip the test, or fail it when peers are required.
    """
    if REQUIRE:
        pytest.fail(f"required peer missing: {reason}")
    pytest.skip(reason)


def need(*binaries: str) -> None:
    """
    Make sure every binary is on the PATH.
    """
    for binary in binaries:
        if shutil.which(binary) is None:
            unavailable(f"{binary} is not installed")


def needRoot() -> None:
    """
    Make sure we may create namespaces and TAP devices.
    """
    if os.geteuid() != 0:
        unavailable("needs root (network namespaces, TAP devices)")


def uniqueName(prefix: str) -> str:
    """
    A name unique to this test run, short enough for an interface (15).
    """
    return f"{prefix}{os.getpid() % 10000}{next(_counter)}"[:15]


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """
    Run a command, capturing its output.
    """
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def waitFor(
    predicate: Callable[..., object], timeout: float = 10.0, what: str = "condition"
) -> None:
    """
    Poll C{predicate} until it is true.  (C{...}: mypy cannot infer a
    C{lambda x=x: ...}, which binds a loop variable, as a C{Callable[[], object]}.)
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def unixListening(path: str | Path) -> bool:
    """
    True if a Unix stream socket listens at C{path}, looked up in
    C{/proc/net/unix} (flag C{__SO_ACCEPTCON}) rather than connected to:
    a connection to a console would be a session.  (Bound is not enough:
    between C{bind} and C{listen} a connection is refused.)
    """
    wanted = os.path.abspath(path)
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == wanted and int(fields[3], 16) & 0x10000:
                return True
    return False


def socketListening(path: str | Path) -> bool:
    """
    True if a stream socket at C{path} accepts connections.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Processes:
    """
    Processes a test started; all are stopped, by PID, at the end.
    """

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        process = subprocess.Popen(list(argv), **kwargs)  # type: ignore[call-overload]
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return process.returncode

    def stopAll(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


def twistdArgv(*switchArgs: str, logfile: str = "-") -> list[str]:
    """
    The command line of a foreground C{twistd vswitch}.
    """
    return [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
        "-n",
        "--pidfile=",
        f"--logfile={logfile}",
        "vswitch",
        *switchArgs,
    ]


def sourceEnv() -> dict[str, str]:
    """
    An environment that imports vtwisted (and its plugins) from this tree.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Namespaces:
    """
    Network namespaces a test made; all are deleted at the end.
    """

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, prefix: str = "vtw") -> str:
        name = uniqueName(prefix)
        run("ip", "netns", "add", name)
        self.names.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def deleteAll(self) -> None:
        for name in self.names:
            with contextlib.suppress(Exception):
                pids = run("ip", "netns", "pids", name, check=False).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                run("ip", "netns", "del", name, check=False)


def execIn(namespace: str, *argv: str) -> list[str]:
    """
    C{argv} run inside C{namespace}.
    """
    return ["ip", "netns", "exec", namespace, *argv]


def allAcknowledged(namespace: str) -> bool:
    """
    Whether every established TCP connection in C{namespace} has all it
    sent acknowledged (there is one at least).
    """
    out = run(*execIn(namespace, "ss", "-tniH", "state", "established")).stdout
    return bool(out.strip()) and "unacked:" not in out


def keepaliveProbes(namespace: str) -> int:
    """
    How many TCP keepalive probes the kernel of C{namespace} has sent.
    """
    out = run(*execIn(namespace, "nstat", "-az", "--json", "TcpExtTCPKeepAlive")).stdout
    found = re.search(r'"TcpExtTCPKeepAlive":\s*(\d+)', out)
    return int(found[1]) if found else 0


@contextlib.contextmanager
def logOf(path: Path) -> Iterator[Path]:
    """
    Yield C{path}; on failure, print the log it holds to help debugging.
    """
    try:
        yield path
    except BaseException:
        if path.exists():
            sys.stderr.write(f"--- {path} ---\n{path.read_text(errors='replace')}\n")
        raise


class StreamPlug:
    """
    A real C{vde_plug} relaying between a switch and this test through its
    stdin/stdout, in vde_plug's stream format (2-byte big-endian length,
    then the frame).
    """

    def __init__(
        self, processes: Processes, vnl: str, *options: str, wrapper: Sequence[str] = ()
    ) -> None:
        self.vnl = vnl
        self.process = processes.start(
            [*wrapper, "vde_plug", *options, vnl],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buffer = b""

    def send(self, frame: bytes) -> None:
        """
        Send one frame into the switch.
        """
        assert self.process.stdin is not None
        self.process.stdin.write(len(frame).to_bytes(2, "big") + frame)
        self.process.stdin.flush()

    def receive(self, timeout: float = 5.0) -> bytes | None:
        """
        The next frame from the switch, or L{None} after C{timeout} seconds.
        """
        import select

        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buffer) >= 2:
                size = int.from_bytes(self._buffer[:2], "big")
                if len(self._buffer) >= 2 + size:
                    frame = self._buffer[2 : 2 + size]
                    self._buffer = self._buffer[2 + size :]
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk

    def receiveMatching(self, predicate: object, timeout: float = 5.0) -> bytes | None:
        """
        The next frame for which C{predicate} is true, skipping others.
        """
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            frame = self.receive(remaining)
            if frame is None:
                return None
            if predicate(frame):  # type: ignore[operator]
                return frame
        return None

    def quiet(self, timeout: float = 0.5) -> list[bytes]:
        """
        Every frame arriving within C{timeout} seconds.
        """
        frames = []
        while (frame := self.receive(timeout)) is not None:
            frames.append(frame)
        return frames

    def exited(self) -> bool:
        return self.process.poll() is not None


def freePorts(count: int, kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> list[int]:
    """
    C{count} different port numbers (TCP, or UDP for C{SOCK_DGRAM}) free on
    C{host} (an IPv4 or IPv6 address) a moment ago.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probes = [socket.socket(family, kind) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def freeUdpPorts(count: int) -> list[int]:
    """
    C{count} UDP port numbers free on 127.0.0.1 a moment ago.
    """
    return freePorts(count, socket.SOCK_DGRAM)


def freeTcpPort() -> int:
    """
    A TCP port number free on 127.0.0.1 a moment ago.
    """
    return freePorts(1)[0]


def pendingDatagrams(sock: socket.socket) -> list[bytes]:
    """
    Every datagram waiting on the non-blocking C{sock}.
    """
    got = []
    while True:
        try:
            got.append(sock.recv(70000))
        except BlockingIOError:
            return got


class FailingReads:
    """
    A socket whose next C{times} reads fail with C{code}, as the kernel's
    may (C{ENOMEM}, an ICMP error); then it reads as the socket does.
    """

    def __init__(self, sock: socket.socket, code: int, times: int) -> None:
        self.sock = sock
        self.code = code
        self.left = times

    def recvfrom(self, size: int) -> tuple[bytes, object]:
        if self.left:
            self.left -= 1
            raise OSError(self.code, os.strerror(self.code))
        return self.sock.recvfrom(size)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def readmeExampleFiles() -> dict[str, str]:
    """
    The files README.rst's "Writing a port type" shows: each literal block
    there whose first line is a C{# path} comment, by that path (an empty
    C{echo/__init__.py} too, as the text asks).
    """
    text = (ROOT / "README.rst").read_text()
    section = text[text.index("Writing a port type\n===="):text.index("\nLayout\n====")]
    files = {"echo/__init__.py": ""}
    lines = section.splitlines()
    for number, line in enumerate(lines):
        if not (line.startswith("    # ") and lines[number - 1] == ""
                and lines[number - 2].endswith("::")):
            continue
        block = []
        for following in lines[number + 1:]:
            if following and not following.startswith("    "):
                break
            block.append(following[4:])
        files[line[6:].strip()] = "\n".join(block).strip() + "\n"
    return files


def writeReadmeExample(directory: Path) -> None:
    """
    Write README.rst's example port type distribution into C{directory}.
    """
    for name, content in readmeExampleFiles().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def copiesOf(plug: StreamPlug, payload: bytes, seconds: float = 2.0) -> int:
    """How many frames carrying C{payload} C{plug} receives within C{seconds}."""
    count = 0
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        got = plug.receive(remaining)
        if got is None:
            break
        if payload in got:
            count += 1
    return count


def procStatus(pid: int, field: str) -> int:
    """
    A memory figure (C{VmRSS}, C{VmHWM}, ...) of C{/proc/PID/status}, in bytes.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def memfdMappings(name: str, pid: int | str = "self") -> list[tuple[int, int]]:
    """
    The (size, file offset) of each mapping of memfd C{name} in process
    C{pid}, from C{/proc/PID/maps}.
    """
    found = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if line.rstrip().endswith(f"/memfd:{name} (deleted)"):
            span, _, offset = line.split()[:3]
            low, high = (int(x, 16) for x in span.split("-"))
            found.append((high - low, int(offset, 16)))
    return found
