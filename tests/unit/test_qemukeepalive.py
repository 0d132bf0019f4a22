"""
C{keepalive=} on C{qemu:} TCP links (L{vtwisted.ports.streamkeepalive}):
the spec, the socket options set on real loopback TCP sockets, the probe
of an address's other links when it connects again, and the watch on
acknowledgements, on a fake clock.  Vanished hosts and a stopped QEMU in
namespaces: tests/integration/test_qemu_deadpeer.py.
"""

from __future__ import annotations

import socket
import struct

import pytest
from test_cableprobe import SocketTransport, connectedPair, options, pairs  # noqa: F401
from test_qemu import make
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from vtwisted.portoptions import PortOptions
from vtwisted.ports import qemu, streamkeepalive
from vtwisted.spec import SpecError
from vtwisted.switch import Switch


def userTimeout(handle: socket.socket) -> int:
    return handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)


def listening(keepalive: int = qemu.KEEPALIVE) -> tuple[qemu.QemuListener, Clock]:
    clock = Clock()
    listener = qemu.QemuListener(Switch(), clock, None, PortOptions(), "qemu:listen:test")
    listener.keepalive = keepalive
    return listener, clock


def guestFrom(listener: qemu.QemuListener, peer: str, handle: socket.socket
              ) -> qemu.QemuStreamLink:
    """
    A guest from C{peer} over C{handle}, plugged in.
    """
    link = listener.factory.buildProtocol(None)
    assert isinstance(link, qemu.QemuStreamLink)
    link.makeConnection(SocketTransport(peer, handle))
    assert link in listener.links
    return link


@pytest.mark.parametrize("text, keepalive", [
    ("qemu:tcp:5555", 30),
    ("qemu:listen:tcp:5555:keepalive=7", 7),
    ("qemu:connect:tcp:host=127.0.0.1:port=5555", 30),
    ("qemu:connect:tcp:host=127.0.0.1:port=5555:keepalive=0", 0),
    ("qemu:unix:/tmp/x.sock", 30),  # unused: a Unix link gets none
])
def test_keepaliveIsTheSwitchsAndThirtySecondsByDefault(text: str, keepalive: int) -> None:
    service = make(text)
    assert isinstance(service, (qemu.QemuListener, qemu.QemuConnector))
    assert service.keepalive == keepalive


