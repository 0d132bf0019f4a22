"""
QEMU's multicast transport (C{mcast:}) with real members: a Python member
that behaves as QEMU's C{-netdev socket,mcast=} does, and QEMU guests on
that backend and on C{-netdev dgram}'s multicast reaching a namespace
behind the switch's TAP.  Everything runs
in a namespace of its own whose only route for multicast is its loopback,
so no datagram leaves it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
from helpers import (
    StreamPlug,
    execIn,
    need,
    needRoot,
    run,
    sourceEnv,
    twistdArgv,
    uniqueName,
    waitFor,
)
from taphelpers import (
    console,
    hostBehindTap,
    multicastNamespace,
    quietNamespace,
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


def test_dgramMulticastGuestCarriesJumboFramesAndTcpToANamespace(processes, namespaces,
                                                                 shortdir) -> None:
    """
    A QEMU guest on C{-netdev dgram} with a multicast remote (QEMU 7.2's
    other way into a group) at MTU 9000: 9000-byte pings from the namespace
    behind the switch's TAP come back whole, and 3 MB sent over TCP (TAP
    super-frames the switch cuts into jumbo datagrams) arrive with their
    SHA-256.
    """
    from guest import assertGuestGotTheTransfer, startGuest
    from taphelpers import _CLIENT, PYTHON
    from test_qemu_vde import guestScript

    need("qemu-system-x86_64", "ping")
    ns = multicastNamespace(namespaces)
    tap = uniqueName("vtm")
    switchInNamespace(processes, ns, shortdir, "--port", f"mcast:{GROUP}:5571",
                      "--port", f"tap:{tap}:offload=on")
    host = hostBehindTap(namespaces, ns, tap, "10.7.3.1/24")
    run("ip", "-n", host, "link", "set", tap, "mtu", "9000")
    receive = "nc -l -p 7300 < /dev/null > /tmp/got & nc=$!\nsleep 0.5\n"
    report = ("wait $nc\n"
              "echo \"got $(wc -c < /tmp/got) $(sha256sum < /tmp/got | cut -d' ' -f1)\"\n")
    script = guestScript("10.7.3.2", "10.7.3.1", 2, receive, mtu=9000).replace(
        "echo \"echos received", report + "echo \"echos received")
    guest = startGuest(
        processes,
        ["-netdev", f"dgram,id=n0,remote.type=inet,remote.host={GROUP},remote.port=5571"],
        script, "52:54:00:76:74:61", directory=shortdir, name="mcdgram", wrapper=execIn(ns))
    waitFor(lambda: guest.sawLine("VTW-READY") or guest.process.poll() is not None,
            timeout=60, what="the guest's pings")
    pings = subprocess.run(execIn(host, "ping", "-c", "2", "-i", "0.2", "-s", "8972", "-M", "do",
                                  "-W", "2", "10.7.3.2"), capture_output=True, text=True,
                           timeout=30)
    sent = subprocess.run(execIn(host, PYTHON, "-c", _CLIENT, "10.7.3.2", "7300", "5",
                                 str(3 << 20)), capture_output=True, text=True, timeout=120)
    assertGuestGotTheTransfer(guest, pings, sent)


#: Sends argv[5] (hex) once to argv[3]:argv[4] from a socket bound to
#: argv[1]:argv[2].
SENDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.sendto(bytes.fromhex(sys.argv[5]), (sys.argv[3], int(sys.argv[4])))
"""


def _sendingPort(ns: str, groupPort: int) -> int:
    """
    The port the switch (alone in namespace C{ns}) sends its multicast from.
    """
    lines = run("ip", "netns", "exec", ns, "ss", "-Huan").stdout.splitlines()
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in lines} - {groupPort}
    assert len(ports) == 1, lines
    return ports.pop()


def _sendFrom(ns: str, host: str, port: int, groupPort: int, data: bytes) -> None:
    run(*execIn(ns, sys.executable, "-c", SENDER, host, str(port), GROUP, str(groupPort),
                data.hex()))


def test_samePortFromAnotherLocalAddressIsAMember(processes, namespaces, shortdir) -> None:
    """
    On the loopback, a socket bound to 127.0.0.2 sending from the port the
    switch sends from (bound to localaddr=127.0.0.1) is a member, not an
    echo of the switch's own frames.
    """
    need("vde_plug")
    ns = multicastNamespace(namespaces)
    sock, mgmt = switchInNamespace(processes, ns, shortdir, "--port",
                                   f"mcast:{GROUP}:5562:localaddr=127.0.0.1")
    client = StreamPlug(processes, f"vde://{sock}")
    waitFor(lambda: "Port 0002" in console(mgmt, "port/print"), what="the client's port")
    own = _sendingPort(ns, 5562)
    fromMember = frame(b"\xff" * 6, mac(0x21), payload=b"same port, other address")
    _sendFrom(ns, "127.0.0.2", own, 5562, fromMember)
    assert client.receiveMatching(lambda f: f == fromMember) is not None


