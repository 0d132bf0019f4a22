"""
How a cable's kernel finds out that the far switch is gone: keepalive, and
probing at once the links of an address that dialled again.

Theory of operation
-------------------
A TCP cable's socket has keepalive probes and a C{TCP_USER_TIMEOUT}
(L{keepAlive}): the kernel ends a connection whose peer acknowledged
nothing for C{keepalive=} seconds.  An idle cable is first probed only a
third of that after its last word, though.

A far switch that lost its connection in a way this side did not see (its
host rebooted, the switch killed and started again, a NAT or firewall
that forgot the connection, a cable pulled and plugged again) dials again
and gets a new port on the listening switch, while the old link stays up
as a ghost until its keepalive ends it: C{port/print} shows it, and MACs
not heard since may point at it.  So when a listening switch plugs in a
cable from an address that has links up already, it has the kernel probe
those links at once (L{probeNow}): the far kernel answers a probe on a
connection it no longer has with a reset, and the ghost goes within a
second; a live link (two switches behind one address, or a NAT) answers
with an acknowledgement and stays.  After L{PROBE_WINDOW} seconds each
probed link gets its own keepalive settings back (L{restoreKeepAlive}).
Nothing goes over the cable itself, so switches of any version may be at
the other end.

Why it works (Linux, C{net/ipv4/tcp.c} and C{tcp_timer.c}): setting
C{TCP_KEEPIDLE} on a socket whose keepalive is on re-arms its keepalive
timer for the new idle time less the time since anything last came
(C{tcp_sock_set_keepidle_locked}, C{keepalive_time_elapsed}), so on a link
silent for a second or more, a probe leaves at once.  Whether a
connection that answers nothing is given up is left as it was: with
C{TCP_USER_TIMEOUT} (C{keepalive=}) it goes after that many seconds of
silence, as it would have; without (C{keepalive=0}) the probe count is set
high so that silence alone never ends it in the window.  A probe is not
sent while frames sent are waiting to be acknowledged; but then the
kernel retransmits them, and a far kernel without the connection resets
it as it would a probe.

A NAT that forgot the connection may drop the probe rather than answer
it: then the ghost lasts as long as it did before, until keepalive.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address

#: Seconds the old links of an address that dialled again are probed every
#: second, before their own keepalive settings come back.
PROBE_WINDOW = 5.0
#: C{TCP_KEEPCNT}'s largest value: probes left unanswered in the window
#: never end a link by their count.
_MAX_PROBES = 127


def _isTcp(handle: Any) -> bool:
    return isinstance(handle, socket.socket) and handle.family in (socket.AF_INET,
                                                                    socket.AF_INET6)


def keepAlive(handle: Any, seconds: int) -> None:
    """
    Have the kernel end a TCP connection whose peer has acknowledged
    nothing for C{seconds}: keepalive probes while it is idle, and
    C{TCP_USER_TIMEOUT} for data sent and never acknowledged (while frames
    flow, no probe is sent).  Nothing for other sockets, or C{seconds} 0.
    """
    if not (seconds and _isTcp(handle)):
        return
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, seconds // 3))
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, seconds // 6))
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, seconds * 1000)


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


def restoreKeepAlive(handle: Any, seconds: int) -> None:
    """
    Give a socket probed by L{probeNow} its keepalive settings back: those
    of L{keepAlive} for C{seconds}, or none if C{seconds} is 0.
    """
    if not _isTcp(handle) or handle.fileno() < 0:  # closed since
        return
    if seconds:
        keepAlive(handle, seconds)
    else:
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)


def peerAddress(transport: Any) -> str | None:
    """
    The IP address of a connection's peer, or C{None} if it has none (a
    Unix socket, or no transport).
    """
    if transport is None:
        return None
    peer = transport.getPeer()
    return peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else None
