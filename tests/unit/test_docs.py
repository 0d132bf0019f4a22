"""
The README's commands are the ones CI runs, and the code is lint-clean.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REQUIRE, ROOT, writeReadmeExample

from vtwisted.app import Options, buildService
from vtwisted.spec import SpecError


def readmeCommand(startswith: str) -> str:
    for line in (ROOT / "README.rst").read_text().splitlines():
        if line.strip().startswith(startswith):
            return line.strip()
    raise AssertionError(f"README.rst has no command starting with {startswith!r}")


def test_ciRunsTheReadmeTestCommand() -> None:
    """CI runs exactly the test command README.rst gives a new user."""
    command = readmeCommand("apt-get update &&")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci]


def test_readmeRunCommandStartsTheSwitch() -> None:
    """The README's first command installs the package and runs twistd vswitch."""
    command = readmeCommand("python3 -m pip install . &&")
    assert command.endswith("twistd -n vswitch")


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_lintIsClean(tool: str) -> None:
    """ruff and mypy report nothing on the tree."""
    if shutil.which(tool) is None:
        if REQUIRE:
            pytest.fail(f"{tool} is not installed")
        pytest.skip(f"{tool} is not installed")
    argv = [sys.executable, "-m", tool] + (["check", "."] if tool == "ruff" else [])
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_theReadmesSlirpExamplesAreValidSpecs() -> None:
    """Every slirp option line the README shows reads as a spec (paths aside)."""
    from vtwisted.slirp.config import readConfig
    from vtwisted.spec import PortSpec, SpecError

    examples = [line.split("#")[0].strip() for line in
                (ROOT / "README.rst").read_text().splitlines()
                if line.startswith("    slirp:")]
    assert len(examples) >= 10
    for example in examples:
        try:
            readConfig(PortSpec(example))
        except SpecError as e:
            assert "No such file or directory" in str(e), e  # tftp=/srv/tftp, smb=/srv/share


def readmeSwitchCommands() -> list[str]:
    """
    Every C{twistd -n vswitch ...} (or daemon's C{twistd vswitch ...}) line
    of README.rst's literal blocks, its backslash continuations joined,
    without a C{host$ } prompt, a trailing C{&} or a C{# comment}.
    """
    lines = (ROOT / "README.rst").read_text().splitlines()
    commands = []
    for number, line in enumerate(lines):
        found = re.search(r"twistd (-n )?vswitch", line)
        if not line.startswith("    ") or found is None:
            continue
        while line.endswith("\\"):
            number += 1
            line = line[:-1] + " " + lines[number].strip()
        command = line[found.start():].split(" # ")[0].strip()
        commands.append(command.removesuffix("&").strip())
    return commands


def readmeLiteralBlocks() -> list[list[str]]:
    """
    README.rst's indented literal blocks, as lists of their lines.
    """
    blocks: list[list[str]] = [[]]
    for line in (ROOT / "README.rst").read_text().splitlines():
        if line.startswith("    "):
            blocks[-1].append(line.strip())
        elif blocks[-1]:
            blocks.append([])
    return [block for block in blocks if block]


def readmeInlinePorts() -> list[str]:
    """
    The C{--port SPEC} options README.rst's prose shows inline
    (C{``--port vxlan:vni=10:vlan=10 --port ...``}), but synopses
    (C{``--port tap:NAME``}).
    """
    text = (ROOT / "README.rst").read_text()
    return ["--port " + spec for literal in re.findall(r"``(--port [^`]+)``", text)
            for spec in re.findall(r"--port (\S+)", literal)
            if not re.search(r"[A-Z]{3,}", spec)]


class ParseOnly(Options):
    """The switch's options, read without building the service."""

    def postOptions(self) -> None:
        pass


def checkSpecParses(spec: str) -> None:
    """
    Build a switch with C{spec} alone, the way C{twistd vswitch} checks it
    before starting, allowing only for files and groups of another host.
    """
    try:
        buildService(None, [spec], defaultSock=False, rcfile=None)
    except SpecError as e:
        assert "No such file or directory (errno 2)" in str(e) or "no such group" in str(e), e


def test_theReadmesSwitchCommandsParse() -> None:
    """Every twistd -n vswitch line README.rst shows has options twistd knows
    and port specs the switch accepts, so the recipes cannot drift."""
    commands = readmeSwitchCommands()
    assert len(commands) >= 25
    for command in commands:
        argv = shlex.split(command)
        options = ParseOnly()
        foreground = argv[1] == "-n"
        options.parent = {"nodaemon": foreground, "pidfile": "twistd.pid"}  # twistd's
        options.parseOptions(argv[3 if foreground else 2:])
        for spec in options.allPorts():
            checkSpecParses(spec)


def test_theReadmesRecipesDoNotRaceWhatTheyStartInTheBackground() -> None:
    """
    No literal block starts a command with C{&} that makes a TAP device
    (C{twistd -n vswitch --tap NAME}, C{tap:NAME}, C{vde_plug ...
    tap://NAME}) and then, with nothing waiting for it, configures that
    device (C{dev NAME}, C{link set NAME}): pasted, the next line runs
    before the device exists and fails with C{Cannot find device}.
    """
    racing = []
    for block in readmeLiteralBlocks():
        started: set[str] = set()
        for line in block:
            command = line.split(" # ")[0].strip()
            used = {name for name in started
                    if re.search(rf"\b(dev|link set) {re.escape(name)}\b", command)}
            if used:
                racing.append(f"{line}  (uses {', '.join(sorted(used))})")
            if command.startswith(("until ", "while ")):
                started.clear()  # a line that waits for the device
            if command.endswith("&"):
                started |= set(re.findall(r"(?:--tap |tap:|tap://)([\w.-]+)", command))
    assert racing == [], "\n".join(racing)


def test_theReadmesInlinePortOptionsParse() -> None:
    """The --port options README.rst's prose shows are valid specs too."""
    inline = readmeInlinePorts()
    assert len(inline) >= 4
    for option in inline:
        options = ParseOnly()
        options.parseOptions(shlex.split(option))
        for spec in options.allPorts():
            checkSpecParses(spec)


def test_theTacFilesExamplesAreValidSpecs() -> None:
    """The port specs etc/vswitch.tac offers, commented out, are valid."""
    tac = (ROOT / "etc" / "vswitch.tac").read_text()
    examples = [ast.literal_eval(quoted) for quoted in re.findall(r'# ("(?:[^"\\]|\\.)*"),', tac)]
    assert len(examples) >= 10
    for spec in examples:
        checkSpecParses(spec)


def test_theReadmesPortTypeExampleWorks(tmp_path: Path) -> None:
    """
    The port type README.rst's "Writing a port type" shows (declaration,
    module, tests) is found from sys.path and passes its own tests.
    """
    writeReadmeExample(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_echo.py"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout, result.stdout


def test_theReadmesPortTypeTestsFailWithoutThePortType(tmp_path: Path) -> None:
    """
    Each of the README example's tests fails when its port type is not
    installed (an "unknown port type" error names the spec too, so matching
    the spec alone would pass without it).
    """
    writeReadmeExample(tmp_path)
    (tmp_path / "vtwisted" / "plugins" / "echo_ports.py").unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_echo.py"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert "5 failed" in result.stdout and "passed" not in result.stdout, result.stdout
