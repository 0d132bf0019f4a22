"""
Real QEMU guests (tests/guest.py: Debian kernel + busybox, TCG) on
C{twistd vswitch} through vhost-user: the guest's RAM is a shared memfd
(C{memory-backend-memfd,share=on}) and its virtio-net queues are served by
the switch's C{vhostuser:} port.

QEMU 7.2 under TCG crashes (a null pointer in its MSI-X vector set-up)
when a vhost-user NIC starts with MSI-X, so the NIC here has
C{vectors=0} (legacy interrupts); under KVM that is not needed.

Addresses are in private test /24s that exist only on the switch the test
started and in the namespaces it made.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest
from guest import outageScript, startGuest, waitAll
from helpers import execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import _CLIENT, PYTHON, console, moveTap, quietNamespace

pytestmark = pytest.mark.integration

#: The NIC: virtio-net, legacy interrupts (see the module docstring).
NIC = "virtio-net-pci,vectors=0"
LINK = re.compile(r"module vhost-user\s*: qemu-system-x86 pid \d+")
COUNTERS = re.compile(r"Port (\d+) .*?IN:\s+pkts\s+(\d+)\s+bytes\s+(\d+).*?OUT:\s+pkts\s+(\d+)"
                      r"\s+bytes\s+(\d+)", re.S)


@pytest.fixture(autouse=True)
def _needs() -> None:
    need("qemu-system-x86_64")


def vhostArgs(socketPath: Path, memory: int = 256,
              server: bool = False) -> tuple[list[str], list[str]]:
    """
    The -netdev and extra arguments of a guest on a vhost-user socket.
    """
    chardev = f"socket,id=c0,path={socketPath}" + (",server=on,wait=off" if server else "")
    netdev = ["-chardev", chardev, "-netdev", "vhost-user,id=n0,chardev=c0"]
    extra = ["-object", f"memory-backend-memfd,id=mem0,size={memory}M,share=on",
             "-machine", "memory-backend=mem0"]
    return netdev, extra


def switchWithNamespace(vswitch, namespaces, shortdir: Path, address: str,
                        spec: str = "vhostuser:unix:{path}", mtu: int = 1500) -> tuple:
    """
    A switch with a vhost-user port (socket C{shortdir/vhost.sock}) and a
    TAP moved into a new namespace as C{address} (with C{mtu}): the switch,
    the namespace, the console socket and the vhost-user socket.
    """
    needRoot()
    mgmt, path = shortdir / "mgmt", shortdir / "vhost.sock"
    tap = uniqueName("tvh")
    sw = vswitch("--mgmt", str(mgmt), "--port", spec.format(path=path), "--port", f"tap:{tap}")
    ns = quietNamespace(namespaces, "vtwvh")
    moveTap(tap, ns, address)
    run(*execIn(ns, "ip", "link", "set", tap, "mtu", str(mtu)))
    return sw, ns, mgmt, path


def pingScript(address: str, *targets: str) -> str:
    """
    Bring eth0 up as C{address}/24 and ping each target three times once it answers.
    """
    lines = [f"ip addr add {address}/24 dev eth0", "ip link set eth0 up", "rc=0"]
    for target in targets:
        lines += [f"n=0; until ping -c 1 -W 1 {target} >/dev/null 2>&1; do",
                  "  n=$((n + 1)); [ $n -ge 40 ] && break; done",
                  f"ping -c 3 -i 0.2 -W 2 {target} || rc=1"]
    return "\n".join([*lines, "sleep 3", "exit $rc", ""])


def test_guestsOnVhostUserPingEachOtherAndANamespace(vswitch, processes, namespaces,
                                                     shortdir) -> None:
    """
    Two guests connect to one vhostuser: socket, each on a port of its own
    (port/allprint shows both QEMU processes), and ping each other and a
    namespace behind the switch's TAP.
    """
    sw, ns, mgmt, path = switchWithNamespace(vswitch, namespaces, shortdir, "10.211.9.1/24")
    netdev, extra = vhostArgs(path)
    guests = [
        startGuest(processes, netdev, pingScript(address, "10.211.9.1", peer), mac,
                   directory=shortdir, name=name, nic=NIC, extraArgs=extra)
        for name, address, peer, mac in (
            ("left", "10.211.9.2", "10.211.9.3", "52:54:00:76:75:01"),
            ("right", "10.211.9.3", "10.211.9.2", "52:54:00:76:75:02"))
    ]
    waitFor(lambda: len(LINK.findall(console(mgmt, "port/allprint"))) == 2, timeout=30,
            what="both QEMU processes on the switch")
    results = waitAll(guests, timeout=120)
    for guest, result in zip(guests, results):
        print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
        assert result.rc == 0, guest.diagnostics() + sw.logText()
        assert result.output.count("3 packets received") == 2, guest.diagnostics()
    assert "Traceback" not in sw.logText(), sw.logText()


@pytest.mark.parametrize(("nicOption", "portOption", "packed"), [
    ("", "", False), (",packed=on", ":packed=on", True), (",packed=on", "", False)])
def test_tcpCrossesAsSuperFramesBothWays(vswitch, processes, namespaces, shortdir,
                                         nicOption: str, portOption: str, packed: bool) -> None:
    """
    3 MB from a namespace to the guest and 3 MB back, SHA-256 checked; the
    guest's port counts fewer frames than 1514-byte frames would take: the
    guest sends and receives TCP super-frames (TSO) through the rings, split
    or packed.  A NIC with C{packed=on} gets packed rings only from a port
    with C{packed=on} (port/print says so, and the guest's features); from
    any other it gets split rings.
    """
    sw, ns, mgmt, path = switchWithNamespace(vswitch, namespaces, shortdir, "10.211.10.1/24",
                                             spec="vhostuser:unix:{path}" + portOption)
    sink = processes.start(execIn(ns, PYTHON, "-c", SINK, "10.211.10.1", "7400"),
                           stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    script = (pingScript("10.211.10.2", "10.211.10.1").replace("sleep 3\nexit $rc\n", "")
              + "echo \"features $(cat /sys/class/net/eth0/device/features)\"\n"
              + "nc -l -p 7300 < /dev/null > /tmp/got & nc=$!\n"
              + "echo VTW-LISTENING\nwait $nc\n"
              + "echo \"got $(wc -c < /tmp/got) $(sha256sum < /tmp/got | cut -d' ' -f1)\"\n"
              + "dd if=/dev/urandom of=/tmp/out bs=65536 count=48 2>/dev/null\n"
              + "echo \"sent $(wc -c < /tmp/out) $(sha256sum < /tmp/out | cut -d' ' -f1)\"\n"
              + "nc 10.211.10.1 7400 < /tmp/out\nexit $rc\n")
    netdev, extra = vhostArgs(path)
    nic = NIC + nicOption
    guest = startGuest(processes, netdev, script, "52:54:00:76:75:03", directory=shortdir,
                       name="bulk", nic=nic, extraArgs=extra)
    waitFor(lambda: guest.sawLine("VTW-LISTENING") or guest.process.poll() is not None,
            timeout=90, what="the guest's listener")
    shown = console(mgmt, "port/allprint")
    assert ("packed rings" in shown) == packed, shown
    sent = run(*execIn(ns, PYTHON, "-c", _CLIENT, "10.211.10.2", "7300", "5", str(3 << 20)),
               timeout=120)
    result = guest.wait(180)
    print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
    assert result.rc == 0, guest.diagnostics() + sw.logText()
    features = re.search(r"features ([01]{64})", result.output)
    assert features is not None and features.group(1)[34] == str(int(packed))
    assert f"got {sent.stdout.strip()}" in result.output, guest.diagnostics()
    back = re.search(r"sent (\d+ [0-9a-f]{64})", result.output)
    assert back is not None, result.output
    assert sink.stdout.readline().strip() == back.group(1)
    counters = {int(m[0]): tuple(map(int, m[1:])) for m in
                COUNTERS.findall(console(mgmt, "port/allprint"))}
    inFrames, inBytes, outFrames, outBytes = counters[2]
    print(counters)
    # frames of at most 1518 bytes (a 1500-byte MTU, a VLAN tag) cannot average
    # more; how far above depends on the guest's speed under TCG (TCP sends
    # smaller super-frames to a slow receiver) and on how many ACKs it sends
    assert inBytes > 3 << 20 and inBytes / inFrames > 1518, "guest TSO: super-frames in"
    assert outBytes > 3 << 20 and outBytes / outFrames > 1518, "super-frames to the guest"
    assert "Traceback" not in sw.logText(), sw.logText()


#: A TCP sink: prints "ready", then the length and SHA-256 of one connection's bytes.
SINK = r"""
import hashlib, socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while chunk := c.recv(1 << 20):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""


def test_theSwitchConnectsToAListeningQemuAndItsPortGoesWithIt(vswitch, processes, namespaces,
                                                               shortdir) -> None:
    """
    With vhostuser:connect:unix: the switch connects to QEMU's listening
    socket (server=on), the guest pings a namespace behind the switch's
    TAP, and when QEMU exits its port is freed.
    """
    path = shortdir / "vhost.sock"
    netdev, extra = vhostArgs(path, server=True)
    guest = startGuest(processes, netdev, pingScript("10.211.11.2", "10.211.11.1"),
                       "52:54:00:76:75:04", directory=shortdir, name="server", nic=NIC,
                       extraArgs=extra)
    waitFor(lambda: path.exists(), timeout=30, what="QEMU's socket")
    sw, _, mgmt, _ = switchWithNamespace(vswitch, namespaces, shortdir, "10.211.11.1/24",
                                         "vhostuser:connect:unix:{path}")
    waitFor(lambda: len(LINK.findall(console(mgmt, "port/allprint"))) == 1, timeout=30,
            what="the switch connected to QEMU")
    result = guest.wait(90)
    print(result.output)
    assert result.rc == 0 and "3 packets received" in result.output, guest.diagnostics()
    waitFor(lambda: not LINK.findall(console(mgmt, "port/allprint")), timeout=30,
            what="the port freed")
    assert "Traceback" not in sw.logText(), sw.logText()


def test_theSwitchDialsAQemuListeningOnAnAbstractName(vswitch, processes, namespaces,
                                                     shortdir) -> None:
    """
    QEMU's vhost-user chardev listens on a Linux abstract name
    (C{-chardev socket,path=NAME,abstract=on,server=on}); the switch dials
    it with C{vhostuser:connect:unix:NAME:abstract=on}, port/print shows
    the guest C{on @NAME}, the guest pings a namespace behind the switch's
    TAP, and no file appears.
    """
    name = f"vtw-{uniqueName('vha')}-{secrets.token_hex(6)}"
    netdev, extra = vhostArgs(Path(name), server=True)
    netdev[1] += ",abstract=on"
    guest = startGuest(processes, netdev, pingScript("10.211.15.2", "10.211.15.1"),
                       "52:54:00:76:75:08", directory=shortdir, name="abstract", nic=NIC,
                       extraArgs=extra)
    waitFor(lambda: f"@{name}" in run("ss", "-xlH").stdout or guest.process.poll() is not None,
            timeout=30, what="QEMU listening on the abstract name")
    sw, _, mgmt, _ = switchWithNamespace(vswitch, namespaces, shortdir, "10.211.15.1/24",
                                         f"vhostuser:connect:unix:{name}:abstract=on")
    waitFor(lambda: len(LINK.findall(console(mgmt, "port/allprint"))) == 1, timeout=30,
            what="the switch connected to QEMU")
    shown = console(mgmt, "port/allprint")
    result = guest.wait(90)
    print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}\n{shown}")
    assert result.rc == 0 and "3 packets received" in result.output, guest.diagnostics()
    assert f"qemu-system-x86 pid {guest.process.pid} on @{name}\n" in shown, shown
    assert not (shortdir / name).exists() and not Path(name).exists()
    assert "Traceback" not in sw.logText(), sw.logText()


