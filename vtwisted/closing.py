"""
Closing a connection whose peer may never read: C{loseConnection}, then
C{abortConnection} if it is still there after a grace.

Theory of operation
-------------------
Twisted's C{loseConnection} writes out what the transport still holds
before it closes the socket: a peer that reads nothing (a QEMU whose VM is
stopped with C{-S} or C{stop}, a far switch that is stuck, a command that
stopped reading, a client that never reads its replies) never lets that
buffer drain, and the connection stays for ever, with its descriptor, its
buffers and the protocol that owns them, whatever the switch did to the
port.  So a connection the switch closes on a peer-controlled stream goes
through L{GracefulClose.close}: it is asked to close as usual (a peer that
reads gets everything queued for it, then the end of the stream), and if
it has not gone L{CLOSE_GRACE} seconds later it is aborted (C{RST} on TCP,
the socket closed at once on Unix) and that is logged once, at info level:
the switch meant to close it, nothing is lost that would not be.  The
protocol calls L{GracefulClose.lost} from its C{connectionLost}, which
cancels the timer (an injected reactor's C{callLater}), so a connection
that goes in time leaves nothing behind.  An owner that counts and logs
such aborts its own way (slirp's host sockets, once per port) passes
C{aborted}, called instead of the log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["CLOSE_GRACE", "GracefulClose"]

log = Logger()

#: Seconds a connection the switch closed has to go before it is aborted.
CLOSE_GRACE = 5.0


class GracefulClose:
    """
    The closing of one connection: asked for by L{close}, ended by L{lost}.

    @ivar reactor: what times the grace (C{callLater}).
    @ivar grace: seconds before a connection still there is aborted.
    @ivar aborted: called when it is, instead of logging it, if given.
    """

    def __init__(self, reactor: Any, grace: float = CLOSE_GRACE,
                 aborted: Callable[[], object] | None = None) -> None:
        self.reactor = reactor
        self.grace = grace
        self.aborted = aborted
        self._deadline: Any = None
        self._gone = False

    @property
    def pending(self) -> bool:
        """
        Whether a closed connection is waiting for its peer to read.
        """
        return self._deadline is not None

    def close(self, transport: Any, what: str) -> None:
        """
        Close C{transport} (C{loseConnection}), and abort it unless L{lost}
        is called within L{grace} seconds; C{what} names it in the log
        (C{SPEC: PEER}).  Calling it again changes nothing.
        """
        if self._gone or self._deadline is not None:
            return
        transport.loseConnection()
        if not self._gone:  # a transport may lose its connection at once
            self._deadline = self.reactor.callLater(self.grace, self._expired, transport, what)

    def lost(self) -> None:
        """
        The connection is gone (its protocol's C{connectionLost}): no abort.
        """
        self._gone = True
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _expired(self, transport: Any, what: str) -> None:
        self._deadline = None
        if self.aborted is not None:
            self.aborted()
        else:
            log.info("{what}: peer not reading; connection aborted after {grace:g} s",
                     what=what, grace=self.grace)
        transport.abortConnection()
