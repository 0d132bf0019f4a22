"""
QEMU stream ports (C{qemu:}) with fake transports: spec parsing, framing,
bad lengths, back-pressure.  Real sockets and real QEMU guests are in
tests/integration/test_qemu_stream.py.
"""

from __future__ import annotations

import random
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from vtwisted.app import buildService
from vtwisted.ports import qemu, streamlinks, streamlistener
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug

BROADCAST = b"\xff" * 6


def make(text: str, switch: Switch | None = None) -> streamlinks.StreamPorts:
    return qemu.makeService(switch or Switch(), PortSpec(text), MemoryReactorClock())


def listener(text: str) -> streamlistener.StreamListener:
    service = make(text)
    assert isinstance(service, streamlistener.StreamListener)
    return service


class FakeSocket:
    """
    The little of a TCP socket L{qemu.QemuStreamLink.connectionMade} touches.
    """

    family = socket.AF_INET

    def fileno(self) -> int:
        return 42


class Transport(StringTransport):
    """
    A L{StringTransport} with a socket handle and a bounded buffer.
    """

    bufferSize = 0
    noDelay = False

    def __init__(self, peer: IPv4Address | IPv6Address | None = None) -> None:
        super().__init__(peerAddress=peer or IPv4Address("TCP", "127.0.0.1", 40000))
        self.handle = FakeSocket()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled

    def getHandle(self) -> FakeSocket:
        return self.handle


def connect(service: streamlinks.StreamPorts) -> tuple[qemu.QemuStreamLink, Transport]:
    link = service.factory.buildProtocol(None)
    assert isinstance(link, qemu.QemuStreamLink)
    transport = Transport()
    link.makeConnection(transport)
    return link, transport


def encode(*frames: bytes) -> bytes:
    return b"".join(struct.pack("!I", len(f)) + f for f in frames)


def decode(data: bytes) -> list[bytes]:
    frames = []
    while data:
        (length,) = struct.unpack("!I", data[:4])
        frames.append(data[4 : 4 + length])
        data = data[4 + length :]
    return frames


def test_listenSpecBuildsServerEndpointWithoutSwitchOptions() -> None:
    """The switch's own keywords are taken out; the rest configures the endpoint."""
    service = make("qemu:tcp:5555:interface=127.0.0.1:vlan=3:mtu=1400")
    assert isinstance(service, qemu.QemuListener)
    assert isinstance(service.endpoint, TCP4ServerEndpoint)
    assert (service.endpoint._port, service.endpoint._interface) == (5555, "127.0.0.1")
    assert (service.options.vlan, service.options.mtu) == (3, 1400)
    assert service.listening


def test_tcpListensOnLoopbackUnlessAnInterfaceIsGiven() -> None:
    """Anyone who can connect joins the LAN: not every address by default."""
    assert listener("qemu:tcp:5555").endpoint._interface == "127.0.0.1"
    assert listener("qemu:tcp6:5555").endpoint._interface == "::1"
    assert listener("qemu:tcp:5555:interface=0.0.0.0").endpoint._interface == "0.0.0.0"


def test_tlsListensOnLoopbackUnlessAnInterfaceIsGiven(tmp_path) -> None:
    """
    Twisted's C{ssl:} endpoint encrypts but asks guests for no certificate:
    whoever connects still joins the LAN, so it too listens on loopback
    unless told otherwise.
    """
    from certs import selfSignedCertificate

    key, cert = selfSignedCertificate(tmp_path)
    tls = f"ssl:5555:privateKey={key}:certKey={cert}"

    def interface(text: str) -> str:
        endpoint = listener(text).endpoint
        return str(endpoint._interface)

    assert interface(f"qemu:{tls}") == "127.0.0.1"
    assert interface(f"qemu:{tls}:interface=0.0.0.0") == "0.0.0.0"


