"""
C{port/del} then C{port/add} in one write to a real switch's console, for
the specs that bind a UDP or TCP port: C{vxlan:} (alone, and the last of
the ports sharing its socket), C{vxvde:} and C{mcast:} (whose UDP port a
C{vxlan:} port takes next) and slirp's C{hostfwd=}.  The address must be
free by the time C{port/del} answers; before, Twisted closed the socket on
the reactor's next turn and the add answered C{1098 Address already in
use}.  Everything stays on the loopback: the multicast groups are joined
on C{lo} and sent to with TTL 0, as in test_mcast_loopback.py.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import StreamPlug, copiesOf, freeTcpPort, freeUdpPorts, need, waitFor
from test_console_interop import PROMPT, ConsoleClient
from test_console_service import start

from vtwisted.testing import frame, mac
from vtwisted.wire import vxlan

pytestmark = pytest.mark.integration

VNI = 42


def _endpoints(mgmt: Path) -> int:
    return ConsoleClient(mgmt).command("port/print").count(b"-- endpoint ID")


def _vxlanServed(host: StreamPlug, udp: int, tcp: int) -> None:
    """
    An endpoint at 127.0.0.2 (the port's remote=) sends a broadcast in VNI
    L{VNI}: the host behind the switch gets it.
    """
    payload = b"through-vxlan-" + bytes(40)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as endpoint:
        endpoint.bind(("127.0.0.2", 0))
        endpoint.sendto(vxlan.header(VNI) + frame(b"\xff" * 6, mac(0x31), payload=payload),
                        ("127.0.0.1", udp))
    assert copiesOf(host, payload) == 1


def _forwardServed(host: StreamPlug, udp: int, tcp: int) -> None:
    """The forward's host port accepts a connection."""
    with socket.create_connection(("127.0.0.1", tcp), timeout=5):
        pass


#: Each case: the lines sent one by one first, the lines then sent in one
#: write, and what shows the last spec added is served.
CASES: dict[str, tuple[list[str], list[str], Callable[[StreamPlug, int, int], None]]] = {
    "vxlan": (
        ["port/add {vxlan}"], ["port/del {vxlan}", "port/add {vxlan}"], _vxlanServed),
    "vxlan-shared": (
        ["port/add {vxlan}", "port/add {other}"],
        ["port/del {other}", "port/add {other}", "port/del {other}", "port/del {vxlan}",
         "port/add {vxlan}"], _vxlanServed),
    "vxvde": (
        ["port/add vxvde:239.1.2.4:if=lo:ttl=0:dstport={udp}"],
        ["port/del vxvde:239.1.2.4:if=lo:ttl=0:dstport={udp}", "port/add {vxlan}"],
        _vxlanServed),
    "mcast": (
        ["port/add mcast:230.0.0.7:{udp}:localaddr=127.0.0.1:ttl=0"],
        ["port/del mcast:230.0.0.7:{udp}:localaddr=127.0.0.1:ttl=0", "port/add {vxlan}"],
        _vxlanServed),
    "slirp": (
        ["port/add {slirp}"], ["port/del {slirp}", "port/add {slirp}"], _forwardServed),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_boundPortDeletedAndAddedAgainInOneWrite(vswitch, processes, shortdir, kind) -> None:
    """
    The lines of one write all succeed, the last one taking the UDP or TCP
    port the spec deleted just before held, and the new port is served.
    """
    need("vde_plug")
    sw = start(vswitch, shortdir)
    (udp,), tcp = freeUdpPorts(1), freeTcpPort()
    names = {"udp": udp, "vxlan": f"vxlan:remote=127.0.0.2:vni={VNI}:dstport={udp}",
             "other": f"vxlan:remote=127.0.0.2:vni={VNI + 1}:dstport={udp}",
             "slirp": f"slirp:hostfwd=tcp\\:127.0.0.1\\:{tcp}-\\:22"}
    first, batch, served = CASES[kind]
    console = ConsoleClient(sw.mgmt)
    for line in first:
        assert console.command(line.format(**names)).endswith(b"1000 Success\n" + PROMPT)
    console.socket.sendall("".join(f"{line}\n" for line in batch).format(**names).encode())
    replies = b""
    while replies.count(PROMPT) < len(batch):
        chunk = console.socket.recv(65536)
        assert chunk, replies
        replies += chunk
    for line, reply in zip(batch, replies.decode().split(PROMPT.decode())):
        assert reply.endswith("1000 Success\n"), (line, reply)
    before = _endpoints(sw.mgmt)
    host = StreamPlug(processes, f"vde://{sw.sock}")
    waitFor(lambda: _endpoints(sw.mgmt) == before + 1, what="the host's port")
    served(host, udp, tcp)
