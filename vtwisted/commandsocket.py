"""
A command's connection as a socket (L{vtwisted.processes.CommandEndpoint}
with C{socket=True}, what slirp's C{cmd:} guest forwards and C{smb=} run):
the loopback TCP connection made for it, and the switch's end of it, whose
end ends the command's run.

Theory of operation
-------------------
Some programs serve a network connection on their standard input only if
it is a TCP socket (Samba's C{smbd} in inetd mode asks for its peer's
address), so the command's input and output are one end of a TCP
connection over the loopback, made for it as libslirp makes one
(L{loopbackPair}), and the switch's connection is the other end, an
ordinary Twisted TCP connection.

That connection is what the command is run for: L{RunConnection}, the
protocol of the switch's end, passes everything to the protocol the
endpoint was asked to connect, and when the connection is over (closed
both ways, reset, or given up) it tells the endpoint, which ends the run
if the command has not ended by itself (a command that ignores the end of
its input would otherwise run for ever, its connection long gone).
"""

from __future__ import annotations

from collections.abc import Callable
from socket import AF_INET, SOCK_STREAM, socket
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import alsoProvides

__all__ = ["RunConnection", "loopbackPair"]


def loopbackPair() -> tuple[socket, socket]:
    """
    Two ends of a TCP connection over 127.0.0.1: one made here, and the one
    the listener accepted from it (any other connection that came first is
    closed).

    @raise OSError: the loopback cannot be used.
    """
    with socket(AF_INET, SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        ours = socket(AF_INET, SOCK_STREAM)
        try:
            ours.connect(listener.getsockname())
            while True:
                theirs, peer = listener.accept()
                if peer == ours.getsockname():
                    return ours, theirs
                theirs.close()
        except BaseException:
            ours.close()
            raise


class RunConnection(Protocol):
    """
    The switch's end of a command's socket: hands everything to
    C{protocol} (whose transport is the connection itself), half closes
    included if it takes them, and calls C{ended} once the connection is
    lost.
    """

    def __init__(self, protocol: Any, ended: Callable[[], object]) -> None:
        self.protocol = protocol
        self.ended = ended
        if IHalfCloseableProtocol.providedBy(protocol):
            alsoProvides(self, IHalfCloseableProtocol)

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = True
        self.protocol.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def readConnectionLost(self) -> None:
        self.protocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.protocol.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        try:
            self.protocol.connectionLost(reason)
        finally:
            self.ended()
