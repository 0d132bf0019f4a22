"""
TCP headers (RFC 9293) and their options.

Theory of operation: L{TCPHeader.parse} reads the fixed 20 bytes and the
options the data offset announces; L{TCPHeader.pack} emits them with the
checksum field as given (the checksum covers a pseudo-header the TCP header
does not know: see L{segmentChecksum}).  C{flags} holds the 12 bits after
the data offset (the 8 classic flags, then the accurate-ECN bit and the
reserved bits) so that parse and pack round-trip every header.
L{iterOptions} splits the options into (kind, value) pairs, for a NAT that
clamps the MSS or reads window scaling.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from vtwisted.wire.checksum import Buffer, internetChecksum

HEADER_LENGTH = 20
MAX_HEADER_LENGTH = 60
#: Where the checksum field is, from the start of the header.
CHECKSUM_OFFSET = 16

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_END = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WINDOW_SCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMPS = 8

_FIXED = struct.Struct("!HHIIHHHH")


class TCPError(ValueError):
    """
    The bytes are not a readable TCP header.
    """


class TCPHeader(NamedTuple):
    """
    A TCP header.

    @ivar srcPort: the source port.
    @ivar dstPort: the destination port.
    @ivar seq: the sequence number.
    @ivar ack: the acknowledgment number.
    @ivar flags: the 12 bits after the data offset (L{FIN} ... L{CWR} low).
    @ivar window: the window field (unscaled).
    @ivar checksum: the checksum field as read (or to write).
    @ivar urgent: the urgent pointer.
    @ivar options: the options, a multiple of 4 bytes, at most 40.
    """

    srcPort: int
    dstPort: int
    seq: int
    ack: int
    flags: int
    window: int
    checksum: int
    urgent: int
    options: bytes = b""

    @property
    def headerLength(self) -> int:
        """
        The header length in bytes (data offset times 4).
        """
        return HEADER_LENGTH + len(self.options)

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> TCPHeader:
        """
        Read the header starting at C{offset}.

        @param data: bytes holding the header.
        @param offset: where the header starts.
        @return: the header.
        @raise TCPError: truncated, or a data offset under 5.
        """
        if offset < 0 or len(data) - offset < HEADER_LENGTH:
            raise TCPError(
                f"TCP header truncated: {max(len(data) - offset, 0)} of "
                f"{HEADER_LENGTH} bytes"
            )
        src, dst, seq, ack, word, window, csum, urgent = _FIXED.unpack_from(data, offset)
        length = (word >> 12) * 4
        if length < HEADER_LENGTH:
            raise TCPError(f"TCP data offset {length // 4} is under 5")
        if len(data) - offset < length:
            raise TCPError(f"TCP header truncated: {len(data) - offset} of {length} bytes")
        options = bytes(data[offset + HEADER_LENGTH : offset + length])
        return cls(src, dst, seq, ack, word & 0x0FFF, window, csum, urgent, options)

    def pack(self) -> bytes:
        """
        The header as bytes, checksum field as L{checksum}.

        @raise TCPError: the options are not a multiple of 4 bytes or too long.
        """
        if len(self.options) % 4 or len(self.options) > MAX_HEADER_LENGTH - HEADER_LENGTH:
            raise TCPError(f"{len(self.options)} bytes of TCP options cannot be encoded")
        word = (self.headerLength // 4) << 12 | self.flags
        return _FIXED.pack(
            self.srcPort, self.dstPort, self.seq, self.ack, word, self.window,
            self.checksum, self.urgent,
        ) + self.options


def segmentChecksum(pseudoSum: int, segment: Buffer) -> int:
    """
    The checksum to store in a TCP segment.

    @param pseudoSum: the pseudo-header sum, from
        L{vtwisted.wire.checksum.pseudoHeaderSumV4} or C{V6} with the length
        of C{segment}.
    @param segment: header and payload with the checksum field zeroed.
    @return: the 16-bit checksum.
    """
    return internetChecksum(segment, pseudoSum)


def iterOptions(options: Buffer) -> Iterator[tuple[int, bytes]]:
    """
    Split TCP options into (kind, value) pairs; NOPs are skipped and an
    end-of-list option ends the walk.

    @param options: the option bytes of a header.
    @return: an iterator of (kind, value bytes without kind and length).
    @raise TCPError: an option runs past the end or has a length under 2.
    """
    position = 0
    end = len(options)
    while position < end:
        kind = options[position]
        if kind == OPT_END:
            return
        if kind == OPT_NOP:
            position += 1
            continue
        if position + 1 >= end:
            raise TCPError(f"TCP option {kind} has no length byte")
        length = options[position + 1]
        if length < 2 or position + length > end:
            raise TCPError(f"TCP option {kind} has a bad length {length}")
        yield kind, bytes(options[position + 2 : position + length])
        position += length
