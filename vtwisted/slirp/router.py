"""
The virtual router of a slirp port: the guests' gateway, DHCP and DNS server.

Theory of operation
-------------------
The router is one more station on the LAN.  It reads what the switch sends
its port (broadcasts, and frames to its own MAC addresses) and answers in
frames of its own:

  - B{ARP} (L{vtwisted.slirp.arpcache}): it answers for the gateway and the
    DNS proxy, learns guests, and holds packets for a guest whose MAC is
    not known yet for at most a second.
  - B{IPv4}: headers and checksums are checked (a packet from an offload
    TAP that the kernel vouched for is not checked again), fragments are
    reassembled (L{vtwisted.slirp.fragments}), and the payload goes by
    protocol to the TCP engine (L{vtwisted.slirp.tcp}), the UDP engine
    (L{vtwisted.slirp.udp}), the DHCP server (L{vtwisted.slirp.dhcp}), the
    echo responder of the gateway and DNS addresses, or the ICMP engine
    (L{vtwisted.slirp.icmp}) for pings beyond them; a guest's destination
    unreachable, time exceeded or parameter problem goes to the engine of
    the protocol it quotes: the TCP engine fails the forward whose SYN it
    answers, the UDP engine counts it on the forward whose datagram it
    answers (L{vtwisted.slirp.guesterrors}).  The datagrams of a UDP
    super-frame (USO, a TAP's merged run of one flow) go to the UDP engine
    one by one, without being cut into frames first.
  - B{IPv6} frames go to the IPv6 side (L{vtwisted.slirp.router6}), which
    the methods below delegate to for 16-byte addresses.
  - B{Out} (L{vtwisted.slirp.routersend}): every IPv4 packet leaves from the
    gateway's MAC, as libslirp's do.  TCP segments and UDP datagrams leave
    as virtio-net packets with their checksum left to complete (by the
    guest's TAP, or by the switch for ports without the header); a TCP
    segment larger than the guest's MSS is a super-frame (TSO) that the
    switch passes whole to an offload TAP and cuts for every other port.
    Other packets, and datagrams past the MTU, are plain frames,
    fragmented as needed.

All of this is for the engines through L{IGuestNetwork}; the router knows
the address plan (L{vtwisted.slirp.config}) and nothing of sockets: where
a destination is on the host (L{SlirpRouter.hostAddress}: the gateway, and
for UDP the limited broadcast 255.255.255.255 as in libslirp, is the host's
loopback; the DNS proxy's port 53 the host's resolver).  Bad
input is counted on the port and logged once per kind through
L{SlirpRouter.dropped}; the router never raises on a frame.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.interfaces import IGuestNetwork
from vtwisted.slirp import guesterrors, packets
from vtwisted.slirp.addresses import dotted
from vtwisted.slirp.arpcache import ArpCache, macFor
from vtwisted.slirp.config import ResolvConf, SlirpConfig
from vtwisted.slirp.fragments import Reassembler
from vtwisted.slirp.routersend import GuestSender
from vtwisted.sockettools import linuxAtLeast
from vtwisted.wire import arp, dhcp, icmp, icmpv6, ipv4, vlan, vnet
from vtwisted.wire.checksum import checksumValid, pseudoHeaderSumV4
from vtwisted.wire.ethernet import BROADCAST, formatMac
from vtwisted.wire.udp import UDPError, UDPHeader

log = Logger()

#: The largest TCP payload of one super-frame sent to the switch.
MAX_SEGMENT = 64000

_IPV4 = b"\x08\x00"
_ARP = b"\x08\x06"
_IPV6 = b"\x86\xdd"
_ALL_ONES = b"\xff\xff\xff\xff"
_ZERO = b"\0\0\0\0"
_ID = struct.Struct("!H")


@implementer(IGuestNetwork)
class SlirpRouter(GuestSender):
    """
    The router of one slirp port.

    @ivar emitFrame: hands a plain frame to the switch.
    @ivar emitPacket: hands a virtio-net packet to the switch.
    @ivar tcp: the TCP engine, set by the port.
    @ivar udp: the UDP engine, set by the port.
    @ivar dhcp: the DHCP server, set by the port.
    @ivar neighbours: guest address to MAC.
    """

    maxSegment = MAX_SEGMENT
    #: Whether the kernel takes UDP super-frames written to TAP devices
    #: (Linux 6.2 and later).
    usoWritable = linuxAtLeast(6, 2)

    def __init__(
        self,
        config: SlirpConfig,
        reactor: Any,
        emitFrame: Callable[[bytes], None],
        emitPacket: Callable[[bytes], None],
        dropped: Callable[[str, str], None],
        resolvConf: ResolvConf | None = None,
        usoPays: Callable[[bytes], bool] = lambda mac: False,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.emitFrame = emitFrame
        self.emitPacket = emitPacket
        self._dropped = dropped
        #: Whether a UDP super-frame to this MAC reaches a port that takes it.
        self.usoPays = usoPays
        self.resolvConf = resolvConf or ResolvConf()
        self.gateway = config.gateway
        self.nameserver = config.nameserver
        self.mtu = config.mtu
        #: The largest packet taken from a guest: none without C{mtu=} (the
        #: port takes jumbo frames); with it, larger IPv6 packets, and IPv4
        #: ones that may not be fragmented, are answered as a router would.
        self.mru = config.mtu if config.mtuGiven else None
        #: The longest frame let through without a look (L{_tooBig}).
        self._longestFrame = 14 + self.mru if self.mru is not None else sys.maxsize
        self.restricted = config.restricted
        #: Whether guests get IPv4 at all (C{ipv4=off}: IPv6 alone).
        self.ipv4 = config.ipv4
        self.gatewayMac = macFor(config.gateway)
        self.nameserverMac = macFor(config.nameserver)
        #: Guest forwards: (address, port) to a L{vtwisted.slirp.tcp.GuestForwardTarget}.
        self.guestForwards: dict[tuple[bytes, int], Any] = {}
        #: The addresses the router answers ARP for.
        self.arpAddresses = {config.gateway, config.nameserver}
        #: The MAC addresses the router answers to (the IPv6 side adds its own).
        self.ownMacs = {self.gatewayMac, self.nameserverMac}
        self.broadcast = config.network.broadcast_address.packed
        self.arp = ArpCache(self)
        self.neighbours = self.arp.macs
        #: The guests heard since the ARP cache's last sweep.
        self._heard = self.arp.heard
        self.learn = self.arp.learn
        self._hold = self.arp.hold
        self._ident = 0
        self.tcp: Any = None
        self.udp: Any = None
        self.dhcp: Any = None
        self.tftp: Any = None
        self.icmp: Any = None
        self.icmp6: Any = None
        self.fragments = Reassembler(reactor, self.dropped)
        #: The IPv6 side (L{vtwisted.slirp.router6}), or L{None} when IPv6 is off.
        self.v6: Any = None
        self.gateway6: bytes | None = None
        self.nameserver6: bytes | None = None
        self.echoes = 0

    # IGuestNetwork

    def dropped(self, reason: str, message: str) -> None:
        """
        Count a dropped packet on the port, logging the first of each kind.
        """
        self._dropped(reason, message)

    def hostAddress(self, dst: bytes, port: int, protocol: int) -> tuple[str, int] | None:
        """
        Where a guest's packet to C{dst}:C{port} goes on the host.
        """
        if protocol == ipv4.PROTO_TCP and (dst, port) in self.guestForwards:
            return self.guestForwards[(dst, port)]
        if self.restricted:
            return None
        if len(dst) == 16:
            return self.v6.hostAddress(dst, port, protocol) if self.v6 is not None else None
        if dst == self.gateway or (dst == _ALL_ONES and protocol == ipv4.PROTO_UDP):
            return ("127.0.0.1", port) if self.config.hostLoopback else None
        if dst == self.nameserver:
            return self.resolver() if port == 53 else None
        address = ipaddress.IPv4Address(dst)
        if (address in self.config.network or address.is_multicast or address.is_unspecified
                or address.is_reserved or address.is_loopback or dst == _ALL_ONES):
            return None
        return (str(address), port)

    def probeAddress(self, address: bytes) -> None:
        """
        Ask who has C{address} in an RFC 5227 ARP probe (sender address
        0.0.0.0, so no station's ARP cache is touched), for DHCP, which
        must not hand out an address a station answers for.  Linux answers
        a probe for an address it has from the gateway's MAC to that MAC.
        """
        probe = arp.ARPPacket(arp.OP_REQUEST, self.gatewayMac, _ZERO, bytes(6), address).pack()
        self.emitFrame(BROADCAST + self.gatewayMac + _ARP + probe + bytes(18))

    def resolver(self) -> tuple[str, int] | None:
        """
        The host's DNS server and port, or L{None} if the host has none.
        """
        host = self.config.resolver or self.resolvConf.nameserver(self.reactor.seconds())
        if host is None:
            return None
        return (host, self.config.resolverPort)

    def guestAddress(self, host: str, v6: bool = False) -> bytes:
        """
        The address a guest (of IPv6 if C{v6}) sees for a host-side peer at
        C{host}: loopback is the gateway, others themselves.
        """
        if host.startswith("::ffff:"):
            host = host[7:]
        gateway = self.gateway6 if v6 and self.gateway6 is not None else self.gateway
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return gateway
        if address.is_loopback or (address.version == 6) != (len(gateway) == 16):
            return gateway
        return address.packed

    # Frames from the switch

    def frameReceived(self, frame: bytes) -> None:
        """
        A plain frame the switch sent to this port.
        """
        try:
            if len(frame) > self._longestFrame and self._tooBig(frame, 0):
                return
            self._dispatch(frame, 0, False)
        except Exception:
            log.failure("slirp: the router failed on a frame")

    def vnetPacketReceived(self, packet: bytes) -> None:
        """
        A virtio-net packet the switch sent to this port: checksums the
        kernel left to complete are trusted, TCP super-frames are taken
        whole, and the datagrams of a UDP super-frame (USO) go to the UDP
        engine one by one without being cut into frames.
        """
        try:
            flags, gsoType = packet[0], packet[1]
            if gsoType & ~vnet.GSO_ECN == vnet.GSO_UDP_L4:
                if not self._usoReceived(packet):
                    for frame in vnet.toFrames(packet):
                        self._dispatch(frame, 0, False)
                return
            verified = bool(flags & (vnet.NEEDS_CSUM | vnet.DATA_VALID))
            if len(packet) - vnet.HEADER_LENGTH > self._longestFrame and \
                    gsoType == vnet.GSO_NONE and self._tooBig(packet, vnet.HEADER_LENGTH):
                return
            self._dispatch(packet, vnet.HEADER_LENGTH, verified)
        except vnet.VnetError as e:
            self.dropped("malformed", f"bad virtio-net packet: {e}")
        except Exception:
            log.failure("slirp: the router failed on a packet")

    def _usoReceived(self, packet: bytes) -> bool:
        """
        Hand the UDP engine each datagram of an untagged IPv4 USO packet to
        the gateway's MAC (a TAP merged a run of one flow's datagrams).

        @return: whether it was such a packet; if not, the caller cuts it.
        """
        if packet[10:16] not in self.ownMacs or not self.ipv4:
            return False
        found = packets.usoDatagrams(packet)
        if found is None or found[2] in (_ALL_ONES, self.broadcast) or found[2][0] >= 224:
            return False
        self.udp.datagramsReceived(*found)
        return True

    def _tooBig(self, frame: bytes, start: int) -> bool:
        """
        Whether C{frame} holds a guest's packet for the router larger than
        C{mtu=} allows; if so it is answered (libslirp's IPv6 Packet Too
        Big, or IPv4's fragmentation needed for a packet with DF set) and
        counted, not routed.  A guest on a jumbo LAN then learns the path
        MTU instead of losing its packets.
        """
        mru = self.mru
        if mru is None or len(frame) - start - 14 <= mru or frame[start:start + 6] \
                not in self.ownMacs:
            return False
        kind, ip = frame[start + 12:start + 14], start + 14
        if kind == _IPV6 and self.v6 is not None and len(frame) >= ip + 40:
            size, limit = 40 + _ID.unpack_from(frame, ip + 4)[0], max(mru, icmpv6.MIN_MTU)
            if size <= limit:
                return False
            self.v6.sendTooBig(memoryview(frame)[ip:], limit)
        elif kind == _IPV4 and self.ipv4 and len(frame) >= ip + 20:
            size = _ID.unpack_from(frame, ip + 2)[0]
            if size <= mru or not frame[ip + 6] & 0x40:
                return False
            self.sendIcmpError(frame[ip:ip + 68], icmp.DEST_UNREACHABLE,
                               icmp.FRAGMENTATION_NEEDED, mru, self.gateway)
        else:
            return False
        self.dropped("mtu", f"a {size}-byte packet from {formatMac(frame[start + 6:start + 12])}"
                            f", more than the MTU {mru}: answered with an ICMP error")
        return True

    def _dispatch(self, frame: bytes, start: int, verified: bool) -> None:
        dst = frame[start:start + 6]
        if dst not in self.ownMacs and not dst[0] & 1:
            return
        kind = frame[start + 12:start + 14]
        if kind == _IPV4 and self.ipv4:
            self._ipv4Received(frame, start + 14, verified)
        elif kind == _ARP and self.ipv4:
            self.arp.arpReceived(frame, start + 14)
        elif kind == _IPV6 and self.v6 is not None:
            self.v6.packetReceived(frame, start + 14, verified)
        elif kind == vlan.TPID:
            self.dropped("unsupported", f"a frame tagged for VLAN {vlan.vidOf(frame, start)}: "
                                        "the router serves only its port's untagged VLAN")

    def _ipv4Received(self, frame: bytes, offset: int, verified: bool) -> None:
        try:
            header = ipv4.IPv4Header.parse(frame, offset)
        except ipv4.IPv4Error as e:
            self.dropped("malformed", f"IPv4 from {formatMac(frame[offset - 8:offset - 2])}: {e}")
            return
        hl = header.headerLength
        end = offset + (header.totalLength or len(frame) - offset)
        if end > len(frame) or (header.totalLength and header.totalLength < hl):
            self.dropped("malformed", f"IPv4 from {dotted(header.src)}: truncated packet")
            return
        if not verified and not ipv4.headerChecksumValid(frame, offset):
            self.dropped("malformed", f"IPv4 from {dotted(header.src)}: bad header checksum")
            return
        src = header.src
        if src not in self._heard and src != _ZERO and self.config.contains(src):
            self.learn(src, frame[offset - 8:offset - 2])
        if header.isFragment:
            whole = self.fragments.add(header, memoryview(frame)[offset:end])
            if whole is not None:
                self._ipv4Received(frame[offset - 14:offset] + whole, 14, False)
            return
        packet = memoryview(frame)[offset:end]
        if header.ttl <= 1 and header.dst not in self.arpAddresses and header.dst[0] < 224 \
                and header.dst != self.broadcast:  # never an error about a broadcast
            self._icmpError(icmp.TIME_EXCEEDED, 0, packet)  # traceroute's first hop
            return
        body = packet[hl:]
        protocol = header.protocol
        if protocol == ipv4.PROTO_TCP:
            self._tcpReceived(header, packet, body, verified)
        elif protocol == ipv4.PROTO_UDP:
            self._udpReceived(header, packet, body, verified)
        elif protocol == ipv4.PROTO_ICMP:
            self._icmpReceived(header, packet, body, verified)
        elif header.dst in (self.gateway, self.nameserver) or not (
                self.restricted or header.dst[0] >= 224 or header.dst == self.broadcast):
            # multicast and broadcast (a guest's IGMP reports) are for others
            self.dropped("unsupported", f"IP protocol {protocol} from {dotted(src)}")

    def _tcpReceived(self, header: ipv4.IPv4Header, packet: memoryview, body: memoryview,
                     verified: bool) -> None:
        if header.dst == self.broadcast or header.dst == _ALL_ONES or header.dst[0] >= 224:
            return
        if not verified and not checksumValid(
                body, pseudoHeaderSumV4(header.src, header.dst, 6, len(body))):
            self.dropped("malformed", f"TCP from {dotted(header.src)}: bad checksum")
            return
        self.tcp.segmentReceived(header.src, header.dst, body, packet)

    def _udpReceived(self, header: ipv4.IPv4Header, packet: memoryview, body: memoryview,
                     verified: bool) -> None:
        try:
            udp = UDPHeader.parse(body)
        except UDPError as e:
            self.dropped("malformed", f"UDP from {dotted(header.src)}: {e}")
            return
        if udp.length > len(body):
            self.dropped("malformed", f"UDP from {dotted(header.src)}: truncated datagram")
            return
        datagram = body[:udp.length]
        if not verified and udp.checksum and not checksumValid(
                datagram, pseudoHeaderSumV4(header.src, header.dst, 17, udp.length)):
            self.dropped("malformed", f"UDP from {dotted(header.src)}: bad checksum")
            return
        dst = header.dst
        payload = bytes(datagram[8:])
        if udp.dstPort == 67 and dst in (self.gateway, _ALL_ONES, self.broadcast):
            self._dhcpReceived(payload, packet)
            return
        if dst == _ALL_ONES:
            # As in libslirp: the host's loopback, like the gateway (and,
            # a broadcast, never answered with an ICMP error).
            if not self.restricted and self.config.hostLoopback:
                self.udp.datagramReceived(header.src, udp.srcPort, dst, udp.dstPort, payload,
                                          packet)
            return
        if dst == self.broadcast or dst[0] >= 224:
            return
        if udp.dstPort == 69 and dst == self.gateway and self.tftp is not None:
            self.tftp.datagramReceived(header.src, udp.srcPort, payload)
            return
        self.udp.datagramReceived(header.src, udp.srcPort, dst, udp.dstPort, payload, packet)

    def _dhcpReceived(self, payload: bytes, packet: memoryview) -> None:
        try:
            message = dhcp.DHCPMessage.parse(payload)
            reply = self.dhcp.handle(message)
        except dhcp.DHCPError as e:
            self.dropped("malformed", f"DHCP from {dotted(packet[12:16])}: {e}")
            return
        if reply is not None:
            self.sendDhcp(message, reply)

    def sendDhcp(self, message: dhcp.DHCPMessage, reply: dhcp.DHCPMessage) -> None:
        """
        Broadcast C{reply} to a client's C{message}, learning the client's
        address from an ACK.
        """
        mac = message.clientMac
        if reply.messageType == dhcp.ACK and reply.yiaddr != _ZERO and mac is not None:
            # not on an OFFER: the client may decline it or take another server's
            self.learn(reply.yiaddr, mac)
        body = reply.pack()
        self.sendIPv4(self.gateway, _ALL_ONES, ipv4.PROTO_UDP, packets.udpDatagram(
            self.gateway, _ALL_ONES, 67, 68, body), tos=0x10)

    def _icmpReceived(self, header: ipv4.IPv4Header, packet: memoryview, body: memoryview,
                      verified: bool) -> None:
        data = bytes(body)
        try:
            message = icmp.ICMPMessage.parse(data)
        except icmp.ICMPError as e:
            self.dropped("malformed", f"ICMP from {dotted(header.src)}: {e}")
            return
        if not verified and not icmp.checksumOk(data):
            self.dropped("malformed", f"ICMP from {dotted(header.src)}: bad checksum")
            return
        if message.type in guesterrors.ERRORS[False]:
            if not (message.type == icmp.DEST_UNREACHABLE
                    and message.code == icmp.FRAGMENTATION_NEEDED):  # we keep to its MSS
                guesterrors.errorReceived(self, header.dst, message.type, message.code,
                                          message.payload)
            return
        if message.type != icmp.ECHO_REQUEST:
            return
        if header.dst in (self.gateway, self.nameserver):
            self.echoes += 1
            self.sendIPv4(header.dst, header.src, ipv4.PROTO_ICMP, icmp.echoReply(message), 255)
        elif self.hostAddress(header.dst, 0, ipv4.PROTO_ICMP) is not None:
            ident, sequence = struct.unpack("!HH", message.rest)
            self.icmp.echoRequest(header.src, header.dst, ident, sequence, message.payload)
