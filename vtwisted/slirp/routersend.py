"""
How the slirp router sends to its guests over IPv4: the half of
L{vtwisted.interfaces.IGuestNetwork} that the engines send through.

Theory of operation
-------------------
Every packet leaves from the gateway's MAC, as libslirp's do, to the MAC the
ARP cache knows for the guest; a packet for a guest whose MAC is not known
yet is held by the cache (L{vtwisted.slirp.arpcache}) until it answers.
TCP segments and UDP datagrams leave as virtio-net packets with their
checksum left to complete (by the guest's TAP, or by the switch for ports
without the header): a TCP segment larger than the guest's MSS is a
super-frame (TSO), and a run of one flow's datagrams can be one USO packet
when the guest's port takes it.  Other packets, and datagrams past the MTU,
are plain frames, fragmented as needed.  Anything for a 16-byte address is
handed to the IPv6 side (L{vtwisted.slirp.router6}).

L{GuestSender} is a base class of L{vtwisted.slirp.router.SlirpRouter},
which owns the state it uses.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from vtwisted.slirp import packets
from vtwisted.wire import icmp, ipv4, vnet
from vtwisted.wire.checksum import Buffer, pseudoHeaderSumV4
from vtwisted.wire.ethernet import BROADCAST

_IPV4 = b"\x08\x00"
_ALL_ONES = b"\xff\xff\xff\xff"
#: A virtio-net header asking for the UDP checksum of an untagged IPv4 frame.
_UDP_VNET = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_NONE, 42, 0, 34, 6).pack()


class GuestSender:
    """
    The sending methods of L{vtwisted.slirp.router.SlirpRouter}.
    """

    usoWritable: bool
    mtu: int
    gateway: bytes
    gatewayMac: bytes
    broadcast: bytes
    neighbours: dict[bytes, bytes]
    v6: Any
    emitFrame: Callable[[bytes], None]
    emitPacket: Callable[[bytes], None]
    usoPays: Callable[[bytes], bool]
    _hold: Callable[[bytes, bytes, bool], None]
    _ident: int

    def sendTcp(self, src: bytes, dst: bytes, header: bytes, payload: Any, mss: int) -> None:
        """
        Send a TCP segment, as a super-frame if it is longer than C{mss}.
        """
        if len(dst) == 16:
            if self.v6 is not None:
                self.v6.sendTcp(src, dst, header, payload, mss)
            return
        length = len(header) + len(payload)
        partial = pseudoHeaderSumV4(src, dst, 6, length)
        tcpHeader = header[:16] + struct.pack("!H", partial) + header[18:]
        gso = vnet.GSO_TCPV4 if len(payload) > mss else vnet.GSO_NONE
        vnetHeader = vnet.VnetHeader(
            vnet.NEEDS_CSUM, gso, 34 + len(header), mss if gso else 0, 34, 16
        ).pack()
        ip = self._ipHeader(src, dst, ipv4.PROTO_TCP, 20 + length, 64, ipv4.FLAG_DF << 13)
        mac = self.neighbours.get(dst)
        packet = b"".join((vnetHeader, mac or BROADCAST, self.gatewayMac, _IPV4, ip,
                           tcpHeader, payload))
        if mac is None:
            self._hold(dst, packet, True)
        else:
            self.emitPacket(packet)

    def sendUdp(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                payload: bytes) -> None:
        """
        Send a UDP datagram to a guest.  Over IPv4 and within the MTU it
        leaves as a virtio-net packet whose checksum is left to complete
        (by the guest's TAP, or the switch for other ports).
        """
        length = 8 + len(payload)
        if len(dst) == 16 or length + 20 > self.mtu:
            datagram = packets.udpDatagram(src, dst, srcPort, dstPort, payload)
            self.sendIP(src, dst, ipv4.PROTO_UDP, datagram)
            return
        mac = self.neighbours.get(dst)
        packet = b"".join((
            _UDP_VNET, mac or BROADCAST, self.gatewayMac, _IPV4,
            self._ipHeader(src, dst, ipv4.PROTO_UDP, 20 + length, 64, 0),
            packets.partialUdpHeader(src, dst, srcPort, dstPort, length),
            payload,
        ))
        if mac is None:
            self._hold(dst, packet, True)
        else:
            self.emitPacket(packet)

    def sendUdpRun(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                   payloads: list[bytes]) -> None:
        """
        Send a run of one flow's datagrams, as one USO packet when Linux
        takes them (L{usoWritable}) and the guest is behind a port with the
        virtio-net header (the switch cuts it for others anyway).
        """
        mac = self.neighbours.get(dst)
        size = len(payloads[0])
        total = 8 + sum(map(len, payloads))
        if (len(payloads) == 1 or len(dst) == 16 or not self.usoWritable or mac is None
                or total + 20 > 65535 or size + 28 > self.mtu
                or not self.usoPays(mac)):
            for payload in payloads:
                self.sendUdp(src, dst, srcPort, dstPort, payload)
            return
        header = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_UDP_L4, 42, size, 34, 6).pack()
        self.emitPacket(b"".join((
            header, mac, self.gatewayMac, _IPV4,
            self._ipHeader(src, dst, ipv4.PROTO_UDP, 20 + total, 64, 0),
            packets.partialUdpHeader(src, dst, srcPort, dstPort, total),
            *payloads,
        )))

    def sendIP(self, src: bytes, dst: bytes, protocol: int, payload: bytes,
               ttl: int = 64) -> None:
        """
        Send C{payload} to a guest over IPv4 or IPv6, by the address length.
        """
        if len(dst) == 16:
            if self.v6 is not None:
                self.v6.sendIP(src, dst, protocol, payload, ttl)
        else:
            self.sendIPv4(src, dst, protocol, payload, ttl)

    def sendIPv4(self, src: bytes, dst: bytes, protocol: int, payload: bytes,
                 ttl: int = 64, tos: int = 0) -> None:
        """
        Send C{payload} to a guest in one IPv4 packet, or in fragments.
        """
        if len(payload) <= self.mtu - 20:
            self._sendIp(dst, self._ipHeader(src, dst, protocol, 20 + len(payload), ttl, 0, tos)
                         + payload)
            return
        for piece in packets.ipv4Fragments(self._nextIdent(), src, dst, protocol, ttl, tos,
                                           payload, self.mtu):
            self._sendIp(dst, piece)

    def sendUnreachable(self, packet: Buffer, code: int) -> None:
        """
        Tell the guest that sent C{packet} that its destination is unreachable.
        """
        if len(packet) and packet[0] >> 4 == 6:
            if self.v6 is not None:
                self.v6.sendUnreachable(packet, code)
            return
        self._icmpError(icmp.DEST_UNREACHABLE, code, packet)

    def sendIcmpError(self, packet: bytes, kind: int, code: int, mtu: int,
                      reporter: bytes) -> None:
        """
        Relay an error a host reported about the guest's C{packet}.
        """
        if len(reporter) == 16:
            if self.v6 is not None:
                self.v6.sendIcmpError(packet, kind, code, mtu, reporter)
            return
        tooBig = (kind, code) == (icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED)
        rest = (mtu & 0xFFFF).to_bytes(4, "big") if tooBig else bytes(4)
        self.sendIPv4(reporter, bytes(packet[12:16]), ipv4.PROTO_ICMP,
                      icmp.errorMessage(kind, code, packet, rest))

    def _icmpError(self, kind: int, code: int, packet: Buffer) -> None:
        if len(packet) < 20:
            return
        hl = (packet[0] & 15) * 4
        if packet[9] == ipv4.PROTO_ICMP and len(packet) > hl \
                and packet[hl] not in (icmp.ECHO_REQUEST, icmp.ECHO_REPLY):
            return  # never an error about an error (RFC 1122)
        src = bytes(packet[12:16])
        self.sendIPv4(self.gateway, src, ipv4.PROTO_ICMP, icmp.errorMessage(kind, code, packet))

    def _nextIdent(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def _ipHeader(self, src: bytes, dst: bytes, protocol: int, total: int, ttl: int,
                  flagsOffset: int, tos: int = 0) -> bytes:
        self._ident = ident = (self._ident + 1) & 0xFFFF
        return ipv4.packPlainHeader(ident, src, dst, protocol, total, ttl, flagsOffset, tos)

    def _sendIp(self, dst: bytes, ip: bytes) -> None:
        if dst == _ALL_ONES or dst == self.broadcast:
            self.emitFrame(BROADCAST + self.gatewayMac + _IPV4 + ip)
            return
        mac = self.neighbours.get(dst)
        frame = (mac or BROADCAST) + self.gatewayMac + _IPV4 + ip
        if mac is None:
            self._hold(dst, frame, False)
        else:
            self.emitFrame(frame)
