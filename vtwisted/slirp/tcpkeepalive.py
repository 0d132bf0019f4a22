"""
Keep-alive probes toward guests whose slirp TCP connections went silent.

Theory of operation
-------------------
A guest that vanishes without a word (a VM killed, a namespace deleted, a
TAP removed) leaves its idle connections established for ever: nothing is
sent either way, so no retransmission ever gives up, and each keeps a host
socket and an entry of the port's table (L{vtwisted.slirp.tcp.MAX_CONNECTIONS}
at most, after which every guest's new connections get RSTs).  libslirp
lives and dies with its one QEMU; a slirp port lives as long as the switch,
for weeks, while guests come and go.  So, as a host's TCP keep-alive would,
an established connection whose guest sent nothing for C{keepalive=}
seconds (L{KEEPALIVE} by default, C{0} for never) is given up as after
retransmissions: the guest gets a RST, the host socket is aborted, and it
counts as timed out.  Before that, during the last L{PROBES} tenths of that
time, the guest is probed L{PROBES} times with a bare ACK one byte back,
which a live guest must answer (RFC 9293 3.8.4): a guest that is there but
idle keeps its connections for as long as it likes.

No timer per connection: one sweep every tenth of C{keepalive=}, running
only while the port has connections, counts the sweeps each connection went
without a segment from its guest (each segment marks it heard).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall

from vtwisted.slirp.tcpstates import ESTABLISHED

#: Seconds a connection's guest may stay silent before it is given up.
KEEPALIVE = 7200
#: Sweeps per C{keepalive=}, and the last ones, in which the guest is probed.
SWEEPS = 10
PROBES = 3


class KeepAlive:
    """
    The keep-alive sweep of one slirp port's TCP engine.

    @ivar seconds: C{keepalive=}, 0 for never.
    """

    def __init__(self, nat: Any, clock: Any, seconds: float = KEEPALIVE) -> None:
        self.nat = nat
        self.seconds = seconds
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = clock

    def watch(self) -> None:
        """
        A connection was added: sweep, unless sweeping already (or never).
        """
        if self.seconds and not self._loop.running:
            self._loop.start(self.seconds / SWEEPS, now=False)

    def stop(self) -> None:
        """
        Sweep no more (the port stops, or has no connection left).
        """
        if self._loop.running:
            self._loop.stop()

    def sweep(self) -> None:
        """
        Probe the connections whose guests stayed silent long, give up on
        those silent for C{keepalive=}.
        """
        connections = self.nat.connections
        if not connections:
            self.stop()
            return
        for connection in list(connections.values()):
            if connection.state != ESTABLISHED:
                continue
            if connection.heard:
                connection.heard = False
                connection.silentSweeps = 0
                continue
            connection.silentSweeps += 1
            if connection.silentSweeps >= SWEEPS:
                connection.abort(resetGuest=True)
            elif connection.silentSweeps >= SWEEPS - PROBES:
                connection.keepAliveProbe()
