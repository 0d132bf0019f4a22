"""
The slirp TCP engine against real loopback sockets in this process's
reactor: a scripted guest (a minimal TCP in a L{FakeGuestNetwork}) sends a
megabyte to a loopback server through the engine and gets a megabyte back;
a closed loopback port answers with a RST.  Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest_twisted
from reactortools import until
from slirptcpharness import GATEWAY, GUEST, MASK, SCALE_OPTION, ipPacket, mssOption
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory

from vtwisted.slirp.tcp import TcpNat
from vtwisted.testing import FakeGuestNetwork
from vtwisted.wire.tcp import ACK, FIN, PSH, RST, SYN, TCPHeader

MEGABYTE = 1 << 20


class ScriptedGuest(FakeGuestNetwork):
    """
    One guest TCP connection, as a lossless guest kernel would run it:
    ACKs what arrives in order, sends within the engine's window.
    """

    def __init__(self, guest: bytes = GUEST, remote: bytes = GATEWAY) -> None:
        super().__init__()
        self.nat = TcpNat(self, reactor)
        self.guest, self.remote = guest, remote
        self.segmentSize = self.mtu - (60 if len(guest) == 16 else 40)
        self.received = bytearray()
        self.outgoing = b""
        self.sndUna = self.sndNxt = self.rcvNxt = 0
        self.peerWindow = 0
        self.peerShift = 0
        self.connected = self.refused = self.finReceived = False
        self.port = 0
        self.misaddressed = 0

    def sendTcp(self, src: bytes, dst: bytes, header: bytes, payload: Any, mss: int) -> None:
        super().sendTcp(src, dst, header, payload, mss)
        if (src, dst) != (self.remote, self.guest):
            self.misaddressed += 1
        parsed = self.tcp.pop()[2]
        reactor.callLater(0, self.segment, parsed, bytes(payload))

    def emit(self, flags: int, payload: bytes = b"", options: bytes = b"",
             seq: int | None = None) -> None:
        header = TCPHeader(40000, self.port, (self.sndNxt if seq is None else seq) & MASK,
                           self.rcvNxt & MASK, flags, 0xFFFF, 0, 0, options)
        segment = header.pack() + payload
        self.nat.segmentReceived(self.guest, self.remote, segment,
                                 ipPacket(self.guest, self.remote, segment))

    def connect(self, port: int) -> None:
        self.port = port
        self.sndUna = self.sndNxt = 5000
        self.emit(SYN, options=mssOption(self.segmentSize) + SCALE_OPTION)
        self.sndNxt += 1

    def segment(self, header: TCPHeader, payload: bytes) -> None:
        if header.flags & RST:
            self.refused = not self.connected
            return
        if header.flags & SYN:
            self.connected = True
            self.peerShift = 5 if len(header.options) > 4 else 0
            self.rcvNxt = header.seq + 1
            self.sndUna = self.sndNxt
        else:
            ahead = (header.ack - self.sndUna) & MASK
            if ahead <= self.sndNxt - self.sndUna:
                self.sndUna += ahead
            if header.seq == self.rcvNxt & MASK and (payload or header.flags & FIN):
                self.received += payload
                self.rcvNxt += len(payload) + (header.flags & FIN)
                self.finReceived = self.finReceived or bool(header.flags & FIN)
        self.peerWindow = header.window << (0 if header.flags & SYN else self.peerShift)
        if payload or header.flags & (SYN | FIN):
            self.emit(ACK)
        self.pump()

    def pump(self) -> None:
        """
        Send what the engine's window allows.
        """
        sent = self.sndNxt - 5001
        while sent < len(self.outgoing) and self.sndNxt - self.sndUna < self.peerWindow:
            room = self.peerWindow - (self.sndNxt - self.sndUna)
            size = min(self.segmentSize, len(self.outgoing) - sent, room)
            self.emit(ACK | PSH, self.outgoing[sent : sent + size])
            self.sndNxt += size
            sent += size


class Server(Protocol):
    """
    Takes a megabyte, checks it, answers with a megabyte and closes.
    """

    def __init__(self, expected: bytes, answer: bytes) -> None:
        self.expected = expected
        self.answer = answer
        self.data = bytearray()
        self.verified = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) == MEGABYTE:
            self.verified = hashlib.sha256(self.data).digest() == self.expected
            assert self.transport is not None
            self.transport.write(self.answer)
            self.transport.loseConnection()


def serverFactory(protocol: Callable[[], Protocol]) -> ServerFactory:
    """
    L{Factory.forProtocol}, typed as C{listenTCP} wants: Twisted's hints make
    the result of C{ServerFactory.forProtocol} a plain L{Factory}.
    """
    factory: ServerFactory = ServerFactory()
    factory.protocol = protocol
    return factory


def portNumber(listening: IListeningPort) -> int:
    """
    The TCP port number C{listening} got.
    """
    address = listening.getHost()
    assert isinstance(address, (IPv4Address, IPv6Address))
    return address.port


async def exchangeMegabytes(guest: ScriptedGuest, interface: str,
                            established: Callable[[ScriptedGuest], None] = lambda guest: None,
                            ) -> None:
    """
    Have C{guest} send a random megabyte through its engine to a server
    listening on C{interface} and get the server's megabyte back: check
    both arrive intact (sha256), the FIN follows, nothing was reset, timed
    out or misaddressed, and the connection ends after the guest's FIN.
    C{established} is called with the guest once the handshake is done.
    """
    upload, download = os.urandom(MEGABYTE), os.urandom(MEGABYTE)
    servers: list[Server] = []

    def build() -> Server:
        servers.append(Server(hashlib.sha256(upload).digest(), download))
        return servers[-1]

    listening = reactor.listenTCP(0, serverFactory(build), interface=interface)
    try:
        guest.outgoing = upload
        guest.connect(portNumber(listening))
        await until(lambda: guest.connected, what="the handshake")
        established(guest)
        guest.pump()
        await until(lambda: guest.finReceived, timeout=30, what="the download")
        assert servers[0].verified
        assert hashlib.sha256(guest.received).digest() == hashlib.sha256(download).digest()
        assert guest.nat.resets == 0 and guest.nat.timeouts == 0
        assert guest.misaddressed == 0
        guest.emit(ACK | FIN)
        await until(lambda: guest.nat.connectionCount == 0, timeout=5, what="time-wait")
    finally:
        guest.nat.close()
        stopped = listening.stopListening()
        assert stopped is not None
        await stopped


@pytest_twisted.ensureDeferred
async def test_megabytesCrossRealSocketsBothWays() -> None:
    """
    A megabyte from the guest reaches a loopback server intact (sha256),
    and the server's megabyte reaches the guest intact, then its FIN.
    """
    await exchangeMegabytes(ScriptedGuest(), "127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_closedLoopbackPortAnswersRst() -> None:
    """
    A SYN to a loopback port nobody listens on gets a RST, not a SYN-ACK.
    """
    listening = reactor.listenTCP(0, serverFactory(Protocol), interface="127.0.0.1")
    port = portNumber(listening)
    stopped = listening.stopListening()
    assert stopped is not None
    await stopped
    guest = ScriptedGuest()
    try:
        guest.connect(port)
        await until(lambda: guest.refused, what="the RST")
        assert not guest.connected
        assert guest.nat.refused == 1 and guest.nat.connectionCount == 0
    finally:
        guest.nat.close()
