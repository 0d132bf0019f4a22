"""
The vhost-user protocol's messages (QEMU's C{docs/interop/vhost-user.rst}):
how a virtual machine monitor hands its virtio queues to a back-end
process over a Unix socket.

Theory of operation: every message is a 12-byte header (request, flags,
payload size, all 32-bit native-endian) and a payload whose layout the
request decides: a 64-bit number, a ring state (index, number), a ring
address set, or a memory table; file descriptors ride along as
C{SCM_RIGHTS} ancillary data.  The back-end answers only the requests that
ask for a value, with the reply flag set.

Everything here is pure: parsers raise L{VhostUserError} for anything
malformed, whatever the bytes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

#: Message header: request, flags, payload size.
HEADER = struct.Struct("=III")
VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
#: The largest payload read: a full memory table is 8 + 8 * 32 bytes.
MAX_PAYLOAD = 4096

GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_LOG_BASE, SET_LOG_FD, SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE = 6, 7, 8, 9, 10
GET_VRING_BASE, SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 11, 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
SEND_RARP, NET_SET_MTU = 19, 20

#: virtio-net device feature bits (VIRTIO 1.1, 5.1.3 and 6): offloads,
#: mergeable buffers, the control queue and queue pairs, the dirty log (live
#: migration), ring layouts and event indexes, vhost-user's own features.
F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN = 0, 1, 7, 8, 9
F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN, F_MRG_RXBUF, F_CTRL_VQ, F_MQ = 11, 12, 13, 15, 17, 22
F_LOG_ALL, F_INDIRECT_DESC, F_EVENT_IDX, F_PROTOCOL_FEATURES = 26, 28, 29, 30
F_VERSION_1, F_RING_PACKED = 32, 34
#: vhost-user protocol features: several queue pairs, the dirty log in
#: shared memory, announcing a migrated guest (RARP), and acks.
P_MQ, P_LOG_SHMFD, P_RARP, P_REPLY_ACK = 0, 1, 2, 3

#: In a ring file descriptor message: the ring index, and "no descriptor".
RING_INDEX_MASK = 0xFF
NO_FD = 0x100
#: The most memory regions a table has.
MAX_REGIONS = 8

_U64 = struct.Struct("=Q")
_STATE = struct.Struct("=II")
_ADDRESS = struct.Struct("=IIQQQQ")
_TABLE = struct.Struct("=II")
_REGION = struct.Struct("=QQQQ")
_LOG = struct.Struct("=QQ")


class VhostUserError(ValueError):
    """
    A message cannot be read.
    """


class Header(NamedTuple):
    request: int
    flags: int
    size: int

    @classmethod
    def parse(cls, data: bytes) -> Header:
        """
        @raise VhostUserError: shorter than a header, a version other than 1,
            or a payload too big.
        """
        if len(data) < HEADER.size:
            raise VhostUserError(f"{len(data)} bytes, shorter than a {HEADER.size}-byte header")
        header = cls(*HEADER.unpack_from(data))
        if header.flags & 0x3 != VERSION:
            raise VhostUserError(f"request {header.request}: version {header.flags & 3}, not 1")
        if header.size > MAX_PAYLOAD:
            raise VhostUserError(f"request {header.request}: payload of {header.size} bytes")
        return header


class RingAddresses(NamedTuple):
    """
    Where a ring's three parts are, in the front-end's address space.
    """

    ring: int
    flags: int
    descriptors: int
    used: int
    available: int
    log: int


class Region(NamedTuple):
    """
    One region of guest memory, shared through the file descriptor sent
    with the table: guest-physical C{guestAddress} is at C{mmapOffset} in
    the file, and at C{userAddress} in the front-end's address space.
    """

    guestAddress: int
    size: int
    userAddress: int
    mmapOffset: int


def _need(request: int, payload: bytes, size: int) -> None:
    if len(payload) < size:
        raise VhostUserError(f"request {request}: payload of {len(payload)} bytes, "
                             f"needs {size}")


def number(request: int, payload: bytes) -> int:
    """
    A 64-bit number payload.
    """
    _need(request, payload, 8)
    value: int = _U64.unpack_from(payload)[0]
    return value


def ringState(request: int, payload: bytes) -> tuple[int, int]:
    """
    A ring state payload: (index, number).
    """
    _need(request, payload, _STATE.size)
    index, value = _STATE.unpack_from(payload)
    return index, value


def ringAddresses(request: int, payload: bytes) -> RingAddresses:
    _need(request, payload, _ADDRESS.size)
    return RingAddresses(*_ADDRESS.unpack_from(payload))


def logArea(request: int, payload: bytes) -> tuple[int, int]:
    """
    A dirty log payload (C{SET_LOG_BASE}): (size, offset in the file).
    """
    _need(request, payload, 16)
    size, offset = _LOG.unpack_from(payload)
    return size, offset


def memoryTable(request: int, payload: bytes) -> list[Region]:
    """
    A memory table payload.

    @raise VhostUserError: no regions, more than L{MAX_REGIONS}, or fewer in
        the payload than it says.
    """
    _need(request, payload, _TABLE.size)
    count, _ = _TABLE.unpack_from(payload)
    if not 0 < count <= MAX_REGIONS:
        raise VhostUserError(f"memory table of {count} regions")
    _need(request, payload, _TABLE.size + count * _REGION.size)
    return [Region(*_REGION.unpack_from(payload, _TABLE.size + i * _REGION.size))
            for i in range(count)]


def reply(request: int, payload: bytes) -> bytes:
    """
    A reply to C{request}.
    """
    return HEADER.pack(request, VERSION | FLAG_REPLY, len(payload)) + payload


def numberReply(request: int, value: int) -> bytes:
    return reply(request, _U64.pack(value))


def stateReply(request: int, index: int, value: int) -> bytes:
    return reply(request, _STATE.pack(index, value))


def message(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    """
    A message from the front-end (for tests and fakes).
    """
    return HEADER.pack(request, flags, len(payload)) + payload


def packNumber(value: int) -> bytes:
    return _U64.pack(value)


def packLog(size: int, offset: int) -> bytes:
    return _LOG.pack(size, offset)


def packState(index: int, value: int) -> bytes:
    return _STATE.pack(index, value)


def packAddresses(addresses: RingAddresses) -> bytes:
    return _ADDRESS.pack(*addresses)


def packTable(regions: list[Region]) -> bytes:
    return _TABLE.pack(len(regions), 0) + b"".join(_REGION.pack(*r) for r in regions)
