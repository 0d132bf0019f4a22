"""
A cable listener whose peer's address dials again probes that address's
other links (L{vtwisted.ports.streamkeepalive}): which links, the socket
options set and given back, on a fake clock with fake transports over
real loopback TCP sockets; and the kernel behaviour it relies on, on real
loopback connections.  Switches in namespaces: test_cable_redial.py.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator

import pytest
from test_qemu import Transport, encode
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from vtwisted.portoptions import PortOptions
from vtwisted.ports import cable, streamkeepalive
from vtwisted.switch import Switch

TCP_REPAIR = 19  # linux/tcp.h


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """
    The loopback TCP connections a test made with L{connectedPair}; all
    closed after it.
    """
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for ends in made:
        for end in ends:
            end.close()


def connectedPair(made: list[tuple[socket.socket, socket.socket]]
                  ) -> tuple[socket.socket, socket.socket]:
    """
    A loopback TCP connection: the accepting end, and the connecting one.
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    made.append((accepted, client))
    return accepted, client


class SocketTransport(Transport):
    """
    A fake transport from C{peer} whose handle is a real TCP socket.
    """

    def __init__(self, peer: str, handle: socket.socket) -> None:
        super().__init__(IPv4Address("TCP", peer, 40000))
        self.realHandle = handle

    def getHandle(self) -> socket.socket:  # type: ignore[override]
        return self.realHandle


def options(handle: socket.socket) -> tuple[int, ...]:
    """
    SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT.
    """
    return (handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            *(handle.getsockopt(socket.IPPROTO_TCP, option) for option in
              (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)))


def cableFrom(listener: cable.CableListener, peer: str, handle: socket.socket
              ) -> cable.CableLink:
    """
    A cable from C{peer} over C{handle}, plugged in (its hello received).
    """
    link = listener.factory.buildProtocol(None)
    assert isinstance(link, cable.CableLink)
    link.makeConnection(SocketTransport(peer, handle))
    link.dataReceived(encode(cable.HELLO))
    assert link in listener.links
    return link


def listening(keepalive: int = 30) -> tuple[cable.CableListener, Clock]:
    clock = Clock()
    listener = cable.CableListener(Switch(), clock, None, PortOptions(), "cable:listen:test")
    listener.keepalive = keepalive
    return listener, clock


def test_aCableFromAnAddressWithLinksProbesThoseAndGivesTheirSettingsBack(pairs) -> None:
    """
    A second cable from 10.0.0.2 has the first one probed (keepalive every
    second, never given up for its count) and logged; 10.0.0.3's is left
    alone.  After the window the first gets its keepalive settings back.
    """
    listener, clock = listening()
    sockets = [connectedPair(pairs)[0] for _ in range(3)]
    first = cableFrom(listener, "10.0.0.2", sockets[0])
    cableFrom(listener, "10.0.0.3", sockets[1])
    normal = options(sockets[0])
    assert normal == (1, 10, 5, 3)
    with capturedLogs() as events:
        cableFrom(listener, "10.0.0.2", sockets[2])
    assert options(sockets[0]) == (1, 1, 1, 127)
    assert options(sockets[1]) == normal
    assert options(sockets[2]) == normal
    (line,) = [formatEvent(e) for e in events if "probing" in e.get("log_format", "")]
    assert f"(port {first.port.number})" in line, line
    clock.advance(streamkeepalive.PROBE_WINDOW)
    assert options(sockets[0]) == normal
    assert not clock.getDelayedCalls()


def test_withKeepaliveOffTheProbesStopAfterTheWindow(pairs) -> None:
    """
    keepalive=0: a probed link has keepalive only for the window.
    """
    listener, clock = listening(keepalive=0)
    sockets = [connectedPair(pairs)[0] for _ in range(2)]
    cableFrom(listener, "10.0.0.2", sockets[0])
    assert options(sockets[0])[0] == 0
    cableFrom(listener, "10.0.0.2", sockets[1])
    assert options(sockets[0])[:3] == (1, 1, 1)
    clock.advance(streamkeepalive.PROBE_WINDOW)
    assert options(sockets[0])[0] == 0


def test_aProbedLinkThatGoesLeavesNoTimer(pairs) -> None:
    """
    The window of a link that ends in it (the reset it was probed for) is
    closed with it, and a probe again during the window starts it anew.
    """
    listener, clock = listening()
    sockets = [connectedPair(pairs)[0] for _ in range(3)]
    first = cableFrom(listener, "10.0.0.2", sockets[0])
    cableFrom(listener, "10.0.0.2", sockets[1])
    clock.advance(1)
    cableFrom(listener, "10.0.0.2", sockets[2])
    assert len(clock.getDelayedCalls()) == 2  # one window each for the first two
    first.connectionLost(None)
    assert len(clock.getDelayedCalls()) == 1
    assert first not in listener.links


def vanish(end: socket.socket) -> None:
    """
    Close a TCP socket without a word to its peer (no FIN, no reset), as a
    host that lost power: in repair mode, closing sends nothing.
    """
    try:
        end.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    except PermissionError:
        pytest.skip("TCP_REPAIR needs CAP_NET_ADMIN")
    end.close()


def test_theKernelResetsAProbedConnectionItsPeerForgotAndKeepsALiveOne(pairs) -> None:
    """
    What the listener relies on (Linux): a probe on a connection whose far
    kernel forgot it draws a reset, at once, where keepalive would probe
    it only 10 s after its last word; a live connection answers and stays.
    """
    ghost, gone = connectedPair(pairs)
    live, _ = connectedPair(pairs)
    for end in (ghost, live):
        streamkeepalive.keepAlive(end, 30)
    vanish(gone)
    assert select.select([ghost], [], [], 1.5)[0] == []  # keepalive alone: nothing yet
    for end in (ghost, live):
        assert streamkeepalive.probeNow(end)
    assert select.select([ghost], [], [], 30)[0] == [ghost]  # at once: 30 s for a loaded CI
    with pytest.raises(ConnectionResetError):
        ghost.recv(1)
    assert select.select([live], [], [], 1.5)[0] == []  # probed every second, answered
    live.setblocking(False)
    with pytest.raises(BlockingIOError) as raised:
        live.recv(1)
    assert raised.value.errno == errno.EAGAIN
