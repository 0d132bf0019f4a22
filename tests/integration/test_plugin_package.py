"""
A port type from another distribution, as its author ships it: vtwisted
and README.rst's example package pip-installed into a fresh virtualenv,
then run by that virtualenv's C{twistd}, with a real C{vde_plug} as the
guest.  Everything the example needs comes from its documented path.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    Processes,
    StreamPlug,
    need,
    readmeExampleFiles,
    socketListening,
    waitFor,
    writeReadmeExample,
)

from vtwisted.testing import frame, mac


def console(path: Path, *commands: str) -> str:
    """
    Run C{commands} on the management console at C{path}; their replies.
    """
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.settimeout(5)
        sock.sendall(b"".join(command.encode() + b"\n" for command in commands))
        reply = b""
        while reply.count(b"\nvde$ ") < len(commands) + 1:
            reply += sock.recv(65536)
    return reply.decode()


def twistd(venv: Path, *args: str) -> list[str]:
    """
    The virtualenv's C{twistd} (Twisted is the system's, so it has no
    script); run it outside the source tree, which C{-c} puts on C{sys.path}.
    """
    return [str(venv / "bin" / "python"), "-c",
            "import sys; from twisted.scripts.twistd import run; sys.exit(run())", *args]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A virtualenv with this tree's vtwisted and the README's example port
    type installed with pip (not editable); Twisted comes from the system.
    """
    base = tmp_path_factory.mktemp("pluginvenv")
    source = base / "vtwisted-src"
    source.mkdir()
    for name in ("setup.py", "README.rst"):
        shutil.copy(ROOT / name, source / name)
    for name in ("vtwisted", "twisted"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"))
    example = base / "echo-port"
    writeReadmeExample(example)
    env = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)],
                   check=True, timeout=60)
    for package in (source, example):
        result = subprocess.run(
            [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
             str(package)], capture_output=True, text=True, timeout=120, cwd=base,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    return env


def test_theInstalledPortTypeIsListedWithoutWarnings(venv: Path) -> None:
    """twistd vswitch --help lists the installed port type, and says nothing else."""
    for _ in range(2):
        result = subprocess.run(twistd(venv, "vswitch", "--help"),
                                capture_output=True, text=True, timeout=60, cwd=venv)
        assert result.returncode == 0, result.stderr
    assert re.search(r"^  echo +echo:NAME  answers every frame", result.stdout, re.M), \
        result.stdout
    assert "  vde " in result.stdout and "  tap " in result.stdout
    assert result.stderr == ""


def test_theInstalledPortTypeRuns(venv: Path, shortdir: Path, processes: Processes) -> None:
    """
    The installed twistd runs the port type: it answers a vde_plug guest,
    shows in port/print with its counters, and a bad spec is refused with
    its name; the log has no warning.
    """
    need("vde_plug")
    log = shortdir / "switch.log"
    switch = processes.start(twistd(
        venv, "-n", "--pidfile=", f"--logfile={log}", "vswitch", "--sock", str(shortdir / "sw"),
        "--mgmt", str(shortdir / "mgmt"), "--port", "echo:e1:mtu=1400"), cwd=shortdir)
    waitFor(lambda: socketListening(shortdir / "mgmt") or switch.poll() is not None,
            what="the switch's console")
    assert switch.poll() is None, log.read_text()
    guest = StreamPlug(processes, str(shortdir / "sw"))
    sent = frame(mac(9), mac(1))
    deadline = time.monotonic() + 5
    answer = None
    while answer is None and time.monotonic() < deadline:
        guest.send(sent)  # vde_plug may not have joined yet
        answer = guest.receive(0.5)
    assert answer == frame(mac(1), mac(9))
    reply = console(shortdir / "mgmt", "port/print", "port/add echo:e2:colour=red")
    assert "module echo        : e1" in reply
    echoPort = reply[:reply.index("module echo")].rsplit("Port ", 1)[1]
    counts = [int(n) for n in re.findall(r"(?:IN|OUT):\s+pkts\s+(\d+)", echoPort)]
    assert len(counts) == 2 and counts[0] == counts[1] >= 1, echoPort
    assert "port spec 'echo:e2:colour=red': unknown option colour" in reply
    assert "1022 Invalid argument" in reply
    text = log.read_text()
    assert "Traceback" not in text and "Unable to write" not in text and "warn" not in text


def test_anEditableInstallIsFound(venv: Path, tmp_path: Path) -> None:
    """
    The README's example installed with pip install -e (PEP 660: an import
    hook maps its vtwisted/plugins/, which is on no sys.path entry), here
    renamed mirror, is listed by the installed twistd beside the others.
    """
    project = tmp_path / "mirror-port"
    for name, content in readmeExampleFiles().items():
        path = project / name.replace("echo", "mirror")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content.replace("echo", "mirror"))
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
         "--use-pep517", "-e", str(project)], capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    hooks = list((venv / "lib").glob("python3*/site-packages/__editable__*mirror*"))
    assert hooks, "pip made no PEP 660 editable install"
    result = subprocess.run(twistd(venv, "vswitch", "--help"),
                            capture_output=True, text=True, timeout=60, cwd=venv)
    assert result.returncode == 0, result.stderr
    assert "mirror:NAME  answers every frame" in result.stdout
    assert "echo:NAME  answers every frame" in result.stdout
