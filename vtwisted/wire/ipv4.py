"""
IPv4 headers (RFC 791).

Theory of operation: L{IPv4Header.parse} reads the fixed 20 bytes and the
options the IHL field announces, and checks only what makes the header
unreadable (version, IHL, truncation, a total length shorter than the
header); it does not check the header checksum (see L{headerChecksumValid})
nor that the payload is all there, which is the caller's business.  A total
length of 0 is accepted: Linux uses it for super-frames over 64 KB (BIG TCP).
L{IPv4Header.pack} emits the header, by default with its checksum computed.
Addresses stay 4-byte strings.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vtwisted.wire.checksum import Buffer, checksumValid, internetChecksum

VERSION = 4
HEADER_LENGTH = 20
MAX_HEADER_LENGTH = 60

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

#: Bits of L{IPv4Header.flags}.
FLAG_DF = 0x2
FLAG_MF = 0x1

_FIXED = struct.Struct("!BBHHHBBH4s4s")


class IPv4Error(ValueError):
    """
    The bytes are not a readable IPv4 header.
    """


class IPv4Header(NamedTuple):
    """
    An IPv4 header.

    @ivar tos: the DSCP and ECN byte.
    @ivar totalLength: header plus payload, in bytes (0: unknown, BIG TCP).
    @ivar ident: the identification field.
    @ivar flags: 3 bits, L{FLAG_DF} and L{FLAG_MF}.
    @ivar fragmentOffset: in 8-byte units.
    @ivar ttl: the time to live.
    @ivar protocol: the payload's protocol number.
    @ivar checksum: the header checksum as read (or to write).
    @ivar src: the 4-byte source address.
    @ivar dst: the 4-byte destination address.
    @ivar options: the options, a multiple of 4 bytes, at most 40.
    """

    tos: int
    totalLength: int
    ident: int
    flags: int
    fragmentOffset: int
    ttl: int
    protocol: int
    checksum: int
    src: bytes
    dst: bytes
    options: bytes = b""

    @property
    def headerLength(self) -> int:
        """
        The header length in bytes (IHL times 4).
        """
        return HEADER_LENGTH + len(self.options)

    @property
    def isFragment(self) -> bool:
        """
        True if this is part of a fragmented datagram (MF or an offset).
        """
        return bool(self.flags & FLAG_MF or self.fragmentOffset)

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> IPv4Header:
        """
        Read the header starting at C{offset}.

        @param data: bytes holding the header.
        @param offset: where the header starts.
        @return: the header.
        @raise IPv4Error: not version 4, IHL under 5, header truncated, or a
            nonzero total length shorter than the header.
        """
        if offset < 0 or len(data) - offset < HEADER_LENGTH:
            raise IPv4Error(
                f"IPv4 header truncated: {max(len(data) - offset, 0)} of "
                f"{HEADER_LENGTH} bytes"
            )
        (verIhl, tos, total, ident, fragment, ttl, proto, csum, src, dst) = (
            _FIXED.unpack_from(data, offset)
        )
        if verIhl >> 4 != VERSION:
            raise IPv4Error(f"IP version {verIhl >> 4} is not 4")
        length = (verIhl & 0x0F) * 4
        if length < HEADER_LENGTH:
            raise IPv4Error(f"IPv4 IHL {length // 4} is under 5")
        if len(data) - offset < length:
            raise IPv4Error(
                f"IPv4 header truncated: {len(data) - offset} of {length} bytes"
            )
        if total and total < length:
            raise IPv4Error(f"IPv4 total length {total} is shorter than its header ({length})")
        options = bytes(data[offset + HEADER_LENGTH : offset + length])
        return cls(
            tos, total, ident, fragment >> 13, fragment & 0x1FFF, ttl, proto, csum, src, dst,
            options,
        )

    def pack(self, computeChecksum: bool = True) -> bytes:
        """
        The header as bytes.

        @param computeChecksum: if true, store the correct header checksum;
            if false, store L{checksum} as it is.
        @return: L{headerLength} bytes.
        @raise IPv4Error: the options are not a multiple of 4 bytes or too long.
        """
        if len(self.options) % 4 or len(self.options) > MAX_HEADER_LENGTH - HEADER_LENGTH:
            raise IPv4Error(f"{len(self.options)} bytes of IPv4 options cannot be encoded")
        header = _FIXED.pack(
            (VERSION << 4) | (self.headerLength // 4), self.tos, self.totalLength,
            self.ident, (self.flags << 13) | self.fragmentOffset, self.ttl, self.protocol,
            0 if computeChecksum else self.checksum, self.src, self.dst,
        ) + self.options
        if not computeChecksum:
            return header
        return b"".join(
            (header[:10], internetChecksum(header).to_bytes(2, "big"), header[12:])
        )


def packPlainHeader(ident: int, src: bytes, dst: bytes, protocol: int, total: int, ttl: int,
                    flagsOffset: int, tos: int = 0) -> bytes:
    """
    What C{IPv4Header(...).pack()} gives for a header without options, in a
    third of the time (no tuple is built): for senders of many packets.

    @param flagsOffset: the flags (top 3 bits) and fragment offset field.
    """
    header = _FIXED.pack(0x45, tos, total, ident, flagsOffset, ttl, protocol, 0, src, dst)
    return b"".join((header[:10], internetChecksum(header).to_bytes(2, "big"), header[12:]))


def headerChecksumValid(data: Buffer, offset: int = 0) -> bool:
    """
    Whether the IPv4 header at C{offset} has a correct checksum.

    @param data: bytes holding a header L{IPv4Header.parse} accepts.
    @param offset: where the header starts.
    @return: True if the header sums to zero.
    """
    length = (data[offset] & 0x0F) * 4
    return checksumValid(memoryview(data)[offset : offset + length])
