"""
The IPv4 neighbours of a slirp router: ARP answers, learning, and packets
waiting for a guest's MAC address.

Theory of operation
-------------------
The router answers ARP for the gateway, the DNS proxy and the guest forwards'
addresses, each with a MAC built from its address (C{52:55:0a:00:02:02}),
as libslirp does.  It learns guests from their ARP packets (telling the
DHCP server, whose probes they may answer), DHCP leases and IPv4 frames, keeping up to
L{ARP_ENTRIES} (the one heard from longest ago goes first) and forgetting
those silent for five minutes (L{vtwisted.slirp.neighbourtable}).  A packet for a guest whose MAC is
not known yet waits, L{ARP_QUEUE} at most per guest, while one ARP request
asks for it; if no answer comes within L{ARP_WAIT} seconds they are dropped
and counted (and the TCP engine told, whose port forwards' SYNs give up on
a guest that is not there).  Waiting packets are frames or virtio-net
packets, whose destination MAC is filled in once known.  A guest that was
forgotten is asked again in the same way when a packet is for it.
"""

from __future__ import annotations

from typing import Any

from vtwisted.slirp.addresses import dotted
from vtwisted.slirp.neighbourtable import NEIGHBOUR_AGE, NeighbourTable
from vtwisted.wire import arp
from vtwisted.wire.ethernet import BROADCAST, formatMac

#: How long a packet for an unknown guest waits for its ARP answer.
ARP_WAIT = 1.0
#: Packets held per unknown guest.
ARP_QUEUE = 64
#: Guests remembered.
ARP_ENTRIES = 1024

_ARP = b"\x08\x06"
_ZERO = b"\0\0\0\0"


def macFor(address: bytes) -> bytes:
    """
    The MAC address libslirp gives an emulated host: C{52:55} and the IPv4
    address.
    """
    return b"\x52\x55" + address


class ArpCache:
    """
    The guests' MAC addresses, as one router knows them.

    @ivar macs: guest address to MAC.
    @ivar heard: the guests heard since the last sweep (the router learns
        from the frames of others).
    """

    def __init__(self, router: Any) -> None:
        self.router = router
        self.table = NeighbourTable(router.reactor, ARP_ENTRIES)
        self.macs = self.table.macs
        self.heard = self.table.heard
        self._pending: dict[bytes, list[tuple[bytes, bool]]] = {}
        self._timers: dict[bytes, Any] = {}

    def arpReceived(self, frame: bytes, offset: int) -> None:
        """
        An ARP packet at C{offset} of C{frame}: learn its sender, answer a
        request for one of the router's addresses.
        """
        router = self.router
        try:
            packet = arp.ARPPacket.parse(frame, offset)
        except arp.ARPError as e:
            router.dropped("malformed", f"ARP from {formatMac(frame[6:12])}: {e}")
            return
        if packet.senderIp != _ZERO and router.config.contains(packet.senderIp):
            self.learn(packet.senderIp, packet.senderMac)
            if router.dhcp is not None:
                router.dhcp.heard(packet.senderIp, packet.senderMac)
        if packet.op == arp.OP_REQUEST and packet.targetIp in router.arpAddresses:
            mac = macFor(packet.targetIp)
            reply = arp.ARPPacket(arp.OP_REPLY, mac, packet.targetIp, packet.senderMac,
                                  packet.senderIp).pack()
            router.emitFrame(packet.senderMac + mac + _ARP + reply + bytes(18))

    def learn(self, address: bytes, mac: bytes) -> None:
        """
        Remember that guest C{address} has C{mac}, and send what waited for it.
        """
        if mac[0] & 1:
            return
        self.table.remember(address, mac)
        waiting = self._pending.pop(address, None)
        timer = self._timers.pop(address, None)
        if timer is not None and timer.active():
            timer.cancel()
        if waiting:
            router = self.router
            for packet, isVnet in waiting:
                if isVnet:
                    router.emitPacket(packet[:10] + mac + packet[16:])
                else:
                    router.emitFrame(mac + packet[6:])

    def hold(self, dst: bytes, packet: bytes, isVnet: bool) -> None:
        """
        Keep C{packet} (a frame, or a virtio-net packet if C{isVnet}) until
        guest C{dst} answers ARP, asking it once.
        """
        router = self.router
        waiting = self._pending.get(dst)
        if waiting is None:
            if not router.config.contains(dst):
                router.dropped("peer", f"no route to {dotted(dst)}")
                return
            waiting = self._pending[dst] = []
            self._timers[dst] = router.reactor.callLater(ARP_WAIT, self._giveUp, dst, waiting)
            request = arp.ARPPacket(arp.OP_REQUEST, router.gatewayMac, router.gateway,
                                    bytes(6), dst).pack()
            router.emitFrame(BROADCAST + router.gatewayMac + _ARP + request + bytes(18))
        if len(waiting) < ARP_QUEUE:
            waiting.append((packet, isVnet))
        else:
            router.dropped("busy", f"{dotted(dst)} does not answer ARP; packets queued")

    def close(self) -> None:
        """
        Drop the packets waiting for guests, and their timers, and stop
        forgetting silent guests.
        """
        self.table.close()
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._pending.clear()

    def _giveUp(self, dst: bytes, waiting: list[tuple[bytes, bool]]) -> None:
        self._timers.pop(dst, None)
        if self._pending.get(dst) is waiting:
            del self._pending[dst]
            self.router.dropped("peer", f"{dotted(dst)} did not answer ARP within "
                                f"{ARP_WAIT:g} s")
            if self.router.tcp is not None:
                self.router.tcp.neighbourUnanswered(dst)

    def describe(self) -> list[str]:
        """
        The guests known, for a console.
        """
        return [f"ARP: {len(self.macs)} guests known, {self.table.forgotten} forgotten "
                f"after {NEIGHBOUR_AGE / 60:g} minutes silent"] + [
            f"guest {dotted(a)} at {formatMac(m)}" for a, m in sorted(self.macs.items())]
