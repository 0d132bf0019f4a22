"""
Real QEMU guests (tests/guest.py: Debian kernel + busybox, TCG) on
C{twistd vswitch} through QEMU's stream transports: C{-netdev stream} as a
client of the switch's socket, C{-netdev stream,server=on} that the switch
connects to, and the older C{-netdev socket,connect=} over TCP; and
through the datagram transports, C{-netdev dgram} and C{-netdev socket,udp=}.

Addresses are in private test /24s that exist only on the switch the test
started and in the namespace it made; TCP listens on 127.0.0.1 only.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from guest import assertGuestGotTheTransfer, outageScript, startGuest, waitAll
from helpers import execIn, freePorts, need, needRoot, run, uniqueName, waitFor
from taphelpers import _CLIENT, PYTHON, console, moveTap, quietNamespace
from test_qemu_vde import guestScript

pytestmark = pytest.mark.integration


QEMU_LINK = re.compile(r"module qemu stream\s*: qemu-system-x86 pid \d+")


def pairPinged(mgmt: str | Path, left: Any, right: Any) -> str:
    """
    Wait until both guests' QEMU processes have ports on the switch and
    each guest got its 3 pings answered by the other; C{port/allprint} as
    it was while both were there.
    """
    waitFor(lambda: len(QEMU_LINK.findall(console(mgmt, "port/allprint"))) == 2, timeout=30,
            what="both QEMU processes on the switch")
    ports = console(mgmt, "port/allprint")
    results = waitAll([left, right], timeout=60)
    for guest, result in zip((left, right), results):
        print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
        assert result.rc == 0, guest.diagnostics()
        assert "3 packets received" in result.output, guest.diagnostics()
    print(ports)
    return ports


def test_guestsOnStreamSocketsPingEachOther(vswitch, processes, shortdir) -> None:
    """
    One guest connects to the switch (C{-netdev stream}, the switch listens
    with C{qemu:unix:}), the other listens (C{server=on}) and the switch
    connects to it (C{qemu:connect:unix:}); they ping each other, and
    C{port/allprint} shows both QEMU processes.
    """
    need("qemu-system-x86_64")
    mgmt = shortdir / "mgmt"
    listening, guestSide = shortdir / "guests.sock", shortdir / "right.sock"
    sw = vswitch("--mgmt", str(mgmt), "--port", f"qemu:unix:{listening}",
                 "--port", f"qemu:connect:unix:{guestSide}")
    left = startGuest(
        processes,
        ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={listening}"],
        guestScript("10.211.6.1", "10.211.6.2", 4), "52:54:00:76:74:11",
        directory=shortdir, name="left",
    )
    right = startGuest(
        processes,
        ["-netdev", f"stream,id=n0,server=on,addr.type=unix,addr.path={guestSide}"],
        guestScript("10.211.6.2", "10.211.6.1", 4), "52:54:00:76:74:12",
        directory=shortdir, name="right",
    )
    ports = pairPinged(mgmt, left, right)
    assert f"on {listening}" in ports and f"on {guestSide}" in ports, ports
    for pid in (left.process.pid, right.process.pid):
        assert f"pid {pid}" in ports, ports
    assert sw.process.poll() is None


def test_legacySocketGuestGetsTapTrafficCutToItsMtu(vswitch, processes, namespaces,
                                                    shortdir) -> None:
    """
    A guest on C{-netdev socket,connect=127.0.0.1:PORT} (switch:
    C{qemu:tcp:PORT:interface=127.0.0.1}) and a namespace behind an offload
    TAP port: pings both ways, and 3 MB sent by the namespace, which the
    switch gets as TCP super-frames and cuts into frames for QEMU, reach
    the guest with the same SHA-256.
    """
    need("qemu-system-x86_64", "ping")
    needRoot()
    (port,) = freePorts(1)
    tap = uniqueName("tq")
    sw = vswitch("--port", f"qemu:tcp:{port}:interface=127.0.0.1",
                 "--port", f"tap:{tap}:offload=on")
    ns = quietNamespace(namespaces, "vtwqs")
    moveTap(tap, ns, "10.211.7.1/24")
    receive = ("nc -l -p 7300 < /dev/null > /tmp/got & nc=$!\n"
               "sleep 0.5\n")
    report = ("wait $nc\n"
              "echo \"got $(wc -c < /tmp/got) $(sha256sum < /tmp/got | cut -d' ' -f1)\"\n")
    script = guestScript("10.211.7.2", "10.211.7.1", 2, receive).replace(
        "echo \"echos received", report + "echo \"echos received")
    guest = startGuest(
        processes, ["-netdev", f"socket,id=n0,connect=127.0.0.1:{port}"], script,
        "52:54:00:76:74:13", directory=shortdir, name="legacy",
    )
    waitFor(lambda: guest.sawLine("VTW-READY") or guest.process.poll() is not None,
            timeout=60, what="the guest's pings")
    pings = subprocess.run(
        execIn(ns, "ping", "-c", "2", "-i", "0.2", "-s", "1472", "-M", "do", "-W", "2",
               "10.211.7.2"), capture_output=True, text=True, timeout=30,
    )
    sent = subprocess.run(execIn(ns, PYTHON, "-c", _CLIENT, "10.211.7.2", "7300", "5",
                                 str(3 << 20)), capture_output=True, text=True, timeout=120)
    assertGuestGotTheTransfer(guest, pings, sent)
    assert sw.process.poll() is None


def test_guestsOnDatagramSocketsPingEachOther(vswitch, processes, shortdir) -> None:
    """
    One guest on C{-netdev dgram} over Unix sockets (switch:
    C{dgram:unix:}), the other on the older C{-netdev socket,udp=} (switch:
    C{dgram:udp:}); they ping each other, jumbo frames included.
    """
    need("qemu-system-x86_64")
    switchPath, guestPath = shortdir / "sw.dgram", shortdir / "vm.dgram"
    switchPort, guestPort = freePorts(2, socket.SOCK_DGRAM)
    sw = vswitch("--port", f"dgram:unix:{switchPath}:{guestPath}",
                 "--port", f"dgram:udp:127.0.0.1:{switchPort}:127.0.0.1:{guestPort}")
    netdevs = (
        f"dgram,id=n0,local.type=unix,local.path={guestPath},"
        f"remote.type=unix,remote.path={switchPath}",
        f"socket,id=n0,udp=127.0.0.1:{switchPort},localaddr=127.0.0.1:{guestPort}",
    )
    guests = []
    for n, (name, me, peer) in enumerate((("du", "10.211.8.1", "10.211.8.2"),
                                          ("dp", "10.211.8.2", "10.211.8.1"))):
        jumbo = f"ping -c 1 -s 8972 -W 2 {peer} || rc=1"
        guests.append(startGuest(
            processes, ["-netdev", netdevs[n]], guestScript(me, peer, 5, jumbo, mtu=9000),
            f"52:54:00:76:74:2{n}", directory=shortdir, name=name,
        ))
    for guest, result in zip(guests, waitAll(guests, timeout=60)):
        print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
        assert result.rc == 0, guest.diagnostics()
        assert "3 packets received" in result.output, guest.diagnostics()
        assert "8980 bytes from" in result.output, guest.diagnostics()
    assert sw.process.poll() is None


def test_listeningGuestGetsItsNetworkBackWhenTheSwitchRestarts(vswitch, processes, namespaces,
                                                               shortdir) -> None:
    """
    With C{-netdev stream,server=on} and C{qemu:connect:}, a guest that
    lost its switch is reached again by the next one: QEMU listens again,
    the new switch connects.
    """
    need("qemu-system-x86_64", "ping")
    needRoot()
    guestSide = shortdir / "vm.sock"
    script = outageScript("10.211.10.2", "10.211.10.1")
    guest = startGuest(
        processes, ["-netdev", f"stream,id=n0,server=on,addr.type=unix,addr.path={guestSide}"],
        script, "52:54:00:76:74:31", directory=shortdir, name="restart",
    )
    ns = quietNamespace(namespaces, "vtwqr")
    for step in ("VTW-UP", "VTW-BACK"):
        tap = uniqueName("tr")
        sw = vswitch("--port", f"qemu:connect:unix:{guestSide}", "--port", f"tap:{tap}")
        moveTap(tap, ns, "10.211.10.1/24")
        # the same address both times, or the guest waits out its ARP cache
        run("ip", "-n", ns, "link", "set", tap, "address", "02:00:00:76:74:99")
        waitFor(lambda step=step: guest.sawLine(step) or guest.process.poll() is not None,
                timeout=60, what=f"{step} from the guest")
        if step == "VTW-UP":
            processes.stop(sw.process)
            waitFor(lambda: guest.sawLine("VTW-DOWN") or guest.process.poll() is not None,
                    timeout=30, what="the guest to notice")
    result = guest.wait(30)
    print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
    assert result.rc == 0 and "VTW-BACK" in result.output, guest.diagnostics()