def _vethPair(namespaces) -> tuple[str, str, str]:
    """
    Two namespaces joined by a veth pair (10.213.0.1 and .2/24), multicast
    routed onto it: the namespaces and the near device's name.
    """
    here, there = quietNamespace(namespaces, "vtm"), quietNamespace(namespaces, "vtm")
    near, far = uniqueName("vtv"), uniqueName("vtv")
    run("ip", "link", "add", near, "netns", here, "type", "veth", "peer", "name", far,
        "netns", there)
    for ns, dev, address in ((here, near, "10.213.0.1/24"), (there, far, "10.213.0.2/24")):
        run("ip", "-n", ns, "addr", "add", address, "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
    return here, there, near


def test_anotherHostOnTheSamePortIsAMemberAndEchoesAreNot(processes, namespaces,
                                                          shortdir) -> None:
    """
    On a real link (a veth pair between two namespaces), a host sending from
    the port number the switch sends from is a member; the switch's own
    frames, which come back from its address on that link, are still not.
    """
    need("vde_plug")
    here, there, _ = _vethPair(namespaces)
    sock, mgmt = switchInNamespace(processes, here, shortdir, "--port", f"mcast:{GROUP}:5563")
    client = StreamPlug(processes, f"vde://{sock}")
    waitFor(lambda: "Port 0002" in console(mgmt, "port/print"), what="the client's port")
    own = _sendingPort(here, 5563)
    fromClient = frame(b"\xff" * 6, mac(0x10), payload=b"from the client")
    client.send(fromClient)
    fromHost = frame(b"\xff" * 6, mac(0x22), payload=b"another host, same port")
    _sendFrom(there, "0.0.0.0", own, 5563, fromHost)
    assert client.receiveMatching(lambda f: f == fromHost) is not None
    assert "to port: 002" in console(mgmt, "hash/find 02:00:00:00:00:10")
    assert "IN:  pkts          1" in console(mgmt, "port/print 1")


#: Prints (hex) each datagram the group argv[1]:argv[2] hears for argv[3] s.
LISTENER = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(sys.argv[1]), bytes(4)))
print("ready", flush=True)
s.settimeout(0.2)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        print(s.recv(70000).hex(), flush=True)
    except socket.timeout:
        pass
"""


def test_sendingGoesOnWhenTheInterfaceAddressChanges(processes, namespaces, shortdir) -> None:
    """
    The sending socket's source address is fixed when the port starts;
    when the interface's address changes, the switch opens a new sending
    socket and its frames reach the group again, from the new address,
    still not taken for a member's.
    """
    need("vde_plug")
    here, there, near = _vethPair(namespaces)
    sock, mgmt = switchInNamespace(processes, here, shortdir, "--port", f"mcast:{GROUP}:5564")
    client = StreamPlug(processes, f"vde://{sock}")
    waitFor(lambda: "Port 0002" in console(mgmt, "port/print"), what="the client's port")
    run("ip", "-n", here, "addr", "del", "10.213.0.1/24", "dev", near)
    run("ip", "-n", here, "addr", "add", "10.213.0.3/24", "dev", near)
    run("ip", "-n", here, "route", "replace", "224.0.0.0/4", "dev", near)
    listener = processes.start(execIn(there, sys.executable, "-c", LISTENER, GROUP, "5564",
                                      "20"), stdout=subprocess.PIPE)
    assert readLine(listener, 10).strip() == "ready"
    heard = None
    for n in range(40):
        sent = frame(b"\xff" * 6, mac(0x10), payload=b"after the change %d" % n)
        client.send(sent)
        with contextlib.suppress(AssertionError):
            heard = bytes.fromhex(readLine(listener, 0.25))
            break
    log = (shortdir / "sw.log").read_text()
    assert heard is not None and heard[:12] == sent[:12], f"no frame reached the group: {log}"
    assert "to port: 002" in console(mgmt, "hash/find 02:00:00:00:00:10")
    assert "10.213.0.3" in _sendingAddresses(here)


def _sendingAddresses(ns: str) -> str:
    return run("ip", "netns", "exec", ns, "ss", "-Huan").stdout


def test_aGroupThatCannotBeJoinedStopsTheStart(namespaces, shortdir) -> None:
    """
    In a namespace with no route for the group (its loopback only), the
    group cannot be joined: the switch does not start deaf (it said "group
    ... on port 1" and never heard a member), it exits with the reason and
    what to do.
    """
    ns = namespaces.add()
    spec = f"mcast:{GROUP}:5561"
    ran = subprocess.run(execIn(ns, *twistdArgv("--sock", str(shortdir / "sw"), "--port", spec)),
                         env=sourceEnv(), capture_output=True, text=True, timeout=20)
    assert ran.returncode == 1, ran.stdout
    assert (f"vswitch: {spec}: cannot join {GROUP}:5561: No such device (errno 19); no route "
            f"leads to the group: give localaddr=ADDR, or a route (ip route add {GROUP} dev "
            "IFACE)") in ran.stdout + ran.stderr, ran.stdout
