"""
QEMU's multicast transport (C{mcast:}) with real members: a Python member
that behaves as QEMU's C{-netdev socket,mcast=} does, and a QEMU guest on
that backend pinging a namespace behind the switch's TAP.  Everything runs
in a namespace of its own whose only route for multicast is its loopback,
so no datagram leaves it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import (
    StreamPlug,
    execIn,
    need,
    needRoot,
    uniqueName,
    waitFor,
)
from taphelpers import (
    console,
    hostBehindTap,
    multicastNamespace,
    readLine,
    switchInNamespace,
)

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration

GROUP = "230.0.0.1"

#: A group member as QEMU makes one: bound to GROUP:PORT with SO_REUSEADDR,
#: joined, loopback on.  It sends argv[3] (hex) once, then prints each
#: frame it hears for two seconds.
MEMBER = r"""
import socket, struct, sys, time
group, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(group), bytes(4)))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
print("ready", flush=True)
sys.stdin.readline()
s.sendto(bytes.fromhex(sys.argv[3]), (group, port))
s.settimeout(0.2)
end = time.monotonic() + 2
while time.monotonic() < end:
    try:
        print(s.recv(70000).hex(), flush=True)
    except socket.timeout:
        pass
print("end", flush=True)
"""


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()


def test_groupMembersAndVdeClientsShareOneLan(processes, namespaces, shortdir) -> None:
    """
    A frame from a VDE client reaches a group member once; the member's frame
    reaches the client once; the switch's own frames coming back from the
    group are not taken for frames from it.
    """
    need("vde_plug")
    ns = multicastNamespace(namespaces)
    sock, mgmt = switchInNamespace(processes, ns, shortdir, "--port", f"mcast:{GROUP}:5560")
    client = StreamPlug(processes, f"vde://{sock}")
    waitFor(lambda: "Port 0002" in console(mgmt, "port/print"), what="the client's port")
    fromMember = frame(b"\xff" * 6, mac(0x20), payload=b"from the group")
    member = processes.start(execIn(ns, sys.executable, "-c", MEMBER, GROUP, "5560",
                                    fromMember.hex()),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert readLine(member, 10).strip() == "ready"
    fromClient = frame(b"\xff" * 6, mac(0x10), payload=b"from the client")
    client.send(fromClient)
    assert member.stdin is not None
    member.stdin.write(b"go\n")
    member.stdin.flush()
    heard = []
    while (line := readLine(member, 10).strip()) != "end":
        heard.append(bytes.fromhex(line))
    assert heard.count(fromClient) == 1
    assert client.receiveMatching(lambda f: f == fromMember) is not None
    assert client.receiveMatching(lambda f: f == fromMember, timeout=1) is None
    ports = console(mgmt, "port/print 1")
    assert "IN:  pkts          1" in ports, ports
    assert "to port: 002" in console(mgmt, "hash/find 02:00:00:00:00:10")


def test_qemuGuestOnMulticastReachesANamespace(processes, namespaces, shortdir) -> None:
    """
    A QEMU guest with -netdev socket,mcast= pings a namespace behind the
    switch's TAP: the switch joins the guest's group as one port.
    """
    from guest import assertGuestPings

    need("qemu-system-x86_64")
    ns = multicastNamespace(namespaces)
    tap = uniqueName("vtm")
    _, mgmt = switchInNamespace(processes, ns, shortdir, "--port", f"mcast:{GROUP}:5561",
                       "--port", f"tap:{tap}")
    hostBehindTap(namespaces, ns, tap, "10.7.0.1/24")
    assertGuestPings(processes, ["-netdev", f"socket,id=n0,mcast={GROUP}:5561"],
                     "10.7.0.2/24", "10.7.0.1", "52:54:00:76:74:51", directory=shortdir,
                     name="mcast", wrapper=execIn(ns))
    assert "group 230.0.0.1:5561" in console(mgmt, "port/print")
