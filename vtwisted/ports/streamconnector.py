"""
Stream ports whose switch connects to a listening peer (C{qemu:connect:},
C{cable:}, C{cmd:}, C{vhostuser:connect:}), and connects again whenever
the connection is lost.

Theory of operation
-------------------
A L{ClientService} (a L{QuietClientService}: no line per retry) connects
through a L{ReportingEndpoint}, which notes each failed attempt in the
spec's L{FailureLog}: the first failure of a series is logged with its
errno, the others counted.  Waits grow from 0.2 s to L{MAX_RETRY_DELAY}.

A peer may also accept and close at once (a program that is not what the
spec expects, a QEMU refusing a second client): a link that lasted less
than L{StreamConnector.SHORT_LINK} seconds counts as a failed attempt, so
the waits grow too.  For a port type whose links are plugged in without a
word from the peer (C{qemu:connect:}), a link I{works} once it has lasted
that long: only then is it announced ("on port N", and "left port N" when
it goes) and the series of failures ended; one that the peer ends sooner
is a failure of the series, logged once however often it happens.  A
cable's link works once the far switch's hello has come, as it is plugged
in.

While its link is down, the port it had stays (inactive, as a port does)
and is reserved for the spec (L{vtwisted.switchport.Reservation}): a
client asking for any port does not get it, one asking for it by number
is refused, so its VLANs and the rest of what the console set on it stay
with this spec's peer, and its next link gets it again.  The reservation
goes when the spec stops (removed, the switch stopping, a command not run
again: L{StreamConnector.release}) or its link comes back elsewhere (the
port now refuses it: C{port/setuser}); C{port/remove} refuses to remove
it, as it refuses an active port, and C{port/del} removes the spec too.
L{StreamConnector.lastPort} and L{StreamConnector.downState} let
C{port/allprint} show what the spec is doing about it (dialling what, how
many failures since, the last one), worked out when asked, not per frame
or attempt.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import DeferredList
from zope.interface import implementer

from vtwisted import errors
from vtwisted.interfaces import IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.streamfailures import (
    MAX_RETRY_DELAY,
    QuietClientService,
    ReportingEndpoint,
)
from vtwisted.ports.streamlinks import StreamLink, StreamPorts
from vtwisted.porttable import isFree
from vtwisted.switchport import Reservation


@implementer(IPortService)
class StreamConnector(StreamPorts):
    """
    A spec whose switch connects to a listening peer, and again whenever
    the connection is lost.
    """

    listening = False

    def __init__(
        self, switch: Any, reactor: Any, endpoint: Any, options: PortOptions, spec: str
    ) -> None:
        super().__init__(switch, reactor, options, spec)
        self.endpoint = endpoint
        self.client = QuietClientService(
            ReportingEndpoint(endpoint, self.failures),
            self.factory,
            retryPolicy=self.retryDelay,
            clock=reactor,
            prepareConnection=_whenReady,
        )

    #: Seconds before connecting again, by failed attempts in a row.
    _backoff = staticmethod(backoffPolicy(initialDelay=0.2, maxDelay=MAX_RETRY_DELAY))
    #: A link plugged in for less than L{SHORT_LINK} seconds counts as a
    #: failed attempt: a peer that accepts and closes at once is retried
    #: with a growing delay, not about once a second for ever.
    #: Connections in a row that did not count as made: links shorter than
    #: L{SHORT_LINK}, or (cables) connections lost before the far hello.
    unready = 0

    def retryDelay(self, attempts: int) -> float:
        """
        How long to wait before connecting again after C{attempts} failed
        connections in a row (1 after a connection was lost), counting
        those that did not last as failed too.
        """
        return float(self._backoff(attempts + self.unready))

    #: The port its last link was plugged into (shown while it has none).
    lastPort: Any = None
    #: The endpoint it dials, as the spec describes it.
    target = ""

    def downState(self) -> str:
        """
        What it does while its link is down: C{dialling ENDPOINT, N
        failures, last: WHY}.
        """
        state = f"dialling {self.target or self.spec}"
        total, last = self.failures.total, self.failures.last
        if total and last:
            state += f", {total} failure{'' if total == 1 else 's'}, last: {last}"
        return state

    #: Until when its port is held while its link is down, in words
    #: (C{port/allprint} says C{reserved for SPEC until it connects again}).
    comesBack = "until it connects again"

    def portFor(self, link: StreamLink) -> Any:
        """
        The port its last link had, reserved for it meanwhile (a peer back,
        a command run again, keeps its port number, and what the console
        set on it), unless it is gone or refuses the link; else the lowest
        free one.
        """
        port = self.lastPort
        if (port is not None and not port.links
                and self.switch.ports.get(port.number) is port
                and (self.holds(port) or isFree(port))):
            port.reservation = None
            try:
                return self.switch.allocatePort(port.number, link.uid)
            except errors.SwitchError:
                pass
        return super().portFor(link)

    def holds(self, port: Any) -> bool:
        """
        Whether C{port} is reserved for this spec.
        """
        reservation = port.reservation
        return reservation is not None and reservation.spec == self.spec

    def reserve(self, port: Any) -> None:
        """
        Hold C{port}, which its link just left, until the link comes back.
        """
        if (port.reservation is None and not port.links
                and self.switch.ports.get(port.number) is port):
            port.reservation = Reservation(self.spec, self.comesBack)

    def release(self) -> None:
        """
        The spec gives up its link for good: the port it had is free again.
        """
        port = self.lastPort
        if port is not None and self.holds(port):
            port.reservation = None

    def handshakeFailed(self, link: StreamLink, problem: str) -> None:
        self.unready += 1  # tried again with a growing delay
        super().handshakeFailed(link, problem)

    def linkDown(self, link: StreamLink) -> None:
        if link in self.links:
            lasted = self.reactor.seconds() - link.upAt >= self.SHORT_LINK
            self.unready = 0 if lasted else self.unready + 1
            self.lastPort = link.port
            super().linkDown(link)
            if self.running:
                self.reserve(link.port)
            return
        super().linkDown(link)

    def startService(self) -> None:
        super().startService()
        self.client.startService()

    def stopService(self) -> Any:
        super().stopService()
        self._closeLinks()
        self.release()
        return DeferredList([self.client.stopService()])


def _whenReady(link: Any) -> Any:
    """
    When a connection counts as made for the L{ClientService}.
    """
    return link.whenReady()
