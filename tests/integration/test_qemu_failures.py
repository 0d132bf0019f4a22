"""
QEMU stream ports (C{qemu:}) against peers that fail on real sockets: TLS
clients that never finish their handshake, and a listening peer that
accepts each connection and closes it at once.  The sockets are real (this
process's reactor); the port's timers run on a fake clock, so that a 10 s
deadline or a 5 s retry need not be waited for.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from certs import selfSignedCertificate
from reactortools import sleep, until
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from vtwisted.ports import qemu, streamconnector, streamlistener, vhostuser
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch

#: Seconds a TLS client has for its handshake (the README's).
DEADLINE = 10.0
#: The start of a ClientHello: a TLS record header announcing 200 bytes,
#: and 26 of them.
HALF_CLIENT_HELLO = bytes.fromhex("16030100c8" "010000c4" "0303") + bytes(20)


class ClockedReactor:
    """
    The real reactor for sockets, C{clock} for timers.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


def closedByPeer(sock: socket.socket) -> bool:
    """
    Whether the switch closed (or reset) C{sock}'s connection.
    """
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def lines(events: Sequence[Any], level: LogLevel | None = None) -> list[str]:
    """
    The log lines of C{events}, of C{level} only if given.
    """
    return [formatEvent(e) for e in events if level is None or e.get("log_level") == level]


@pytest_twisted.ensureDeferred
async def test_tlsClientsThatNeverFinishTheHandshakeAreCutOff(shortdir: Path) -> None:
    """
    A C{qemu:ssl:} listener cuts off, after 10 s, a client that connects
    and sends nothing and one that sends half a ClientHello: logged once
    with the peer and the spec, the second counted, and their number told
    when a guest does finish its handshake and gets a port.
    """
    key, cert = selfSignedCertificate(shortdir)
    clock = Clock()
    spec = f"qemu:ssl:0:privateKey={key}:certKey={cert}"
    service = qemu.makeService(Switch(), PortSpec(spec), ClockedReactor(clock))
    assert isinstance(service, streamlistener.StreamListener)
    clients: list[socket.socket] = []
    with capturedLogs() as events:
        service.startService()
        try:
            number = service.listeningPort.getHost().port
            for data in (b"", HALF_CLIENT_HELLO):
                client = socket.create_connection(("127.0.0.1", number))
                client.sendall(data)
                client.setblocking(False)
                clients.append(client)
            await until(lambda: len(service.connections) == 2, what="both accepted")
            clock.advance(DEADLINE - 0.5)
            await sleep(0.2)
            assert len(service.connections) == 2
            assert not any(closedByPeer(c) for c in clients)
            clock.advance(0.5)
            await until(lambda: all(closedByPeer(c) for c in clients), what="both cut off")
            assert not service.connections and not service.links
            assert service.failures.counted == 1
            await tlsGuest(number, lambda: bool(service.links),
                           lambda: clock.advance(service.SHORT_LINK))
        finally:
            for client in clients:
                client.close()
            await service.stopService()
    warned = [line for line in lines(events, LogLevel.warn) if "handshake" in line]
    assert len(warned) == 1, lines(events)
    assert warned[0].startswith(f"{spec}: tcp 127.0.0.1:")
    assert "TLS handshake not done within 10 s; closing" in warned[0]
    summary = [line for line in lines(events) if "works again" in line]
    assert len(summary) == 1 and "after 2 failures" in summary[0], lines(events)


