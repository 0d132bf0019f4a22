"""
The host socket of one UDP port forward of a slirp port
(C{hostfwd=udp:...}): a datagram to it goes to the guest from the
gateway's address and the sender's port, and the UDP engine sends the
guest's answers to that address and port back through L{ForwardSocket.reply}.

A guest that rejects such a datagram (port unreachable: nothing listens,
or a firewall's reject) or answers it with another ICMP error (time
exceeded, parameter problem) tells the engine, which hands the error to
the forward's socket (L{ForwardSocket.errorReceived},
L{vtwisted.slirp.guesterrors}).  The host client cannot be told: the
socket is the forward's, unconnected, for all its clients, and only the
host's kernel sends ICMP errors to a client (we send no raw ICMP), so
the error is counted on the forward (C{slirp/print}) and logged, once
until the guest answers a datagram of the forward again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from vtwisted.slirp.addresses import guestEndpoint, hostEndpoint

if TYPE_CHECKING:
    from vtwisted.slirp.guesterrors import GuestError
    from vtwisted.slirp.udp import UdpNat

log = Logger()


class ForwardSocket(DatagramProtocol):
    """
    The host socket of one UDP port forward.
    """

    noisy = False

    def __init__(self, engine: UdpNat, guest: bytes, guestPort: int) -> None:
        self.engine = engine
        self.guest = guest
        self.guestPort = guestPort
        #: ICMP errors from the guest about the forward's datagrams.
        self.errors = 0
        #: The last of them, for a console.
        self.lastError = ""
        #: Whether an error was logged since the guest last answered.
        self.failing = False

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        network = self.engine.network
        src = network.guestAddress(addr[0], len(self.guest) == 16)
        self.engine.sessions[(self.guest, self.guestPort, src, addr[1])] = (self, addr)
        network.sendUdp(src, self.guest, addr[1], self.guestPort, data)

    def reply(self, payload: bytes, addr: Any) -> None:
        """
        Send the guest's answer back to the forward's client.
        """
        try:
            self.transport.write(payload, addr)  # type: ignore[union-attr]
        except OSError as e:
            self.engine.network.dropped(
                "peer", f"UDP forward to {hostEndpoint(addr[0], addr[1])}: {e.strerror} "
                        f"(errno {e.errno})")

    def answered(self) -> None:
        """
        The guest answered a client of the forward: its next error is logged.
        """
        self.failing = False

    def errorReceived(self, error: GuestError, guestPort: int, client: Any) -> None:
        """
        The guest answered a datagram the forward sent from host client
        C{client} (its address) to C{guestPort} with C{error}: count it,
        and log it unless one was logged since the guest last answered.
        """
        self.errors += 1
        guest = guestEndpoint(self.guest, guestPort)
        self.lastError = f"{error.name} from {guest}"
        if self.failing:
            return
        self.failing = True
        host = self.transport.getHost() if self.transport is not None else None
        where = hostEndpoint(host.host, host.port) if host is not None else "a closed socket"
        log.warn("UDP forward from {where} to {guest}: the guest answered a datagram from "
                 "{client} with {error}; its host clients cannot be told (the forward's "
                 "socket serves them all); logged again once the guest has answered",
                 where=where, guest=guest, client=hostEndpoint(client[0], client[1]),
                 error=error.name)
