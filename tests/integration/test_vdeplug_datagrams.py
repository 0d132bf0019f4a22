"""
vdeplug4's point-to-point datagram plugs are peers of the C{dgram:} port:
C{vde_plug udp://LPORT->HOST:RPORT} (one frame per UDP datagram) and
C{vde_plug ptp://PATH} (one frame per Unix datagram; the second plug of a
pair binds C{PATH+} and sends to C{PATH}).  Frames cross both ways between
the plug and a client on the switch's VDE socket.
"""

from __future__ import annotations

import pytest
from helpers import StreamPlug, freeUdpPorts, need

from vtwisted.testing import frame, mac

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _needs() -> None:
    need("vde_plug")


def _exchange(processes, sw, peer: StreamPlug) -> None:
    """A broadcast from the plug reaches the client; the client's answer reaches the plug."""
    client = StreamPlug(processes, f"vde://{sw.sock}")
    hello = frame(b"\xff" * 6, mac(0x30), payload=b"from the datagram plug")
    got = None
    for _ in range(20):
        peer.send(hello)
        got = client.receiveMatching(lambda f: f == hello, timeout=0.5)
        if got is not None:
            break
    assert got is not None, sw.logText()
    answer = frame(mac(0x30), mac(0x31), payload=b"from the VDE client")
    client.send(answer)
    assert peer.receiveMatching(lambda f: f == answer) is not None, sw.logText()


def test_vdePlugUdpIsADgramPeer(vswitch, processes) -> None:
    """C{udp://} and C{dgram:udp:} name each other's ports."""
    mine, theirs = freeUdpPorts(2)
    sw = vswitch("--port", f"dgram:udp:127.0.0.1:{mine}:127.0.0.1:{theirs}")
    peer = StreamPlug(processes, f"udp://127.0.0.1:{theirs}->127.0.0.1:{mine}")
    _exchange(processes, sw, peer)


def test_vdePlugPtpIsADgramPeer(vswitch, processes, shortdir) -> None:
    """The switch binds PATH and sends to PATH+, so the plug takes the second role."""
    path = shortdir / "ptp"
    sw = vswitch("--port", f"dgram:unix:{path}:{path}+")
    peer = StreamPlug(processes, f"ptp://{path}")
    _exchange(processes, sw, peer)
