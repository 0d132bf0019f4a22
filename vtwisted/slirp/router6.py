"""
The IPv6 side of a slirp port's router: the address plan, DHCPv6, echo,
and the way in and out for the TCP and UDP engines (neighbour discovery
is L{vtwisted.slirp.discovery6}).

Theory of operation
-------------------
As in libslirp, the router is C{fe80::2}, the gateway (the host, to guests)
C{PREFIX::2}, the DNS proxy C{PREFIX::3}, each with MAC C{52:56} + the
address's last 4 bytes; guests configure themselves (SLAAC) and, unlike
in libslirp, may also ask DHCPv6 for an address (L{vtwisted.slirp.dhcp6}).

  - B{Neighbour discovery} (L{vtwisted.slirp.discovery6}): router
    advertisements, answers to solicitations for the three addresses;
    guests are learned from NDP and from any packet with a unicast source
    (L{vtwisted.slirp.neighbours6}, where a packet for an unknown guest
    waits up to a second for the answer to a solicitation).
  - B{In}: extension headers are walked, fragments reassembled
    (L{vtwisted.slirp.fragments6}); a packet the router would forward with
    a hop limit of 1 or 0 is answered with a time exceeded (traceroute6's
    first hop), as IPv4's TTL is; TCP and UDP to unicast addresses go to
    the engines (checksums checked unless the guest's kernel vouched for
    them); pings to the router's addresses are answered; destination
    unreachable, time exceeded and parameter problem go to the engines,
    as IPv4's do (L{vtwisted.slirp.guesterrors}); DHCPv6 messages
    go to the server, whose answers leave from C{fe80::2}.
  - B{Out}: frames leave from the router's MAC, except neighbour
    advertisements (from the target's).  TCP leaves as virtio-net packets with a
    partial checksum (TSO super-frames past the MSS); datagrams past the
    MTU leave in fragments.

Bad input is counted through the router's C{dropped}; nothing here raises
on a frame or logs per packet.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING, Any

from vtwisted.slirp import guesterrors
from vtwisted.slirp.delegation import PrefixPool
from vtwisted.slirp.dhcp6 import Dhcp6Error, Dhcp6Server
from vtwisted.slirp.discovery6 import LINK_LOCAL, UNSPECIFIED, Discovery6
from vtwisted.slirp.fragments6 import Reassembler6
from vtwisted.slirp.neighbours6 import NeighbourCache6
from vtwisted.slirp.packets import udpDatagram
from vtwisted.wire import icmpv6, ipv6, vnet
from vtwisted.wire.checksum import Buffer, checksumValid, pseudoHeaderSumV6
from vtwisted.wire.ethernet import ETH_P_IPV6, formatMac
from vtwisted.wire.udp import UDPError, UDPHeader

if TYPE_CHECKING:
    from vtwisted.slirp.router import SlirpRouter

ALL_DHCP_AGENTS = ipaddress.IPv6Address("ff02::1:2").packed

#: DHCPv6's server port (RFC 8415).
DHCP_SERVER_PORT = 547
#: The gateway's TFTP server (C{tftp=}) answers on it over IPv6 too.
TFTP_PORT = 69

#: The ICMPv6 destination unreachable code for each ICMPv4 one.
_CODES = {0: icmpv6.NO_ROUTE, 1: icmpv6.ADDRESS_UNREACHABLE, 3: icmpv6.PORT_UNREACHABLE,
          13: icmpv6.ADMIN_PROHIBITED}
#: Upper layers found right after the fixed header, without a walk.
_UPPER = frozenset((ipv6.NH_TCP, ipv6.NH_UDP, ipv6.NH_ICMPV6))
_ETHERTYPE = ETH_P_IPV6.to_bytes(2, "big")
_NO_MAC = bytes(6)
_U16 = struct.Struct("!H")
_OPTION = struct.Struct("!HH")
_FRAGMENT = struct.Struct("!BBHI")


def macFor6(address: bytes) -> bytes:
    """
    The MAC address libslirp gives an emulated IPv6 host: C{52:56} and the
    last 4 bytes of its address.
    """
    return b"\x52\x56" + address[12:16]


class Ipv6Router:
    """
    The IPv6 side of one slirp port's L{SlirpRouter}.

    @ivar prefix: the guests' network (C{fec0::/64}).
    @ivar gateway: the gateway's address (16 bytes).
    @ivar nameserver: the DNS proxy's address.
    @ivar mac: the router's MAC, the source of its frames (but neighbour
        advertisements).
    @ivar macs: each of the router's addresses to the MAC it answers with.
    @ivar neighbours: guest address to MAC.
    """

    def __init__(self, router: SlirpRouter, prefix: ipaddress.IPv6Network, gateway: bytes,
                 nameserver: bytes) -> None:
        self.router = router
        self.reactor = router.reactor
        self.prefix = prefix
        self.gateway = gateway
        self.nameserver = nameserver
        self.mac = macFor6(LINK_LOCAL)
        self.macs = {a: macFor6(a) for a in (LINK_LOCAL, gateway, nameserver)}
        router.ownMacs.update(self.macs.values())
        self.duid = _OPTION.pack(3, 1) + self.mac
        config = router.config
        self.delegation = None if config.delegated is None else \
            PrefixPool(config.delegated, config.delegatedLength, self.reactor.seconds)
        self.dhcp = Dhcp6Server(prefix=prefix, duid=self.duid, nameserver=nameserver,
                                clock=self.reactor.seconds, stateful=config.dhcp6,
                                restricted=router.restricted,
                                searchDomains=config.searchDomains,
                                delegation=self.delegation,
                                bootfileUrl=_bootfileUrl(config, gateway))
        self._own = prefix.network_address.packed[:8]
        self.ndp = NeighbourCache6(self)
        self.neighbours = self.ndp.neighbours
        self._heard = self.ndp.heard
        self.learn = self.ndp.learn
        self._hold = self.ndp.hold
        self._ident = 0
        self.fragments = Reassembler6(self.reactor, router.dropped)
        self.discovery = Discovery6(self)
        self.advertise = self.discovery.advertise
        self.solicit = self.discovery.solicit

    # Frames from the switch

    def packetReceived(self, frame: bytes, offset: int, verified: bool) -> None:
        """
        An IPv6 packet at C{offset} of C{frame}, its Ethernet header just before.

        @param verified: the guest's kernel vouched for the checksums.
        """
        ethSrc = frame[offset - 8:offset - 2]
        try:
            header = ipv6.IPv6Header.parse(frame, offset)
        except ipv6.IPv6Error as e:
            self.router.dropped("malformed", f"IPv6 from {formatMac(ethSrc)}: {e}")
            return
        src = header.src
        end = offset + 40 + header.payloadLength if header.payloadLength else len(frame)
        if end > len(frame) or src[0] == 0xFF:
            problem = "truncated packet" if end > len(frame) else "multicast source"
            self.router.dropped("malformed", f"IPv6 from {_text(src)}: {problem}")
            return
        if src != UNSPECIFIED and self._heard.get(src) != ethSrc:
            self.learn(src, ethSrc)
        view = memoryview(frame)[:end]
        nextHeader, position = header.nextHeader, offset + 40
        if nextHeader not in _UPPER:
            try:
                nextHeader, position, field = ipv6.headerChain(view, offset)
                if nextHeader == ipv6.NH_FRAGMENT:
                    whole = self.fragments.add(header, view[offset:], position - offset,
                                               field - offset)
                    if whole is not None:
                        self.packetReceived(frame[offset - 14:offset] + whole, 14, False)
                    return
            except ipv6.IPv6Error as e:
                self.router.dropped("malformed", f"IPv6 from {_text(src)}: {e}")
                return
        packet, body = view[offset:], view[position:]
        if header.hopLimit <= 1 and self._forwarded(header.dst):
            self._sendError(packet, icmpv6.TIME_EXCEEDED, 0)  # traceroute6's first hop
            return
        if nextHeader == ipv6.NH_TCP:
            self._tcpReceived(header, packet, body, verified)
        elif nextHeader == ipv6.NH_UDP:
            self._udpReceived(header, packet, body, verified)
        elif nextHeader == ipv6.NH_ICMPV6:
            self._icmpReceived(header, ethSrc, body, verified)
        elif header.dst[0] != 0xFF and nextHeader != ipv6.NH_NONE:
            self.router.dropped("unsupported", f"IPv6 next header {nextHeader} from "
                                f"{_text(src)}")

    def _tcpReceived(self, header: ipv6.IPv6Header, packet: memoryview, body: memoryview,
                     verified: bool) -> None:
        if header.dst[0] == 0xFF:
            return
        if not verified and not checksumValid(
                body, pseudoHeaderSumV6(header.src, header.dst, 6, len(body))):
            self.router.dropped("malformed", f"TCP from {_text(header.src)}: bad checksum")
            return
        self.router.tcp.segmentReceived(header.src, header.dst, body, packet)

    def _udpReceived(self, header: ipv6.IPv6Header, packet: memoryview, body: memoryview,
                     verified: bool) -> None:
        src, dst = header.src, header.dst
        try:
            udp = UDPHeader.parse(body)
        except UDPError as e:
            self.router.dropped("malformed", f"UDP from {_text(src)}: {e}")
            return
        length = udp.length or len(body)
        if length > len(body):
            self.router.dropped("malformed", f"UDP from {_text(src)}: truncated datagram")
            return
        datagram = body[:length]
        if not verified and (udp.checksum == 0 or not checksumValid(
                datagram, pseudoHeaderSumV6(src, dst, 17, length))):
            problem = "no checksum" if udp.checksum == 0 else "bad checksum"
            self.router.dropped("malformed", f"UDP from {_text(src)}: {problem}")
            return
        if dst[0] == 0xFF:
            if dst == ALL_DHCP_AGENTS and udp.dstPort == DHCP_SERVER_PORT:
                self._dhcpReceived(src, udp.srcPort, datagram[8:])
            return
        tftp = self.router.tftp
        if udp.dstPort == TFTP_PORT and dst == self.gateway and tftp is not None:
            tftp.datagramReceived(src, udp.srcPort, bytes(datagram[8:]))
            return
        self.router.udp.datagramReceived(src, udp.srcPort, dst, udp.dstPort,
                                         bytes(datagram[8:]), packet)

    def _icmpReceived(self, header: ipv6.IPv6Header, ethSrc: bytes, body: memoryview,
                      verified: bool) -> None:
        src, dst = header.src, header.dst
        try:
            message = icmpv6.ICMPv6Message.parse(body)
            if not verified and not icmpv6.checksumOk(src, dst, body):
                raise icmpv6.ICMPv6Error("bad checksum")
            if message.type in icmpv6.OPTIONS_OFFSET:
                self.discovery.messageReceived(header, ethSrc, message)
            elif message.type == icmpv6.ECHO_REQUEST:
                self._echoReceived(src, dst, message)
            elif message.type in guesterrors.ERRORS[True] and dst[0] != 0xFF:
                guesterrors.errorReceived(self.router, dst, message.type, message.code,
                                          message.body[4:])
        except icmpv6.ICMPv6Error as e:
            self.router.dropped("malformed", f"ICMPv6 from {_text(src)}: {e}")

    def _echoReceived(self, src: bytes, dst: bytes, message: icmpv6.ICMPv6Message) -> None:
        if dst in self.macs:
            if src != UNSPECIFIED:
                self.sendIP(dst, src, ipv6.NH_ICMPV6, icmpv6.echoReply(message, dst, src), 255)
        elif self.hostAddress(dst, 0, ipv6.NH_ICMPV6) is not None and len(message.body) >= 4 \
                and not self.router.restricted and self.router.icmp6 is not None:
            ident, sequence = struct.unpack_from("!HH", message.body)
            self.router.icmp6.echoRequest(src, dst, ident, sequence, message.body[4:])

    def _dhcpReceived(self, src: bytes, srcPort: int, payload: memoryview) -> None:
        if src == UNSPECIFIED:
            return
        try:
            answer = self.dhcp.handle(bytes(payload), src)
        except Dhcp6Error as e:
            self.router.dropped("malformed", f"DHCPv6 from {_text(src)}: {e}")
            return
        if answer is not None:
            datagram = udpDatagram(LINK_LOCAL, src, DHCP_SERVER_PORT, srcPort, answer)
            self.sendIP(LINK_LOCAL, src, ipv6.NH_UDP, datagram)

    # Sending

    def sendIP(self, src: bytes, dst: bytes, nextHeader: int, payload: bytes,
               hopLimit: int = 64) -> None:
        """
        Send C{payload} (checksums computed) to a guest, in fragments if it
        does not fit in the MTU.
        """
        mtu = max(self.router.mtu, icmpv6.MIN_MTU)  # no IPv6 link has less
        if 40 + len(payload) <= mtu:
            self.sendPacket(dst, _ipHeader(src, dst, nextHeader, len(payload), hopLimit)
                             + payload)
            return
        room = (mtu - 48) & ~7
        self._ident = (self._ident + 1) & 0xFFFFFFFF
        for start in range(0, len(payload), room):
            piece = payload[start:start + room]
            more = 1 if start + room < len(payload) else 0
            fragment = _FRAGMENT.pack(nextHeader, 0, start | more, self._ident)
            self.sendPacket(dst, _ipHeader(src, dst, ipv6.NH_FRAGMENT, 8 + len(piece),
                                                 hopLimit) + fragment + piece)

    def sendTcp(self, src: bytes, dst: bytes, header: bytes, payload: Any, mss: int) -> None:
        """
        Send a TCP segment as a virtio-net packet with a partial checksum, a
        TSO super-frame if it is longer than C{mss}.
        """
        length = len(header) + len(payload)
        partial = pseudoHeaderSumV6(src, dst, ipv6.NH_TCP, length)
        tcpHeader = header[:16] + _U16.pack(partial) + header[18:]
        gso = vnet.GSO_TCPV6 if len(payload) > mss else vnet.GSO_NONE
        vnetHeader = vnet.VnetHeader(vnet.NEEDS_CSUM, gso, 54 + len(header),
                                     mss if gso else 0, 54, 16).pack()
        hop = self._nextHop(dst)
        mac = self.neighbours.get(hop)
        packet = b"".join((vnetHeader, mac or _NO_MAC, self.mac, _ETHERTYPE,
                           _ipHeader(src, dst, ipv6.NH_TCP, length, 64), tcpHeader,
                           payload))
        if mac is None:
            self._hold(hop, packet, True)
        else:
            self.router.emitPacket(packet)

    def sendUnreachable(self, packet: Buffer, code4: int) -> None:
        """
        Answer the guest's IPv6 C{packet} with a destination unreachable, its
        code mapped from ICMPv4's C{code4}.
        """
        self._sendError(packet, icmpv6.DEST_UNREACHABLE, _CODES.get(code4, icmpv6.NO_ROUTE))

    def sendTooBig(self, packet: Buffer, mtu: int) -> None:
        """
        Answer the guest's IPv6 C{packet}, larger than the router's C{mtu},
        with a Packet Too Big (as libslirp does), so its path MTU drops.
        """
        self._sendError(packet, icmpv6.PACKET_TOO_BIG, 0, mtu)

    def _sendError(self, packet: Buffer, kind: int, code: int, rest: int = 0) -> None:
        """
        Answer the guest's IPv6 C{packet} with an ICMPv6 error from the
        router; never about an error, nor to an unspecified or multicast
        source.
        """
        try:
            nextHeader, position = ipv6.transportOffset(packet)
        except ipv6.IPv6Error:
            return
        src = bytes(packet[8:24])
        if src == UNSPECIFIED or src[0] == 0xFF:
            return
        if nextHeader == ipv6.NH_ICMPV6 and (position >= len(packet) or packet[position] < 128):
            return
        reporter = LINK_LOCAL if src[:2] == b"\xfe\x80" else self.gateway
        self.sendIP(reporter, src, ipv6.NH_ICMPV6,
                    icmpv6.errorMessage(kind, code, packet, reporter, src, rest))

    def _forwarded(self, dst: bytes) -> bool:
        """
        Whether a guest's packet to C{dst} goes beyond the router (which
        a hop limit of 1 forbids): not to the router's own addresses, nor
        multicast, link-local or unspecified.
        """
        return dst not in self.macs and dst[0] != 0xFF and dst != UNSPECIFIED and \
            not (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80)

    def sendIcmpError(self, packet: bytes, kind: int, code: int, mtu: int,
                      reporter: bytes) -> None:
        """
        Relay an error a host reported about the guest's IPv6 C{packet}.
        """
        src = bytes(packet[8:24])
        rest = mtu if kind == icmpv6.PACKET_TOO_BIG else 0
        self.sendIP(reporter, src, ipv6.NH_ICMPV6,
                    icmpv6.errorMessage(kind, code, packet, reporter, src, rest))

    def sendPacket(self, dst: bytes, ip: bytes, source: bytes | None = None) -> None:
        """
        Send IPv6 packet C{ip} to C{dst} (a guest, or a multicast group) on
        the link, from Ethernet C{source} if given, else the router's MAC.
        """
        hop = self._nextHop(dst)
        mac = icmpv6.multicastMac(dst) if dst[0] == 0xFF else self.neighbours.get(hop)
        frame = b"".join((mac or _NO_MAC, source or self.mac, _ETHERTYPE, ip))
        if mac is None:
            self._hold(hop, frame, False)
        else:
            self.router.emitFrame(frame)

    def _nextHop(self, dst: bytes) -> bytes:
        """
        Where a packet for C{dst} goes on the link: the guest a prefix was
        delegated to, for an address in it, else C{dst} itself.
        """
        if self.delegation is None or dst[:8] == self._own or dst[0] == 0xFF:
            return dst
        return self.delegation.nextHop(dst) or dst

    # The address plan

    def hostAddress(self, dst: bytes, port: int, protocol: int) -> tuple[str, int] | None:
        """
        Where on the host a guest's packet to C{dst}:C{port} goes: the
        gateway is C{::1}, the DNS proxy's port 53 the host's resolver,
        global addresses themselves, others nowhere.
        """
        if self.router.restricted:
            return None
        if dst == self.gateway:
            return ("::1", port) if self.router.config.hostLoopback else None
        if dst == self.nameserver:
            return self.router.resolver() if port == 53 else None
        address = ipaddress.IPv6Address(dst)
        if self.delegation is not None and self.delegation.contains(dst):
            return None
        if (address in self.prefix or address.is_link_local or address.is_multicast
                or address.is_unspecified or address.is_loopback
                or address.ipv4_mapped is not None):
            return None
        return (str(address), port)

    def describe(self) -> list[str]:
        """
        The prefix, the router and the guests it knows, for a console.
        """
        lines = [f"IPv6 {self.prefix}, gateway {_text(self.gateway)}, DNS "
                 f"{_text(self.nameserver)}, router fe80::2 at {formatMac(self.mac)}",
                 self.ndp.summary()]
        lines.extend(f"guest {_text(a)} at {formatMac(m)}"
                     for a, m in sorted(self.neighbours.items()))
        now = self.reactor.seconds()
        for lease in self.dhcp.leases():
            kind = "IA_TA" if lease.temporary else "IA"
            owner = f"client {lease.client.hex()} {kind} {lease.iaid}" if lease.client else \
                "declined"
            lines.append(f"DHCPv6 lease {_text(lease.address)} {owner}, "
                         f"{lease.expires - now:.0f} s left")
        pool = self.delegation
        if pool is not None:
            lines.extend(f"DHCPv6 prefix {_text(given.prefix)}/{pool.length} via "
                         f"{_text(given.via)}, client {given.client.hex()} IA {given.iaid}, "
                         f"{given.expires - now:.0f} s left" for given in pool.delegations())
        return lines

    def close(self) -> None:
        """
        Stop advertising and drop the packets waiting for guests and the
        fragments waiting for the rest of their datagram.
        """
        self.fragments.close()
        self.ndp.close()
        self.discovery.close()


def _ipHeader(src: bytes, dst: bytes, nextHeader: int, length: int, hopLimit: int) -> bytes:
    return ipv6.IPv6Header(0, 0, length, nextHeader, hopLimit, src, dst).pack()


def _text(address: Buffer) -> str:
    return str(ipaddress.IPv6Address(bytes(address)))


def _bootfileUrl(config: Any, gateway: bytes) -> str | None:
    """
    The URL DHCPv6 gives for C{bootfile=}, served by the gateway's TFTP
    server over IPv6 (None without both C{tftp=} and C{bootfile=}).
    """
    if config.tftpRoot is None or not config.bootfile:
        return None
    return f"tftp://[{ipaddress.IPv6Address(gateway)}]/{config.bootfile}"
