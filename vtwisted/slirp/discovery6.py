"""
Neighbour discovery on the IPv6 side of a slirp router (RFC 4861): router
advertisements, and the neighbour solicitations and advertisements the
router answers and sends.

Theory of operation
-------------------
The IPv6 side (L{vtwisted.slirp.router6}) hands L{Discovery6.messageReceived}
every router solicitation, neighbour solicitation and neighbour
advertisement a guest sends; each must come with a hop limit of 255 and
code 0 (RFC 4861 6.1, 7.1), else it is malformed.

  - B{Router advertisements} go from C{fe80::2} to C{ff02::1} at start,
    every 200-600 s and for every solicitation: the prefix (on-link,
    autonomous), the router's MAC, an MTU option if C{mtu=} was given
    (libslirp has none: one by default would cap the IPv6 MTU of every host
    on a jumbo LAN at the NAT's 1500) and an
    RDNSS option naming the DNS proxy (libslirp's only when the host has an
    IPv6 nameserver; ours forwards to either family).  With DHCPv6
    addresses on (C{dhcpv6=on}, the default) they set the M and O flags.
    With C{restrict=on} they announce no default route and no DNS, as DHCP
    does then.
  - B{Neighbours}: solicitations for the router's three addresses are
    answered from the target's own MAC (like ARP replies, which teaches
    the switch where those MACs are), a duplicate address detection's
    (from C{::}) to all nodes, to defend the address; guests are learned
    from the link-layer options of their messages (and, by the IPv6 side,
    from any packet with a unicast source).  L{Discovery6.solicit} asks a
    guest's solicited-node group for its MAC, for the packets that wait
    for it (L{vtwisted.slirp.neighbours6}).
"""

from __future__ import annotations

import ipaddress
import random
from typing import TYPE_CHECKING, Any

from vtwisted.wire import icmpv6, ipv6

if TYPE_CHECKING:
    from vtwisted.slirp.router6 import Ipv6Router

#: The router's link-local address.
LINK_LOCAL = ipaddress.IPv6Address("fe80::2").packed
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed
UNSPECIFIED = bytes(16)
#: Unsolicited router advertisements go out at random intervals in this range.
RA_INTERVAL = (200.0, 600.0)
ROUTER_LIFETIME = 1800
DNS_LIFETIME = 1800


class Discovery6:
    """
    Neighbour and router discovery for one router's IPv6 side.
    """

    def __init__(self, side: Ipv6Router) -> None:
        self.side = side
        self.reactor = side.reactor
        self._advertiser: Any = self.reactor.callLater(0, self._periodic)

    def messageReceived(self, header: ipv6.IPv6Header, ethSrc: bytes,
                        message: icmpv6.ICMPv6Message) -> None:
        """
        A guest's router solicitation, neighbour solicitation or neighbour
        advertisement (its type in L{icmpv6.OPTIONS_OFFSET}) from Ethernet
        source C{ethSrc}.

        @raise icmpv6.ICMPv6Error: it is malformed.
        """
        if header.hopLimit != 255 or message.code != 0:
            raise icmpv6.ICMPv6Error(f"neighbour discovery type {message.type} with hop limit "
                                     f"{header.hopLimit}, code {message.code}")
        kind, src, body, learn = message.type, header.src, message.body, self.side.learn
        if kind == icmpv6.NEIGHBOR_ADVERTISEMENT:
            mac = icmpv6.linkLayerAddress(body, icmpv6.OPTIONS_OFFSET[kind], icmpv6.TARGET_LL)
            learn(icmpv6.targetAddress(message), mac or ethSrc)
            return
        mac = icmpv6.linkLayerAddress(body, icmpv6.OPTIONS_OFFSET[kind], icmpv6.SOURCE_LL)
        if mac is not None and src != UNSPECIFIED:
            learn(src, mac)
        if kind == icmpv6.ROUTER_SOLICITATION:
            self.advertise()
        elif kind == icmpv6.NEIGHBOR_SOLICITATION:
            self._solicitationReceived(src, icmpv6.targetAddress(message))

    def _solicitationReceived(self, src: bytes, target: bytes) -> None:
        own = self.side.macs.get(target)
        if own is None:
            return
        if src == UNSPECIFIED:  # duplicate address detection: defend, to all nodes
            dst, solicited = ALL_NODES, False
        else:
            dst, solicited = src, True
        answer = icmpv6.neighborAdvertisement(target, dst, target, own, solicited)
        self._send(target, dst, answer, own)

    def solicit(self, address: bytes) -> None:
        """
        Ask guest C{address} for its MAC, at its solicited-node group.
        """
        group = icmpv6.solicitedNodeAddress(address)
        message = icmpv6.neighborSolicitation(LINK_LOCAL, group, address, self.side.mac)
        self._send(LINK_LOCAL, group, message)

    def advertise(self) -> None:
        """
        Send a router advertisement to all nodes.
        """
        side = self.side
        router = side.router
        restricted, mtu = router.restricted, router.mtu
        message = icmpv6.routerAdvertisement(
            LINK_LOCAL, ALL_NODES, side.mac, side.prefix.network_address.packed,
            side.prefix.prefixlen, None if restricted else side.nameserver,
            mtu if mtu >= icmpv6.MIN_MTU and router.config.mtuGiven else None,
            routerLifetime=0 if restricted else ROUTER_LIFETIME, dnsLifetime=DNS_LIFETIME,
            managed=side.dhcp.stateful,
        )
        self._send(LINK_LOCAL, ALL_NODES, message)

    def _periodic(self) -> None:
        self._advertiser = self.reactor.callLater(random.uniform(*RA_INTERVAL), self._periodic)
        self.advertise()

    def _send(self, src: bytes, dst: bytes, message: bytes,
              source: bytes | None = None) -> None:
        """
        Send an NDP C{message} (hop limit 255), from Ethernet C{source} if
        given, else the router's MAC.
        """
        ip = ipv6.IPv6Header(0, 0, len(message), ipv6.NH_ICMPV6, 255, src, dst).pack()
        self.side.sendPacket(dst, ip + message, source)

    def close(self) -> None:
        """
        Stop advertising.
        """
        if self._advertiser is not None and self._advertiser.active():
            self._advertiser.cancel()
        self._advertiser = None
