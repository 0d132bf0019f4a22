"""
The switch as a real unprivileged user runs it (a user made for the test,
see L{unprivileged}): a TAP device made for it by following the switch's
own advice, a slirp forward on a privileged port refused saying why, and a
root-started switch that keeps its privileged manhole port after
C{twistd --uid} hands it to that user.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import run, socketListening, sourceEnv, twistdArgv, uniqueName, waitFor
from taphelpers import deviceExists
from unprivileged import ThrowawayUser

pytestmark = pytest.mark.integration


def runAs(user: ThrowawayUser, *switchArgs: str) -> subprocess.CompletedProcess[str]:
    """A switch that is expected to fail start-up, run as C{user}."""
    return subprocess.run(user.argv(*twistdArgv(*switchArgs)), capture_output=True, text=True,
                          timeout=60, env=user.env(sourceEnv()))


def test_theTapAdviceFollowedByRootLetsTheUserOpenTheDevice(user, processes, shortdir) -> None:
    """
    The user's switch cannot make a TAP device; its message gives the exact
    command for root, naming the user (not C{$USER}, root's own name in a
    root shell).  Run as it stands, it makes a device the switch then opens
    with offloads, without root.
    """
    name = uniqueName("vtu")
    failed = runAs(user, "--sock", str(user.home / "a"), "--tap", name)
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert f"tap:{name}: cannot open TAP device {name}" in output, output
    assert "Operation not permitted (errno 1)" in output, output
    advice = output.split("as root, ", 1)[1].splitlines()[0]
    assert advice == f"ip tuntap add {name} mode tap user {user.name}", output
    try:
        run(*shlex.split(advice))
        log = user.home / "switch.log"
        sock = user.home / "b"
        processes.start(user.argv(*twistdArgv("--sock", str(sock), "--tap", name,
                                              logfile=str(log))),
                        env=user.env(sourceEnv()))
        waitFor(lambda: socketListening(sock / "ctl"), what="the user's switch")
        waitFor(lambda: "offload=none (auto: no other port takes super-frames)" in log.read_text(),
                what="the TAP, its offloads negotiated and turned off (alone, auto)")
        assert os.stat(sock / "ctl").st_uid == user.uid
    finally:
        processes.stopAll()
        run("ip", "tuntap", "del", name, "mode", "tap", check=False)
    assert not deviceExists(name)


def _privilegedPortFree() -> int:
    """A port below 1024 that root can bind on 127.0.0.1 just now."""
    for port in range(940, 1000):
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            probe.close()
    pytest.skip("no free port below 1024")


def test_aForwardFromAPrivilegedPortSaysWhichPortAndWhy(user) -> None:
    """
    A slirp forward from port 80 as the user stops start-up with the port,
    the errno and what would allow it; nothing is left behind.
    """
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    port = _privilegedPortFree()
    if port >= start:
        pytest.skip(f"net.ipv4.ip_unprivileged_port_start is {start}: port {port} is not "
                    "privileged here")
    sock = user.home / "s"
    failed = runAs(user, "--sock", str(sock), "--port", f"slirp:hostfwd=tcp\\:\\:{port}-\\:22")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert (f"cannot forward tcp:127.0.0.1:{port}-10.0.2.15:22: Permission denied (errno 13); "
            f"ports below {start} need root or CAP_NET_BIND_SERVICE") in output, output
    assert "twistd --uid" in output, output
    assert not sock.exists()


def test_aManholeOnAPrivilegedPortOutlivesTwistdUid(user, processes, shortdir) -> None:
    """
    Started as root with C{twistd --uid}, the manhole binds its port below
    1024 before privileges go (as the ports do), then serves SSH as the user.
    """
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(shortdir / "id")], check=True, timeout=30)
    port = _privilegedPortFree()
    sock = user.home / "m"
    log = user.home / "manhole.log"
    argv = twistdArgv("--sock", str(sock), "--manhole", f"tcp:{port}:interface=127.0.0.1",
                      "--manhole-keys", str(shortdir / "id.pub"),
                      "--manhole-host-key", str(shortdir / "host_key"), logfile=str(log))
    at = argv.index("vswitch")
    argv[at:at] = ["--uid", str(user.uid), "--gid", str(user.gid)]
    process = processes.start(argv, env=sourceEnv())
    waitFor(lambda: socketListening(sock / "ctl") or process.poll() is not None,
            what="the switch")
    assert process.poll() is None, log.read_text()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as ssh:
        assert ssh.recv(64).startswith(b"SSH-2.0-"), log.read_text()
    status = (Path("/proc") / str(process.pid) / "status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {str(user.uid)}, status
