"""
The data side of a VDE connection, on real datagram sockets with a fake clock.
"""

from __future__ import annotations

import socket
from typing import Any, cast

from helpers import pendingDatagrams
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from vtwisted.ports.vde import VdeControlProtocol, VdeSwitchDirectory
from vtwisted.ports.vdelink import VdeDataLink
from vtwisted.switch import Switch
from vtwisted.testing import frame, mac


class Directory:
    """
    The little of L{vtwisted.ports.vde.VdeSwitchDirectory} a data link uses.
    """

    def __init__(self, reactor: Any) -> None:
        self.switch = Switch()
        self.reactor = reactor
        self.closed: list[VdeDataLink] = []

    def linkClosed(self, link: VdeDataLink) -> None:
        self.closed.append(link)


class Control:
    transport = None


def fill(sock: socket.socket, data: bytes) -> int:
    """
    Send C{data} until the peer's queue is full; the number sent.
    """
    sent = 0
    while True:
        try:
            sock.send(data)
        except BlockingIOError:
            return sent
        sent += 1


def test_fullClientIsNotTriedAgainUntilTheNextTurn() -> None:
    """
    A frame the client cannot take is dropped and counted; later frames of the same
    reactor turn are dropped without trying, even if the client has read meanwhile;
    from the next turn on, frames flow again.
    """
    ours, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    client.setblocking(False)
    clock = Clock()
    directory = Directory(clock)
    port = directory.switch.allocatePort(None, None)
    # The stand-ins have the little of the real ones that a data link uses.
    link = VdeDataLink(cast(VdeSwitchDirectory, directory), cast(VdeControlProtocol, Control()),
                       ours, "/tmp/x/001.1", port, "test", None)
    f = frame(mac(1), mac(2))
    queued = fill(ours, f)
    assert queued > 0
    link.sendFrame(f)
    assert port.counters.drops["busy"] == 1
    assert len(pendingDatagrams(client)) == queued
    link.sendFrame(f)
    assert port.counters.drops["busy"] == 2
    assert pendingDatagrams(client) == []
    clock.advance(0)
    link.sendFrame(f)
    assert pendingDatagrams(client) == [f]
    assert port.counters.drops["busy"] == 2
    ours.close()
    client.close()


def test_readsABatchPerWakeUpAndRefusesOversizedFrames() -> None:
    """
    100 frames waiting: one wake-up takes 64, the next the rest; a frame
    longer than the port's MTU allows is counted as oversize.
    """
    ours, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    directory = Directory(Clock())
    switch = directory.switch
    port = switch.allocatePort(None, None)
    port.setMtu(1500)
    link = VdeDataLink(cast(VdeSwitchDirectory, directory), cast(VdeControlProtocol, Control()),
                       ours, "/tmp/x/001.1", port, "test", None)
    for n in range(100):
        client.send(frame(mac(2), mac(1), payload=n.to_bytes(2, "big")))
    client.send(frame(mac(2), mac(1), payload=bytes(3000)))
    link.doRead()
    assert port.counters.inFrames == 64
    link.doRead()
    assert port.counters.inFrames == 101 and port.counters.drops["oversize"] == 1
    link.doRead()
    assert port.counters.inFrames == 101
    ours.close()
    client.close()


def test_aFrameOverALowerMtuIsCountedAndLoggedAtItsOwnLength() -> None:
    """
    On a port with C{mtu=1500}, a 9014-byte frame from a client with MTU
    9000 is an oversize drop logged, and counted in the bytes in, at its
    length, not at the 1519 bytes of a read cut to the port's MTU.
    """
    ours, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    directory = Directory(Clock())
    port = directory.switch.allocatePort(None, None)
    port.setMtu(1500)
    link = VdeDataLink(cast(VdeSwitchDirectory, directory), cast(VdeControlProtocol, Control()),
                       ours, "/tmp/x/001.1", port, "test", None)
    client.send(frame(mac(2), mac(1), payload=bytes(9000)))
    with capturedLogs() as events:
        link.doRead()
    assert port.counters.drops["oversize"] == 1 and port.counters.inBytes == 9014
    text = "\n".join(formatEvent(e) for e in events)
    assert "9014 bytes, more than 1518" in text, text
    ours.close()
    client.close()
