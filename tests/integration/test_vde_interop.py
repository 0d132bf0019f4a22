"""
Real VDE clients (Debian's vde_plug, vde_plug2tap, dpipe, vde_switch) against
C{twistd vswitch} started from this tree.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
from pathlib import Path

import pytest
from helpers import (
    StreamPlug,
    execIn,
    need,
    needRoot,
    run,
    socketListening,
    sourceEnv,
    twistdArgv,
    uniqueName,
    waitFor,
)

from vtwisted.testing import frame, mac

BROADCAST = b"\xff" * 6
DATA_SOCKET = re.compile(r"^\d{3,}\.\d+$")

pytestmark = pytest.mark.integration


def dataSockets(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if DATA_SOCKET.match(n))


def plugs(processes, sw, count: int, *suffixes: str) -> list[StreamPlug]:
    need("vde_plug")
    made = []
    before = len(dataSockets(sw.sock))
    for i in range(count):
        suffix = suffixes[i] if i < len(suffixes) else ""
        made.append(StreamPlug(processes, f"vde://{sw.sock}{suffix}"))
        expected = before + i + 1
        waitFor(lambda n=expected: len(dataSockets(sw.sock)) == n, what=f"client {i} attached")
    return made


def test_vdePlugClientsExchangeFrames(vswitch, processes) -> None:
    """Three vde_plug clients: broadcast reaches both others, unicast only its owner."""
    sw = vswitch()
    a, b, c = plugs(processes, sw, 3)
    hello = frame(BROADCAST, mac(1))
    a.send(hello)
    assert b.receive() == hello and c.receive() == hello
    reply = frame(mac(1), mac(2), b"reply".ljust(46, b"\0"))
    b.send(reply)
    assert a.receive() == reply
    assert c.quiet(0.5) == []


def test_requestedPortsAreGranted(vswitch, processes) -> None:
    """vde://DIR[5] gets port 5 and vde://DIR[0] port 0, as their socket names show."""
    sw = vswitch()
    plugs(processes, sw, 2, "[5]", "[0]")
    names = dataSockets(sw.sock)
    assert [n.split(".")[0] for n in names] == ["000", "005"]


def test_sockTakesAnyPath(vswitch, processes, shortdir) -> None:
    """
    --sock takes a directory whose name has the spec grammar's = and : in
    it, as vde_switch -s does, and vde_plug clients use it.
    """
    sw = vswitch(sock=shortdir / "lab=1:a")
    assert (shortdir / "lab=1:a" / "ctl").exists()
    a, b = plugs(processes, sw, 2)
    hello = frame(BROADCAST, mac(1))
    a.send(hello)
    assert b.receive() == hello


def test_jumboFrameCrossesWhole(vswitch, processes) -> None:
    """A 9000-byte payload crosses the switch unchanged (vde_switch would cut it)."""
    sw = vswitch()
    a, b = plugs(processes, sw, 2)
    jumbo = frame(BROADCAST, mac(1), os.urandom(9000))
    a.send(jumbo)
    assert b.receive() == jumbo


def test_defaultModesMatchVdeSwitch(vswitch) -> None:
    """The directory is 02700 and the control socket 0600, like vde_switch's defaults."""
    sw = vswitch()
    assert stat.S_IMODE(os.stat(sw.sock).st_mode) == 0o2700
    assert stat.S_IMODE(os.stat(sw.ctl).st_mode) == 0o600


def test_modeOptionOpensDirectoryToo(vswitch) -> None:
    """--mode 0660 gives a 0660 socket in a 02770 directory, as vde_switch -m does."""
    sw = vswitch("--mode", "0660")
    assert stat.S_IMODE(os.stat(sw.sock).st_mode) == 0o2770
    assert stat.S_IMODE(os.stat(sw.ctl).st_mode) == 0o660


