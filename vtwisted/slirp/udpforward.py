"""
The host socket of one UDP port forward of a slirp port
(C{hostfwd=udp:...}): a datagram to it goes to the guest from the
gateway's address and the sender's port, and the UDP engine sends the
guest's answers to that address and port back through L{ForwardSocket.reply}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import DatagramProtocol

from vtwisted.slirp.addresses import hostEndpoint

if TYPE_CHECKING:
    from vtwisted.slirp.udp import UdpNat


class ForwardSocket(DatagramProtocol):
    """
    The host socket of one UDP port forward.
    """

    noisy = False

    def __init__(self, engine: UdpNat, guest: bytes, guestPort: int) -> None:
        self.engine = engine
        self.guest = guest
        self.guestPort = guestPort

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
