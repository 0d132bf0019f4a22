"""
Cable links (C{cable:}) with fake transports: the hello, and whatever a
peer sends after it.  Real TLS between switches: tests/integration/test_cable.py.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from test_qemu import Transport, decode, encode
from twisted.internet.testing import MemoryReactor, MemoryReactorClock

from vtwisted.ports import cable
from vtwisted.ports.streamlistener import StreamListener
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug

BROADCAST = b"\xff" * 6


def connect(switch: Switch) -> tuple[cable.CableLink, Transport]:
    service = cable.makeService(switch, PortSpec("cable:listen:tcp:0:tls=off"),
                                MemoryReactorClock())
    link = service.factory.buildProtocol(None)
    assert isinstance(link, cable.CableLink)
    transport = Transport()
    link.makeConnection(transport)
    return link, transport


def test_helloFirstThenAPortAndVnetPackets() -> None:
    """
    The cable says hello before anything else and gets a port only once the
    peer has said it; plain frames then travel with an all-zero header.
    """
    switch = Switch()
    link, wire = connect(switch)
    assert decode(wire.value()) == [cable.HELLO] and link.port is None
    wire.clear()
    link.dataReceived(encode(cable.HELLO, bytes(10) + frame(BROADCAST, mac(1))))
    other = FakeLink()
    assert link.port is not None
    plug(switch, other)
    other.receive(frame(BROADCAST, mac(2)))
    assert decode(wire.value()) == [bytes(10) + frame(BROADCAST, mac(2))]


def test_somethingElseThanACableNeverGetsAPort() -> None:
    switch = Switch()
    link, wire = connect(switch)
    link.dataReceived(encode(frame(BROADCAST, mac(1))))
    assert wire.disconnecting and link.port is None
    assert "not a vtwisted cable" in (link.owner.failures.last or "")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_anyMessagesAfterTheHelloAreCountedNotFatal(messages: list[bytes]) -> None:
    """
    Whatever packets the far switch sends (truncated, bad headers, bad
    GSO), the switch counts them and goes on forwarding.
    """
    switch = Switch()
    link, wire = connect(switch)
    link.dataReceived(encode(cable.HELLO, *messages))
    assert not wire.disconnecting
    other, listener = FakeLink(), FakeLink()
    plug(switch, other)
    plug(switch, listener)
    other.receive(frame(BROADCAST, mac(1)))
    assert listener.sent[-1:] == [frame(BROADCAST, mac(1))]
    counters = link.port.counters
    assert counters.inFrames + sum(counters.drops.values()) >= len(messages)


def test_tooLongMessageClosesTheCable() -> None:
    switch = Switch()
    link, wire = connect(switch)
    link.dataReceived(encode(cable.HELLO) + struct.pack("!I", cable.MAX_MESSAGE + 1))
    assert wire.disconnecting and link.port.counters.drops["malformed"] == 1


def test_plainCableListensOnLoopbackUnlessAnInterfaceIsGiven(tmp_path) -> None:
    """
    Without TLS nothing authenticates the peer: such a cable listens on the
    loopback address unless told otherwise; a TLS one, where it is told.
    """
    def interface(text: str) -> str:
        service = cable.makeService(Switch(), PortSpec(text), MemoryReactor())
        assert isinstance(service, StreamListener)
        endpoint = getattr(service.endpoint, "endpoint", service.endpoint)
        return str(endpoint._interface)

    assert interface("cable:listen:tcp:7443:tls=off") == "127.0.0.1"
    assert interface("cable:listen:tcp:7443:tls=off:interface=10.9.0.1") == "10.9.0.1"


def test_aListenerLogsItsAddressAsPortPrintShowsPeers() -> None:
    """
    C{listening on tcp [::1]:7443}, as C{port/print} writes a peer, not
    Twisted's C{IPv6Address(type='TCP', host='::1', port=7443, flowInfo=0,
    scopeID=0)}.
    """
    from twisted.logger import capturedLogs, formatEvent

    def listening(text: str) -> list[str]:
        service = cable.makeService(Switch(), PortSpec(text), MemoryReactor())
        with capturedLogs() as events:
            service.startService()
        return [formatEvent(e) for e in events if "listening on" in e.get("log_format", "")]

    assert listening(r"cable:listen:tcp6:7443:interface=\:\:1:tls=off") == [
        r"cable:listen:tcp6:7443:interface=\:\:1:tls=off: listening on tcp [::1]:7443"]


def test_unixCableListenerIsPrivateAndClaimsItsPath(tmp_path) -> None:
    """A cable listening on a Unix socket gets what a qemu: listener gets."""
    path = f"{tmp_path}/cable.sock"
    service = cable.makeService(Switch(), PortSpec(f"cable:listen:unix:{path}:tls=off"),
                                MemoryReactor())
    assert isinstance(service, StreamListener)
    assert service.unixPath == path and service.endpoint._mode == 0o600


def test_aPeerFailingAgainIsLoggedOncePerSeriesWhateverItsPort() -> None:
    """
    A peer that keeps failing (a switch with an untrusted certificate, or
    something else than a cable, retrying) connects from a new port each
    time and sends what it likes: the listener logs it once per series, not
    at every attempt; another host failing is news; a cable coming up
    starts a new series.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.logger import capturedLogs
    from twisted.python.failure import Failure

    service = cable.makeService(Switch(), PortSpec("cable:listen:tcp:0:tls=off"),
                                MemoryReactorClock())

    def attempt(host: str, port: int, first: bytes) -> None:
        link = service.factory.buildProtocol(None)
        assert link is not None
        transport = Transport()
        transport.peerAddr = IPv4Address("TCP", host, port)
        link.makeConnection(transport)
        link.dataReceived(encode(first))
        link.connectionLost(Failure(ConnectionDone()))

    with capturedLogs() as events:
        for n in range(20):
            attempt("10.0.0.1", 40000 + n, frame(BROADCAST, mac(n + 1)))
        attempt("10.0.0.2", 50000, b"junk")
        attempt("10.0.0.1", 40100, cable.HELLO)
        attempt("10.0.0.1", 40101, b"junk")
    problems = [e["problem"] for e in events if "problem" in e]
    assert [p.split(":")[0] for p in problems] == [
        "tcp 10.0.0.1", "tcp 10.0.0.2", "tcp 10.0.0.1"], problems
    assert all("not a vtwisted cable" in p for p in problems)


def test_messageShorterThanTheHeaderIsMalformedNotANegativeRunt() -> None:
    """
    A message too short to hold the virtio-net header is counted as
    malformed, saying so, and leaves the IN counters alone (the byte
    counter went down by the missing bytes, and the log spoke of a frame of
    -5 bytes).
    """
    from twisted.logger import capturedLogs

    switch = Switch()
    link, wire = connect(switch)
    link.dataReceived(encode(cable.HELLO))
    with capturedLogs() as events:
        link.dataReceived(encode(b"\x00" * 5, b""))
    counters = link.port.counters
    assert counters.drops["malformed"] == 2 and counters.drops["runt"] == 0
    assert counters.inBytes == 0 and counters.inFrames == 0
    (logged,) = [e for e in events if e.get("reason") == "malformed"]
    assert "5 bytes, shorter than a virtio-net header" in logged["detail"]