def test_dirmodeOptionSetsTheDirectorysMode(vswitch) -> None:
    """--dirmode gives the --sock directory that mode and, with no --mode, its
    control socket the read and write bits of it, as vde_switch does."""
    sw = vswitch("--dirmode", "2750")
    assert stat.S_IMODE(os.stat(sw.sock).st_mode) == 0o2750
    assert stat.S_IMODE(os.stat(sw.ctl).st_mode) == 0o640


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigtermRemovesEverySocketFile(vswitch, processes, sig: int) -> None:
    """Stopping the switch (SIGTERM or SIGINT) removes its data sockets, its
    ctl and its directory."""
    sw = vswitch()
    a, b = plugs(processes, sw, 2)
    # twistd re-raises the signal after a clean shutdown, so the status says which
    assert processes.stop(sw.process, sig) in (0, -sig)
    assert "Main loop terminated" in sw.logText()
    assert not sw.sock.exists(), os.listdir(sw.sock)
    waitFor(lambda: a.exited() and b.exited(), what="clients to notice")


def test_liveControlSocketRefusesSecondSwitch(vswitch) -> None:
    """A second switch on a live directory fails with a clear message, removing nothing."""
    sw = vswitch()
    second = run(*twistdArgv("--sock", str(sw.sock)), check=False, timeout=60)
    output = second.stdout + second.stderr
    assert second.returncode != 0
    assert "another switch is listening" in output, output
    assert socketListening(sw.ctl)


def test_staleControlSocketIsReplaced(vswitch, shortdir) -> None:
    """A ctl left behind by a dead switch is replaced at start-up."""
    directory = shortdir / "stale"
    directory.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(directory / "ctl"))
    dead.close()
    sw = vswitch(sock=directory)
    assert socketListening(sw.ctl)


