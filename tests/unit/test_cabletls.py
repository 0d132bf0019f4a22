"""
Cables (C{cable:}) over real TLS in memory (L{twisted.test.iosim}): what
happens to a connection depends on the TLS layer's rules, which fake
transports do not follow.
"""

from __future__ import annotations

import struct
from pathlib import Path

from certs import selfSignedCertificate
from test_qemu import FakeSocket
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, IOPump, connect

from vtwisted.ports import cable
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug

BROADCAST = b"\xff" * 6


class SocketTransport(FakeTransport):
    """
    An in-memory transport with the socket handle a stream link asks for.
    """

    def getHandle(self) -> FakeSocket:
        return FakeSocket()


class Peer(Protocol):
    """
    The far switch, played by hand: it records what arrives.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


def tlsListener(tmp_path: Path, switch: Switch, clock: MemoryReactorClock) -> cable.CableListener:
    """
    A listening TLS cable of C{switch}, trusting the certificate in
    C{tmp_path/bcert.pem}.
    """
    selfSignedCertificate(tmp_path, "localhost", prefix="a")
    selfSignedCertificate(tmp_path, "switch-b", prefix="b")
    service = cable.makeService(switch, PortSpec(
        f"cable:listen:tcp:0:cert={tmp_path}/acert.pem:key={tmp_path}/akey.pem:"
        f"ca={tmp_path}/bcert.pem"), clock)
    assert isinstance(service, cable.CableListener)
    return service


def cableOverTls(tmp_path: Path, switch: Switch) -> tuple[cable.CableListener, Peer, IOPump]:
    """
    A listening TLS cable of C{switch} and a peer connected to it over TLS,
    handshake done.
    """
    clock = MemoryReactorClock()  # TLS gathers small writes until the clock turns
    service = tlsListener(tmp_path, switch, clock)
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    server = TLSMemoryBIOFactory(service.endpoint.options, False, service.factory,
                                 clock=clock).buildProtocol(address)
    mine = ssl.PrivateCertificate.loadPEM(
        (tmp_path / "bcert.pem").read_bytes() + (tmp_path / "bkey.pem").read_bytes())
    trust = ssl.Certificate.loadPEM((tmp_path / "acert.pem").read_bytes())
    options = ssl.optionsForClientTLS("localhost", trustRoot=trust, clientCertificate=mine)
    peer = Peer()
    client = TLSMemoryBIOFactory(options, True, Factory.forProtocol(lambda: peer),
                                 clock=clock).buildProtocol(address)
    pump = connect(server, SocketTransport(server, isServer=True, peerAddress=address),
                   client, SocketTransport(client, isServer=False, peerAddress=address),
                   greet=False, clock=clock)
    pump.flush()
    return service, peer, pump


def test_tooLongMessageClosesATlsCable(tmp_path: Path) -> None:
    """
    A length over the limit closes the cable over TLS too (TLS shuts down
    only once the link's producer is gone) and unplugs it at once: the
    switch sends it nothing more.
    """
    switch = Switch()
    service, peer, pump = cableOverTls(tmp_path, switch)
    assert peer.received == struct.pack("!I", len(cable.HELLO)) + cable.HELLO
    assert peer.transport is not None
    peer.transport.write(struct.pack("!I", len(cable.HELLO)) + cable.HELLO)
    pump.flush()
    (link,) = service.links
    port = link.port
    other = FakeLink()
    plug(switch, other)
    peer.transport.write(struct.pack("!I", cable.MAX_MESSAGE + 1) + b"x" * 100)
    pump.flush()
    assert port.counters.drops["malformed"] == 1
    assert not service.links and not port.links
    received = len(peer.received)
    other.receive(frame(BROADCAST, mac(1)))
    pump.flush()
    assert len(peer.received) == received
    assert peer.lost


def test_peerThatNeverFinishesTheHandshakeIsCutOff(tmp_path: Path) -> None:
    """
    A connection that never completes TLS and the hello (anyone may
    connect to a TLS listener) is aborted after HELLO_TIMEOUT seconds and
    logged, instead of holding a descriptor for ever.
    """
    clock = MemoryReactorClock()
    service = tlsListener(tmp_path, Switch(), clock)
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    server = TLSMemoryBIOFactory(service.endpoint.options, False, service.factory,
                                 clock=clock).buildProtocol(address)
    transport = SocketTransport(server, isServer=True, peerAddress=address)
    with capturedLogs() as events:
        server.makeConnection(transport)
        clock.advance(cable.HELLO_TIMEOUT - 1)
        assert not transport.disconnecting
        clock.advance(1)
    assert transport.disconnecting
    assert "no hello within" in (service.failures.last or "")
    assert len([e for e in events if "problem" in e]) == 1