def test_aGuestGetsItsNetworkBackWhenTheSwitchRestarts(vswitch, processes, namespaces,
                                                       shortdir) -> None:
    """
    QEMU with C{reconnect=1} on its vhost-user socket: when the switch
    stops the guest loses its network, and when a new switch listens on
    the same path QEMU connects again, hands it the running rings, and the
    guest pings again.
    """
    needRoot()
    path = shortdir / "vhost.sock"
    netdev, extra = vhostArgs(path)
    netdev[1] += ",reconnect=1"
    ns = quietNamespace(namespaces, "vtwvr")
    guest = None
    for step in ("VTW-UP", "VTW-BACK"):
        tap = uniqueName("tvr")
        sw = vswitch("--port", f"vhostuser:unix:{path}", "--port", f"tap:{tap}")
        moveTap(tap, ns, "10.211.12.1/24")
        # the same address both times, or the guest waits out its ARP cache
        run("ip", "-n", ns, "link", "set", tap, "address", "02:00:00:76:75:99")
        if guest is None:
            guest = startGuest(processes, netdev, outageScript("10.211.12.2", "10.211.12.1"),
                               "52:54:00:76:75:05",
                               directory=shortdir, name="restart", nic=NIC, extraArgs=extra)
        waitFor(lambda step=step, g=guest: g.sawLine(step) or g.process.poll() is not None,
                timeout=60, what=f"{step} from the guest")
        if step == "VTW-UP":
            processes.stop(sw.process)
            waitFor(lambda g=guest: g.sawLine("VTW-DOWN") or g.process.poll() is not None,
                    timeout=30, what="the guest to notice")
    assert guest is not None
    result = guest.wait(30)
    print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
    assert result.rc == 0 and "VTW-BACK" in result.output, guest.diagnostics()
    assert "Traceback" not in sw.logText(), sw.logText()


