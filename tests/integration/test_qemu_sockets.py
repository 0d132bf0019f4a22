"""
QEMU stream ports (C{qemu:}) on real sockets in this process's reactor:
clients written from QEMU's framing (4-byte big-endian length, frame), a
listener QEMU would connect to, a guest that stops reading, a guest that
restarts, and start-up errors.  Real QEMU guests: test_qemu_stream.py.
"""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path

import pytest
import pytest_twisted
from certs import selfSignedCertificate
from reactortools import sleep, until
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor

from vtwisted.app import buildService
from vtwisted.ports import streamconnector, streamlinks, streamlistener
from vtwisted.service import SwitchService
from vtwisted.testing import FakeLink, frame, mac, plug

BROADCAST = b"\xff" * 6




class Guest:
    """
    One end of QEMU's stream transport over a real socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.buffer = b""

    @classmethod
    def connect(cls, path: Path) -> Guest:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        return cls(sock)

    async def send(self, *frames: bytes) -> None:
        """
        Send C{frames}, letting the reactor turn while the socket is full.
        """
        data = memoryview(b"".join(struct.pack("!I", len(f)) + f for f in frames))
        for _ in range(500):
            try:
                data = data[self.sock.send(data):]
            except BlockingIOError:
                pass
            if not data:
                return
            await sleep(0.01)
        raise AssertionError("the switch stopped reading")

    def _fill(self) -> bool:
        """
        Read what is waiting; whether anything was.
        """
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def frames(self) -> list[bytes]:
        """
        The whole frames received so far.
        """
        while self._fill():
            pass
        got = []
        while len(self.buffer) >= 4:
            (length,) = struct.unpack("!I", self.buffer[:4])
            if len(self.buffer) < 4 + length:
                break
            got.append(self.buffer[4 : 4 + length])
            self.buffer = self.buffer[4 + length :]
        return got

    async def receive(self, count: int, timeout: float = 5.0) -> list[bytes]:
        got: list[bytes] = []
        for _ in range(int(timeout / 0.02)):
            got += self.frames()
            if len(got) >= count:
                return got
            await sleep(0.02)
        return got

    def closedByPeer(self) -> bool:
        try:
            return self.sock.recv(65536) == b""
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True


def portService(service: SwitchService) -> streamlinks.StreamPorts:
    (found,) = [s for s in service if isinstance(s, streamlinks.StreamPorts)]
    return found


@pytest_twisted.ensureDeferred
async def test_manyGuestsShareOneListeningSocket(switch, shortdir: Path) -> None:
    """
    Three guests connect to one C{qemu:unix:} socket at once (QEMU's own
    listeners take one): each gets a port, unicast finds its guest once
    learned, and a guest leaving frees its port.
    """
    path = shortdir / "vm.sock"
    service = switch(f"qemu:unix:{path}")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    guests = [Guest.connect(path) for _ in range(3)]
    ports = portService(service)
    await until(lambda: len(ports.links) == 3, what="three guests")
    assert len({link.port.number for link in ports.links}) == 3
    for n, guest in enumerate(guests):
        await guest.send(frame(BROADCAST, mac(n)))
    for n, guest in enumerate(guests):
        got = await guest.receive(2)
        assert sorted(got) == sorted(frame(BROADCAST, mac(k)) for k in range(3) if k != n)
    await guests[0].send(frame(mac(2), mac(0), b"to two" * 10))
    assert await guests[2].receive(1) == [frame(mac(2), mac(0), b"to two" * 10)]
    assert await guests[1].receive(1, timeout=0.3) == []
    guests[1].sock.close()
    await until(lambda: len(ports.links) == 2, what="the guest gone")


@pytest_twisted.ensureDeferred
async def test_connectorComesBackWhenTheGuestRestarts(switch, shortdir: Path) -> None:
    """
    C{qemu:connect:} reaches a listening guest, and reaches it again after
    the guest goes away and comes back (QEMU restarted), which QEMU 7.2's own
    clients never do.
    """
    path = shortdir / "guest.sock"
    service = switch(f"qemu:connect:unix:{path}")
    ports = portService(service)
    for attempt in range(2):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        listener.setblocking(False)
        accepted: list[socket.socket] = []

        def accept(listener: socket.socket = listener, accepted: list = accepted) -> bool:
            try:
                accepted.append(listener.accept()[0])
            except BlockingIOError:
                return False
            return True

        await until(accept, timeout=8, what=f"connection {attempt + 1}")
        guest = Guest(accepted[0])
        await until(lambda: len(ports.links) == 1, what="the link up")
        await guest.send(frame(BROADCAST, mac(1)))
        await until(lambda: ports.links[0].port.counters.inFrames == 1, what="a frame in")
        guest.sock.close()
        listener.close()
        path.unlink()
        await until(lambda: not ports.links, what="the link down")


@pytest_twisted.ensureDeferred
async def test_guestThatStopsReadingCostsBoundedMemory(switch, shortdir: Path) -> None:
    """
    A guest that does not read gets at most the send buffer queued; the
    rest is dropped and counted, the other guests keep getting everything,
    and the stuck guest gets frames again once it reads.
    """
    path = shortdir / "vm.sock"
    service = switch(f"qemu:unix:{path}")
    ports = portService(service)
    stuck = Guest.connect(path)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await until(lambda: len(ports.links) == 1, what="the first guest")
    (stuckLink,) = ports.links
    sender, healthy = Guest.connect(path), Guest.connect(path)
    await until(lambda: len(ports.links) == 3, what="three guests")
    transport = stuckLink.transport
    assert isinstance(transport, FileDescriptor)
    for burst in range(40):
        await sender.send(*(frame(BROADCAST, mac(7), b"x" * 1400) for _ in range(100)))
        assert len(await healthy.receive(100)) == 100, burst
        assert len(transport.dataBuffer) + transport._tempDataLen <= streamlinks.SEND_BUFFER + 2000
    assert stuckLink.port.counters.drops["busy"] > 0
    for _ in range(500):  # the guest reads again: the switch's buffer empties
        stuck.frames()
        if not transport.dataBuffer and not transport._tempDataLen:
            break
        await sleep(0.01)
    await sleep(0.1)
    stuck.frames()
    after = frame(BROADCAST, mac(7), b"after")
    await sender.send(after)
    assert await stuck.receive(1) == [after]


@pytest_twisted.ensureDeferred
async def test_badLengthClosesThatGuestOnly(switch, shortdir: Path) -> None:
    path = shortdir / "vm.sock"
    service = switch(f"qemu:unix:{path}")
    ports = portService(service)
    bad, good = Guest.connect(path), Guest.connect(path)
    await until(lambda: len(ports.links) == 2, what="two guests")
    bad.sock.send(struct.pack("!I", 1 << 20) + b"junk")
    await until(bad.closedByPeer, what="the bad guest closed")
    await good.send(frame(BROADCAST, mac(3)))
    await until(lambda: len(ports.links) == 1, what="the bad guest's link gone")
    await until(lambda: ports.links[0].port.counters.inFrames == 1, what="the good frame")


@pytest_twisted.ensureDeferred
async def test_staleSocketIsReplacedAndLiveOrForeignPathsAreRefused(shortdir: Path) -> None:
    path = shortdir / "vm.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    service = buildService(reactor, [f"qemu:unix:{path}"], defaultSock=False)
    service.startService()
    try:
        live = Guest.connect(path)
        live.sock.close()
        second = buildService(reactor, [f"qemu:unix:{path}"], defaultSock=False)
        with pytest.raises(OSError) as info:
            second.startService()
        assert info.value.errno == errno.EADDRINUSE and str(path) in str(info.value)
    finally:
        await service.stopService()
    assert not path.exists()
    regular = shortdir / "notes.txt"
    regular.write_text("keep me")
    third = buildService(reactor, [f"qemu:unix:{regular}"], defaultSock=False)
    with pytest.raises(OSError, match="not a socket"):
        third.startService()
    assert regular.read_text() == "keep me"


def test_listenFailureNamesSpecAddressAndErrno(shortdir: Path) -> None:
    spec = f"qemu:unix:{shortdir}/missing/vm.sock"
    service = buildService(reactor, [spec], defaultSock=False)
    with pytest.raises(OSError) as info:
        service.startService()
    assert info.value.errno == errno.ENOENT
    assert spec in str(info.value) and "No such file or directory" in str(info.value)


@pytest_twisted.ensureDeferred
async def test_twoSwitchesJoinedOverTls(switch, shortdir: Path) -> None:
    """
    Any Twisted endpoint works, TLS included: one switch listens with
    C{qemu:ssl:}, another connects with C{qemu:connect:tls:} and checks the
    first one's certificate, and frames cross in both directions.
    """
    key, cert = selfSignedCertificate(shortdir)
    server = switch(f"qemu:ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1")
    listener = portService(server)
    assert isinstance(listener, streamlistener.StreamListener)
    number = listener.listeningPort.getHost().port
    client = switch(f"qemu:connect:tls:host=localhost:port={number}:trustRoots={shortdir}/roots")
    await until(lambda: portService(server).links and portService(client).links,
                what="the TLS link up")
    here, there = FakeLink(), FakeLink()
    plug(server.switch, here)
    plug(client.switch, there)
    here.receive(frame(BROADCAST, mac(1), b"over tls" * 100))
    await until(lambda: there.sent, what="a frame across")
    assert there.takeSent() == [frame(BROADCAST, mac(1), b"over tls" * 100)]
    there.receive(frame(mac(1), mac(2), b"back"))
    await until(lambda: here.sent, what="the answer")
    assert here.sent == [frame(mac(1), mac(2), b"back")]
    assert "tcp 127.0.0.1:" in portService(server).links[0].description


@pytest_twisted.ensureDeferred
async def test_aFailedTlsHandshakeGetsNoPortAndIsLoggedWithItsCause(switch,
                                                                    shortdir: Path) -> None:
    """
    A C{qemu:connect:tls:} client that does not trust the listener's
    certificate: neither side gives the connection a port (no "on port" and
    "left port" lines at every retry), and each side logs the TLS failure
    with its cause once, however often the client tries again.
    """
    from twisted.logger import capturedLogs, formatEvent

    key, cert = selfSignedCertificate(shortdir)
    other = shortdir / "other"
    other.mkdir()
    selfSignedCertificate(other)
    with capturedLogs() as events:
        server = switch(f"qemu:ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1")
        listener = portService(server)
        assert isinstance(listener, streamlistener.StreamListener)
        number = listener.listeningPort.getHost().port
        client = switch(f"qemu:connect:tls:host=localhost:port={number}:trustRoots={other}/roots")
        connector = portService(client)
        assert isinstance(connector, streamconnector.StreamConnector)

        def logged(text: str) -> bool:
            return any(text in formatEvent(e) for e in events)

        await until(lambda: logged("certificate verify failed") and logged("unknown ca"),
                    timeout=30, what="both sides' failures logged")
        await until(lambda: connector.failures.total >= 3, timeout=30, what="several attempts")
    lines = [formatEvent(e) for e in events]
    assert not [line for line in lines if " on port " in line or "left port" in line], lines
    atClient = [line for line in lines if "certificate verify failed" in line]
    atServer = [line for line in lines if "unknown ca" in line]
    assert len(atClient) == 1 and "qemu:connect:tls:" in atClient[0], lines
    assert "TLS handshake failed" in atClient[0]
    assert len(atServer) == 1 and "qemu:ssl:" in atServer[0], lines
    assert not portService(client).links and not portService(server).links


@pytest_twisted.ensureDeferred
async def test_absentGuestIsLoggedOnceNotAtEveryRetry(switch, shortdir: Path) -> None:
    """
    A connector whose guest is not there says so once, with the errno, and
    then retries quietly.
    """
    from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
    from zope.interface import provider

    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        service = switch(f"qemu:connect:unix:{shortdir}/absent.sock")
        connector = portService(service)
        assert isinstance(connector, streamconnector.StreamConnector)
        await until(lambda: connector.client._machine, what="the client")
        await sleep(2.5)  # several retries: 0.2 s, then growing
    finally:
        globalLogPublisher.removeObserver(observe)
    failures = [line for line in lines if "cannot connect" in line]
    assert len(failures) == 1, lines
    assert "No such file or directory (errno 2)" in failures[0]
    assert not [line for line in lines if "Scheduling retry" in line], lines


def test_guestEndingInsideAFrameIsCountedAndLogged(vswitch, shortdir: Path) -> None:
    """
    A guest that sends a frame and half of the next, then closes: the
    switch counts the half frame as malformed on the guest's port and logs
    once how much of it came.
    """
    from helpers import waitFor
    from taphelpers import console

    path, mgmt = shortdir / "vm.sock", shortdir / "mgmt"
    spec = f"qemu:unix:{path}"
    sw = vswitch("--mgmt", str(mgmt), "--port", spec)
    whole = frame(BROADCAST, mac(1))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as guest:
        guest.connect(str(path))
        guest.sendall(struct.pack("!I", len(whole)) + whole + struct.pack("!I", 60) + b"x" * 20)
    waitFor(lambda: "ended inside a message" in sw.logText(), what="the guest's link gone")
    stats = console(mgmt, "port/stats 1")
    assert "malformed=1 " in stats, stats
    lines = [line for line in sw.logText().splitlines() if "ended inside a message" in line]
    assert len(lines) == 1 and spec in lines[0] and "(20 of 60 bytes of a frame received)" \
        in lines[0], lines
