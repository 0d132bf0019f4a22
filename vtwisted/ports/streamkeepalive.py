"""
How a stream port's kernel finds out that a TCP peer is gone (C{cable:},
C{qemu:}): keepalive, and probing at once the links of an address that
dialled again.

Theory of operation
-------------------
A peer that vanishes without closing (its host crashed or lost power, a
cable pulled, a NAT or firewall that forgot the connection) sends no FIN
and no reset: without help its link stays up for ever if nothing is sent
to it, and for the kernel's retransmission timeout (C{tcp_retries2}, about
15 minutes) if something is.  So each TCP link gets a L{LinkKeepAlive}
for C{keepalive=} seconds, in one of two ways:

 - A cable's (L{keepAlive} with C{userTimeout}): keepalive probes and a
   C{TCP_USER_TIMEOUT}, so the kernel ends a connection whose peer
   acknowledged nothing for that long.  Linux counts a window left closed
   for that long too: a far switch that stops reading is cut off, as a
   cable wants (it is stuck).

 - A QEMU guest's (without C{userTimeout}): a QEMU whose VM is stopped
   (C{-S}, C{stop}, a snapshot, a migration), or whose guest has not
   brought its NIC up (firmware, boot loader, an interface down), does not
   read its socket: its kernel acknowledges some 150 KB and then closes
   its window, answering every window probe.  That link is alive, and
   C{TCP_USER_TIMEOUT} would end it; a QEMU 7.2 client never dials again.
   So it gets keepalive probes only, counted so that an idle peer that
   answers none goes within C{keepalive=} seconds, and a watch
   (L{silentFor}, every sixth of that) for the case keepalive leaves to the
   retransmission timeout: frames sent and never acknowledged.  A link
   that is retransmitting (or has two window probes unanswered) and has
   had no acknowledgement at all for C{keepalive=} seconds has lost its
   peer's kernel, not just its reader: the watch ends it.

A peer that lost its connection in a way this side did not see (its host
rebooted, a NAT that forgot it) dials again and gets a new port on the
listening switch, while the old link stays up as a ghost until the above
ends it: C{port/print} shows it, and MACs not heard since may point at it.
So when a listener plugs in a link from an address that has links up
already, it has the kernel probe those links at once
(L{probeRedialled}): the far kernel answers a probe on a connection it no
longer has with a reset, and the ghost goes within a second; a live link
(two peers behind one address, or a NAT) answers with an acknowledgement
and stays.  After L{PROBE_WINDOW} seconds each probed link gets its own
keepalive settings back.  Nothing new goes over the link itself, so peers
of any version (a QEMU, older switches) may be at the other end.

Why it works (Linux, C{net/ipv4/tcp.c} and C{tcp_timer.c}): setting
C{TCP_KEEPIDLE} on a socket whose keepalive is on re-arms its keepalive
timer for the new idle time less the time since anything last came
(C{tcp_sock_set_keepidle_locked}, C{keepalive_time_elapsed}), so on a link
silent for a second or more, a probe leaves at once.  Whether a
connection that answers nothing is given up is left as it was: with
C{TCP_USER_TIMEOUT} it goes after that many seconds of silence, as it would
have; without, the probe count is set high so that silence alone never
ends it in the window.  A probe is not sent while frames sent are waiting
to be acknowledged; but then the kernel retransmits them (at the backoff
it has reached, up to two minutes apart), and a far kernel without the
connection resets it as it would a probe.

A NAT that forgot the connection may drop the probe rather than answer
it: then the ghost lasts as long as it did before, until keepalive.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger

log = Logger()

#: Seconds the old links of an address that dialled again are probed every
#: second, before their own keepalive settings come back.
PROBE_WINDOW = 5.0
#: C{TCP_KEEPCNT}'s largest value: probes left unanswered in the window
#: never end a link by their count.
_MAX_PROBES = 127
#: In C{struct tcp_info}: C{tcpi_retransmits}, C{tcpi_probes} (bytes 2, 3)
#: and C{tcpi_last_ack_recv} (milliseconds since an acknowledgement came).
_RETRANSMITS, _PROBES = 2, 3
_LAST_ACK_RECV = struct.Struct("=I")
_LAST_ACK_AT = 56
_INFO_LENGTH = _LAST_ACK_AT + _LAST_ACK_RECV.size


def _isTcp(handle: Any) -> bool:
    return isinstance(handle, socket.socket) and handle.family in (socket.AF_INET,
                                                                    socket.AF_INET6)


def keepAlive(handle: Any, seconds: int, userTimeout: bool = True) -> None:
    """
    Have the kernel end a TCP connection whose peer has acknowledged
    nothing for C{seconds}: keepalive probes while it is idle, and with
    C{userTimeout} a C{TCP_USER_TIMEOUT} for data sent and never
    acknowledged (while frames flow, no probe is sent) or a window closed
    that long.  Nothing for other sockets, or C{seconds} 0.
    """
    if not (seconds and _isTcp(handle)):
        return
    idle, interval = max(1, seconds // 3), max(1, seconds // 6)
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    if userTimeout:
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, seconds * 1000)
    else:  # the count alone ends it: as many probes as fit in the seconds
        probes = min(_MAX_PROBES, max(1, (seconds - idle) // interval))
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)


def probeNow(handle: Any) -> bool:
    """
    Have the kernel send a keepalive probe on a TCP connection now (or a
    second after the last segment came, if that was less than a second
    ago), and one every second after that, until L{restoreKeepAlive}.

    @return: whether C{handle} is a TCP socket (else nothing was done).
    """
    if not _isTcp(handle):
        return False
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _MAX_PROBES)
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)  # last: re-arms the timer
    return True


def restoreKeepAlive(handle: Any, seconds: int, userTimeout: bool = True) -> None:
    """
    Give a socket probed by L{probeNow} its keepalive settings back: those
    of L{keepAlive} for C{seconds}, or none if C{seconds} is 0.
    """
    if not _isTcp(handle) or handle.fileno() < 0:  # closed since
        return
    if seconds:
        keepAlive(handle, seconds, userTimeout)
    else:
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)


def silentFor(info: bytes) -> float | None:
    """
    From a socket's C{TCP_INFO}: for how many seconds it has waited in vain
    for its peer (retransmitting, or two window probes unanswered, and no
    acknowledgement of any kind since), or C{None} if it is not waiting so.
    A peer that only stopped reading answers each window probe.
    """
    if len(info) < _INFO_LENGTH or not (info[_RETRANSMITS] or info[_PROBES] >= 2):
        return None
    (milliseconds,) = _LAST_ACK_RECV.unpack_from(info, _LAST_ACK_AT)
    return milliseconds / 1000


class LinkKeepAlive:
    """
    One TCP link's keepalive: set as it connects, probed when its peer's
    address dials again, and (without C{userTimeout}) its silence watched.

    @ivar seconds: C{keepalive=} (0: none, but probed all the same).
    """

    def __init__(
        self,
        reactor: Any,
        handle: socket.socket,
        seconds: int,
        userTimeout: bool,
        onSilence: Callable[[float], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.handle = handle
        self.seconds = seconds
        self.userTimeout = userTimeout
        self.onSilence = onSilence
        self._probing: Any = None
        self._watch: Any = None
        keepAlive(handle, seconds, userTimeout)
        if seconds and not userTimeout and onSilence is not None:
            self._watch = reactor.callLater(self._every(), self._look)

    def _every(self) -> float:
        return float(max(1, self.seconds // 6))

    def _look(self) -> None:
        """
        The watch: hand the silence to C{onSilence} once it has lasted
        C{seconds}, else look again in a sixth of that.
        """
        self._watch = None
        if self.handle.fileno() < 0:
            return
        try:
            silence = silentFor(self.handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO,
                                                       _INFO_LENGTH))
        except OSError:
            return
        if silence is not None and silence >= self.seconds and self.onSilence is not None:
            self.onSilence(silence)
            return
        self._watch = self.reactor.callLater(self._every(), self._look)

    def probe(self) -> bool:
        """
        The peer's address dialled again: have the kernel probe this link
        now, which ends it if the far kernel no longer has it, for
        L{PROBE_WINDOW} seconds.

        @return: whether it is probed.
        """
        if not probeNow(self.handle):
            return False
        self._cancel("_probing")
        self._probing = self.reactor.callLater(PROBE_WINDOW, self._probed)
        return True

    def _probed(self) -> None:
        self._probing = None
        restoreKeepAlive(self.handle, self.seconds, self.userTimeout)

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        setattr(self, name, None)
        if call is not None and call.active():
            call.cancel()

    def stop(self) -> None:
        """
        The link is gone: no more timers.
        """
        self._cancel("_probing")
        self._cancel("_watch")


def linkKeepAlive(
    reactor: Any,
    handle: Any,
    seconds: int,
    userTimeout: bool,
    onSilence: Callable[[float], None] | None = None,
) -> LinkKeepAlive | None:
    """
    A L{LinkKeepAlive} for a TCP socket; C{None} for any other (a Unix
    socket's peer is on this host: its going is always seen).
    """
    if not _isTcp(handle):
        return None
    return LinkKeepAlive(reactor, handle, seconds, userTimeout, onSilence)


def peerAddress(transport: Any) -> str | None:
    """
    The IP address of a connection's peer, or C{None} if it has none (a
    Unix socket, or no transport).
    """
    if transport is None:
        return None
    peer = transport.getPeer()
    return peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else None


def probeRedialled(spec: str, links: Iterable[Any], link: Any, what: str) -> None:
    """
    C{link} was just plugged in at a listener: if its peer's address has
    other links up (among C{links}, each with a C{keeper}, its
    L{LinkKeepAlive} or C{None}), probe those now and say so once, calling
    them C{what} (C{"cable"}, C{"guest link"}).
    """
    address = peerAddress(link.transport)
    if address is None:
        return
    probed = [other for other in links if other is not link
              and peerAddress(other.transport) == address
              and getattr(other, "keeper", None) is not None and other.keeper.probe()]
    if probed:
        log.info("{spec}: {peer} dialled from an address with {count} other {what}(s) "
                 "up (port {ports}); probing them, a peer that lost its link gets it reset",
                 spec=spec, peer=link.description, count=len(probed), what=what,
                 ports=", ".join(str(other.port.number) for other in probed))
