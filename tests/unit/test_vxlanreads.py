"""
The UDP sockets of C{vxlan:} and C{vxvde:} ports keep reading after a
receive error they do not expect (C{ENOMEM}, C{EIO}): it is counted and
logged once per errno, with the spec, and the frames after it still arrive.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import pytest
import pytest_twisted
from reactortools import until
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs, formatEvent

from vtwisted.portoptions import PortOptions
from vtwisted.ports import vxvde
from vtwisted.ports.vxlanconfig import configFromSpec
from vtwisted.ports.vxlansocket import BatchPort
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import vxlan

BROADCAST = b"\xff" * 6


class FailingReads:
    """
    A socket whose next reads fail with the errnos in C{errors}, then read
    as C{sock} does.
    """

    def __init__(self, sock: Any, *errors: int) -> None:
        self.sock = sock
        self.errors = list(errors)

    def recvmsg(self, *args: Any) -> Any:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return self.sock.recvmsg(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def _text(events: Sequence[dict[str, Any]]) -> str:
    return "\n".join(formatEvent(e) for e in events)


def _peer() -> tuple[socket.socket, int, str]:
    """
    A UDP socket on 127.0.0.2, its port, and the spec of a vxlan port
    whose remote it is, listening on that port number on 127.0.0.1.
    """
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.2", 0))
    number = peer.getsockname()[1]
    return peer, number, f"vxlan:remote=127.0.0.2:local=127.0.0.1:dstport={number}:vni=5"


def _vxlanPort(switch: Any, spec: str) -> tuple[FakeLink, Any]:
    """
    A switch with port C{spec} and a fake link beside it.

    @return: the fake link and the vxlan port's link.
    """
    service = switch(spec)
    link = FakeLink()
    plug(service.switch, link)
    return link, service.specs[spec].link


@pytest_twisted.ensureDeferred
async def test_aVxlanPortReadsOnAfterAnUnexpectedReceiveError(switch) -> None:
    """
    ENOMEM, then EIO, then ENOMEM again on the socket: each is counted
    (C{port/print} says how many), each errno logged once with the spec,
    and every frame sent still arrives.
    """
    peer, number, spec = _peer()
    try:
        link, vxlanLink = _vxlanPort(switch, spec)
        listening = vxlanLink.shared.listeningPort
        listening.socket = FailingReads(listening.socket, errno.ENOMEM, errno.EIO, errno.ENOMEM)
        sent = [frame(BROADCAST, mac(0x20 + i), payload=b"after %d" % i) for i in range(4)]
        with capturedLogs() as events:
            for one in sent:
                peer.sendto(vxlan.header(5) + one, ("127.0.0.1", number))
            await until(lambda: len(link.sent) >= len(sent), what="the frames")
        assert link.sent == sent
        text = _text(events)
        assert text.count("reading UDP 127.0.0.1") == 2, text
        assert spec in text and "ENOMEM" in text and "EIO" in text, text
        assert "3 read errors" in vxlanLink.description
    finally:
        peer.close()


class FakeSocket:
    """
    What a vxvde socket reads: each item an errno to fail with or a
    datagram from a member, then nothing (EAGAIN).
    """

    def __init__(self, *reads: Any) -> None:
        self.reads = list(reads)

    def recvmsg(self, size: int, ancillary: int) -> Any:
        if not self.reads:
            raise BlockingIOError(errno.EAGAIN, "try again")
        got = self.reads.pop(0)
        if isinstance(got, int):
            raise OSError(got, os.strerror(got))
        return got, [], 0, ("10.0.0.7", 40000)

    def getsockname(self) -> tuple[str, int]:
        return ("239.0.0.1", 14789)


def _vxvdeLink(spec: str) -> tuple[vxvde.VxvdeLink, FakeLink]:
    """
    The link of a vxvde port C{spec} on a switch, with no socket, and a
    fake link beside it.
    """
    service = vxvde.VxvdeService(Switch(), MemoryReactor(), configFromSpec(
        PortSpec(spec), vxvde.DEFAULT_PORT, unicast=False), PortOptions(), spec)
    link = vxvde.VxvdeLink(service)
    service.options.plugIn(service.switch, link, spec)
    other = FakeLink()
    plug(service.switch, other)
    return link, other


@pytest.mark.parametrize("code", [errno.ENOMEM, errno.EIO])
def test_aVxvdeSocketReadsOnAfterAnUnexpectedReceiveError(code: int) -> None:
    """
    A vxvde member's socket failing once hands on the datagram after it,
    counts the failure and logs it with the spec and the errno.
    """
    spec = "vxvde:vni=9"
    link, other = _vxvdeLink(spec)
    hello = frame(BROADCAST, mac(0x31), payload=b"hello")
    port = BatchPort(0, vxvde._Reader(link), reactor=MemoryReactor())
    port.socket = FakeSocket(code, vxlan.header(9) + hello)  # type: ignore[assignment]
    with capturedLogs() as events:
        port.doRead()
        port.doRead()
    assert other.sent == [hello]
    text = _text(events)
    assert spec in text and "UDP 239.0.0.1:14789" in text
    assert errno.errorcode[code] in text and "reading goes on" in text, text
    assert "1 read errors" in link.description


@pytest_twisted.ensureDeferred
async def test_aDatagramLongerThanTheReadBufferIsAnOversizeDrop(switch) -> None:
    """
    A datagram the kernel cuts to the read buffer (C{MSG_TRUNC}; here the
    buffer is made smaller than the datagram) is counted as an C{oversize}
    drop of its port and logged once with the sender, never handed on cut
    short; the frames after it arrive.
    """
    peer, number, spec = _peer()
    try:
        link, vxlanLink = _vxlanPort(switch, spec)
        vxlanLink.shared.listeningPort.maxPacketSize = 1000
        big = frame(BROADCAST, mac(0x40), payload=b"b" * 1400)
        after = [frame(BROADCAST, mac(0x41), payload=b"after %d" % i) for i in range(2)]
        with capturedLogs() as events:
            for one in (big, big, *after):
                peer.sendto(vxlan.header(5) + one, ("127.0.0.1", number))
            await until(lambda: len(link.sent) >= len(after), what="the frames after")
        assert link.sent == after
        assert vxlanLink.port.counters.drops["oversize"] == 2
        text = _text(events)
        assert text.count("dropped a frame (oversize)") == 1, text
        assert spec in text and "from 127.0.0.2" in text and "MSG_TRUNC" in text, text
    finally:
        peer.close()


class MergedSocket(FakeSocket):
    """
    A vxvde socket whose one read is datagrams the kernel merged (UDP GRO),
    cut short by the buffer (C{MSG_TRUNC}).
    """

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__()
        self.data: bytes | None = data
        self.step = step

    def recvmsg(self, size: int, ancillary: int) -> Any:
        if self.data is None:
            raise BlockingIOError(errno.EAGAIN, "try again")
        data, self.data = self.data, None
        gro = [(socket.SOL_UDP, 104, self.step.to_bytes(4, sys.byteorder))]
        return data[:size], gro, socket.MSG_TRUNC, ("10.0.0.7", 40000)


def test_aMergedReadCutShortHandsOnItsWholeDatagrams() -> None:
    """
    A merged read (UDP GRO) cut short hands on the datagrams it holds whole,
    and counts the one cut as an C{oversize} drop with what to do
    (C{gro_max_size}), never handing it on cut short.
    """
    spec = "vxvde:vni=9"
    link, other = _vxvdeLink(spec)
    sent = [frame(BROADCAST, mac(0x50 + i), payload=bytes([i]) * 1000) for i in range(3)]
    datagrams = [vxlan.header(9) + one for one in sent]
    port = BatchPort(0, vxvde._Reader(link), reactor=MemoryReactor(), maxPacketSize=2500)
    port.socket = MergedSocket(b"".join(datagrams), len(datagrams[0]))  # type: ignore[assignment]
    with capturedLogs() as events:
        port.doRead()
    assert other.sent == sent[:2]
    assert link.port.counters.drops["oversize"] == 1
    text = _text(events)
    assert spec in text and "gro_max_size" in text and "MSG_TRUNC" in text, text