def test_connectSpecBuildsClientEndpoint() -> None:
    """C{qemu:connect:} wraps a client endpoint; C{port=} there is the TCP port."""
    service = make("qemu:connect:tcp:host=127.0.0.1:port=6000:trunk=10,20")
    assert isinstance(service, qemu.QemuConnector)
    endpoint = service.endpoint
    assert isinstance(endpoint, TCP4ClientEndpoint)
    assert (endpoint._host, endpoint._port) == ("127.0.0.1", 6000)
    assert service.options.trunk == [10, 20]
    assert not service.listening


def test_unixListenerIsPrivateUnlessAModeIsGiven(tmp_path) -> None:
    """A listening Unix socket is 0600 by default, and its path is checked for staleness."""
    private = listener(f"qemu:unix:{tmp_path}/a\\:b.sock")
    assert private.unixPath == f"{tmp_path}/a:b.sock"
    assert private.endpoint._mode == 0o600
    shared = listener(f"qemu:listen:unix:address={tmp_path}/c.sock:mode=660")
    assert shared.unixPath == f"{tmp_path}/c.sock"
    assert shared.endpoint._mode == 0o660


@pytest.mark.parametrize(
    "text, problem",
    [
        ("qemu", "names no endpoint"),
        ("qemu:connect", "names no endpoint"),
        ("qemu:carrier-pigeon:7", "not a Twisted server endpoint"),
        ("qemu:unix:/tmp/x.sock:colour=blue", "unknown option colour=: neither qemu: nor "
                                              "Twisted's unix: endpoint takes it (qemu: "
                                              "takes vlan=, trunk=, mtu=, keepalive= and "
                                              "the impairments; the other keywords are "
                                              "the endpoint's)"),
        ("qemu:tcp:0:keepalve=5", "unknown option keepalve=: neither qemu: nor Twisted's "
                                  "tcp: endpoint takes it"),
        ("qemu:connect:tcp:host=h:port=1:vlna=3", "unknown option vlna=: neither qemu: nor "
                                                  "Twisted's tcp: endpoint"),
        ("qemu:connect:tcp:host=127.0.0.1", "not a Twisted client endpoint"),
        ("qemu:unix", "the server endpoint 'unix' needs an address, as in "
                      "qemu:unix:/path/to/sock"),
        ("qemu:unix:vlan=3", "the server endpoint 'unix' needs an address"),
        ("qemu:carrier-pigeon", "Unknown endpoint type: 'carrier-pigeon'"),
        ("qemu:connect:tcp", "the client endpoint 'tcp' needs an address, as in "
                             "qemu:connect:tcp:host=HOST:port=PORT"),
        ("qemu:unix:/tmp/x.sock:vlan=5000", "vlan=5000 is out of range"),
    ],
)
def test_badSpecsFailWithTheSpecNamed(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        make(text)
    assert text in str(info.value) and problem in str(info.value)


def test_qemuIsAnInstalledPortType() -> None:
    """The plugin declaration is found, and a switch service can be built from it."""
    service = buildService(MemoryReactor(), ["qemu:tcp:0:interface=127.0.0.1"], defaultSock=False)
    assert [s.spec for s in service if isinstance(s, qemu.QemuListener)] == [
        "qemu:tcp:0:interface=127.0.0.1"
    ]


def test_eachGuestGetsAPortAndFramesTravelBothWays() -> None:
    """
    Two guests get two ports; frames split anywhere arrive whole, and what
    the switch sends goes out length-prefixed.
    """
    switch = Switch()
    service = make("qemu:tcp:0", switch)
    left, leftWire = connect(service)
    right, rightWire = connect(service)
    assert left.port is not right.port and {left, right} == set(service.currentLinks())
    assert leftWire.noDelay  # as QEMU sets it
    frames = [frame(BROADCAST, mac(1), bytes([n % 256]) * n) for n in (46, 200, 1500)]
    frames.append(frame(mac(7), mac(1), b"u" * 9000))  # jumbo, to an unknown address
    stream = encode(*frames)
    rng = random.Random(7)
    at = 0
    while at < len(stream):
        step = rng.randint(1, 300)
        left.dataReceived(stream[at : at + step])
        at += step
    # left does not get its own frames back
    assert decode(rightWire.value()) == frames
    assert leftWire.value() == b""
    assert left.port.counters.inFrames == 4


def test_anIpv6PeerIsShownWithItsAddressInBrackets() -> None:
    """
    C{port/print} shows a guest on C{qemu:tcp6:} as C{tcp [::1]:40290}, as
    addresses with ports are written, not C{tcp ::1:40290}.
    """
    service = make("qemu:tcp6:0")
    link = service.factory.buildProtocol(None)
    assert isinstance(link, qemu.QemuStreamLink)
    transport = Transport(IPv6Address("TCP", "::1", 40290))
    link.makeConnection(transport)
    assert link.description == "tcp [::1]:40290"


def test_guestDisconnectingFreesItsPort() -> None:
    switch = Switch()
    service = make("qemu:tcp:0", switch)
    link, transport = connect(service)
    port = link.port
    link.connectionLost(None)
    assert service.currentLinks() == [] and port.links == []


@pytest.mark.parametrize(("data", "told"), [
    (struct.pack("!I", 100) + b"x" * 30, "30 of 100 bytes of a frame"),
    (b"\0\0", "2 of the 4 bytes of a length prefix"),
])
def test_peerEndingInsideAFrameIsCountedAndLoggedOnce(data: bytes, told: str) -> None:
    """
    A guest whose connection ends with half a frame sent: that frame counts
    as malformed on its port, and one line says how much of it came.
    """
    switch = Switch()
    service = make("qemu:tcp:0", switch)
    link, _ = connect(service)
    port = link.port
    link.dataReceived(encode(frame(BROADCAST, mac(1))) + data)
    with capturedLogs() as events:
        link.connectionLost(Failure(ConnectionDone()))
    assert port.counters.drops["malformed"] == 1 and port.counters.inFrames == 1
    lines = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
    assert lines == [f"qemu:tcp:0: tcp 127.0.0.1:40000: the connection ended inside a "
                     f"message ({told} received); dropped as malformed"]


def test_cleanEndsAndClosesOfItsOwnAreNoTruncation() -> None:
    """
    A guest leaving between frames, or a link the switch closes with a
    frame half read (port/remove, stopping), is no malformed frame.
    """
    switch = Switch()
    service = make("qemu:tcp:0", switch)
    clean, _ = connect(service)
    closed, _ = connect(service)
    clean.dataReceived(encode(frame(BROADCAST, mac(1))))
    closed.dataReceived(struct.pack("!I", 100) + b"x")
    service.reactor.advance(service.SHORT_LINK)  # guests that worked, not failed clients
    with capturedLogs() as events:
        clean.connectionLost(Failure(ConnectionDone()))
        closed.close()
        closed.connectionLost(Failure(ConnectionDone()))
    assert [e for e in events if e["log_level"] >= LogLevel.warn] == []
    assert clean.port.counters.drops["malformed"] == closed.port.counters.drops["malformed"] == 0


def test_tooLongLengthClosesOnlyThatConnection() -> None:
    """
    A length over QEMU's limit cannot be resynchronised: it is counted as
    malformed and that connection closed; the other guest keeps working.
    """
    switch = Switch()
    service = make("qemu:tcp:0", switch)
    bad, badWire = connect(service)
    good, goodWire = connect(service)
    listener = FakeLink()
    plug(switch, listener)
    bad.dataReceived(struct.pack("!I", qemu.MAX_FRAME + 1) + b"x" * 100)
    bad.dataReceived(b"more junk")
    assert badWire.disconnecting
    assert bad.port.counters.drops["malformed"] == 1
    assert bad not in service.links and not bad.port.links  # unplugged at once
    good.dataReceived(encode(frame(BROADCAST, mac(5))))
    assert listener.sent == [frame(BROADCAST, mac(5))]
    assert badWire.value() == b""


def test_fullGuestDropsAndCountsUntilItDrains() -> None:
    """
    While the transport says its buffer is full, frames to that guest are
    dropped and counted as busy, not queued; they flow again once it drains.
    """
    switch = Switch()
    service = make("qemu:tcp:0", switch)
    link, wire = connect(service)
    assert wire.producer is link.valve and wire.streaming
    other = FakeLink()
    plug(switch, other)
    link.valve.pauseProducing()
    other.receive(frame(BROADCAST, mac(9)))
    assert wire.value() == b"" and link.port.counters.drops["busy"] == 1
    link.valve.resumeProducing()
    other.receive(frame(BROADCAST, mac(9)))
    assert decode(wire.value()) == [frame(BROADCAST, mac(9))]
    assert link.port.counters.drops["busy"] == 1


def test_framesAsMemoryviewsAreSent() -> None:
    """The switch may hand a link a memoryview (a segment, a frame untagged)."""
    switch = Switch()
    link, wire = connect(make("qemu:tcp:0", switch))
    data = frame(BROADCAST, mac(3))
    link.sendFrame(memoryview(b"\0\0" + data)[2:])  # type: ignore[arg-type]
    assert decode(wire.value()) == [data]


def test_noFreePortClosesTheConnection() -> None:
    switch = Switch(numPorts=2)
    plug(switch, FakeLink())
    link, wire = connect(make("qemu:tcp:0", switch))
    assert wire.disconnecting and link.port is None
    link.dataReceived(encode(frame(BROADCAST, mac(4))))  # ignored, not an error


def test_closingALinkUnplugsItAtOnce() -> None:
    """C{port/remove} needs the link gone from its port when close returns."""
    switch = Switch()
    service = make("qemu:tcp:0", switch)
    link, wire = connect(service)
    port = link.port
    link.close()
    assert port.links == [] and wire.disconnecting


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        st.one_of(st.binary(max_size=200), st.integers(qemu.MAX_FRAME + 1, 2**32 - 1)),
        max_size=12,
    ),
    cuts=st.lists(st.integers(1, 300), min_size=1, max_size=20),
)
def test_anyByteStreamIsFramedOrRefusedWithoutHarm(messages: list, cuts: list[int]) -> None:
    """
    Whatever a peer sends, cut anywhere: every whole message before the
    first too-long length reaches the switch once, in order; from that
    length on nothing does and the connection is closed; nothing raises,
    and the switch still forwards for others afterwards.
    """
    switch = Switch()
    link, wire = connect(make("qemu:tcp:0", switch))
    seen: list[bytes] = []
    forward = link._receive

    def spy(port: object, message: bytes) -> None:
        seen.append(message)
        forward(port, message)

    link._receive = spy
    stream, expected, broken = b"", [], False
    for message in messages:
        if isinstance(message, int):
            stream += struct.pack("!I", message) + b"junk"
            broken = True
        else:
            stream += struct.pack("!I", len(message)) + message
            if not broken:
                expected.append(message)
    at = 0
    for cut in cuts * (len(stream) // max(sum(cuts), 1) + 1):
        if at >= len(stream):
            break
        link.dataReceived(stream[at : at + cut])
        at += cut
    assert seen == expected
    assert wire.disconnecting == broken
    other, listener = FakeLink(), FakeLink()
    plug(switch, other)
    plug(switch, listener)
    other.receive(frame(BROADCAST, mac(1)))
    assert listener.sent == [frame(BROADCAST, mac(1))]


@pytest.mark.parametrize("prefix, keyword", [("qemu:ssl:5555", "certKey"),
                                             ("qemu:connect:tls:127.0.0.1:5555", "certificate")])
def test_aMissingCertificateFileIsASpecError(tmp_path, prefix: str, keyword: str) -> None:
    """An ssl:/tls: endpoint whose key file is missing stops start-up with the
    spec, the path and the errno, not a traceback."""
    missing = tmp_path / "missing.pem"
    text = f"{prefix}:privateKey={missing}:{keyword}={missing}"
    with pytest.raises(SpecError) as info:
        make(text)
    assert text in str(info.value)
    assert f"cannot read {missing}: No such file or directory (errno 2)" in str(info.value)