async def tlsGuest(number: int, plugged: Any, then: Any = None) -> None:
    """
    Connect over TLS to port C{number} and finish the handshake; wait until
    C{plugged()}, and call C{then()} before closing, if given.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", number))
    raw.setblocking(False)
    with context.wrap_socket(raw, do_handshake_on_connect=False) as guest:
        for _ in range(250):
            try:
                guest.do_handshake()
                break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                await sleep(0.02)
        await until(plugged, what="the guest plugged in")
        if then is not None:
            then()


async def nextConnection(listener: socket.socket, clock: Clock) -> socket.socket:
    """
    Let the fake clock run, half a second at a time, until the switch
    connects to C{listener} again.
    """
    for _ in range(40):
        try:
            return listener.accept()[0]
        except BlockingIOError:
            clock.advance(0.5)
            await sleep(0.02)
    raise AssertionError("the switch did not connect again")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("prefix", ["qemu", "vhostuser"])
async def test_aPeerThatAcceptsAndClosesIsOneFailureSeries(shortdir: Path, prefix: str) -> None:
    """
    C{qemu:connect:} (and C{vhostuser:connect:}) to a peer that accepts each
    connection and closes it at once: no "on port" and "left port" at every
    retry, but one warning saying what happens; a connection that lasts a
    second is announced, with how many failures came before it.
    """
    path = shortdir / "guest.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    listener.setblocking(False)
    clock = Clock()
    spec = f"{prefix}:connect:unix:{path}"
    makeService = qemu.makeService if prefix == "qemu" else vhostuser.makeService
    service = makeService(Switch(), PortSpec(spec), ClockedReactor(clock))
    assert isinstance(service, streamconnector.StreamConnector)
    with capturedLogs() as events:
        service.startService()
        try:
            for _ in range(6):
                accepted = await nextConnection(listener, clock)
                await until(lambda: service.links, what="the link up")
                accepted.close()
                await until(lambda: not service.links, what="the link down")
            assert not [line for line in lines(events) if "port" in line], lines(events)
            kept = await nextConnection(listener, clock)
            await until(lambda: service.links, what="the link up")
            clock.advance(service.SHORT_LINK)
            assert [line for line in lines(events) if " on port " in line]
            kept.close()
            await until(lambda: not service.links, what="the link down")
        finally:
            await service.stopService()
            listener.close()
    warned = lines(events, LogLevel.warn)
    assert len(warned) == 1, lines(events)
    assert warned[0].startswith(f"{spec}: ")
    assert "the peer closed the connection 0.0 s after accepting it" in warned[0]
    summary = [line for line in lines(events) if "works again" in line]
    assert len(summary) == 1 and "after 6 failures (5 of them not logged" in summary[0]
    assert len([line for line in lines(events) if " on port " in line]) == 1
    assert len([line for line in lines(events) if " left port " in line]) == 1


def wrongClient(path: Path, data: bytes) -> None:
    """
    Connect to the Unix socket at C{path}, send C{data} and close, as a
    port scanner or a client of another protocol does.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        client.sendall(data)


def failuresReach(service: Any, count: int) -> Any:
    """
    Whether C{service} has noted C{count} failures in its series.
    """
    return lambda: service.failures.total == count


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("prefix", ["qemu", "vhostuser"])
async def test_wrongClientsOfAListenerAreOneLinePerSeries(shortdir: Path, prefix: str) -> None:
    """
    Clients that connect to a C{qemu:} or C{vhostuser:} listener and close
    at once, or send garbage, again and again (each a new process): one
    warning for each kind of failure, no "on port" and "left port" lines;
    a guest that stays a second is announced, with how many failures came
    before it.
    """
    path = shortdir / "vm.sock"
    spec = f"{prefix}:unix:{path}"
    makeService = qemu.makeService if prefix == "qemu" else vhostuser.makeService
    clock = Clock()
    service = makeService(Switch(), PortSpec(spec), ClockedReactor(clock))
    with capturedLogs() as events:
        service.startService()
        try:
            for count in range(1, 11):
                wrongClient(path, b"GET / HTTP/1.0\r\n\r\n" if count % 2 else b"")
                await until(failuresReach(service, count), what="the client gone")
            assert not [line for line in lines(events) if "port" in line], lines(events)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as guest:
                guest.connect(str(path))
                await until(lambda: service.links, what="the guest plugged in")
                clock.advance(service.SHORT_LINK)
            await until(lambda: not service.links, what="the guest gone")
        finally:
            await service.stopService()
    refused, warned = lines(events, LogLevel.error), lines(events, LogLevel.warn)
    assert len(refused) == 1 and len(warned) == 1, lines(events)
    assert all(line.startswith(f"{spec}: python") for line in refused + warned)
    assert refused[0].endswith("; closing the connection")
    assert "the peer closed the connection 0.0 s after connecting" in warned[0]
    summary = [line for line in lines(events) if "works again" in line]
    assert len(summary) == 1 and "after 10 failures (8 of them not logged" in summary[0]
    assert len([line for line in lines(events) if " on port " in line]) == 1
    assert len([line for line in lines(events) if " left port " in line]) == 1