def test_badSpecFailsAtStartup() -> None:
    """An unknown port type stops start-up with a message naming the spec."""
    result = run(*twistdArgv("--port", "nosuch:thing"), check=False, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "nosuch:thing" in output and "unknown port type" in output, output


def test_dpipeCableJoinsRealVdeSwitch(vswitch, processes, shortdir) -> None:
    """dpipe vde_plug = vde_plug joins our switch and a real vde_switch into one LAN."""
    need("vde_switch", "dpipe", "vde_plug")
    ours = vswitch()
    theirs = shortdir / "c-switch"
    cswitch = processes.start(
        ["vde_switch", "-s", str(theirs)], stdin=__import__("subprocess").PIPE
    )
    waitFor(lambda: socketListening(theirs / "ctl"), what="vde_switch")
    processes.start(["dpipe", "vde_plug", f"vde://{ours.sock}", "=", "vde_plug", f"vde://{theirs}"])
    waitFor(lambda: len(dataSockets(ours.sock)) == 1, what="cable on our side")
    (left,) = plugs(processes, ours, 1)
    right = StreamPlug(processes, f"vde://{theirs}")
    waitFor(lambda: len(dataSockets(theirs)) == 2, what="client on vde_switch")
    hello = frame(BROADCAST, mac(10))
    left.send(hello)
    assert right.receiveMatching(lambda f: f == hello)
    back = frame(mac(10), mac(11))
    right.send(back)
    assert left.receiveMatching(lambda f: f == back)
    assert cswitch.poll() is None


def test_namespacesPingThroughTheSwitch(vswitch, processes, namespaces) -> None:
    """Two network namespaces behind vde_plug2tap and vde_plug tap:// ping each other."""
    need("vde_plug2tap", "vde_plug", "ping")
    needRoot()
    sw = vswitch()
    left, right = namespaces.add("vtwa"), namespaces.add("vtwb")
    tapA, tapB = uniqueName("ta"), uniqueName("tb")
    processes.start(execIn(left, "vde_plug2tap", "-s", str(sw.sock), tapA))
    processes.start(execIn(right, "vde_plug", f"vde://{sw.sock}", f"tap://{tapB}"))
    waitFor(lambda: len(dataSockets(sw.sock)) == 2, what="both taps attached")
    for ns, tap, address in ((left, tapA, "10.211.0.1/24"), (right, tapB, "10.211.0.2/24")):
        waitFor(lambda ns=ns, tap=tap: run("ip", "-n", ns, "link", "show", tap,
                                           check=False).returncode == 0,
                what=f"{tap} in {ns}")
        run("ip", "-n", ns, "addr", "add", address, "dev", tap)
        run("ip", "-n", ns, "link", "set", tap, "up")
    result = run(*execIn(left, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.211.0.2"),
                 check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    big = run(*execIn(left, "ping", "-c", "1", "-s", "1472", "-M", "do", "-W", "2",
                      "10.211.0.2"), check=False)
    assert big.returncode == 0, big.stdout


def test_defaultDirectoryIsWhereVdePlugLooks(processes) -> None:
    """With no options the switch listens where a bare vde_plug looks for it."""
    need("vde_plug")
    directory = Path("/var/run/vde.ctl" if os.geteuid() == 0 else "/tmp/vde.ctl")
    if socketListening(directory / "ctl"):
        pytest.skip(f"a switch already runs on {directory}")
    process = processes.start(twistdArgv(), env=sourceEnv())
    waitFor(lambda: socketListening(directory / "ctl"), what=f"switch on {directory}")
    client = StreamPlug(processes, "")
    other = StreamPlug(processes, f"vde://{directory}")
    waitFor(lambda: len(dataSockets(directory)) == 2, what="bare vde_plug attached")
    hello = frame(BROADCAST, mac(3))
    client.send(hello)
    assert other.receive() == hello
    assert processes.stop(process) in (0, -signal.SIGTERM)
    assert not directory.exists()


def test_sockNamingARegularFileFailsClearly(shortdir) -> None:
    """--sock naming a regular file stops start-up saying so, and leaves the file alone."""
    regular = shortdir / "plainfile"
    regular.write_text("keep me")
    before = os.stat(regular).st_mode
    result = run(*twistdArgv("--sock", str(regular)), check=False, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "is not a directory" in output and str(regular) in output, output
    assert os.stat(regular).st_mode == before and regular.read_text() == "keep me"


def test_groupOptionAppliesToDirectorySocketsAndDataSockets(vswitch, processes) -> None:
    """--group sets the group of the directory, the ctl and every data socket."""
    needRoot()
    import grp

    daemon = grp.getgrnam("daemon").gr_gid
    sw = vswitch("--group", "daemon", "--mode", "0660")
    plugs(processes, sw, 1)
    (name,) = dataSockets(sw.sock)
    for path in (sw.sock, sw.ctl, sw.sock / name):
        assert os.stat(path).st_gid == daemon, path


def test_unprivilegedClientOnRootSwitch(vswitch, processes) -> None:
    """With --mode 0666 a non-root vde_plug joins a root switch and owns its data socket."""
    needRoot()
    need("setpriv", "vde_plug")
    sw = vswitch("--mode", "0666")
    os.chmod(sw.sock.parent, 0o755)  # mkdtemp made it 0700
    nobody = StreamPlug(
        processes,
        f"vde://{sw.sock}",
        wrapper=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    )
    waitFor(lambda: len(dataSockets(sw.sock)) == 1, what="nobody's client attached")
    (name,) = dataSockets(sw.sock)
    info = os.stat(sw.sock / name)
    assert info.st_uid == 65534
    # we chmod it 0666 & 0700; the client, now its owner, chmods it to its own 0700
    assert stat.S_IMODE(info.st_mode) == 0o700
    (root,) = plugs(processes, sw, 1)
    hello = frame(BROADCAST, mac(5))
    root.send(hello)
    assert nobody.receive() == hello


def test_killedClientFreesItsPort(vswitch, processes) -> None:
    """A vde_plug killed with SIGKILL loses its port and socket file; others go on."""
    sw = vswitch()
    a, b, c = plugs(processes, sw, 3)
    victim = dataSockets(sw.sock)[1]
    b.process.kill()
    waitFor(lambda: victim not in dataSockets(sw.sock), what="killed client's socket removed")
    hello = frame(BROADCAST, mac(1))
    a.send(hello)
    assert c.receive() == hello


def test_slirpvdeServesDhcpThroughTheSwitch(vswitch, processes, namespaces) -> None:
    """slirpvde on our switch gives a namespace behind vde_plug tap:// a DHCP lease."""
    needRoot()
    need("slirpvde", "vde_plug", "busybox")
    sw = vswitch()
    processes.start(["slirpvde", "--dhcp", "-s", str(sw.sock)])
    ns = namespaces.add("vtws")
    tap = uniqueName("ts")
    processes.start(execIn(ns, "vde_plug", f"vde://{sw.sock}", f"tap://{tap}"))
    waitFor(lambda: len(dataSockets(sw.sock)) == 2, what="slirpvde and the tap attached")
    waitFor(lambda: run("ip", "-n", ns, "link", "show", tap, check=False).returncode == 0,
            what="tap")
    run("ip", "-n", ns, "link", "set", tap, "up")
    lease = run(*execIn(ns, "busybox", "udhcpc", "-i", tap, "-n", "-q", "-t", "5", "-T", "1",
                        "-s", "/bin/true"), check=False, timeout=60)
    output = lease.stdout + lease.stderr
    assert lease.returncode == 0, output
    assert "10.0.2." in output, output


def test_tacFileBuildsTheSameSwitch(processes, shortdir) -> None:
    """twistd -ny etc/vswitch.tac runs a switch that vde_plug clients use."""
    need("vde_plug")
    directory = shortdir / "tac"
    env = sourceEnv()
    env["VSWITCH_SOCK"] = str(directory)
    argv = twistdArgv()[:-1]  # the same twistd, without the "vswitch" subcommand
    argv[argv.index("-n")] = "-ny"
    argv.insert(argv.index("-ny") + 1, str(Path(__file__).parents[2] / "etc" / "vswitch.tac"))
    process = processes.start(argv, env=env)
    waitFor(lambda: socketListening(directory / "ctl"), what="the .tac switch")
    assert stat.S_IMODE(os.stat(directory / "ctl").st_mode) == 0o660
    a, b = StreamPlug(processes, f"vde://{directory}"), StreamPlug(processes, f"vde://{directory}")
    waitFor(lambda: len(dataSockets(directory)) == 2, what="clients")
    hello = frame(BROADCAST, mac(9))
    a.send(hello)
    assert b.receive() == hello
    processes.stop(process)
    assert not directory.exists()


def test_clientJoiningASharedPortKeepsItsConsoleSettings(vswitch, processes, shortdir) -> None:
    """
    A second client joining port 5 of a vde:DIR:vlan=10 spec leaves the
    VLAN and delay the console gave the port meanwhile, as vde_switch does.
    """
    from taphelpers import console

    need("vde_plug")
    mgmt, shared = shortdir / "mgmt", shortdir / "shared"
    vswitch("--mgmt", str(mgmt), "--port", f"vde:{shared}:vlan=10")
    first = StreamPlug(processes, f"vde://{shared}[5]")
    waitFor(lambda: "untagged_vlan=0010 ACTIVE" in console(mgmt, "port/print 5"),
            what="the first client on port 5")
    console(mgmt, "vlan/create 20", "port/setvlan 5 20", "port/impair 5 delay=30")
    second = StreamPlug(processes, f"vde://{shared}[5]")
    waitFor(lambda: console(mgmt, "port/print 5").count("endpoint ID") == 2,
            what="the second client on port 5")
    assert "untagged_vlan=0020 ACTIVE" in console(mgmt, "port/print 5")
    assert "impairment: delay 30 ms" in console(mgmt, "port/stats 5")
    assert first.process.poll() is None and second.process.poll() is None


def test_socketsOfAKilledSwitchGoAtTheNextStop(vswitch, processes) -> None:
    """
    A switch killed (SIGKILL) with clients leaves their data sockets; the
    next switch on the directory removes them at start, so that its stop
    leaves nothing (vde_switch leaves them, and the directory, for ever).
    """
    sw = vswitch()
    plugs(processes, sw, 2)
    left = dataSockets(sw.sock)
    sw.process.kill()
    sw.process.wait(10)
    assert dataSockets(sw.sock) == left
    again = vswitch(sock=sw.sock)
    assert dataSockets(sw.sock) == []
    assert f"removed 2 data sockets a switch left in {sw.sock}" in again.logText()
    processes.stop(again.process)
    assert not sw.sock.exists()
