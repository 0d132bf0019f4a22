"""
C{tap:NAME:netns=NS}: the switch moves each TAP device it opens into a
network namespace itself (an C{ip netns} name, or a process's
C{/proc/PID/ns/net}), brings it up there unless C{up=off}, and the kernels
in those namespaces talk through it; a deleted namespace takes its port
down and nothing else; what cannot be done fails with a clear error and
leaves no device behind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import need, needRoot, run, uniqueName, waitFor
from taphelpers import console, deviceExists, ping, quietNamespace, waitForPing

pytestmark = pytest.mark.integration

NET = "10.214.7"


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("ping", "ip", "nsenter", "unshare")


def _flags(device: str, *where: str) -> str:
    """The flags C{ip link} shows for C{device}, e.g. C{BROADCAST,MULTICAST,UP,LOWER_UP}."""
    out = run(*where, "ip", "-o", "link", "show", device).stdout
    return out.split("<", 1)[1].split(">", 1)[0]


def _processNamespace(processes) -> tuple[int, list[str]]:
    """
    A process alone in a new network namespace; its PID and the command
    prefix that runs a command there.
    """
    process = processes.start(["unshare", "-n", "sleep", "120"])
    pid = process.pid
    waitFor(lambda: os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"),
            what="unshare's namespace")
    return pid, ["nsenter", "-t", str(pid), "-n"]


def test_switchMovesItsTapsIntoNamespaces(vswitch, processes, namespaces,
                                          shortdir: Path) -> None:
    """
    Two TAPs land in a named namespace and in a process's one, up or not as
    asked; their kernels ping each other; port/allprint says where they are.
    """
    ns = quietNamespace(namespaces, "vtn")
    pid, inProcess = _processNamespace(processes)
    tapA, tapB = uniqueName("vtn"), uniqueName("vtn")
    mgmt = shortdir / "mgmt"
    vswitch("--mgmt", str(mgmt), "--port", f"tap:{tapA}:netns={ns}",
            "--port", f"tap:{tapB}:netns=/proc/{pid}/ns/net:up=off")
    assert not deviceExists(tapA) and not deviceExists(tapB), "nothing is left in the root"
    assert deviceExists(tapA, ns)
    assert "UP" in _flags(tapA, "ip", "netns", "exec", ns).split(",")
    assert "UP" not in _flags(tapB, *inProcess).split(","), "up=off"
    run(*inProcess, "ip", "link", "set", tapB, "up")
    run("ip", "-n", ns, "addr", "add", f"{NET}.1/24", "dev", tapA)
    run(*inProcess, "ip", "addr", "add", f"{NET}.2/24", "dev", tapB)
    waitForPing(ns, f"{NET}.2")
    result = ping(ns, f"{NET}.2")
    assert result.returncode == 0, result.stdout
    ports = console(mgmt, "port/allprint")
    assert f"{tapA} in netns {ns} offload=csum," in ports, ports
    assert f"{tapB} in netns /proc/{pid}/ns/net offload=" in ports, ports


def test_deletedNamespaceTakesOnlyItsPortDown(vswitch, namespaces, shortdir: Path) -> None:
    """
    Deleting a namespace (the switch holds nothing that keeps it) destroys
    its device: that port goes down and says so, the other carries on, and
    adding the port again says the namespace is gone.
    """
    gone, kept = quietNamespace(namespaces, "vtn"), quietNamespace(namespaces, "vtn")
    tapGone, tapKept = uniqueName("vtn"), uniqueName("vtn")
    mgmt = shortdir / "mgmt"
    sw = vswitch("--mgmt", str(mgmt), "--port", f"tap:{tapGone}:netns={gone}",
                 "--port", f"tap:{tapKept}:netns={kept}")
    run("ip", "netns", "del", gone)
    waitFor(lambda: "the device is gone, the port goes down" in sw.logText(),
            what="the port going down")
    assert f"tap:{tapGone}:netns={gone}: watching {tapGone} failed" in sw.logText()
    ports = console(mgmt, "port/allprint")
    assert f"{tapKept} in netns {kept}" in ports and tapGone not in ports, ports
    reply = console(mgmt, f"port/add tap:{tapGone}:netns={gone}")
    assert f"cannot open network namespace {gone} (/run/netns/{gone})" in reply, reply
    assert f"create it with 'ip netns add {gone}'" in reply, reply
    assert sw.process.poll() is None


def test_nameTakenInTheNamespaceLeavesNoDevice(vswitch, namespaces) -> None:
    """
    A namespace that has an interface of the TAP's name already refuses
    the move: the switch says so and the device it made is gone again.
    """
    ns = quietNamespace(namespaces, "vtn")
    name = uniqueName("vtn")
    run("ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", uniqueName("vtn"))
    sw = vswitch("--port", f"tap:{name}:netns={ns}", wait=False)
    try:
        sw.process.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the switch kept running:\n{sw.logText()}") from None
    assert sw.process.returncode != 0
    log = sw.logText()
    assert (f"tap:{name}:netns={ns}: cannot move TAP device {name} into network namespace "
            f"{ns} (/run/netns/{ns}): File exists (errno 17)") in log, log
    assert not deviceExists(name), "the TAP the switch made is closed again"
    assert "veth" in run("ip", "-n", ns, "-d", "link", "show", name).stdout
