"""
Where a C{cmd:} command's standard output and error go (C{stdout=},
C{stderr=}; L{vtwisted.commandoutput}): the options read, refused where
they make no sense, the files opened for each run, and the levels of what
is logged.  Real commands writing to files are in
C{tests/integration/test_command_output.py}.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs

from vtwisted.commanddescriptor import DescriptorEndpoint, DescriptorRun
from vtwisted.commandoutput import OutputError, OutputFiles, openOutput, parseOutput
from vtwisted.ports import command
from vtwisted.processes import CommandEndpoint
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch

QEMU = "cmd:qemu-system-x86_64 -serial stdio -netdev stream,id=n,addr.type=fd,addr.str={fd}"


def _service(text: str) -> command.CommandConnector:
    return command.makeService(Switch(), PortSpec(text), MemoryReactorClock())


class Spawned(MemoryReactorClock):
    """A reactor that keeps the childFDs of what it spawns, and the files they name."""

    def __init__(self) -> None:
        super().__init__()
        self.childFDs: list[dict[int, Any]] = []
        self.targets: list[dict[int, str]] = []

    def spawnProcess(self, protocol: Any, *args: Any, childFDs: Any = None, **kw: Any) -> None:
        self.childFDs.append(childFDs)
        self.targets.append({fd: os.readlink(f"/proc/self/fd/{value}")
                             for fd, value in childFDs.items()
                             if isinstance(value, int) and fd in (1, 2)})


def test_stdoutAndStderrSayLogOffOrAFileMadeAbsolute(tmp_path: Path, monkeypatch) -> None:
    """log is the default; a relative path is the switch's working directory's."""
    monkeypatch.chdir(tmp_path)
    service = _service(f"{QEMU}:socket=stream:stdout=vm1.console:stderr=off")
    endpoint = service.endpoint
    assert isinstance(endpoint, DescriptorEndpoint)
    assert endpoint.stdout == str(tmp_path / "vm1.console") and endpoint.stderr == "off"
    assert parseOutput("stdout", None) == "log" and parseOutput("stdout", "log") == "log"
    assert parseOutput("stderr", "/var/log/a=b:c") == "/var/log/a=b:c"
    plain = _service("cmd:vde_plug /tmp/sw:stderr=/tmp/vde.errors").endpoint
    assert type(plain) is CommandEndpoint and plain.stderr == "/tmp/vde.errors"


def test_anEscapedColonOrAnEqualsSignIsPartOfThePath() -> None:
    """A value's ':' is escaped as anywhere in a spec; its '=' needs no escape."""
    service = _service(QEMU + r":socket=dgram:stdout=/var/log/vm\:1=a.console")
    assert service.endpoint.stdout == "/var/log/vm:1=a.console"


@pytest.mark.parametrize(("text", "problem"), [
    ("cmd:vde_plug /tmp/sw:stdout=/tmp/x", r"stdout=/tmp/x: without socket= the command's "
     "standard output carries the frames"),
    ("cmd:vde_plug /tmp/sw:stdout=off", "stdout=off: without socket="),
    ("cmd:vde_plug /tmp/sw:stdout=log", "stdout=log: without socket="),
    (QEMU + ":socket=stream:stdout=", "stdout= is empty: expected log, off or a file's path"),
    (QEMU + ":socket=stream:stderr=", "stderr= is empty"),
    (QEMU + ":socket=stream:stdout=off:stdout=log", "stdout= is given 2 times"),
])
def test_badOutputOptionsSayWhatIsWrong(text: str, problem: str) -> None:
    """Errors name the spec and what is wrong."""
    with pytest.raises(SpecError, match=problem) as caught:
        _service(text)
    assert caught.value.spec == text


@pytest.mark.parametrize("option", ["stdout", "stderr"])
def test_aFileThatCouldNotBeOpenedRefusesTheSpecAsItIsRead(tmp_path: Path,
                                                           option: str) -> None:
    """
    A path in no directory, through a file, or naming a directory refuses
    the spec as it is read, naming the spec, the option, the path and the
    errno, not at its first run; a good one is neither made nor opened
    until a run.
    """
    missing = tmp_path / "nowhere" / "vm1.console"
    (tmp_path / "file").write_text("")
    for path, errno in [(missing, "No such file or directory (errno 2, ENOENT)"),
                        (tmp_path / "file" / "vm1", "Not a directory (errno 20, ENOTDIR)"),
                        (tmp_path, "Is a directory (errno 21, EISDIR)")]:
        text = f"{QEMU}:socket=stream:{option}={path}"
        with pytest.raises(SpecError) as caught:
            _service(text)
        assert caught.value.spec == text
        assert str(caught.value).endswith(
            f"{option}={path}: cannot open {path} for appending: {errno}"), str(caught.value)
    good = tmp_path / "vm1.console"
    _service(f"{QEMU}:socket=stream:{option}={good}")
    assert not good.exists()


