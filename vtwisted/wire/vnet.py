"""
The virtio-net header that TAP devices opened with C{IFF_VNET_HDR} put in
front of every frame, and the work a switch does for ports without it.

Theory of operation: a packet is a 10-byte little-endian header (flags,
gso_type, hdr_len, gso_size, csum_start, csum_offset) followed by an
Ethernet frame.  Between two ports that both speak the header, packets pass
untouched.  A port without it (VDE socket, cable, slirp) needs plain frames,
which L{toFrames} makes:

  - flags 0 and no GSO: strip the header (the hot path, one slice);
  - C{NEEDS_CSUM}: the checksum field at C{csum_start + csum_offset} holds
    the pseudo-header sum; the checksum is the complement of the sum of
    C{frame[csum_start:]} (see L{vtwisted.wire.checksum.completePartial});
  - TCP GSO (TSO): a super-frame of up to 64 KB is cut into segments of
    C{gso_size} payload bytes, each with its own IPv4 total length, id (the
    super-frame's plus the segment index) and header checksum or IPv6
    payload length, TCP sequence number (advanced by the payload before it),
    flags (FIN and PSH only on the last, CWR only on the first) and checksum;
  - UDP GSO (USO, C{GSO_UDP_L4}): the UDP payload is cut into C{gso_size}
    datagrams, each with its own UDP length and checksum and IP header;
  - legacy UFO (C{GSO_UDP}) is refused: the switch never enables it.

Header lengths come from the IP and TCP headers themselves; C{hdr_len} is
only a hint and is ignored.  The frame may carry one 802.1Q tag; C{csum_start}
counts from the start of the Ethernet frame, tag included.

The cutting itself, and how segment checksums are computed, is
L{vtwisted.wire.gsocut}'s business.  Measured on Linux 6.18
by reading TAPs with C{TUN_F_CSUM|TSO4|TSO6|TSO_ECN|USO4|USO6} during TCP
and C{UDP_SEGMENT} transfers between two namespaces: in a GSO super-frame
the IPv4 total length, IPv6 payload length and UDP length cover the whole
super-frame, and the checksum field holds the folded, uncomplemented
pseudo-header sum computed with the length of the whole super-frame's
TCP/UDP part (C{~csum_tcpudp_magic(saddr, daddr, len, proto, 0)}, not the
length-0 form some NICs want); for non-GSO C{NEEDS_CSUM} frames it is the
same with the frame's own length.  The super-frame's IPv4 header checksum
is valid and its id is the first segment's id.

Whether a packet is safe to write to such a TAP, and how long the frames
it stands for are, is L{vtwisted.wire.vnetcheck}'s business.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from vtwisted.wire import gsocut, ipv4, ipv6, tcp, udp
from vtwisted.wire.checksum import MODULUS, SHORT_FRAME, completePartial
from vtwisted.wire.ethernet import ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6
from vtwisted.wire.ethernet import HEADER_LENGTH as ETH_HEADER_LENGTH
from vtwisted.wire.vlan import TAG_LENGTH, TPID

HEADER_LENGTH = 10
PLAIN_HEADER = bytes(HEADER_LENGTH)

NEEDS_CSUM = 1
DATA_VALID = 2

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

#: The most datagrams Linux takes in one USO packet (C{UDP_MAX_SEGMENTS},
#: 64 in older kernels, 128 since 6.11: the older limit is kept).
USO_MAX_SEGMENTS = 64
#: The lowest C{csum_start} Linux takes with C{NEEDS_CSUM}: the transport header
#: cannot start before an Ethernet header and a minimal IPv4 one would allow
#: (C{virtio_net_hdr_to_skb} refuses a transport offset under
#: C{sizeof(struct iphdr)}, counted from the frame's start: 19 is refused, 20
#: accepted on Linux 6.18).
MIN_CSUM_START = 20
#: A gso_size Linux reserves (C{GSO_BY_FRAGS}).
_GSO_BY_FRAGS = 0xFFFF

_HEADER = struct.Struct("<BBHHHH")
_MIN_PACKET = HEADER_LENGTH + ETH_HEADER_LENGTH
_ZERO2 = b"\x00\x00"
_TCP_GSO = (GSO_TCPV4, GSO_TCPV6)
_VLAN_TYPES = (ETH_P_8021Q, ETH_P_8021AD)
#: The most VLAN tags stepped over to reach a GSO packet's IP header (QinQ).
MAX_TAGS = 2


def networkHeader(packet: bytes) -> tuple[int, int]:
    """
    Where the IP header of a virtio-net packet starts (past up to
    L{MAX_TAGS} 802.1Q or 802.1ad tags, as Linux segments them), and its
    EtherType there.
    """
    l3 = _MIN_PACKET
    etherType = int.from_bytes(packet[l3 - 2 : l3], "big")
    for _ in range(MAX_TAGS):
        if etherType not in _VLAN_TYPES or len(packet) < l3 + TAG_LENGTH:
            break
        l3 += TAG_LENGTH
        etherType = int.from_bytes(packet[l3 - 2 : l3], "big")
    return l3, etherType


class VnetError(ValueError):
    """
    A packet with a virtio-net header is malformed, or asks for something
    the switch does not do; the message says what.
    """


class VnetHeader(NamedTuple):
    """
    The 10-byte virtio-net header.

    @ivar flags: L{NEEDS_CSUM}, L{DATA_VALID}.
    @ivar gsoType: a C{GSO_*} value, possibly with L{GSO_ECN}.
    @ivar hdrLen: bytes of Ethernet, IP and transport headers (a hint).
    @ivar gsoSize: payload bytes per segment under GSO.
    @ivar csumStart: where checksumming starts, from the frame's start.
    @ivar csumOffset: where the checksum field is, from C{csumStart}.
    """

    flags: int = 0
    gsoType: int = GSO_NONE
    hdrLen: int = 0
    gsoSize: int = 0
    csumStart: int = 0
    csumOffset: int = 0

    @classmethod
    def parse(cls, packet: bytes) -> VnetHeader:
        """
        Read the header at the start of C{packet}.

        @raise VnetError: the packet is shorter than the header.
        """
        if len(packet) < HEADER_LENGTH:
            raise VnetError(
                f"packet of {len(packet)} bytes is shorter than the virtio-net header"
            )
        return cls._make(_HEADER.unpack_from(packet))

    def pack(self) -> bytes:
        """
        The header as 10 bytes.
        """
        return _HEADER.pack(*self)


def toFrames(packet: bytes) -> list[bytes]:
    """
    Plain Ethernet frames for a port without the header.

    @param packet: a virtio-net header followed by an Ethernet frame.
    @return: the frame, its checksum completed, or its segments.
    @raise VnetError: the packet is malformed or uses UFO.
    """
    if packet[:2] == _ZERO2 and len(packet) >= _MIN_PACKET:
        return [packet[HEADER_LENGTH:]]
    if len(packet) < _MIN_PACKET:
        raise VnetError(f"packet of {len(packet)} bytes is too short for a header and a frame")
    flags, gsoType, _, gsoSize, csumStart, csumOffset = _HEADER.unpack_from(packet)
    if gsoType == GSO_NONE:
        return [toFrame(packet)]
    return _segment(packet, flags, gsoType, gsoSize, csumStart, csumOffset)


def toFrame(packet: bytes) -> bytes:
    """
    The plain frame of a packet without GSO, its checksum completed if
    C{NEEDS_CSUM} asks for it.

    @raise VnetError: the checksum field is not inside the frame.
    """
    if not packet[0] & NEEDS_CSUM:
        return packet[HEADER_LENGTH:]
    _, _, _, _, csumStart, csumOffset = _HEADER.unpack_from(packet)
    try:
        return completePartial(packet, csumStart, csumOffset, HEADER_LENGTH)
    except ValueError as e:
        raise VnetError(str(e)) from None


def converter(header: bytes, send: Callable[[bytes], object]) -> Callable[[bytes], None]:
    """
    A function sending the plain frame of each packet with C{header} (no
    GSO) through C{send}, its checksum completed if the header asks: what
    L{toFrame} does, with the header read once, for a route that carries
    many such packets.  Each packet must be one the header was found valid
    for (the checksum field inside the frame).
    """
    flags, gsoType, _, _, csumStart, csumOffset = _HEADER.unpack_from(header)
    if gsoType != GSO_NONE:
        raise ValueError(f"gso_type {gsoType:#04x}: segments, not one frame")
    if not flags & NEEDS_CSUM:

        def strip(packet: bytes) -> None:
            send(packet[HEADER_LENGTH:])

        return strip
    start = HEADER_LENGTH + csumStart
    field = start + csumOffset
    longest = HEADER_LENGTH + SHORT_FRAME

    def convert(packet: bytes) -> None:
        if len(packet) > longest:
            send(completePartial(packet, csumStart, csumOffset, HEADER_LENGTH))
            return
        # completePartial's short path, inline: it runs once per frame
        data = packet[start:]
        value = int.from_bytes(data, "big")
        if len(data) & 1:
            value <<= 8
        check = (MODULUS - value % MODULUS).to_bytes(2, "big")
        send(b"".join((packet[HEADER_LENGTH:field], check, packet[field + 2 :])))

    return convert


def _segment(
    packet: bytes, flags: int, gsoType: int, gsoSize: int, csumStart: int, csumOffset: int
) -> list[bytes]:
    """
    Check a GSO packet, locate its headers and cut it.
    """
    kind = gsoType & ~GSO_ECN
    if kind == GSO_UDP:
        raise VnetError("legacy UDP fragmentation offload (UFO) is not supported")
    if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise VnetError(f"unknown gso_type {gsoType:#04x}")
    if kind == GSO_UDP_L4 and gsoType & GSO_ECN:
        raise VnetError("the ECN bit is set on UDP GSO")
    if gsoSize == 0:
        raise VnetError("gso_size is 0 on a GSO packet")
    l3, etherType = networkHeader(packet)
    try:
        if etherType == ETH_P_IP and kind != GSO_TCPV6:
            ip4 = ipv4.IPv4Header.parse(packet, l3)
            if ip4.isFragment:
                raise VnetError("GSO on an IPv4 fragment")
            proto, l4 = ip4.protocol, l3 + ip4.headerLength
            end = l3 + ip4.totalLength if ip4.totalLength else len(packet)
            addresses = ip4.src + ip4.dst
        elif etherType == ETH_P_IPV6 and kind != GSO_TCPV4:
            ip6 = ipv6.IPv6Header.parse(packet, l3)
            proto, l4 = ipv6.transportOffset(packet, l3)
            end = l3 + ipv6.HEADER_LENGTH + ip6.payloadLength if ip6.payloadLength else len(packet)
            addresses = ip6.src + ip6.dst
        else:
            raise VnetError(f"gso_type {gsoType:#04x} on a frame of EtherType {etherType:#06x}")
    except (ipv4.IPv4Error, ipv6.IPv6Error) as e:
        raise VnetError(str(e)) from None
    if end > len(packet):
        raise VnetError(
            f"IP length says {end - l3} bytes but the frame holds {len(packet) - l3} from the "
            "IP header on"
        )
    isTcp = kind in _TCP_GSO
    if proto != (ipv4.PROTO_TCP if isTcp else ipv4.PROTO_UDP):
        raise VnetError(f"gso_type {gsoType:#04x} on IP protocol {proto}")
    if flags & NEEDS_CSUM:
        if csumStart != l4 - HEADER_LENGTH:
            raise VnetError(
                f"csum_start {csumStart} does not point at the transport header at "
                f"{l4 - HEADER_LENGTH}"
            )
        wanted = tcp.CHECKSUM_OFFSET if isTcp else udp.CHECKSUM_OFFSET
        if csumOffset != wanted:
            raise VnetError(f"csum_offset {csumOffset} is not {wanted}")
    pseudo = int.from_bytes(addresses, "big") + proto
    isV4 = etherType == ETH_P_IP
    if isTcp:
        return _cutTcp(packet, l3, l4, end, pseudo, gsoSize, isV4)
    return _cutUdp(packet, l3, l4, end, pseudo, gsoSize, isV4)


def _cutTcp(
    packet: bytes, l3: int, l4: int, end: int, pseudo: int, gsoSize: int, isV4: bool
) -> list[bytes]:
    """
    Check the TCP header of a super-frame whose IP header has been checked,
    and cut it.
    """
    try:
        tcpLength = tcp.TCPHeader.parse(packet, l4).headerLength
    except tcp.TCPError as e:
        raise VnetError(str(e)) from None
    start = l4 + tcpLength
    if start > end:
        raise VnetError(f"the TCP header runs past the IP packet's end at {end - HEADER_LENGTH}")
    return gsocut.cutTcp(packet, l3, l4, start, end, pseudo, gsoSize, isV4)


def _cutUdp(
    packet: bytes, l3: int, l4: int, end: int, pseudo: int, gsoSize: int, isV4: bool
) -> list[bytes]:
    """
    Check that a USO super-frame holds its UDP header, and cut it.
    """
    if l4 + udp.HEADER_LENGTH > end:
        raise VnetError(f"the UDP header runs past the IP packet's end at {end - HEADER_LENGTH}")
    return gsocut.cutUdp(packet, l3, l4, end, pseudo, gsoSize, isV4)


def insertTag(packet: bytes, vid: int) -> bytes:
    """
    Add an 802.1Q tag with TCI C{vid} after the source MAC address, moving
    C{csum_start} (if C{NEEDS_CSUM}) and C{hdr_len} (if set) by 4.

    @param packet: a virtio-net header followed by an Ethernet frame.
    @param vid: the TCI to write (the VLAN id, priority 0).
    @return: the tagged packet.
    @raise VnetError: the packet is too short, or an offset overflows.
    """
    if len(packet) < _MIN_PACKET:
        raise VnetError(f"packet of {len(packet)} bytes is too short to tag")
    flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset = _HEADER.unpack_from(packet)
    if flags & NEEDS_CSUM:
        csumStart += TAG_LENGTH
    if hdrLen:
        hdrLen += TAG_LENGTH
    if max(csumStart, hdrLen) > 0xFFFF:
        raise VnetError("csum_start or hdr_len overflows when tagging")
    view = memoryview(packet)
    cut = HEADER_LENGTH + 12
    return b"".join((
        _HEADER.pack(flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset),
        view[HEADER_LENGTH:cut], TPID, vid.to_bytes(2, "big"), view[cut:],
    ))


def removeTag(packet: bytes) -> bytes:
    """
    Remove the 802.1Q tag after the source MAC address, moving C{csum_start}
    (if C{NEEDS_CSUM}) and C{hdr_len} (if set) back by 4.

    @param packet: a virtio-net header followed by a tagged Ethernet frame.
    @return: the untagged packet.
    @raise VnetError: the frame is not tagged, or an offset points inside
        the tagged Ethernet header.
    """
    cut = HEADER_LENGTH + 12
    if len(packet) < _MIN_PACKET + TAG_LENGTH or packet[cut : cut + 2] != TPID:
        raise VnetError("the frame carries no 802.1Q tag")
    flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset = _HEADER.unpack_from(packet)
    tagged = ETH_HEADER_LENGTH + TAG_LENGTH
    if flags & NEEDS_CSUM:
        if csumStart < tagged or csumStart - TAG_LENGTH < MIN_CSUM_START:
            raise VnetError(f"csum_start {csumStart} points inside the tagged Ethernet header "
                            "or too close behind it")
        csumStart -= TAG_LENGTH
    if hdrLen:
        if hdrLen < tagged:
            raise VnetError(f"hdr_len {hdrLen} is shorter than the tagged Ethernet header")
        hdrLen -= TAG_LENGTH
    view = memoryview(packet)
    return b"".join((
        _HEADER.pack(flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset),
        view[HEADER_LENGTH:cut], view[cut + TAG_LENGTH :],
    ))
