"""
QEMU's stream transports over IPv6 loopback (C{::1}), with the address
written in a spec as the endpoint grammar wants it (C{host=\\:\\:1}), and
the same spec with the colons left bare, which Twisted would have read as
a connection to port 1 of this host: the switch refuses it at start-up
and says how to write it.

Only the loopback address is used; the guests' addresses are in a private
test /24 that exists only on the switch the test started.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from guest import startGuest, waitAll
from helpers import freePorts, need, sourceEnv, twistdArgv, waitFor
from taphelpers import console
from test_qemu_vde import guestScript

pytestmark = pytest.mark.integration

#: A guest's link in C{port/allprint}: QEMU's stream over TCP from C{::1}.
QEMU_TCP6 = re.compile(r"module qemu stream\s*: tcp6? \[?::1\]?")


def test_guestsOnIpv6LoopbackPingEachOther(vswitch, processes, shortdir) -> None:
    """
    One guest dials the switch's C{qemu:tcp6:} listener on C{::1}, the
    other listens on C{::1} and the switch dials it (C{qemu:connect:tcp:
    host=\\:\\:1}); they ping each other through the switch.
    """
    need("qemu-system-x86_64")
    mgmt = shortdir / "mgmt"
    listening, dialled = freePorts(2, host="::1")
    sw = vswitch("--mgmt", str(mgmt), "--port", f"qemu:tcp6:{listening}:interface=\\:\\:1",
                 "--port", f"qemu:connect:tcp:host=\\:\\:1:port={dialled}")
    guests = [
        startGuest(processes, ["-netdev", f"stream,id=n0,server={server},addr.type=inet,"
                                          f"addr.host=::1,addr.port={port}"],
                   guestScript(f"10.211.31.{me}", f"10.211.31.{3 - me}", 4),
                   f"52:54:00:76:74:3{me}", directory=shortdir, name=f"guest6-{me}")
        for me, server, port in ((1, "off", listening), (2, "on", dialled))
    ]
    waitFor(lambda: len(QEMU_TCP6.findall(console(mgmt, "port/allprint"))) == 2, timeout=30,
            what="both QEMU processes on the switch")
    ports = console(mgmt, "port/allprint")
    for guest, result in zip(guests, waitAll(guests, timeout=60)):
        print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
        assert result.rc == 0, guest.diagnostics()
        assert "3 packets received" in result.output, guest.diagnostics()
    print(ports)
    assert sw.process.poll() is None


@pytest.mark.parametrize(
    "spec, hint",
    [
        ("qemu:connect:tcp:host=::1:port={port}", "host=\\:\\:1"),
        ("qemu:tcp6:{port}:interface=::1", "interface=\\:\\:1"),
    ],
)
def test_bareColonsStopTheStartSayingHowToWriteThem(shortdir, spec: str, hint: str) -> None:
    """
    The switch exits with status 1 and one line naming the spec and the
    escaped value; it neither dials another address nor keeps running.
    """
    (port,) = freePorts(1, host="::1")
    text = spec.format(port=port)
    ran = subprocess.run(twistdArgv("--sock", str(shortdir / "sw"), "--port", text),
                         env=sourceEnv(), capture_output=True, text=True, timeout=30)
    said = ran.stdout + ran.stderr  # twistd prints a usage error on standard output
    assert ran.returncode == 1, said
    assert f"port spec '{text}': an empty argument in the endpoint" in said, said
    assert f"escape its colons: {hint})" in said, said
    assert not (shortdir / "sw").exists()
