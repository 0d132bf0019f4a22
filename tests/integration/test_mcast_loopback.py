"""
C{mcast:} in this process's reactor, kept on this host: the group is
joined on the loopback (C{localaddr=127.0.0.1}) and sent to with TTL 0, so
no datagram leaves it (the namespaced tests with QEMU are in test_mcast.py).
"""

from __future__ import annotations

import errno
import socket

import pytest_twisted
from helpers import FailingReads, freeUdpPorts
from reactortools import until
from twisted.logger import capturedLogs, formatEvent

from vtwisted.ports import mcast
from vtwisted.service import SwitchService
from vtwisted.testing import FakeLink, frame, mac, plug

BROADCAST = b"\xff" * 6
GROUP = "230.0.0.7"


def mcastService(service: SwitchService) -> mcast.McastService:
    (found,) = [s for s in service if isinstance(s, mcast.McastService)]
    return found


def member() -> socket.socket:
    """
    A socket that sends to the group over the loopback only.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    return sock


@pytest_twisted.ensureDeferred
async def test_unexpectedReadErrorsAreCountedAndReadingGoesOn(switch) -> None:
    """
    A read of the group's socket that fails with an errno the port does
    not expect does not silence the port: counted in port/print, logged
    once with the spec and errno, and the members' frames keep arriving.
    """
    (number,) = freeUdpPorts(1)
    spec = f"mcast:{GROUP}:{number}:localaddr=127.0.0.1:ttl=0"
    service = switch(spec)
    found = mcastService(service)
    receiving = found.ports[0]
    receiving.socket = FailingReads(receiving.socket, errno.ENOMEM, 2)
    other = FakeLink()
    plug(service.switch, other)
    guest = member()
    try:
        with capturedLogs() as events:
            guest.sendto(frame(BROADCAST, mac(1), b"first"), (GROUP, number))
            await until(lambda: len(other.sent) == 1, what="the first frame")
            guest.sendto(frame(BROADCAST, mac(1), b"second"), (GROUP, number))
            await until(lambda: len(other.sent) == 2, what="the frame after the errors")
    finally:
        guest.close()
    assert found.link is not None and "2 read errors" in found.link.description
    lines = [formatEvent(e) for e in events if "ENOMEM" in formatEvent(e)]
    assert len(lines) == 1 and spec in lines[0], lines
