"""
IPv6 headers (RFC 8200).

Theory of operation: L{IPv6Header.parse} reads the fixed 40-byte header;
L{IPv6Header.pack} emits it.  The upper-layer header may sit behind a chain
of extension headers: L{transportOffset} walks the ones that carry their own
length (hop-by-hop, routing, destination options, authentication) and stops
at the first other header, which is the upper layer, a fragment header (44),
ESP (50) or "no next header" (59); callers decide what they can handle.
L{headerChain} also says which byte named that header, which reassembly
rewrites when it takes a fragment header out.
A payload length of 0 is accepted: Linux uses it for super-frames over
64 KB (BIG TCP) and RFC 2675 for jumbograms.  Addresses stay 16-byte strings.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vtwisted.wire.checksum import Buffer

VERSION = 6
HEADER_LENGTH = 40

NH_HOP_BY_HOP = 0
NH_TCP = 6
NH_UDP = 17
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_ESP = 50
NH_AUTH = 51
NH_ICMPV6 = 58
NH_NONE = 59
NH_DEST_OPTS = 60

#: Extension headers whose length field says where the next header starts.
_WALKABLE = frozenset((NH_HOP_BY_HOP, NH_ROUTING, NH_DEST_OPTS, NH_AUTH))
#: How many extension headers L{transportOffset} follows before giving up.
MAX_EXTENSIONS = 8

_FIXED = struct.Struct("!IHBB16s16s")


class IPv6Error(ValueError):
    """
    The bytes are not a readable IPv6 header.
    """


class IPv6Header(NamedTuple):
    """
    The fixed IPv6 header.

    @ivar trafficClass: the 8-bit traffic class (DSCP and ECN).
    @ivar flowLabel: the 20-bit flow label.
    @ivar payloadLength: bytes after this header, extension headers included.
    @ivar nextHeader: the protocol number of the next header.
    @ivar hopLimit: the hop limit.
    @ivar src: the 16-byte source address.
    @ivar dst: the 16-byte destination address.
    """

    trafficClass: int
    flowLabel: int
    payloadLength: int
    nextHeader: int
    hopLimit: int
    src: bytes
    dst: bytes

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> IPv6Header:
        """
        Read the fixed header starting at C{offset}.

        @param data: bytes holding the header.
        @param offset: where the header starts.
        @return: the header.
        @raise IPv6Error: truncated, or not version 6.
        """
        if offset < 0 or len(data) - offset < HEADER_LENGTH:
            raise IPv6Error(
                f"IPv6 header truncated: {max(len(data) - offset, 0)} of "
                f"{HEADER_LENGTH} bytes"
            )
        first, length, nextHeader, hopLimit, src, dst = _FIXED.unpack_from(data, offset)
        if first >> 28 != VERSION:
            raise IPv6Error(f"IP version {first >> 28} is not 6")
        return cls(
            (first >> 20) & 0xFF, first & 0xFFFFF, length, nextHeader, hopLimit, src, dst
        )

    def pack(self) -> bytes:
        """
        The fixed header as 40 bytes.
        """
        first = (VERSION << 28) | (self.trafficClass << 20) | self.flowLabel
        return _FIXED.pack(
            first, self.payloadLength, self.nextHeader, self.hopLimit, self.src, self.dst
        )


def transportOffset(data: Buffer, offset: int = 0) -> tuple[int, int]:
    """
    Find the upper-layer header of the IPv6 packet at C{offset}.

    @param data: bytes holding the packet (at least its headers).
    @param offset: where the fixed IPv6 header starts.
    @return: the protocol number of the first header that is not a walkable
        extension header, and where that header starts in C{data}.
    @raise IPv6Error: the fixed header or an extension header is truncated,
        or the chain is longer than L{MAX_EXTENSIONS}.
    """
    nextHeader, position, _ = headerChain(data, offset)
    return nextHeader, position


def headerChain(data: Buffer, offset: int = 0) -> tuple[int, int, int]:
    """
    Walk the extension headers of the IPv6 packet at C{offset}, as
    L{transportOffset} does, and say where the header found was named too.

    @return: the protocol number of the first header that is not a walkable
        extension header, where that header starts in C{data}, and where
        the byte naming it is (the fixed header's next header field, or the
        first byte of the extension header before it).
    @raise IPv6Error: as L{transportOffset}.
    """
    header = IPv6Header.parse(data, offset)
    nextHeader = header.nextHeader
    field, position = offset + 6, offset + HEADER_LENGTH
    for _ in range(MAX_EXTENSIONS):
        if nextHeader not in _WALKABLE:
            return nextHeader, position, field
        if len(data) - position < 8:
            raise IPv6Error(f"IPv6 extension header {nextHeader} truncated")
        if nextHeader == NH_AUTH:
            length = (data[position + 1] + 2) * 4
        else:
            length = (data[position + 1] + 1) * 8
        nextHeader, field = data[position], position
        position += length
        if position > len(data):
            raise IPv6Error(f"IPv6 extension header of {length} bytes truncated")
    if nextHeader not in _WALKABLE:
        return nextHeader, position, field
    raise IPv6Error(f"more than {MAX_EXTENSIONS} IPv6 extension headers")