def test_jumboFramesCrossWhole(vswitch, processes, namespaces, shortdir) -> None:
    """
    With MTU 9000 on both sides, 8972-byte pings that may not fragment
    cross both ways (each spans several of the guest's receive buffers).
    """
    sw, ns, _, path = switchWithNamespace(vswitch, namespaces, shortdir, "10.211.13.1/24",
                                          mtu=9000)
    netdev, extra = vhostArgs(path)
    script = ("ip link set eth0 mtu 9000\n" + pingScript("10.211.13.2", "10.211.13.1")
              .replace("ping -c 3 -i 0.2 -W 2 10.211.13.1",
                       "ping -c 3 -i 0.2 -W 2 -s 8972 10.211.13.1"))
    guest = startGuest(processes, netdev, script, "52:54:00:76:75:06", directory=shortdir,
                       name="jumbo", nic=NIC, extraArgs=extra)
    waitFor(lambda: guest.sawLine("packets received") or guest.process.poll() is not None,
            timeout=90, what="the guest's pings")
    back = run(*execIn(ns, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "8972",
                       "10.211.13.2"), check=False)
    result = guest.wait(60)
    print(result.output)
    assert result.rc == 0 and "3 packets received" in result.output, guest.diagnostics()
    assert "8980 bytes from" in result.output, result.output
    assert back.returncode == 0, back.stdout + back.stderr
    assert "Traceback" not in sw.logText(), sw.logText()


