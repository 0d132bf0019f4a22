"""
QEMU's multicast transport (C{mcast:GROUP:PORT}): the peer of
C{qemu -netdev socket,mcast=GROUP:PORT} and of C{-netdev dgram} with a
multicast remote, and of User-Mode Linux's C{mcast} transport.

Theory of operation
-------------------
A multicast group is a hub: every member sends each frame, as one
datagram with no header, to GROUP:PORT, and every member hears every
frame, its own included (QEMU turns C{IP_MULTICAST_LOOP} on so that guests
on one host hear each other).  So the whole group is one port of the
switch, where the switch learns the addresses of all the guests in it.

Members on one host all bind GROUP:PORT and send from it, so a
datagram's source cannot tell them apart.  The switch therefore sends from
a second socket of its own, on an ephemeral port: what arrives from that
socket's address and port is its own frame coming back and is dropped, so
it never teaches the switch that the frame's sender lives in the group.
Another host, or a socket of this one bound to another address, may send
from the same port number: its frames still count.

The address a looped-back frame shows as its source is the one the kernel
chose to send it from: C{127.0.0.1} when multicast is routed through the
loopback, the outgoing interface's address on a real network, C{localaddr=}
if given.  The sending socket is connected to the group when the service
starts, which makes the kernel choose that address once and keep it (a
connected UDP socket's source is fixed); C{getsockname} then tells it.  If
there is no route for the group yet (or the kernel leaves the connected
socket without a source address, as it does for a route through a
namespace's loopback; C{localaddr=} fixes the address), its own frames are
told by port alone (and logged so) until one of them comes back, when the
socket is connected again (once a second at most); without C{localaddr=},
the group cannot even be joined then, which stops the port's start with
a message saying so (Twisted reports a failed join through a
L{Deferred}, which was left unread: the port started deaf).
Frames leave with TTL 1 (the local link) unless C{ttl=} says otherwise,
through the interface of C{localaddr=} if given, as QEMU's C{localaddr=}
does.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.interfaces import ILink, IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.datagrams import (
    PlainDatagramLink,
    ReadErrors,
    listenMulticast,
    udpPort,
)
from vtwisted.ports.singlelink import SingleLinkService
from vtwisted.sockettools import growSendBuffer, listenError, stopListeningNow
from vtwisted.spec import PortSpec

log = Logger()

#: The largest datagram read: QEMU's own limit.
MAX_DATAGRAM = 4096 + 65536
SEND_BUFFER = 2 * 1024 * 1024

#: Send errors that may say the address the sending socket was fixed to is
#: no longer this host's (an interface's address changed, and with it the
#: routes through that address were flushed): a new socket, which
#: the kernel gives the current address, is opened, at most once per
#: L{RENEW_INTERVAL} seconds; an unsettled socket (see L{McastLink._settle})
#: is connected again at most as often.
ADDRESS_GONE = frozenset({errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH})
RENEW_INTERVAL = 1.0


class _Sender(DatagramProtocol):
    """
    The socket the switch sends from; what comes to it is ignored, its read
    errors are counted.
    """

    noisy = False

    def __init__(self, service: McastService) -> None:
        self.service = service

    def readFailed(self, where: str, e: OSError) -> None:
        self.service.readErrors.failed(self.service.spec, where, e)


@implementer(ILink)
class McastLink(PlainDatagramLink, DatagramProtocol):
    """
    The multicast group, as one link of one port.
    """

    noisy = False
    vnetHeader = False
    uid = None
    linkId = 0
    module = "qemu mcast"
    transportName = "QEMU's multicast transport"

    def __init__(self, service: McastService) -> None:
        self.service = service
        self.what = f"group {service.group}:{service.number}"
        self.port: Any = None
        #: The source address and port of the switch's own frames.
        self.own: tuple[str, int] = ("", 0)
        self._sender: Any = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if addr != self.own:
            self.deliver(datagram)

    def _receiveUnsettled(self, datagram: bytes, addr: Any) -> None:
        """
        L{datagramReceived} while the sending socket's address is unknown:
        own frames told by port alone, until one comes back.
        """
        if addr[1] != self.own[1]:
            self.deliver(datagram)
            return
        now = self.service.reactor.seconds()
        if now - self._triedAt < RENEW_INTERVAL:
            return  # one connect() a second, not one per frame of ours that comes back
        self._triedAt = now
        if self._settle() and addr != self.own:
            self.deliver(datagram)

    #: When an unsettled sending socket was last connected (L{_receiveUnsettled}).
    _triedAt = float("-inf")

    def _settle(self) -> bool:
        """
        Connect the sending socket to the group, which fixes the address it
        sends from, and learn that address; whether that worked.
        """
        sock = self._sender
        try:
            sock.connect((self.service.group, self.service.number))
            own = sock.getsockname()
            if own[0] == "0.0.0.0":
                raise OSError(errno.EADDRNOTAVAIL, "no address on the group's interface")
        except OSError as e:
            if "datagramReceived" not in self.__dict__:
                self.datagramReceived = self._receiveUnsettled  # type: ignore[method-assign]
                log.warn("{spec}: cannot connect the sending socket to the group: {error} "
                         "(errno {errno}); the switch's own frames are told by their source "
                         "port alone until the kernel gives it an address to send to {group} "
                         "from (a route for the group through an interface with an address; "
                         "localaddr=ADDR fixes it)",
                         spec=self.service.spec, error=e.strerror, errno=e.errno,
                         group=self.service.group)
            return False
        self.own = own
        if self.__dict__.pop("datagramReceived", None) is not None:
            log.info("{spec}: the switch's own frames are told by address and port again "
                     "({host}:{port})", spec=self.service.spec, host=self.own[0],
                     port=self.own[1])
        return True

    def useSender(self, sender: Any) -> None:
        """
        Send through C{sender}'s socket, and drop what comes back from it.
        """
        sock = self._sender = sender.socket
        growSendBuffer(sock, SEND_BUFFER)
        self.own = sock.getsockname()
        self._settle()
        self.linkId = self.transport.socket.fileno()  # type: ignore[union-attr]
        sendto = sock.sendto
        group = (self.service.group, self.service.number)
        failed = self._sendFailed

        def sendFrame(frame: bytes) -> None:
            try:
                sendto(frame, group)
            except OSError as e:
                failed(e)

        self.sendFrame = sendFrame  # type: ignore[method-assign]
        if self.port is not None:
            self.port.rewire()  # the port holds the old socket's sendFrame

    def sendFrame(self, frame: bytes) -> None:
        """
        Send one frame to the group (replaced by L{useSender}).
        """

    #: When the sending socket was last replaced (L{_sendFailed}).
    _renewedAt = float("-inf")

    def _sendFailed(self, e: OSError) -> None:
        self.sendFailed(e, self.service.spec, f"is there a route for {self.service.group}?")
        if e.errno in ADDRESS_GONE and self.own[0] not in ("", "0.0.0.0"):
            now = self.service.reactor.seconds()
            if now - self._renewedAt >= RENEW_INTERVAL:
                self._renewedAt = now
                self.service.renewSender()


@implementer(IPortService)
class McastService(SingleLinkService):
    """
    The service of one C{mcast:} spec: the group's socket, the sending
    socket, one port.
    """

    def __init__(self, switch: Any, reactor: Any, group: str, number: int,
                 localaddr: str | None, ttl: int, options: PortOptions, spec: str) -> None:
        super().__init__(switch, reactor, options, spec)
        self.group = group
        self.number = number
        self.localaddr = localaddr
        self.ttl = ttl
        self.link: McastLink | None = None
        self.ports: list[Any] = []
        self.readErrors = ReadErrors()

    def bound(self) -> bool:
        return bool(self.ports)

    def bind(self) -> None:
        link = McastLink(self)
        interface = self.localaddr or "0.0.0.0"
        try:
            receiving = listenMulticast(self.reactor, self.number, link, self.group,
                                        MAX_DATAGRAM, listenMultiple=True)
            self.ports.append(receiving)
            _joined(receiving.joinGroup(self.group, interface))
            sending = self._openSender()
            self.ports.append(sending)
        except Exception as e:
            for port in self.ports:
                stopListeningNow(port)
            self.ports = []
            error = listenError(f"{self.spec}: cannot join {self.group}:{self.number}", e)
            if error.errno == errno.ENODEV:
                hint = (f"is there an interface with the address {self.localaddr}?"
                        if self.localaddr else "no route leads to the group: give "
                        f"localaddr=ADDR, or a route (ip route add {self.group} dev IFACE)")
                error = OSError(error.errno, f"{error.strerror}; {hint}")
            raise error from e
        link.useSender(sending)
        self.link = link

    def _openSender(self) -> Any:
        sending = listenMulticast(self.reactor, 0, _Sender(self), self.localaddr or "")
        try:
            sending.setLoopbackMode(1)
            sending.setTTL(self.ttl)
            if self.localaddr:
                sending.setOutgoingInterface(self.localaddr)
        except Exception:
            sending.stopListening()
            raise
        return sending

    def renewSender(self) -> None:
        """
        Replace the sending socket, whose fixed source address is gone: the
        new one is connected to the group from the address the kernel
        chooses now.  If it cannot be opened, the old one stays (logged).
        """
        if self.link is None or len(self.ports) != 2:
            return
        try:
            sending = self._openSender()
        except Exception as e:
            error = listenError(f"{self.spec}: cannot open a new sending socket", e)
            log.warn("{error}", error=error.strerror)
            return
        old, self.ports[1] = self.ports[1], sending
        old.stopListening()
        self.link.useSender(sending)
        log.info("{spec}: the sending address was gone; now sending from {host}",
                 spec=self.spec, host=self.link.own[0])

    def stopService(self) -> Any:
        super().stopService()
        self.unplug()
        ports, self.ports = self.ports, []
        self.link = None
        for port in ports:
            stopListeningNow(port)  # the group's port free for a port/add in the same batch
        return None


def _joined(joining: Any) -> None:
    """
    Raise what stopped a join (Twisted reports it through a L{Deferred},
    which has fired by now: the group and interface are addresses), as
    the L{OSError} under Twisted's C{MulticastJoinError}.
    """
    outcome: list[Any] = []
    joining.addBoth(outcome.append)
    if outcome and isinstance(outcome[0], Failure):
        error = outcome[0].value
        cause = getattr(error, "__cause__", None)
        if isinstance(cause, OSError):
            raise cause
        outcome[0].raiseException()


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> McastService:
    """
    Build the service for C{mcast:GROUP:PORT[:localaddr=ADDR][:ttl=N]}.
    """
    groupText, portText = spec.positional(["group", "port"], 2)
    try:
        group = ipaddress.IPv4Address(groupText or "")
    except ValueError:
        why = " (QEMU's multicast sockets are IPv4 only)" if ":" in (groupText or "") else ""
        raise spec.error(f"{groupText!r} is not an IPv4 address{why}") from None
    if not group.is_multicast:
        raise spec.error(f"{group} is not a multicast group (224.0.0.0/4)")
    number = udpPort(spec, portText)
    localaddr = spec.string("localaddr")
    if localaddr is not None:
        try:
            ipaddress.IPv4Address(localaddr)
        except ValueError:
            raise spec.error(f"localaddr={localaddr!r} is not an IPv4 address") from None
    ttl = spec.integer("ttl", 1, 0, 255)
    assert ttl is not None
    options = PortOptions.fromSpec(spec)
    spec.checkKeywords()
    return McastService(switch, reactor, str(group), number, localaddr, ttl, options, spec.text)
