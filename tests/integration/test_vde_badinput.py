"""
Bad input on the VDE control and data sockets, against a switch running in
this process on real sockets: each is refused or dropped, counted, logged
once, and every other client keeps working.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from reactortools import sleep, until
from twisted.internet import reactor

from vtwisted.app import buildService
from vtwisted.ports.vde import VdeSwitchDirectory
from vtwisted.service import SwitchService
from vtwisted.testing import frame, mac
from vtwisted.wire import vdecontrol

BROADCAST = b"\xff" * 6




class RawClient:
    """
    A VDE client written from the wire spec, able to misbehave.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.path = str(directory.parent / f"{directory.name}-{name}")
        self.data = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.data.bind(self.path)
        self.data.setblocking(False)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.setblocking(False)
        self.ctl.connect(str(directory / "ctl"))
        self.switchPath: str | None = None

    async def plug(self, port: int | None = None, request: bytes | None = None) -> str | None:
        """
        Send a request; return the switch's data socket path, or None if the
        switch closed the stream.
        """
        self.ctl.send(request if request is not None else vdecontrol.packRequest(
            self.path.encode(), port, "raw test client"))
        reply = await self.readControl()
        if not reply:
            return None
        self.switchPath = vdecontrol.parseReply(reply).decode()
        self.data.connect(self.switchPath)
        return self.switchPath

    async def readControl(self, timeout: float = 5.0) -> bytes:
        for _ in range(int(timeout / 0.02)):
            try:
                return self.ctl.recv(4096)
            except BlockingIOError:
                await sleep(0.02)
        raise AssertionError("no reply and no close from the switch")

    def send(self, data: bytes) -> None:
        self.data.send(data)

    async def receive(self, timeout: float = 2.0) -> bytes | None:
        for _ in range(int(timeout / 0.02)):
            try:
                return self.data.recv(65536)
            except BlockingIOError:
                await sleep(0.02)
        return None

    def close(self) -> None:
        self.ctl.close()
        self.data.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


@pytest_twisted.async_yield_fixture
async def running(shortdir: Path) -> AsyncIterator[tuple[SwitchService, Path]]:
    directory = shortdir / "sw"
    service = buildService(reactor, [f"vde:{directory}"], defaultSock=False)
    service.startService()
    yield service, directory
    await service.stopService()


@pytest.fixture
def clients(shortdir: Path) -> Iterator[Callable[[str], RawClient]]:
    made: list[RawClient] = []

    def make(name: str) -> RawClient:
        client = RawClient(shortdir / "sw", name)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def directoryOf(service: SwitchService) -> VdeSwitchDirectory:
    (vde,) = [s for s in service if isinstance(s, VdeSwitchDirectory)]
    return vde


async def healthy(clients: Callable[[str], RawClient], tag: str) -> None:
    """Two fresh clients can still exchange a frame."""
    a, b = clients(f"{tag}a"), clients(f"{tag}b")
    assert await a.plug() and await b.plug()
    f = frame(BROADCAST, mac(1))
    a.send(f)
    assert await b.receive() == f
    a.close()
    b.close()


BAD_REQUESTS = {
    "bad magic": b"\x00\x01\x02\x03" + bytes(130),
    "too short": vdecontrol.packRequest(b"/tmp/x")[:60],
    "longer than 256": vdecontrol.packRequest(b"/tmp/x") + b"d" * 300,
    "unsupported protocol version 7": struct.pack("<III", vdecontrol.MAGIC, 7, 0) + bytes(120),
    "bad request type 9": struct.pack("<III", vdecontrol.MAGIC, 3, 9)
    + vdecontrol.packSockaddr(b"/tmp/x"),
}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("problem", sorted(BAD_REQUESTS))
async def test_badRequestIsRefusedAndCounted(running, clients, problem: str) -> None:
    """A malformed request gets the stream closed, is counted, and others still work."""
    service, directory = running
    client = clients("bad")
    data = BAD_REQUESTS[problem]
    if problem == "too short":
        client.ctl.send(data)
        client.ctl.shutdown(socket.SHUT_WR)
        assert await client.readControl() == b""
        await until(lambda: directoryOf(service).rejections, what="rejection counted")
    else:
        assert await client.plug(request=data) is None
        kinds = directoryOf(service).rejections
        assert any(problem.split(" (")[0].split()[0] in kind for kind in kinds), kinds
    await healthy(clients, "ok")


@pytest_twisted.ensureDeferred
async def test_missingClientPathIsRefused(running, clients, shortdir: Path) -> None:
    """A request naming a path that does not exist is refused, saying so."""
    service, directory = running
    client = clients("c")
    request = vdecontrol.packRequest(str(shortdir / "nothing-here").encode())
    assert await client.plug(request=request) is None
    assert any("No such file" in kind for kind in directoryOf(service).rejections)
    await healthy(clients, "ok")


