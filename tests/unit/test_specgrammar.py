"""
The spec grammar's one rule beyond Twisted's: C{text=value} is an option
only when C{text} is an option name, otherwise positional text with its
C{=} (L{vtwisted.spec}), so a C{cmd:} command line needs no C{\\=}.  Here
the parse, the C{cmd:} ports built from it, and the console and an rc file
adding and deleting such a spec by its text, with fake processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from consolefakes import FakeSwitchService
from twisted.internet.testing import MemoryReactorClock, StringTransport

from vtwisted import processgroups
from vtwisted.console import CommandInterpreter
from vtwisted.consoleservice import runRcFile
from vtwisted.operations import SwitchOperations
from vtwisted.ports import command
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch

#: QEMU's options as a user writes them, and as they had to be escaped.
QEMU = ("qemu-system-x86_64 -m 512 -netdev stream,id=n,addr.type=fd,addr.str={fd} "
        "-device virtio-net-pci,netdev=n")
QEMU_ESCAPED = QEMU.replace("=", "\\=")

#: A command whose every word but the last two has an =.
ENV = "env A=1 B=x=y vde_plug /tmp/sw"


# The parse


def test_aQemuCommandLineNeedsNoEscapes() -> None:
    """QEMU's key=value options stay in the command; socket= is the port's."""
    spec = PortSpec(f"cmd:{QEMU}:socket=stream")
    assert spec.args == [QEMU]
    assert spec.kwargs == {"socket": "stream"}


def test_escapedEqualsSignsStillMeanTheSame() -> None:
    """\\= still works, and gives what the unescaped spelling gives."""
    escaped = PortSpec(f"cmd:{QEMU_ESCAPED}:socket=stream")
    plain = PortSpec(f"cmd:{QEMU}:socket=stream")
    assert (escaped.args, escaped.kwargs) == (plain.args, plain.kwargs)


def test_textAndOptionsKeepTheirPlaces() -> None:
    """
    Positional text keeps its order among the others, wherever the options
    are; the text after its first = is kept whole, = and all.
    """
    spec = PortSpec("cmd:echo a=1:b c=2=3:vlan=3:d:mtu=1500")
    assert spec.args == ["echo a=1", "b c=2=3", "d"]
    assert spec.kwargs == {"vlan": "3", "mtu": "1500"}


@pytest.mark.parametrize(("text", "args", "kwargs"), [
    # an identifier before the = is an option, of cmd: or any other type
    ("cmd:FOO=bar", [], {"FOO": "bar"}),
    ("cmd:FOO=bar vde_plug /tmp/x", [], {"FOO": "bar vde_plug /tmp/x"}),
    ("slirp:ipv6-prefix=fd00\\:\\:1:tftp-server-name=x", [],
     {"ipv6-prefix": "fd00::1", "tftp-server-name": "x"}),
    ("cable:tcp:host=h:port=1:bindAddress=x", ["tcp"],
     {"host": "h", "port": "1", "bindAddress": "x"}),
    # anything else is text: spaces, a slash, a dot, a comma, no name at all
    ("cmd:env FOO=bar vde_plug /tmp/x", ["env FOO=bar vde_plug /tmp/x"], {}),
    ("vde:/tmp/a=b", ["/tmp/a=b"], {}),
    ("cmd:x:addr.type=fd", ["x", "addr.type=fd"], {}),
    ("cmd:x:a,b=c", ["x", "a,b=c"], {}),
    ("cmd:x:=c", ["x", "=c"], {}),
    ("cmd:x:caf\u00e9=1", ["x", "caf\u00e9=1"], {}),
    ("cmd:x:vlan\\==1", ["x", "vlan==1"], {}),
])
def test_anOptionIsANameBeforeAnEqualsSign(text: str, args: list[str],
                                           kwargs: dict[str, str]) -> None:
    """Only an option name (letters, digits, _ and -) makes an option."""
    spec = PortSpec(text)
    assert (spec.args, spec.kwargs) == (args, kwargs)


def test_textThatLooksTheSameTwiceIsNoRepeatedOption() -> None:
    """Two pieces of text with the same words before = are not an option given twice."""
    spec = PortSpec("cmd:echo a=1:echo a=2:vlan=1:vlan=2")
    assert spec.repeated == {"vlan": ["1", "2"]}
    with pytest.raises(SpecError, match="vlan= is given 2 times"):
        spec.string("vlan")


def test_aPathWithAnEqualsSignReachesTheEndpointEscaped() -> None:
    """The endpoint description escapes the = of text again for Twisted."""
    spec = PortSpec("qemu:unix:/tmp/a=b:mode=600:vlan=2")
    assert spec.endpoint(0, ["vlan"]) == "unix:/tmp/a\\=b:mode=600"


def test_aLoneBackslashIsStillRefused() -> None:
    """A spec ending in a backslash says so."""
    with pytest.raises(SpecError, match="ends with a lone backslash"):
        PortSpec("cmd:echo a=b\\")


# cmd: ports


class FakeProcess(StringTransport):
    """A command's process transport, whose pipes are closed one by one."""

    def closeStdin(self) -> None:
        self.loseConnection()

    def closeStdout(self) -> None:
        self.loseConnection()

    def closeStderr(self) -> None:
        self.loseConnection()