def test_eachRunOpensItsFilesToAppendAndTheSwitchKeepsNoCopy(tmp_path: Path) -> None:
    """
    stdout=FILE and stderr=off are the command's descriptors 1 and 2 (the
    file created, then appended to); the switch closes its own copies.
    """
    console = tmp_path / "vm1.console"
    console.write_bytes(b"before\n")
    reactor = Spawned()
    endpoint = DescriptorEndpoint(reactor, ["qemu", "{fd}"], "cmd:qemu", "dgram", 65536,
                                  str(console), "off")
    before = set(os.listdir("/proc/self/fd"))
    endpoint.connect(Factory.forProtocol(Protocol))
    [childFDs], [targets] = reactor.childFDs, reactor.targets
    assert childFDs[0] == "w" and 3 in childFDs
    assert targets == {1: str(console), 2: os.devnull}
    leftover = set(os.listdir("/proc/self/fd")) - before
    # Only the switch's end of the socket pair is new.
    assert len(leftover) == 1, leftover
    assert console.read_bytes() == b"before\n"


def test_stderrToAFileInPipeMode(tmp_path: Path) -> None:
    """Without socket=, stdout stays the frame pipe and stderr=FILE is descriptor 2."""
    errors = tmp_path / "ssh.errors"
    reactor = Spawned()
    CommandEndpoint(reactor, ["ssh"], "cmd:ssh", stderr=str(errors)).connect(
        Factory.forProtocol(Protocol))
    [childFDs], [targets] = reactor.childFDs, reactor.targets
    assert childFDs[0] == "w" and childFDs[1] == "r" and targets == {2: str(errors)}
    assert errors.exists()


def test_aFileThatCannotBeOpenedFailsTheRunNamingPathAndErrno(tmp_path: Path) -> None:
    """A missing directory: the run fails with the option, the path and the errno."""
    missing = tmp_path / "nowhere" / "vm1.console"
    reactor = Spawned()
    endpoint = DescriptorEndpoint(reactor, ["qemu", "{fd}"], "cmd:qemu", "stream", 65536,
                                  str(missing))
    failures: list[Any] = []
    endpoint.connect(Factory.forProtocol(Protocol)).addErrback(failures.append)
    [failure] = failures
    assert failure.check(OutputError)
    assert str(failure.value) == (f"stdout={missing}: cannot open {missing} for appending: "
                                  "No such file or directory (errno 2, ENOENT)")
    assert not reactor.childFDs
    with pytest.raises(OutputError, match=r"stderr=/: cannot open / for appending: Is a "
                                          r"directory \(errno 21, EISDIR\)"):
        OutputFiles("off", "/")


def test_aCommandsStandardOutputIsLoggedAsInformationItsErrorAsWarnings() -> None:
    """A guest's console line is no warning; what it says on stderr still is."""
    endpoint = DescriptorEndpoint(MemoryReactorClock(), ["qemu", "{fd}"], "cmd:qemu", "stream",
                                  65536)
    run = DescriptorRun(endpoint, Protocol())
    with capturedLogs() as events:
        run.childDataReceived(1, b"Welcome to the guest\n")
        run.childDataReceived(2, b"qemu: warning: something\n")
    levels = {event["line"]: event["log_level"] for event in events if "line" in event}
    assert levels == {"Welcome to the guest": LogLevel.info,
                      "qemu: warning: something": LogLevel.warn}


def test_aFifoIsOpenedWithoutWaitingForItsReader(tmp_path: Path) -> None:
    """
    stdout=FIFO: with nobody reading it, the run fails at once (ENXIO)
    instead of holding the whole switch in open(); with a reader, the
    command gets it, blocking as a shell's >> would give it.
    """
    fifo = tmp_path / "console.fifo"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, lambda *args: pytest.fail("open() blocked"))
    signal.alarm(5)
    try:
        with pytest.raises(OutputError, match=r"No such device or address \(errno 6, ENXIO\)"):
            openOutput("stdout", str(fifo))
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            opened = openOutput("stdout", str(fifo))
            assert opened is not None and os.get_blocking(opened)
            os.close(opened)
        finally:
            os.close(reader)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
