"""
C{cmd:} commands that crash, and C{restart=}: real processes killed by a
signal or exiting with a status other than 0.  A C{vde_plug} (or a shell
running one) joins two switches, each with a namespace behind a TAP; a
QEMU guest the switch starts (C{socket=stream}) pings a namespace behind
the switch's TAP, is killed, and pings it again once the switch has run it
again.  The console says how the last run ended.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from guest import guestCommand
from helpers import need, needRoot, uniqueName, waitFor
from taphelpers import console, moveTap, ping, waitForPing
from test_command_sockets import specFor

pytestmark = pytest.mark.integration

#: A command on a port, in port/print: its command line, pid and port.
COMMAND = re.compile(r"^Port (\d{4}) .*\n(?:(?!Port ).*\n)*?  -- endpoint ID \d+ module "
                     r"command\s*: (.*?) \(pid (\d+)", re.MULTILINE)


def _command(mgmt: Path) -> tuple[int, str, int] | None:
    """The port, command line and pid of the one command running."""
    found = COMMAND.search(console(mgmt, "port/print"))
    if found is None:
        return None
    return int(found.group(1)), found.group(2), int(found.group(3))


def _behindTap(vswitch, namespaces, address: str, *args: str):
    """A switch (with C{args}) and a namespace behind its TAP as C{address}."""
    tap = uniqueName("vtk")
    sw = vswitch("--port", f"tap:{tap}", *args)
    ns = namespaces.add("vtk")
    moveTap(tap, ns, address)
    return sw, ns


def _vdePlugOf(pid: int) -> int:
    """The pid of the C{vde_plug} a shell (C{pid}) runs."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    [child] = [int(c) for c in children
               if Path(f"/proc/{c}/comm").read_text().strip() == "vde_plug"]
    return child


@pytest.mark.parametrize(("restart", "wrapped", "sig", "ended"), [
    ("on-failure", False, signal.SIGSEGV, "was killed by signal 11 (SIGSEGV"),
    ("on", True, signal.SIGKILL, "exited with status 3"),
    ("off", False, signal.SIGKILL, "was killed by signal 9 (SIGKILL)"),
])
def test_aCrashedCommandIsRunAgainAsRestartSays(vswitch, namespaces, shortdir, restart,
                                                wrapped, sig, ended) -> None:
    """
    vde_plug killed by SIGSEGV (restart=on-failure), or a shell whose
    vde_plug is killed and which exits with status 3 (restart=on): the
    command runs again, on the port it had, and the namespaces ping each
    other again; the log warns how it ended.  restart=off: the port stays
    down, the log says how it ended once, port/allprint and port/specs
    say it too.
    """
    needRoot()
    need("vde_plug")
    right, far = _behindTap(vswitch, namespaces, "10.219.12.2/24")
    mgmt = shortdir / "mgmt"
    plug = f"vde_plug {right.sock}"
    command = f"sh -c '{plug} || exit 3'" if wrapped else plug
    spec = f"cmd:{command}:restart={restart}"
    left, near = _behindTap(vswitch, namespaces, "10.219.12.1/24", "--mgmt", str(mgmt),
                            "--port", spec)
    waitForPing(near, "10.219.12.2", timeout=20)
    first = _command(mgmt)
    assert first is not None, left.logText()
    port, line, pid = first
    assert line.startswith("sh -c" if wrapped else plug), line
    os.kill(_vdePlugOf(pid) if wrapped else pid, sig)
    if restart == "off":
        waitFor(lambda: "not started again" in left.logText(), timeout=20,
                what="the command's end")
        waitFor(lambda: ping(near, "10.219.12.2", count=1).returncode != 0, timeout=10,
                what="the namespaces cut off")
        assert _command(mgmt) is None
        down = f"the command {ended}; not started again (restart=off)"
        assert left.logText().count(down) == 1, left.logText()
        assert f"Port {port:04d} untagged_vlan=0000 INACTIVE" in console(mgmt, "port/allprint")
        assert f"  -- down: {down}: delete and add the port" in console(mgmt, "port/allprint")
        assert f"ports=none single startup -- {down}" in console(mgmt, "port/specs")
    else:
        def again() -> bool:
            now = _command(mgmt)
            return now is not None and now[2] != pid

        waitFor(again, timeout=20, what="the command run again")
        assert _command(mgmt)[0] == port  # type: ignore[index]
        waitForPing(near, "10.219.12.2", timeout=20)
        crashed = rf"#warn\] {re.escape(spec)}: the command {re.escape(ended)}"
        assert re.search(crashed, left.logText()), left.logText()
    assert "Traceback" not in left.logText(), left.logText()


def test_aGuestKilledIsStartedAgainAndPingsAgain(vswitch, namespaces, shortdir) -> None:
    """
    QEMU started by the switch (socket=stream, restart=on-failure), its
    guest pinging a namespace behind the switch's TAP, is killed (SIGKILL):
    the switch runs it again, on the same port, and the new guest (another
    boot) pings the namespace too; the log says QEMU was killed.
    """
    needRoot()
    need("qemu-system-x86_64")
    script = ("ip link set eth0 up\nip addr add 10.219.13.2/24 dev eth0\n"
              "ping -c 3 -W 5 10.219.13.1 >/dev/null; rc=$?\n"
              "echo \"VTW-PING boot=$(cat /proc/sys/kernel/random/boot_id) rc=$rc\"\n"
              "exec sleep 600\n")
    argv, serial = guestCommand(["-netdev", "stream,id=n0,addr.type=fd,addr.str={fd}"],
                                script, "52:54:00:76:74:41", directory=shortdir, name="crash")
    tap, mgmt = uniqueName("vtk"), shortdir / "mgmt"
    sw = vswitch("--mgmt", str(mgmt), "--port", f"tap:{tap}",
                 "--port", specFor(argv, "stream", ":restart=on-failure"))
    moveTap(tap, namespaces.add("vtk"), "10.219.13.1/24")
    pinged = re.compile(r"VTW-PING boot=(\S+) rc=(\d+)")

    def boots() -> list[tuple[str, str]]:
        return pinged.findall(serial.read_text(errors="replace"))

    waitFor(boots, timeout=90, what=f"the guest's pings ({serial})")
    [(boot, rc)] = boots()
    assert rc == "0", serial.read_text(errors="replace") + sw.logText()
    first = _command(mgmt)
    assert first is not None and first[1].startswith("qemu-system-x86_64"), sw.logText()
    os.kill(first[2], signal.SIGKILL)
    waitFor(lambda: any(b != boot for b, _ in boots()), timeout=90,
            what=f"the guest booted again ({serial})")
    assert [rc for b, rc in boots() if b != boot] == ["0"], serial.read_text() + sw.logText()
    again = _command(mgmt)
    assert again is not None and again[0] == first[0] and again[2] != first[2]
    assert "the command was killed by signal 9 (SIGKILL)" in sw.logText(), sw.logText()
    assert "Traceback" not in sw.logText(), sw.logText()
