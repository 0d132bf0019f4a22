"""
The host side of the slirp TCP engine's connections: the protocol of a
host socket, the host port forwards' listening factories, and the targets
of guest forwards (L{vtwisted.slirp.tcp} ties them to the connections).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from vtwisted.slirp.tcp import TcpNat
    from vtwisted.slirp.tcpconnection import TcpConnection

__all__ = ["EndpointConnector", "ForwardFactory", "ForwardProtocol", "GuestForwardTarget",
           "HostProtocol"]

log = Logger()


@implementer(IHalfCloseableProtocol)
class HostProtocol(Protocol):
    """
    The host side of one relayed connection: hands everything to its
    L{TcpConnection}.
    """

    def __init__(self, connection: TcpConnection | None = None) -> None:
        self.connection = connection

    def connectionMade(self) -> None:
        if self.connection is not None:
            self.connection.hostConnected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.hostData(data)

    def readConnectionLost(self) -> None:
        if self.connection is not None:
            self.connection.hostEofReceived()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.hostLost(reason)


class GuestForwardTarget:
    """
    Where a guest forward leads: a Twisted client endpoint, and the
    description it was made from (for logs and the console).
    """

    def __init__(self, endpoint: Any, description: str) -> None:
        self.endpoint = endpoint
        self.description = description
        #: Whether a failure to connect was logged since the last success.
        self.failing = False

    def __str__(self) -> str:
        return self.description

    def connected(self, result: Any) -> Any:
        """
        A connect succeeded: the next failure is logged again.
        """
        self.failing = False
        return result

    def failed(self, reason: Failure) -> Failure:
        """
        A connect failed: log why, once until one succeeds again (the
        guest only hears that the host was unreachable).
        """
        if not self.failing:
            self.failing = True
            log.error("guest forward to {target}: connecting failed: {why}; guests get "
                      "host unreachable until it works", target=self.description,
                      why=reason.getErrorMessage())
        return reason


class EndpointConnector:
    """
    What a connection stops when it is forgotten while an endpoint still
    connects: the connect's L{Deferred}.
    """

    def __init__(self, connecting: Any) -> None:
        self.connecting = connecting

    def stopConnecting(self) -> None:
        """
        Give up the connect.
        """
        self.connecting.cancel()


class ForwardProtocol(HostProtocol):
    """
    A host client of a port forward: asks the NAT for a guest connection
    when it connects.
    """

    def __init__(self, nat: TcpNat, guest: bytes, guestPort: int) -> None:
        super().__init__()
        self.nat = nat
        self.guest = guest
        self.guestPort = guestPort

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.connection = self.nat.forwardAccepted(transport, self.guest, self.guestPort)
        if self.connection is None:
            transport.loseConnection()


class ForwardFactory(ServerFactory):
    """
    The factory of a host port forward to C{guest:guestPort}.
    """

    noisy = False

    def __init__(self, nat: TcpNat, guest: bytes, guestPort: int) -> None:
        self.nat = nat
        self.guest = guest
        self.guestPort = guestPort

    def buildProtocol(self, addr: Any) -> ForwardProtocol:
        return ForwardProtocol(self.nat, self.guest, self.guestPort)
