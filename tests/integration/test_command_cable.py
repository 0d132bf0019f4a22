"""
C{cmd:} ports: a cable through a command speaking C{vde_plug}'s stream,
here C{vde_plug} itself, run directly or in another namespace with
C{ip netns exec} (as it would be through C{ssh}), to another vtwisted
switch and to C vde_switch.  Each switch has a namespace behind a TAP.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
from helpers import need, needRoot, uniqueName, waitFor
from taphelpers import console, moveTap, ping, waitForPing

pytestmark = pytest.mark.integration

COMMAND = re.compile(r"command\s*: (.*?vde_plug .*?) \(pid (\d+)\)")


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("vde_plug")


def _behindTap(vswitch, namespaces, address: str, *args: str):
    """A switch (with C{args}) and a namespace behind its TAP as C{address}."""
    tap = uniqueName("vtc")
    sw = vswitch("--port", f"tap:{tap}", *args)
    ns = namespaces.add("vtc")
    moveTap(tap, ns, address)
    return sw, ns


def test_aCommandJoinsTwoSwitchesAndComesBackWhenItDies(vswitch, namespaces,
                                                        shortdir) -> None:
    """
    cmd:vde_plug SOCK joins a switch to another: their namespaces ping each
    other; port/print names the command and its pid; when that vde_plug is
    killed, the switch starts it again and the namespaces ping again.
    """
    right, far = _behindTap(vswitch, namespaces, "10.219.0.2/24")
    mgmt = shortdir / "mgmt"
    left, near = _behindTap(vswitch, namespaces, "10.219.0.1/24", "--mgmt", str(mgmt),
                            "--port", f"cmd:vde_plug {right.sock}")
    waitForPing(near, "10.219.0.2", timeout=20)
    first = COMMAND.search(console(mgmt, "port/print"))
    assert first is not None and first.group(1) == f"vde_plug {right.sock}", left.logText()
    os.kill(int(first.group(2)), signal.SIGKILL)

    def restarted() -> bool:
        again = COMMAND.search(console(mgmt, "port/print"))
        return again is not None and again.group(2) != first.group(2)

    waitFor(restarted, timeout=20, what="vde_plug started again")
    waitForPing(near, "10.219.0.2", timeout=20)
    assert ping(near, "10.219.0.2").returncode == 0
    assert "the command was killed by signal 9 (SIGKILL)" in left.logText(), left.logText()
    assert "Traceback" not in left.logText(), left.logText()


def test_aCommandInAnotherNamespaceReachesVdeSwitch(vswitch, processes, namespaces,
                                                    shortdir) -> None:
    """
    cmd:ip netns exec NS vde_plug SOCK, as through ssh: vtwisted reaches a
    C vde_switch from a command run in another namespace, and the
    namespaces behind the two switches ping each other.
    """
    need("vde_switch")
    sock, tap = shortdir / "csw", uniqueName("vtc")
    processes.start(["vde_switch", "-s", str(sock), "-t", tap], stdin=subprocess.PIPE)
    waitFor(lambda: (sock / "ctl").exists(), what="vde_switch")
    far = namespaces.add("vtc")
    waitFor(lambda: subprocess.run(["ip", "link", "show", tap], capture_output=True)
            .returncode == 0, what=f"{tap}")
    moveTap(tap, far, "10.219.1.2/24")
    hop = namespaces.add("vtc")
    left, near = _behindTap(vswitch, namespaces, "10.219.1.1/24",
                            "--port", f"cmd:ip netns exec {hop} vde_plug {sock}")
    waitForPing(near, "10.219.1.2", timeout=20)
    assert "Traceback" not in left.logText(), left.logText()


def test_aFailingCommandIsLoggedOnceAndTriedAgainLessAndLessOften(vswitch, shortdir) -> None:
    """
    A command that cannot reach its switch: what it says and how it ended
    are logged once, though it is started again and again, with a growing
    backoff (a run that never carried a frame is a failed attempt), and
    the switch carries on.
    """
    mgmt, runs = shortdir / "mgmt", shortdir / "runs"
    sw = vswitch("--mgmt", str(mgmt), "--port",
                 f"cmd:sh -c 'echo run >> {runs}; exec vde_plug /nonexistent/sw'")
    waitFor(lambda: runs.exists(), timeout=15, what="the command's first run")
    time.sleep(8)
    count = len(runs.read_text().split())
    assert 3 <= count <= 8, f"{count} runs in 8 s"
    log = sw.logText()
    assert log.count("the command says: vde_open /nonexistent/sw: No such file or "
                     "directory") == 1, log
    assert log.count("the command exited with status 1 before it carried a frame") == 1, log
    assert sw.process.poll() is None and "Port" in console(mgmt, "port/allprint")


def test_aCommandThatIgnoresTheEndIsKilledWithWhatItStarted(vswitch) -> None:
    """
    A command that ignores the end of its input and TERM, and started a
    child that does too, does not hold the switch's stop: its whole process
    group gets KILL 6 s after the pipes closed, and the switch exits.
    """
    marker = f"sleep 61.{os.getpid()}"
    sw = vswitch("--port", f"cmd:sh -c 'trap \"\" TERM; {marker} & wait'")

    def running() -> bool:
        return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0

    waitFor(running, timeout=15, what="the command's child")
    started = time.monotonic()
    sw.process.send_signal(signal.SIGTERM)
    sw.process.wait(timeout=30)
    assert time.monotonic() - started < 15
    waitFor(lambda: not running(), timeout=5, what="the command's child gone")


def test_whatACommandStartedEndsWithIt(vswitch) -> None:
    """
    A command that ends at the end of its input but left a child running:
    the switch's stop waits for that child too and ends it (TERM to the
    command's process group).
    """
    marker = f"sleep 62.{os.getpid()}"
    sw = vswitch("--port", f"cmd:sh -c '{marker} >/dev/null 2>&1 & exec cat'")

    def running() -> bool:
        return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0

    waitFor(running, timeout=15, what="the command's child")
    sw.process.send_signal(signal.SIGTERM)
    sw.process.wait(timeout=30)
    assert not running(), "the child outlived the switch"


def test_aCommandDeletedAsSoonAsAddedDoesNotOutliveItsPort(vswitch, shortdir) -> None:
    """
    port/del right after port/add of a cmd: port whose command ignores the
    end of its input: the command had no session of its own yet when it
    was stopped (it makes it once it runs), yet it gets TERM like any
    other and none is left running, however often this is done (before,
    some of them ran on, forgotten by the switch).
    """
    mgmt = shortdir / "mgmt"
    vswitch("--mgmt", str(mgmt))
    marker = f"sleep 64.{os.getpid()}"
    spec = f"cmd:{marker}"
    for _ in range(10):
        replies = console(mgmt, f"port/add {spec}", f"port/del {spec}")
        assert replies.count("1000 Success") == 2, replies

    def running() -> bool:
        return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0

    waitFor(lambda: not running(), timeout=15, what="every command gone")
