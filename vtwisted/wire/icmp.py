"""
ICMP for IPv4 (RFC 792).

Theory of operation: every ICMP message starts with type, code, a checksum
over the whole message, and four bytes whose meaning depends on the type
(identifier and sequence number for echoes, unused or the next-hop MTU for
errors), kept here as the opaque C{rest}.  L{ICMPMessage.parse} reads these
8 bytes and takes everything after them as the payload, so the caller hands
it exactly the IPv4 payload; it does not check the checksum (see
L{checksumOk}).  L{ICMPMessage.pack} computes the checksum.  L{echoReply}
answers a ping; L{errorMessage} builds an error quoting the IPv4 header and
the first 8 payload bytes of the packet that caused it, which is what lets
the sender match it to a socket.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vtwisted.wire.checksum import Buffer, checksumValid, internetChecksum

HEADER_LENGTH = 8
#: The longest error message L{errorMessage} builds (576 minus IP and UDP,
#: what libslirp allows too).
MAX_ERROR_LENGTH = 548
#: How much of the offending packet's payload an error quotes (RFC 792).
QUOTED_PAYLOAD = 8

ECHO_REPLY = 0
DEST_UNREACHABLE = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12

#: Codes of L{DEST_UNREACHABLE}.
NET = 0
HOST = 1
PROTOCOL = 2
PORT = 3
FRAGMENTATION_NEEDED = 4
ADMIN_PROHIBITED = 13

_HEADER = struct.Struct("!BBH4s")


class ICMPError(ValueError):
    """
    The bytes are not a readable ICMP message.
    """


class ICMPMessage(NamedTuple):
    """
    An ICMPv4 message.

    @ivar type: the message type (L{ECHO_REQUEST}, L{DEST_UNREACHABLE}...).
    @ivar code: the subtype.
    @ivar checksum: the checksum as read (L{pack} computes a fresh one).
    @ivar rest: the 4 type-dependent bytes after the checksum.
    @ivar payload: everything after the 8-byte header.
    """

    type: int
    code: int
    checksum: int
    rest: bytes
    payload: bytes

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> ICMPMessage:
        """
        Read the message starting at C{offset}; it runs to the end of C{data}.

        @param data: bytes holding the message (the IPv4 payload).
        @param offset: where the message starts.
        @return: the message, checksum not verified.
        @raise ICMPError: fewer than 8 bytes.
        """
        if offset < 0 or len(data) - offset < HEADER_LENGTH:
            raise ICMPError(
                f"ICMP message truncated: {max(len(data) - offset, 0)} of "
                f"{HEADER_LENGTH} bytes"
            )
        kind, code, checksum, rest = _HEADER.unpack_from(data, offset)
        return cls(kind, code, checksum, rest, bytes(data[offset + HEADER_LENGTH :]))

    def pack(self) -> bytes:
        """
        The message as bytes, with its checksum computed.

        @raise ICMPError: C{rest} is not 4 bytes.
        """
        if len(self.rest) != 4:
            raise ICMPError(f"ICMP rest of header is {len(self.rest)} bytes, not 4")
        header = _HEADER.pack(self.type, self.code, 0, self.rest)
        checksum = internetChecksum(header + self.payload)
        return b"".join((header[:2], checksum.to_bytes(2, "big"), header[4:], self.payload))


def checksumOk(data: Buffer) -> bool:
    """
    Whether the ICMP message C{data} has a correct checksum.

    @param data: the whole message, as received.
    """
    return checksumValid(data)


def echoReply(message: ICMPMessage) -> bytes:
    """
    The answer to an echo request: same identifier, sequence and payload.

    @param message: an L{ECHO_REQUEST}.
    @return: the L{ECHO_REPLY} message as bytes.
    """
    return message._replace(type=ECHO_REPLY, code=0).pack()


def errorMessage(type: int, code: int, original: Buffer, rest: bytes = b"\0\0\0\0") -> bytes:
    """
    An ICMP error about the IPv4 packet C{original}.

    @param type: L{DEST_UNREACHABLE}, L{TIME_EXCEEDED}...
    @param code: the subtype, L{PORT} say.
    @param original: the offending IPv4 packet, header first.
    @param rest: the 4 bytes after the checksum (the next-hop MTU for
        L{FRAGMENTATION_NEEDED}).
    @return: the message, quoting the header of C{original} and up to 8
        bytes of its payload, never more than L{MAX_ERROR_LENGTH} bytes.
    """
    headerLength = max((original[0] & 0x0F) * 4, 20) if original else 0
    quoted = original[: min(headerLength + QUOTED_PAYLOAD, MAX_ERROR_LENGTH - HEADER_LENGTH)]
    return ICMPMessage(type, code, 0, rest, bytes(quoted)).pack()
