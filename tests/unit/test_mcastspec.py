"""
The C{mcast:} spec: what it accepts, and the errors that name what is wrong;
and how the link tells the switch's own frames coming back from members'.
"""

from __future__ import annotations

import errno

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent

from vtwisted.ports import mcast
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug

BROADCAST = b"\xff" * 6


def test_specGivesGroupPortAndOptions() -> None:
    """Group, port, localaddr and ttl reach the service."""
    service = mcast.makeService(Switch(), PortSpec("mcast:230.0.0.1:1234:localaddr=127.0.0.1:"
                                                   "ttl=4:vlan=3"), None)
    assert (service.group, service.number, service.localaddr, service.ttl) == (
        "230.0.0.1", 1234, "127.0.0.1", 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mcast:10.0.0.1:1234", "not a multicast group"),
        ("mcast:group:1234", "not an IPv4 address"),
        ("mcast:ff02\\:\\:1:1234",
         r"'ff02::1' is not an IPv4 address \(QEMU's multicast sockets are IPv4 only\)"),
        ("mcast:230.0.0.1:http", "not a UDP port number"),
        ("mcast:230.0.0.1:70000", "out of range"),
        ("mcast:230.0.0.1:1234:localaddr=eth0", "localaddr"),
        ("mcast:230.0.0.1:1234:ttl=300", "ttl"),
        ("mcast:230.0.0.1:1234:colour=blue", "colour"),
    ],
)
def test_badSpecsAreRefused(text: str, message: str) -> None:
    """Each mistake is a SpecError naming the spec and what is wrong."""
    with pytest.raises(SpecError, match=message) as caught:
        mcast.makeService(Switch(), PortSpec(text), None)
    assert text.split(":colour")[0] in str(caught.value)


class FakeSocket:
    """
    The sending socket as the kernel shows it: bound to C{0.0.0.0:PORT}
    until connected, then to the address it chose to send from.
    """

    def __init__(self, chosen: str = "10.9.0.1", port: int = 40000) -> None:
        self.chosen = chosen
        self.name = ("0.0.0.0", port)
        self.refusal: OSError | None = None
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def setsockopt(self, *args: object) -> None:
        pass

    def fileno(self) -> int:
        return 7

    def getsockname(self) -> tuple[str, int]:
        return self.name

    def connect(self, address: tuple[str, int]) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.name = (self.chosen, self.name[1])

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.append((data, address))


class FakeSender:
    def __init__(self, sock: FakeSocket) -> None:
        self.socket = sock


def _groupLink(sock: FakeSocket,
               reactor: object = None) -> tuple[mcast.McastLink, FakeLink]:
    """
    An C{mcast:} link sending through C{sock}, plugged into a switch with
    one other link, which it returns too.
    """
    switch = Switch()
    service = mcast.makeService(switch, PortSpec("mcast:230.0.0.1:5560"),
                                reactor or FakeMulticastReactor())
    link = mcast.McastLink(service)
    link.transport = FakeSender(FakeSocket())  # type: ignore[assignment]
    link.useSender(FakeSender(sock))
    link.plug(switch, switch.allocatePort())
    other = FakeLink()
    plug(switch, other)
    return link, other


def test_ownFramesAreToldByAddressAndPort() -> None:
    """
    What comes back from the switch's own address and port is dropped; a
    frame from that port number on another address (another host, or a
    socket bound to another address here) is a member's.
    """
    link, other = _groupLink(FakeSocket("10.9.0.1", 40000))
    assert link.own == ("10.9.0.1", 40000)
    echo, foreign = frame(BROADCAST, mac(1)), frame(BROADCAST, mac(2))
    link.datagramReceived(echo, ("10.9.0.1", 40000))
    link.datagramReceived(foreign, ("10.9.0.2", 40000))
    link.datagramReceived(echo, ("10.9.0.1", 40001))
    assert other.sent == [foreign, echo]


def test_withoutARouteOwnFramesAreToldByPortUntilOneComesBack() -> None:
    """
    With no route for the group at start the sending address is unknown:
    the port alone tells own frames (logged once); when one comes back the
    address is learnt, and the same port from elsewhere is a member again.
    """
    sock = FakeSocket("10.9.0.1", 40000)
    sock.refusal = OSError(errno.ENETUNREACH, "Network is unreachable")
    reactor = FakeMulticastReactor()
    with capturedLogs() as events:
        link, other = _groupLink(sock, reactor)
        link.datagramReceived(frame(BROADCAST, mac(2)), ("10.9.0.2", 40000))
    warnings = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
    assert len(warnings) == 1 and "mcast:230.0.0.1:5560" in warnings[0]
    assert "Network is unreachable (errno 101)" in warnings[0]
    assert other.sent == []
    sock.refusal = None
    reactor.now = 1.0  # the next try (one a second at most)
    echo, foreign = frame(BROADCAST, mac(1)), frame(BROADCAST, mac(2))
    link.datagramReceived(echo, ("10.9.0.1", 40000))
    link.datagramReceived(foreign, ("10.9.0.2", 40000))
    assert link.own == ("10.9.0.1", 40000) and other.sent == [foreign]


