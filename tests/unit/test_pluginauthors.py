"""
What a port type from another distribution meets: its start failures are
reported with its spec.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher

import vtwisted.plugins
from vtwisted.app import buildService
from vtwisted.errors import SwitchError

DECLARATION = """
from vtwisted.porttype import PortType

replay = PortType("pareplay", "pa_replay", "pareplay:FILE replays a capture")
"""

#: A port type that reads its file when it starts, and raises what reading
#: it raised, as an author would write it.
MODULE = '''
from twisted.application.service import Service


class ReplayService(Service):
    def __init__(self, path):
        self.path = path

    def startService(self):
        with open(self.path, "rb") as f:
            if f.read(4) != b"\\xd4\\xc3\\xb2\\xa1":
                raise ValueError("not a pcap file")
        super().startService()


def makeService(switch, spec, reactor):
    (path,) = spec.positional(["file"], 1)
    spec.checkKeywords()
    return ReplayService(path)
'''


@pytest.fixture
def replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The port type above, declared in a directory of its own on sys.path."""
    plugins = tmp_path / "vtwisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "pa_replay_ports.py").write_text(DECLARATION)
    (tmp_path / "pa_replay.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(vtwisted.plugins, "__path__", [*vtwisted.plugins.__path__, str(plugins)])
    yield tmp_path
    for name in list(sys.modules):
        if name == "pa_replay" or name.startswith("vtwisted.plugins.pa_replay"):
            del sys.modules[name]


@pytest.fixture
def logEvents() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted during the test."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def startUnderTwistd(spec: str) -> str:
    """
    Start a switch with C{spec} as C{twistd vswitch} does; the line it
    stops with.
    """
    service = buildService(Clock(), [spec], defaultSock=False, rcfile=None)
    service.exitOnFailure = True
    with pytest.raises(SystemExit) as exited:
        service.privilegedStartService()
        service.startService()
    return str(exited.value.code)


def test_anOSErrorOfAnotherPortTypeNamesTheSpecAndTheFile(replay: Path) -> None:
    """
    A port type that lets open()'s error out stops the start with the spec,
    the file and the errno, not a bare "No such file or directory".
    """
    spec = f"pareplay:{replay}/missing.pcap"
    assert startUnderTwistd(spec) == (f"vswitch: {spec}: {replay}/missing.pcap: "
                                      "No such file or directory (errno 2)")


def test_anyOtherErrorOfAnotherPortTypeIsOneLineAndALoggedTraceback(
    replay: Path, logEvents: list[dict[str, Any]]
) -> None:
    """
    Another exception from a port type's startService ends twistd in one
    line naming the spec, not with a traceback on the terminal; the
    traceback is in the log.
    """
    (replay / "text.pcap").write_text("not a capture")
    spec = f"pareplay:{replay}/text.pcap"
    assert startUnderTwistd(spec) == f"vswitch: {spec}: ValueError: not a pcap file"
    [failure] = [event["log_failure"] for event in logEvents if "log_failure" in event]
    assert isinstance(failure.value, ValueError)


def test_withoutTwistdTheErrorIsRaisedUnchanged(replay: Path) -> None:
    """A service of one's own (a .tac file) still gets the exception itself."""
    service = buildService(Clock(), [f"pareplay:{replay}/missing.pcap"], defaultSock=False,
                           rcfile=None)
    with pytest.raises(FileNotFoundError):
        service.startService()


def test_portAddOfAnotherPortTypeNamesTheSpecAndTheFile(replay: Path) -> None:
    """port/add of a spec whose service cannot open its file says which."""
    service = buildService(Clock(), [], defaultSock=False, rcfile=None)
    service.startService()
    spec = f"pareplay:{replay}/missing.pcap"
    with pytest.raises(SwitchError) as e:
        service.operations.addPort(spec)
    assert e.value.message == f"{spec}: {replay}/missing.pcap: No such file or directory (errno 2)"
    service.stopService()
