"""
Small pure builders for the packets a slirp router sends (IPv4 headers
come from L{vtwisted.wire.ipv4.packPlainHeader}): UDP datagrams with their
checksum or with the pseudo-header sum a virtio-net packet leaves to
complete, and IPv4 fragments; the reading of a UDP super-frame's
datagrams; and the kernel check for writing them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from vtwisted.wire import ipv4, vnet
from vtwisted.wire.checksum import (
    Buffer,
    pseudoHeaderSumV4,
    pseudoHeaderSumV6,
)
from vtwisted.wire.ipv4 import FLAG_MF
from vtwisted.wire.udp import UDPError, UDPHeader, datagramChecksum

_ID = struct.Struct("!H")
_UDP_HEADER = struct.Struct("!HHHH")


def ipv4Fragments(ident: int, src: bytes, dst: bytes, protocol: int, ttl: int, tos: int,
                  payload: bytes, mtu: int) -> list[bytes]:
    """
    C{payload} in IPv4 packets of at most C{mtu} bytes (fragments of
    identification C{ident}: every piece but the last a multiple of 8 bytes).
    """
    room = (mtu - 20) & ~7
    pieces = []
    for offset in range(0, len(payload), room):
        piece = payload[offset:offset + room]
        more = FLAG_MF << 13 if offset + room < len(payload) else 0
        header = ipv4.packPlainHeader(ident, src, dst, protocol, 20 + len(piece), ttl,
                                      more | offset // 8, tos)
        pieces.append(header + piece)
    return pieces


def partialUdpHeader(src: bytes, dst: bytes, srcPort: int, dstPort: int, length: int) -> bytes:
    """
    An IPv4 UDP header whose checksum field holds the pseudo-header sum,
    for a virtio-net packet with C{NEEDS_CSUM} (C{length}: header and
    payload, of the whole super-frame for USO).
    """
    return _UDP_HEADER.pack(srcPort, dstPort, length, pseudoHeaderSumV4(src, dst, 17, length))


def udpDatagram(src: bytes, dst: bytes, srcPort: int, dstPort: int, payload: bytes) -> bytes:
    """
    A UDP datagram with its checksum, over IPv4 or IPv6 by the address length.
    """
    length = 8 + len(payload)
    datagram = _UDP_HEADER.pack(srcPort, dstPort, length, 0) + payload
    pseudo = (pseudoHeaderSumV6 if len(src) == 16 else pseudoHeaderSumV4)(src, dst, 17, length)
    return datagram[:6] + _ID.pack(datagramChecksum(pseudo, datagram)) + datagram[8:]


class SegmentRun:
    """
    Datagram payloads of one size (the last may be shorter) lying end to end
    in one buffer, as in a UDP super-frame: a sequence of L{bytes} that can
    also be sent whole with C{UDP_SEGMENT}.

    @ivar data: the payloads, end to end.
    @ivar size: the length of each but the last.
    """

    __slots__ = ("data", "size")

    def __init__(self, data: Buffer, size: int) -> None:
        self.data = data
        self.size = size

    def __len__(self) -> int:
        return -(-len(self.data) // self.size)

    def __iter__(self) -> Iterator[bytes]:
        data, size = self.data, self.size
        return (bytes(data[i:i + size]) for i in range(0, len(data), size))


def usoDatagrams(packet: bytes) -> tuple[bytes, int, bytes, int, SegmentRun, Buffer] | None:
    """
    Read a virtio-net USO packet of an untagged IPv4 frame (a TAP's merged
    run of one flow's datagrams) without cutting it into frames.

    @return: source address and port, destination address and port, the
        datagrams' payloads, and the IPv4 packet; or L{None} if it is not
        such a packet (or is for DHCP, which goes the long way).
    """
    start = vnet.HEADER_LENGTH
    if packet[start + 12:start + 14] != b"\x08\x00":
        return None
    try:
        header = ipv4.IPv4Header.parse(packet, start + 14)
        udp = UDPHeader.parse(packet, start + 14 + header.headerLength)
    except (ipv4.IPv4Error, UDPError):
        return None
    size = vnet.VnetHeader.parse(packet).gsoSize
    if header.isFragment or size <= 0 or udp.dstPort == 67:
        return None
    end = start + 14 + (header.totalLength or len(packet) - start - 14)
    view = memoryview(packet)[:end]
    payloads = SegmentRun(view[start + 14 + header.headerLength + 8:], size)
    return header.src, udp.srcPort, header.dst, udp.dstPort, payloads, view[start + 14:]