@pytest.mark.parametrize("text, problem", [
    ("qemu:tcp:5555:keepalive=soon", "keepalive='soon' is not a whole number"),
    ("qemu:tcp:5555:keepalive=-1", "keepalive=-1 is out of range (0 to 3600)"),
    ("qemu:connect:tcp:host=h:port=1:keepalive=3601", "keepalive=3601 is out of range"),
    ("qemu:tcp:5555:keepalive=3:keepalive=4", "keepalive= is given 2 times"),
    ("qemu:unix:/tmp/x.sock:keepalive=30", "keepalive= is for TCP: a unix: endpoint's guest "
                                           "is on this host"),
])
def test_badKeepalivesAreRefusedWithTheSpecNamed(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        make(text)
    assert text in str(info.value) and problem in str(info.value)


def test_aTcpGuestGetsKeepaliveProbesAndNoUserTimeout(pairs) -> None:  # noqa: F811
    """
    keepalive=30: first probe after 10 s idle, then every 5 s, 4 of them
    unanswered end it (30 s); no TCP_USER_TIMEOUT, which would also end a
    guest that stops reading.  The watch runs every 5 s.
    """
    listener, clock = listening()
    handle, _ = connectedPair(pairs)
    link = guestFrom(listener, "10.0.0.2", handle)
    assert options(handle) == (1, 10, 5, 4)
    assert userTimeout(handle) == 0
    assert [call.getTime() for call in clock.getDelayedCalls()] == [1.0, 5.0]  # trial, watch
    link.connectionLost(None)
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize("seconds, expected", [(3, (1, 1, 1, 2)), (2, (1, 1, 1, 1)),
                                               (3600, (1, 1200, 600, 4))])
def test_smallAndLargeKeepalivesFitTheirProbesInTheSeconds(pairs, seconds: int,  # noqa: F811
                                                            expected: tuple[int, ...]) -> None:
    handle, _ = connectedPair(pairs)
    streamkeepalive.keepAlive(handle, seconds, userTimeout=False)
    assert options(handle) == expected


def test_keepaliveZeroLeavesItOffAndWatchesNothing(pairs) -> None:  # noqa: F811
    listener, clock = listening(keepalive=0)
    handle, _ = connectedPair(pairs)
    guestFrom(listener, "10.0.0.2", handle)
    assert options(handle)[0] == 0
    assert len(clock.getDelayedCalls()) == 1  # the trial only


def test_aGuestFromAnAddressWithLinksProbesThoseAndGivesTheirSettingsBack(pairs) -> None:  # noqa: F811
    """
    A second guest from 10.0.0.2 has the first one's link probed (every
    second, never given up for its count), logged once; 10.0.0.3's is left
    alone.  After the window the first gets its own settings back.
    """
    listener, clock = listening()
    sockets = [connectedPair(pairs)[0] for _ in range(3)]
    first = guestFrom(listener, "10.0.0.2", sockets[0])
    guestFrom(listener, "10.0.0.3", sockets[1])
    normal = options(sockets[0])
    with capturedLogs() as events:
        guestFrom(listener, "10.0.0.2", sockets[2])
    assert options(sockets[0]) == (1, 1, 1, 127)
    assert options(sockets[1]) == options(sockets[2]) == normal
    (line,) = [formatEvent(e) for e in events if "probing" in e.get("log_format", "")]
    assert f"1 other guest link(s) up (port {first.port.number})" in line, line
    clock.advance(streamkeepalive.PROBE_WINDOW)
    assert options(sockets[0]) == normal
    assert userTimeout(sockets[0]) == 0


def tcpInfo(retransmits: int, probes: int, lastAckMilliseconds: int) -> bytes:
    info = bytearray(104)
    info[2], info[3] = retransmits, probes
    struct.pack_into("=I", info, 56, lastAckMilliseconds)
    return bytes(info)


@pytest.mark.parametrize("info, silence", [
    (tcpInfo(1, 0, 31000), 31.0),  # retransmitting, nothing heard
    (tcpInfo(0, 2, 40000), 40.0),  # two window probes unanswered
    (tcpInfo(0, 1, 90000), None),  # a window probe in flight: a stopped guest answers it
    (tcpInfo(0, 0, 90000), None),  # idle: keepalive's business
    (b"\x01\x00\x01", None),
])
def test_silenceIsRetransmittingOrProbingWithNothingHeard(info: bytes,
                                                          silence: float | None) -> None:
    assert streamkeepalive.silentFor(info) == silence


def test_aLiveConnectionIsNotSilent(pairs) -> None:  # noqa: F811
    handle, peer = connectedPair(pairs)
    handle.sendall(b"x")
    assert peer.recv(1) == b"x"
    info = handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    assert streamkeepalive.silentFor(info) is None


def test_aSilentGuestIsDroppedOnceAndLogged(pairs, monkeypatch) -> None:  # noqa: F811
    """
    The watch finds 31 s without an acknowledgement (what TCP_INFO says of
    a guest whose host vanished under frames in flight): the link goes,
    logged once, and no timer is left.
    """
    listener, clock = listening()
    handle, _ = connectedPair(pairs)
    link = guestFrom(listener, "10.0.0.2", handle)
    clock.advance(5)
    assert link in listener.links
    monkeypatch.setattr(streamkeepalive, "silentFor", lambda info: 31.0)
    with capturedLogs() as events:
        clock.advance(5)
    assert link not in listener.links
    lines = [formatEvent(e) for e in events if "acknowledged" in e.get("log_format", "")]
    assert len(lines) == 1 and "nothing acknowledged for 31 s" in lines[0], lines
    link.connectionLost(None)
    assert not clock.getDelayedCalls()