def test_anUnsettledSocketIsConnectedAgainOnceASecondAtMost() -> None:
    """
    While the sending address is unknown, each frame of the switch's own
    that comes back makes the port try to learn it, but not more than once a
    second: a port sending thousands of frames a second without an address
    makes one C{connect} a second, not one per frame.
    """
    reactor = FakeMulticastReactor()
    sock = FakeSocket("10.9.0.1", 40000)
    sock.refusal = OSError(errno.ENETUNREACH, "Network is unreachable")
    tries: list[float] = []
    connect = sock.connect

    def counted(address: tuple[str, int]) -> None:
        tries.append(reactor.now)
        connect(address)

    sock.connect = counted  # type: ignore[method-assign]
    link, other = _groupLink(sock, reactor)
    echo = frame(BROADCAST, mac(1))
    for _ in range(100):
        link.datagramReceived(echo, ("10.9.0.1", 40000))
    assert tries == [0.0, 0.0], "at start, then for the first frame back"
    reactor.now = 0.5
    link.datagramReceived(echo, ("10.9.0.1", 40000))
    reactor.now = 1.0
    sock.refusal = None
    link.datagramReceived(echo, ("10.9.0.1", 40000))
    assert tries == [0.0, 0.0, 1.0] and link.own == ("10.9.0.1", 40000)
    foreign = frame(BROADCAST, mac(2))
    link.datagramReceived(foreign, ("10.9.0.2", 40000))
    assert other.sent == [foreign] and tries == [0.0, 0.0, 1.0]


class FakeSendingPort:
    """A listening multicast port as the service uses its sending one."""

    def __init__(self, sock: FakeSocket) -> None:
        self.socket = sock
        self.stopped = False

    def setLoopbackMode(self, mode: int) -> None:
        pass

    def setTTL(self, ttl: int) -> None:
        pass

    def stopListening(self) -> None:
        self.stopped = True


class FakeMulticastReactor:
    """Hands out sending ports whose sockets choose C{chosen}; a clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.chosen = "10.9.0.3"
        self.opened: list[FakeSendingPort] = []

    def seconds(self) -> float:
        return self.now

    def listenMulticast(self, number: int, protocol: object, interface: str = "",
                        **kwargs: object) -> FakeSendingPort:
        port = FakeSendingPort(FakeSocket(self.chosen, 41000 + len(self.opened)))
        self.opened.append(port)
        return port


def test_aSendingAddressGoneGetsANewSocketAtMostOncePerSecond() -> None:
    """
    When sends fail because the address the sending socket was fixed to is
    gone, a new socket is opened (connected from the address the kernel
    chooses now) and the port sends through it; more failures within a
    second open no more.
    """
    reactor = FakeMulticastReactor()
    switch = Switch()
    service = mcast.makeService(switch, PortSpec("mcast:230.0.0.1:5560"), reactor)
    link = service.link = mcast.McastLink(service)
    link.transport = FakeSender(FakeSocket())  # type: ignore[assignment]
    port = switch.allocatePort()
    link.plug(switch, port)
    plug(switch, FakeLink())

    def gone(data: bytes, address: tuple[str, int]) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    oldSock = FakeSocket("10.9.0.1", 40000)
    oldSock.sendto = gone  # type: ignore[method-assign]
    oldPort = FakeSendingPort(oldSock)
    service.ports = [object(), oldPort]
    link.useSender(oldPort)
    port.send(frame(BROADCAST, mac(1)))
    port.send(frame(BROADCAST, mac(1)))
    assert oldPort.stopped and len(reactor.opened) == 1
    assert link.own == ("10.9.0.3", 41000) and service.ports[1] is reactor.opened[0]
    port.send(frame(BROADCAST, mac(3)))
    assert [sent[0] for sent in reactor.opened[0].socket.sent] == [
        frame(BROADCAST, mac(1)), frame(BROADCAST, mac(3))]
    reactor.chosen = "10.9.0.4"
    reactor.opened[0].socket.sendto = gone
    link.useSender(reactor.opened[0])  # as at its start, now failing too
    port.send(frame(BROADCAST, mac(1)))
    assert len(reactor.opened) == 1
    reactor.now = 1.0
    port.send(frame(BROADCAST, mac(1)))
    assert len(reactor.opened) == 2


def test_aSocketWithoutAnAddressIsNotSettled() -> None:
    """
    A connect that leaves the socket without a source address (its
    interface has none) is no address to tell own frames by: the port
    alone tells them.
    """
    with capturedLogs() as events:
        link, other = _groupLink(FakeSocket("0.0.0.0", 40000))
    link.datagramReceived(frame(BROADCAST, mac(1)), ("10.9.0.1", 40000))
    assert other.sent == []
    # as on a namespace's loopback with a route for 224.0.0.0/4 through lo:
    # a route there is, so the warning says what gives the socket an address
    [warning] = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
    assert "localaddr=" in warning and "until there is a route" not in warning, warning
