"""
UDP headers (RFC 768).

Theory of operation: a UDP header is four 16-bit fields; L{UDPHeader.parse}
reads them and checks only that they are there and that the length field
covers the header, L{UDPHeader.pack} emits them as given.  The checksum
covers a pseudo-header (see L{datagramChecksum}); over IPv4 a checksum of 0
means "none", which is why a computed 0 is sent as 0xFFFF (what
L{vtwisted.wire.checksum.internetChecksum} always does).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vtwisted.wire.checksum import Buffer, internetChecksum

HEADER_LENGTH = 8
#: Where the checksum field is, from the start of the header.
CHECKSUM_OFFSET = 6

_FIXED = struct.Struct("!HHHH")


class UDPError(ValueError):
    """
    The bytes are not a readable UDP header.
    """


class UDPHeader(NamedTuple):
    """
    A UDP header.

    @ivar srcPort: the source port.
    @ivar dstPort: the destination port.
    @ivar length: header plus payload in bytes (0 in IPv6 jumbograms).
    @ivar checksum: the checksum field as read (or to write).
    """

    srcPort: int
    dstPort: int
    length: int
    checksum: int

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> UDPHeader:
        """
        Read the header starting at C{offset}.

        @param data: bytes holding the header.
        @param offset: where the header starts.
        @return: the header.
        @raise UDPError: truncated, or a nonzero length under 8.
        """
        if offset < 0 or len(data) - offset < HEADER_LENGTH:
            raise UDPError(
                f"UDP header truncated: {max(len(data) - offset, 0)} of "
                f"{HEADER_LENGTH} bytes"
            )
        header = cls._make(_FIXED.unpack_from(data, offset))
        if header.length and header.length < HEADER_LENGTH:
            raise UDPError(f"UDP length {header.length} is shorter than its header")
        return header

    def pack(self) -> bytes:
        """
        The header as 8 bytes.
        """
        return _FIXED.pack(self.srcPort, self.dstPort, self.length, self.checksum)


def datagramChecksum(pseudoSum: int, datagram: Buffer) -> int:
    """
    The checksum to store in a UDP datagram; never 0.

    @param pseudoSum: the pseudo-header sum, from
        L{vtwisted.wire.checksum.pseudoHeaderSumV4} or C{V6} with the length
        of C{datagram}.
    @param datagram: header and payload with the checksum field zeroed.
    @return: the 16-bit checksum, 0xFFFF where the sum gives 0.
    """
    return internetChecksum(datagram, pseudoSum)
