"""
A C{cmd:} command's port is kept for it between runs: a real C{vde_plug}
joins the switch's VDE directory while the command (a C{vde_plug} to
another switch, behind a shell that fails while a gate file is missing,
so the gap lasts as long as the test wants) is down, and gets another
port; asking for the command's port by number is refused; run again, the
command is on its port, in the VLAN the console gave it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest
from helpers import StreamPlug, need, waitFor
from taphelpers import console

pytestmark = pytest.mark.integration

#: A port's block in port/print: its number, header and the lines after.
BLOCK = re.compile(r"^Port (\d{4}) (.*)\n((?:(?!Port ).*\n?)*)", re.MULTILINE)
PID = re.compile(r"module command\s*: .*\(pid (\d+)\)")


def _ports(mgmt: object, command: str = "port/print") -> dict[int, tuple[str, str]]:
    """Port number to its header line and the lines under it."""
    return {int(m.group(1)): (m.group(2), m.group(3))
            for m in BLOCK.finditer(console(mgmt, command))}  # type: ignore[arg-type]


def _commandPid(mgmt: object) -> int | None:
    """The pid of the command on port 1, if it runs."""
    found = PID.search(_ports(mgmt).get(1, ("", ""))[1])
    return int(found.group(1)) if found else None


def _isVdePlug(pid: int | None) -> bool:
    """Whether C{pid} is a C{vde_plug} (the shell got through its gate)."""
    try:
        return pid is not None and open(f"/proc/{pid}/comm").read().strip() == "vde_plug"
    except OSError:
        return False


def test_aClientInTheGapGetsAnotherPortAndTheCommandKeepsItsVlan(vswitch, processes,
                                                                 shortdir) -> None:
    """
    The command on port 1, put in VLAN 7 on the console, is killed while
    its gate is closed, so its runs fail and back off: port/allprint says
    port 1 is reserved for it; a vde_plug asking for any port gets port 2,
    one asking for port 1 is refused, and so is port/remove 1 (the log
    says to use port/del).  Gate open, the command runs again on port 1,
    still in VLAN 7, and port/print says it was run again and how the run
    before (one failing at its gate) ended.
    """
    need("vde_plug")
    far = vswitch()
    gate, mgmt = shortdir / "gate", shortdir / "mgmt"
    gate.touch()
    command = f"sh -c 'test -e {gate} && exec vde_plug {far.sock}; exit 1'"
    spec = f"cmd:{command}"
    sw = vswitch("--mgmt", str(mgmt), "--port", spec)
    waitFor(lambda: _commandPid(mgmt) is not None, timeout=20, what="the command on port 1")
    first = _commandPid(mgmt)
    console(mgmt, "vlan/create 7", "port/setvlan 1 7")
    gate.unlink()
    os.kill(first, signal.SIGKILL)  # type: ignore[arg-type]
    reserved = f"  -- reserved for {spec} until it runs again"

    def down() -> bool:
        header, lines = _ports(mgmt, "port/allprint")[1]
        return "INACTIVE" in header and reserved in lines

    waitFor(down, timeout=20, what="port 1 reserved")
    waitFor(lambda: "last: the command exited with status 1" in _ports(
        mgmt, "port/allprint")[1][1], timeout=20, what="a run failing (its gate closed)")
    anyPort = StreamPlug(processes, f"vde://{sw.sock}")
    waitFor(lambda: any("module unix prog" in lines for _, lines in _ports(mgmt).values()),
            timeout=20, what="the client on a port")
    clients = [n for n, (_, lines) in _ports(mgmt).items() if "module unix prog" in lines]
    assert clients == [2], console(mgmt, "port/allprint") + sw.logText()
    explicit = StreamPlug(processes, f"vde://{sw.sock}[1]")
    try:
        explicit.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("vde_plug asking for port 1 was let in:\n" + console(mgmt, "port/allprint"))
    assert explicit.process.returncode != 0
    refusal = f"port 1 is reserved for {spec} until it runs again"
    assert refusal in sw.logText(), sw.logText()
    assert console(mgmt, "port/remove 1").strip() == "1098 Address already in use"
    assert f"{refusal}: port/del 1 removes it with its spec" in sw.logText(), sw.logText()
    assert down(), console(mgmt, "port/allprint")
    gate.touch()
    waitFor(lambda: _isVdePlug(_commandPid(mgmt)), timeout=30,
            what="the command run again through its gate")
    ports = _ports(mgmt)
    assert ports[1][0].startswith("untagged_vlan=0007 ACTIVE"), ports
    assert re.search(r"  -- run again \d+ times; the run before exited with status 1\n",
                     ports[1][1]), ports[1][1]
    assert ports[2][0].startswith("untagged_vlan=0000 ACTIVE") and "unix prog" in ports[2][1]
    assert not anyPort.exited()
    assert "Traceback" not in sw.logText(), sw.logText()