@pytest_twisted.ensureDeferred
async def test_clientPathThatIsNotASocketIsRefused(running, clients, shortdir: Path) -> None:
    """A request naming a regular file is refused."""
    service, directory = running
    regular = shortdir / "regular"
    regular.write_text("not a socket")
    client = clients("c")
    assert await client.plug(request=vdecontrol.packRequest(str(regular).encode())) is None
    assert any("not a socket" in kind for kind in directoryOf(service).rejections)


@pytest_twisted.ensureDeferred
async def test_silentClientIsDisconnected(running, clients, monkeypatch) -> None:
    """A client that connects and never asks is dropped after the request timeout."""
    import vtwisted.ports.vde as vde

    monkeypatch.setattr(vde, "REQUEST_TIMEOUT", 0.2)
    service, directory = running
    client = clients("mute")
    await until(lambda: True)
    assert await client.readControl(3) == b""
    await healthy(clients, "ok")


@pytest_twisted.ensureDeferred
async def test_hundredsOfConnectionsOpenedAndDropped(running, clients, shortdir) -> None:
    """Connections that vanish mid-handshake leak no port and no file."""
    service, directory = running
    for i in range(300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(directory / "ctl"))
        if i % 2:
            s.send(vdecontrol.packRequest(b"/tmp/x")[:50])
        s.close()
        if i % 10 == 0:
            await sleep(0.01)
    await sleep(0.3)
    assert sorted(os.listdir(directory)) == ["ctl"]
    assert not any(p.links for p in service.switch.ports.values())
    await healthy(clients, "ok")


@pytest_twisted.ensureDeferred
async def test_runtAndOversizedDatagramsAreDroppedAndCounted(running, clients) -> None:
    """Datagrams shorter than 14 bytes or longer than the MTU go nowhere, counted."""
    service, directory = running
    a, b = clients("a"), clients("b")
    await a.plug()
    await b.plug()
    a.send(b"\xff" * 13)
    a.send(frame(BROADCAST, mac(1), b"x" * 9300))
    good = frame(BROADCAST, mac(1))
    a.send(good)
    assert await b.receive() == good
    port = service.switch.ports[1]
    assert port.counters.drops["runt"] == 1
    assert port.counters.drops["oversize"] == 1


@pytest_twisted.ensureDeferred
async def test_datagramFromUnknownSenderIsNotAccepted(running, clients, shortdir) -> None:
    """Only the client a data socket was made for can send through it."""
    service, directory = running
    a, b = clients("a"), clients("b")
    await a.plug()
    await b.plug()
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stranger.bind(str(shortdir / "stranger"))
    with pytest.raises(OSError) as e:
        stranger.sendto(frame(BROADCAST, mac(66)), a.switchPath)
    assert e.value.errno == errno.EPERM
    stranger.close()
    assert await b.receive(0.3) is None
    await healthy(clients, "ok")


@pytest_twisted.ensureDeferred
async def test_vanishedClientFreesItsPort(running, clients) -> None:
    """A client whose control stream dies loses its port and its socket file."""
    service, directory = running
    a = clients("a")
    path = await a.plug()
    assert path and os.path.exists(path)
    a.close()
    await until(lambda: not os.path.exists(path), what="data socket removed")
    assert not service.switch.ports[1].links


@pytest_twisted.ensureDeferred
async def test_clientThatStopsReadingIsDroppedNotBuffered(running, clients) -> None:
    """Frames to a client that never reads are dropped and counted; others flow."""
    service, directory = running
    lazy, talker, listener = clients("lazy"), clients("talk"), clients("listen")
    await lazy.plug()
    await talker.plug()
    await listener.plug()
    lazy.data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    f = frame(BROADCAST, mac(2), b"y" * 1400)
    received = 0
    for _ in range(40):
        for _ in range(100):
            try:
                talker.send(f)
            except BlockingIOError:
                await sleep(0.01)
        await sleep(0.005)
        while True:
            try:
                listener.data.recv(65536)
                received += 1
            except BlockingIOError:
                break
    await sleep(0.2)
    while await listener.receive(0.1):
        received += 1
    lazyPort = service.switch.ports[1]
    assert lazyPort.counters.drops["busy"] > 0
    assert received > 3000
    await healthy(clients, "ok")


@pytest_twisted.ensureDeferred
async def test_clientWithAPortRequestGetsThatPort(running, clients) -> None:
    """A request for port 7 gets port 7 and a data socket named 007.N."""
    service, directory = running
    a = clients("a")
    path = await a.plug(port=7)
    assert path and os.path.basename(path).startswith("007.")
    assert service.switch.ports[7].links


@pytest_twisted.ensureDeferred
async def test_requestBeyondNumportsIsRefused(running, clients) -> None:
    """A request for a port past the last is refused, closing the stream."""
    service, directory = running
    a = clients("a")
    assert await a.plug(port=32) is None
    assert any("out of range" in kind for kind in directoryOf(service).rejections)
