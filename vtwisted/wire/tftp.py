"""
TFTP packets (RFC 1350) with option negotiation (RFC 2347: C{blksize}
2348, C{timeout} and C{tsize} 2349, C{windowsize} 7440).

A packet is a 2-byte big-endian opcode and a body: a request is the file
name, the mode and option name/value pairs, each a NUL-terminated string;
DATA carries a block number and up to a block of bytes, ACK a block
number, ERROR a code and a NUL-terminated message, OACK the options the
server accepted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

NOT_DEFINED = 0
FILE_NOT_FOUND = 1
ACCESS_VIOLATION = 2
ILLEGAL_OPERATION = 4
UNKNOWN_TRANSFER = 5
OPTION_REFUSED = 8

#: The block size without the C{blksize} option.
DEFAULT_BLOCK = 512
_HEAD = struct.Struct("!HH")


class TftpError(ValueError):
    """
    A malformed TFTP packet.
    """


@dataclass(frozen=True)
class Request:
    """
    A read or write request.

    @ivar options: option names (lower case) to their values.
    """

    opcode: int
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


def opcodeOf(packet: bytes) -> int:
    """
    The packet's opcode.

    @raise TftpError: it is shorter than an opcode.
    """
    if len(packet) < 2:
        raise TftpError(f"{len(packet)} bytes, too short for a TFTP opcode")
    return int.from_bytes(packet[:2], "big")


def parseRequest(packet: bytes) -> Request:
    """
    Decode an RRQ or WRQ.

    @raise TftpError: not a request, or its strings are not NUL-terminated.
    """
    opcode = opcodeOf(packet)
    if opcode not in (RRQ, WRQ):
        raise TftpError(f"opcode {opcode} is not a request")
    if not packet.endswith(b"\0"):
        raise TftpError("the request does not end with a NUL")
    fields = [f.decode("latin-1") for f in packet[2:-1].split(b"\0")]
    if len(fields) < 2 or not fields[0]:
        raise TftpError("the request has no file name or mode")
    filename, mode, rest = fields[0], fields[1].lower(), fields[2:]
    if len(rest) % 2:
        raise TftpError(f"option {rest[-1]!r} has no value")
    options = {rest[i].lower(): rest[i + 1] for i in range(0, len(rest), 2)}
    return Request(opcode, filename, mode, options)


def parseBlock(packet: bytes) -> int:
    """
    The block number of an ACK or DATA packet.

    @raise TftpError: too short.
    """
    if len(packet) < 4:
        raise TftpError(f"{len(packet)} bytes, too short for a block number")
    return int(_HEAD.unpack_from(packet)[1])


def parseError(packet: bytes) -> tuple[int, str]:
    """
    The code and message of an ERROR packet.
    """
    if len(packet) < 4:
        raise TftpError(f"{len(packet)} bytes, too short for an error")
    code = _HEAD.unpack_from(packet)[1]
    return code, packet[4:].split(b"\0", 1)[0].decode("latin-1")


def data(block: int, payload: bytes) -> bytes:
    """
    A DATA packet.
    """
    return _HEAD.pack(DATA, block & 0xFFFF) + payload


def ack(block: int) -> bytes:
    """
    An ACK packet.
    """
    return _HEAD.pack(ACK, block & 0xFFFF)


def error(code: int, message: str) -> bytes:
    """
    An ERROR packet.
    """
    return _HEAD.pack(ERROR, code) + message.encode("latin-1", "replace") + b"\0"


def oack(options: dict[str, str]) -> bytes:
    """
    An OACK packet acknowledging C{options}.
    """
    body = b"".join(name.encode("ascii") + b"\0" + value.encode("ascii") + b"\0"
                    for name, value in options.items())
    return OACK.to_bytes(2, "big") + body


def request(opcode: int, filename: str, mode: str = "octet",
            options: dict[str, str] | None = None) -> bytes:
    """
    An RRQ or WRQ packet (for clients and tests).
    """
    parts = [filename, mode]
    for name, value in (options or {}).items():
        parts += [name, value]
    return opcode.to_bytes(2, "big") + b"".join(p.encode("latin-1") + b"\0" for p in parts)