class Spawner(MemoryReactorClock):
    """A reactor whose commands are not run: their argv are kept in C{argv}."""

    def __init__(self) -> None:
        super().__init__()
        self.argv: list[list[str]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str],
                     **kwargs: Any) -> None:
        process = FakeProcess()
        process.pid = 1000 + len(self.argv)  # type: ignore[attr-defined]
        process.pipes = {}  # type: ignore[attr-defined]
        protocol.makeConnection(process)
        self.argv.append(list(args))


@pytest.fixture(autouse=True)
def _noSignals(monkeypatch, tmp_path: Path) -> None:
    """
    Stopping a fake run signals no real process group; a
    qemu-system-x86_64 is on the PATH (never run) where QEMU is not.
    """
    monkeypatch.setattr(processgroups, "signalGroup", lambda group, name: None)
    monkeypatch.setattr(processgroups, "signalLeader", lambda pid, name: None)
    monkeypatch.setattr(processgroups, "groupAlive", lambda group: False)
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{os.environ['PATH']}:{fake.parent}")


@pytest.mark.parametrize("text", [f"cmd:{ENV}", f"cmd:{ENV.replace('=', chr(92) + '=')}"])
def test_theCommandIsRunWithItsEqualsSigns(text: str) -> None:
    """cmd:env A=1 B=x=y ... runs env with A=1 and B=x=y, escaped or not."""
    reactor = Spawner()
    service = command.makeService(Switch(), PortSpec(f"{text}:vlan=3"), reactor)
    assert service.endpoint.argv == ["env", "A=1", "B=x=y", "vde_plug", "/tmp/sw"]
    assert service.options.vlan == 3
    service.startService()
    assert reactor.argv[0][-5:] == ["env", "A=1", "B=x=y", "vde_plug", "/tmp/sw"]
    service.stopService()


def test_qemuSocketSpecBuildsWithoutEscapes() -> None:
    """The README's QEMU recipe, unescaped, hands QEMU its descriptor."""
    service = command.makeService(Switch(), PortSpec(f"cmd:{QEMU}:socket=stream"), Spawner())
    assert service.endpoint.argv[4:] == ["stream,id=n,addr.type=fd,addr.str=3",
                                         "-device", "virtio-net-pci,netdev=n"]


@pytest.mark.parametrize("text", ["cmd:FOO=bar", "cmd:vde_plug /tmp/sw:FOO=bar"])
def test_anUnknownOptionSaysToEscapeItsEqualsSign(text: str) -> None:
    """
    FOO=bar could be an option: it is one, unknown, and the refusal says
    how to make it the command's.
    """
    with pytest.raises(SpecError, match=r"unknown option FOO \(known: socket, restart, stdout, "
                                        r"stderr, vlan.*\); "
                                        r"if FOO= is part of the command, escape its = as FOO\\="):
        command.makeService(Switch(), PortSpec(text), Spawner())


# The console and rc files


@pytest.fixture
def console() -> tuple[CommandInterpreter, Spawner]:
    """A console on a switch service whose cmd: ports run no command."""
    reactor = Spawner()
    service = FakeSwitchService(Switch(8), reactor=reactor, clock=reactor)
    service.startService()
    ops = SwitchOperations(service, stop=lambda: None, mac=bytes.fromhex("00ff01020304"))
    service._operations = ops
    return CommandInterpreter(ops), reactor


def test_theConsoleAddsShowsAndDeletesTheSpecAsWritten(console) -> None:
    """
    port/add takes the spec unescaped; port/specs and port/stats show it as
    given, and port/print the command; port/del removes it by the same text.
    """
    interpreter, reactor = console
    spec = f"cmd:{ENV}:vlan=3"
    added = interpreter.execute(f"port/add {spec}").text
    assert added == f"0000 DATA END WITH '.'\nSpec {spec}\nPort 0001\n.\n1000 Success\n"
    assert reactor.argv[0][-5:] == ["env", "A=1", "B=x=y", "vde_plug", "/tmp/sw"]
    assert f"Spec {spec} ports=0001 single runtime" in interpreter.execute("port/specs").text
    printed = interpreter.execute("port/print").text
    assert f"{ENV} (pid 1000)" in printed and "untagged_vlan=0003" in printed, printed
    assert f"\n spec: {spec}\n" in interpreter.execute("port/stats 1").text
    assert interpreter.execute(f"port/del {spec}").text.endswith(f"Spec {spec}\n.\n1000 Success\n")
    assert f"Spec {spec}" not in interpreter.execute("port/specs").text


def test_anRcFileAddsAndDeletesTheSpecAsWritten(console, tmp_path: Path) -> None:
    """An rc file's port/add and port/del of an unescaped spec both work."""
    interpreter, reactor = console
    added, gone = f"cmd:{ENV}:vlan=3", "cmd:env C=3 vde_plug /tmp/other"
    script = tmp_path / "grammar.rc"
    script.write_text(f"port/add {added}\nport/add {gone}\nport/del {gone}\n")
    assert runRcFile(interpreter, str(script)) == 0
    specs = interpreter.execute("port/specs").text
    assert f"Spec {added} ports=0001" in specs and gone not in specs, specs
    assert [argv[-4:] for argv in reactor.argv] == [
        ["A=1", "B=x=y", "vde_plug", "/tmp/sw"],
        ["env", "C=3", "vde_plug", "/tmp/other"]]
