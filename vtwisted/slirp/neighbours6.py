"""
The IPv6 neighbours of a slirp router: the guests' MAC addresses, learned
from neighbour discovery and from their packets, and the packets waiting
for a guest's MAC (the IPv6 counterpart of L{vtwisted.slirp.arpcache}).

Theory of operation
-------------------
Up to L{NDP_ENTRIES} guests are remembered (the one heard from longest
ago goes first), each forgotten once silent for five minutes
(L{vtwisted.slirp.neighbourtable}): a packet for it then asks again.  A
packet for a guest whose MAC is not known yet waits, L{NDP_QUEUE} at most
per guest and L{NDP_LOOKUPS} guests at once, while one neighbour
solicitation to its solicited-node group asks for it; if no answer comes
within L{NDP_WAIT} seconds they are dropped and counted (and the TCP
engine told, as by L{vtwisted.slirp.arpcache}).  Waiting packets
are frames or virtio-net packets, whose destination MAC is filled in once
known.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from vtwisted.slirp.neighbourtable import NEIGHBOUR_AGE, NeighbourTable

if TYPE_CHECKING:
    from vtwisted.slirp.router6 import Ipv6Router

#: How long a packet for an unknown guest waits for its neighbour advertisement.
NDP_WAIT = 1.0
#: Packets held per unknown guest.
NDP_QUEUE = 64
#: Guests being looked up at once.
NDP_LOOKUPS = 256
#: Guests remembered.
NDP_ENTRIES = 1024

UNSPECIFIED = bytes(16)


class NeighbourCache6:
    """
    The guests' MAC addresses, as one router's IPv6 side knows them.

    @ivar neighbours: guest address to MAC.
    @ivar heard: the guests heard since the last sweep, at the MAC heard
        (the router learns from the frames of others).
    """

    def __init__(self, side: Ipv6Router) -> None:
        self.side = side
        self.router = side.router
        self.table = NeighbourTable(side.reactor, NDP_ENTRIES)
        self.neighbours = self.table.macs
        self.heard = self.table.heard
        self._pending: dict[bytes, tuple[list[tuple[bytes, bool]], Any]] = {}

    def learn(self, address: bytes, mac: bytes) -> None:
        """
        Remember that guest C{address} has C{mac}, and send what waited for it.
        """
        if mac[0] & 1 or address[0] == 0xFF or address == UNSPECIFIED or \
                address in self.side.macs:
            return
        self.table.remember(address, mac)
        entry = self._pending.pop(address, None)
        if entry is not None:
            waiting, call = entry
            call.cancel()
            for packet, isVnet in waiting:
                if isVnet:
                    self.router.emitPacket(packet[:10] + mac + packet[16:])
                else:
                    self.router.emitFrame(mac + packet[6:])

    def hold(self, dst: bytes, packet: bytes, isVnet: bool) -> None:
        """
        Keep C{packet} (a frame, or a virtio-net packet if C{isVnet}) until
        guest C{dst} answers a neighbour solicitation, sending it once.
        """
        entry = self._pending.get(dst)
        if entry is None:
            if dst == UNSPECIFIED or len(self._pending) >= NDP_LOOKUPS:
                self.router.dropped("peer", f"no route to {_text(dst)}")
                return
            call = self.side.reactor.callLater(NDP_WAIT, self._giveUp, dst)
            entry = self._pending[dst] = ([], call)
            self.side.solicit(dst)
        if len(entry[0]) < NDP_QUEUE:
            entry[0].append((packet, isVnet))
        else:
            self.router.dropped("busy", f"{_text(dst)} does not answer neighbour "
                                "solicitations; packets queued")

    def _giveUp(self, dst: bytes) -> None:
        if self._pending.pop(dst, None) is not None:
            self.router.dropped("peer", f"{_text(dst)} did not answer neighbour solicitation "
                                f"within {NDP_WAIT:g} s")
            if self.router.tcp is not None:
                self.router.tcp.neighbourUnanswered(dst)

    def close(self) -> None:
        """
        Drop the packets waiting and cancel their timers, and stop
        forgetting silent guests.
        """
        self.table.close()
        for _, call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()


    def summary(self) -> str:
        """
        How many guests are known and were forgotten, for a console.
        """
        return (f"NDP: {len(self.neighbours)} guests known, {self.table.forgotten} forgotten "
                f"after {NEIGHBOUR_AGE / 60:g} minutes silent")


def _text(address: bytes) -> str:
    return str(ipaddress.IPv6Address(address))
