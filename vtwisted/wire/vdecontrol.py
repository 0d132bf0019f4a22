"""
The VDE control-socket handshake: requests and replies, version 1 and 3.

Theory of operation
-------------------
A VDE client connects to C{DIR/ctl} (a stream socket), binds a datagram
socket of its own and sends one request naming it.  The switch connects a
datagram socket to that path, binds it as C{DIR/NNN.F} and replies with that
path in a C{sockaddr_un}; from then on frames travel as datagrams between the
two sockets and the stream only signals that the client is alive.

A version 3 request is magic (4), version (4), type (4: kind in the low
byte, requested port above it), C{sockaddr_un} (110), then a description
that is not NUL terminated.  Version 1 has the type at offset 4 and a 6-byte
MAC before the C{sockaddr_un}; the u32 at offset 4 tells the two apart.  All
integers are little-endian (the host order of the clients we talk to).
There is no length field: the request is whatever the client's single
C{send()} delivered, at most 256 bytes.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

MAGIC = 0xFEEDFACE
VERSION = 3
REQ_NEW_CONTROL = 0
REQ_NEW_PORT0 = 1
SUN_PATH_LENGTH = 108
SOCKADDR_LENGTH = 110
#: Shortest version 3 request (no description).
MIN_REQUEST = 12 + SOCKADDR_LENGTH
MIN_REQUEST_V1 = 8 + 6 + SOCKADDR_LENGTH
#: vde_switch reads at most this much.
MAX_REQUEST = 256
MAX_DESCRIPTION = MAX_REQUEST - MIN_REQUEST

_HEAD = struct.Struct("<III")
_FAMILY = struct.Struct("<H")


class MalformedRequest(ValueError):
    """
    A control request that no VDE client would send.

    @ivar kind: what is wrong, without the values the client chose (for
        counting refusals by kind).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Request(NamedTuple):
    """
    A parsed control request.

    @ivar version: 1 or 3.
    @ivar port: the port asked for, or L{None} for any.
    @ivar path: the client's datagram socket path.
    @ivar description: what the client says it is.
    """

    version: int
    port: int | None
    path: bytes
    description: str


def minimumLength(data: bytes) -> int:
    """
    How many bytes a request starting with C{data} needs at least, once its
    first 8 bytes are known.
    """
    if len(data) >= 8 and _HEAD.unpack_from(data + bytes(4))[1] in (0, 1):
        return MIN_REQUEST_V1
    return MIN_REQUEST


def parseRequest(data: bytes) -> Request:
    """
    Parse one control request.

    @raise MalformedRequest: with a sentence saying what is wrong.
    """
    if len(data) > MAX_REQUEST:
        raise MalformedRequest(f"request of {len(data)} bytes, longer than {MAX_REQUEST}",
                               f"request longer than {MAX_REQUEST} bytes")
    if len(data) < 8:
        raise MalformedRequest(f"request of {len(data)} bytes is too short",
                               "request too short")
    magic, second = struct.unpack_from("<II", data)
    if magic != MAGIC:
        raise MalformedRequest(f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x})", "bad magic")
    if second in (0, 1):
        version, kind, port, addrAt = 1, second, 0, 14
    elif second == VERSION:
        if len(data) < MIN_REQUEST:
            raise MalformedRequest(f"request of {len(data)} bytes is too short",
                                   "request too short")
        kindWord = struct.unpack_from("<I", data, 8)[0]
        version, kind, port, addrAt = 3, kindWord & 0xFF, kindWord >> 8, 12
    else:
        raise MalformedRequest(f"unsupported protocol version {second}",
                               "unsupported protocol version")
    if len(data) < addrAt + SOCKADDR_LENGTH:
        raise MalformedRequest(f"request of {len(data)} bytes is too short",
                               "request too short")
    if kind not in (REQ_NEW_CONTROL, REQ_NEW_PORT0):
        raise MalformedRequest(f"bad request type {kind}", "bad request type")
    family = _FAMILY.unpack_from(data, addrAt)[0]
    if family != socket.AF_UNIX:
        raise MalformedRequest(f"client address family {family} is not AF_UNIX",
                               "client address family is not AF_UNIX")
    raw = data[addrAt + 2 : addrAt + SOCKADDR_LENGTH]
    path = raw.split(b"\0", 1)[0]
    if not path:
        raise MalformedRequest("empty client socket path", "empty client socket path")
    if not path.startswith(b"/"):
        raise MalformedRequest(f"client socket path {path!r} is not absolute",
                               "client socket path is not absolute")
    description = data[addrAt + SOCKADDR_LENGTH :].split(b"\0", 1)[0]
    wanted: int | None = 0 if kind == REQ_NEW_PORT0 else (port or None)
    return Request(version, wanted, path, description.decode("utf-8", "replace"))


def packSockaddr(path: bytes) -> bytes:
    """
    A 110-byte C{sockaddr_un} naming C{path}.
    """
    if len(path) >= SUN_PATH_LENGTH:
        raise ValueError(f"socket path {path!r} is longer than {SUN_PATH_LENGTH - 1} bytes")
    return _FAMILY.pack(socket.AF_UNIX) + path.ljust(SUN_PATH_LENGTH, b"\0")


def packRequest(path: bytes, port: int | None = None, description: str = "") -> bytes:
    """
    A version 3 request, as libvdeplug sends it.

    @param port: a port number, 0 for the kind-1 "port 0" request, or L{None}
        for any port.
    """
    if port == 0:
        kind = REQ_NEW_PORT0
    else:
        kind = REQ_NEW_CONTROL | ((port or 0) << 8)
    return _HEAD.pack(MAGIC, VERSION, kind) + packSockaddr(path) + description.encode()


def packReply(path: bytes) -> bytes:
    """
    The switch's reply: the C{sockaddr_un} of its data socket.
    """
    return packSockaddr(path)


def parseReply(data: bytes) -> bytes:
    """
    The data socket path from a reply.
    """
    if len(data) != SOCKADDR_LENGTH:
        raise ValueError(f"reply of {len(data)} bytes (expected {SOCKADDR_LENGTH})")
    return data[2:].split(b"\0", 1)[0]