@pytest.mark.parametrize("packed", [False, True])
def test_aTwoQueueGuestUsesBothPairs(vswitch, processes, namespaces, shortdir,
                                     packed: bool) -> None:
    """
    A guest with two vCPUs on C{queues=2} (multiqueue), on split or packed
    rings: port/print shows 2 queue pairs in use, pings and 2 MB into the
    guest (SHA-256) work.
    """
    sw, ns, mgmt, path = switchWithNamespace(
        vswitch, namespaces, shortdir, "10.211.14.1/24",
        spec="vhostuser:unix:{path}" + (":packed=on" if packed else ""))
    netdev, extra = vhostArgs(path)
    netdev[3] += ",queues=2"
    script = (pingScript("10.211.14.2", "10.211.14.1").replace("sleep 3\nexit $rc\n", "")
              + "ls /sys/class/net/eth0/queues/\n"
              + "nc -l -p 7300 < /dev/null > /tmp/got & nc=$!\n"
              + "echo VTW-LISTENING\nwait $nc\n"
              + "echo \"got $(wc -c < /tmp/got) $(sha256sum < /tmp/got | cut -d' ' -f1)\"\n"
              + "exit $rc\n")
    guest = startGuest(processes, netdev, script, "52:54:00:76:75:07", directory=shortdir,
                       name="mq", nic=NIC + ",mq=on" + (",packed=on" if packed else ""),
                       extraArgs=[*extra, "-smp", "2"])
    waitFor(lambda: guest.sawLine("VTW-LISTENING") or guest.process.poll() is not None,
            timeout=120, what="the guest's listener")
    shown = console(mgmt, "port/allprint")
    sent = run(*execIn(ns, PYTHON, "-c", _CLIENT, "10.211.14.2", "7300", "5", str(2 << 20)),
               timeout=120)
    result = guest.wait(120)
    print(result.output)
    assert result.rc == 0, guest.diagnostics() + sw.logText()
    assert "rx-1" in result.output and "tx-1" in result.output, "the guest has two pairs"
    assert "2 queue pairs" in shown and ("packed rings" in shown) == packed, shown
    assert f"got {sent.stdout.strip()}" in result.output, guest.diagnostics()
    assert "Traceback" not in sw.logText(), sw.logText()
