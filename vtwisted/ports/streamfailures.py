"""
How stream ports report failures: once per series, not at every retry.

Theory of operation
-------------------
A connecting spec retries for ever (a L{QuietClientService}, whose own line
per retry is silenced) and a listener may be refused by many peers; both
note their failures in a L{FailureLog}, which logs a failure the first time
it is seen in a series and only counts it after that, until a link comes up
and ends the series; then how many failures the series had is logged, if
some were only counted.  L{ReportingEndpoint} wraps a client endpoint to note
each failed attempt with its errno (L{connectErrorText}); L{peerHost} is
what stays the same when a peer connects again.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

#: The pid in a Unix peer's description (C{qemu-system-x86 pid 4242 on ...}).
_PID = re.compile(r" pid \d+")

#: Seconds between reconnection attempts of a connecting spec, at most.
MAX_RETRY_DELAY = 5.0

#: A TLS alert received, as OpenSSL names it (C{tlsv1 alert unknown ca}).
_ALERT = re.compile(r"(?:sslv3|tlsv1[0-9]*|tls) alert (.+)")
#: The alerts by which a peer refuses the certificate it was shown.
CERTIFICATE_ALERTS = frozenset({
    "bad certificate", "unsupported certificate", "certificate revoked",
    "certificate expired", "certificate unknown", "unknown ca", "access denied",
})


class FailureLog:
    """
    The failures of one spec, logged once per series: the same failure
    again (from the same peer) is logged only after a link has come up in
    between.  A listener's peers connect from a new port each time, so a
    failure is the same whatever port it came from.

    @ivar last: the failure noted last, logged or not.
    @ivar total: the failures noted in this series, logged or not.
    @ivar counted: those of them not logged (the same again, or too many
        kinds).
    """

    #: Different failures remembered in a series; beyond, new ones are only
    #: counted (many peers failing at once cannot flood the log either).
    MAX_KINDS = 64

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.last: str | None = None
        self.total = 0
        self.counted = 0
        self._seen: set[str] = set()
        self._full = False

    def note(
        self, problem: str, peer: str = "", same: str = "", level: LogLevel = LogLevel.warn
    ) -> None:
        """
        Log C{peer: problem} unless the same failure was logged in this
        series.

        @param same: what makes two failures the same, if not their text:
            the peer's host without its port, and the problem without what
            the peer sent, say.
        @param level: the level of its line, if logged.
        """
        text = f"{peer}: {problem}" if peer else problem
        self.last = text
        self.total += 1
        key = same or text
        if key in self._seen:
            self.counted += 1
            return
        if len(self._seen) >= self.MAX_KINDS:
            self.counted += 1
            if not self._full:
                self._full = True
                log.warn("{spec}: more than {n} kinds of failures; further ones are only "
                         "counted until a link comes up", spec=self.spec, n=self.MAX_KINDS)
            return
        self._seen.add(key)
        log.emit(level, "{spec}: {problem}", spec=self.spec, problem=text)

    def worked(self) -> None:
        """
        A link came up: the next failure is news again.  How many there
        were is logged if some of them were only counted.
        """
        if self.counted:
            log.info("{spec}: a link works again after {total} failures ({counted} of them "
                     "not logged; the last: {last})", spec=self.spec, total=self.total,
                     counted=self.counted, last=self.last)
        self.total = self.counted = 0
        self.last = None
        self._seen.clear()
        self._full = False


def peerHost(transport: Any, description: str) -> str:
    """
    A connection's peer without its port: what stays the same when it
    connects again (C{tcp 10.0.0.2}; a Unix peer's description
    without its pid).
    """
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    if host is None:  # a Unix peer: the same program again has another pid
        return _PID.sub("", description)
    return f"{peer.type.lower()} {host}"


class QuietClientService(ClientService):
    """
    A L{ClientService} without its line at every retry (the first failure
    of a series is logged by L{ReportingEndpoint}); its warnings still go
    to the log.
    """

    _log = Logger(
        observer=FilteringLogObserver(
            globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
        )
    )


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """
    A client endpoint that notes its failed connection attempts.
    """

    def __init__(self, endpoint: Any, failures: FailureLog) -> None:
        self.endpoint = endpoint
        self.failures = failures

    def __repr__(self) -> str:
        return self.failures.spec

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = self.endpoint.connect(factory)
        d.addErrback(self._failed)
        return d

    def _failed(self, reason: Failure) -> Failure:
        if reason.check(CancelledError):  # the service stopped meanwhile
            return reason
        self.failures.note(
            f"cannot connect: {connectErrorText(reason.value)}; "
            f"retrying every {MAX_RETRY_DELAY:g} s at most"
        )
        return reason


def connectErrorText(error: Any) -> str:
    """
    What stopped a connection attempt, with the errno when there is one.
    """
    number = getattr(error, "osError", None)
    text = error.args[0] if getattr(error, "args", None) else None
    if isinstance(number, int) and isinstance(text, str) and text:
        return f"{text} (errno {number})"
    return str(error)


def endedTooSoon(
    reason: Failure | None, lasted: float, needed: float, listening: bool = False
) -> str:
    """
    Why a connection does not count as working: it ended after C{lasted}
    seconds, before the C{needed} ones, after the peer accepted it (or,
    C{listening}, after the peer connected).
    """
    if reason is None or reason.check(ConnectionDone):
        what = "the peer closed the connection"
    else:
        what = f"the connection was lost ({reason.getErrorMessage()})"
    if listening:
        return (f"{what} {lasted:.1f} s after connecting (a link works once it lasts "
                f"{needed:g} s)")
    return (f"{what} {lasted:.1f} s after accepting it (a link works once it lasts "
            f"{needed:g} s); retrying every {MAX_RETRY_DELAY:g} s at most")


def whyLost(reason: Failure | None, before: str = "the TLS handshake finished") -> str:
    """
    Why a connection went before it was plugged in (C{before} says when):
    the TLS handshake's complaint, if that is what stopped it.
    """
    if reason is None or reason.check(ConnectionDone):
        return f"closed before {before}"
    error = reason.value
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [str(item[-1]) for item in error.args[0]]
        if "wrong version number" in reasons or "packet length too long" in reasons:
            return ("TLS handshake failed: the peer does not speak TLS (tls=off on its side, "
                    "or not a TLS service?)")
        alerts = [m.group(1) for m in map(_ALERT.match, reasons) if m]
        if alerts and alerts[0] in CERTIFICATE_ALERTS:
            return ("TLS handshake failed: the peer refused our certificate (TLS alert: "
                    f"{alerts[0]})")
        if alerts and alerts[0] == "internal error":
            return ("TLS handshake failed: the peer gave up (TLS alert: internal error; a "
                    "cable sends it when our certificate does not name the host it dialled, "
                    "or its name=)")
        return "TLS handshake failed: " + "; ".join(reasons)
    if isinstance(error, VerificationError):
        return misnamed(error)
    return reason.getErrorMessage()


def misnamed(error: VerificationError) -> str:
    """
    A peer's certificate that does not name what it was checked for.
    """
    names = ", ".join(_identity(e.mismatched_id) for e in error.errors)
    return f"TLS: the peer's certificate does not name {names} (name= checks another name)"


def _identity(mismatched: Any) -> str:
    """
    The name or address a certificate was checked for, as it was given.
    """
    for attribute in ("hostname", "ip"):
        value = getattr(mismatched, attribute, None)
        if value is not None:
            return value.decode() if isinstance(value, bytes) else str(value)
    return str(mismatched)
