"""
vde_switch's FSTP BPDUs (its "fast spanning tree" messages).

Theory of operation
-------------------
A BPDU is an 802.3 frame to C{01:80:c2:00:00:00} with length C{0x0027}, LLC
C{42 42 03} and an RSTP-shaped body: protocol 0, version 2, type 2, flags,
root id (8 bytes: priority and MAC), root path cost (4 bytes, big-endian),
bridge id, port id, then four times in I{little-endian} whole seconds
(message age, max age, hello, forward delay, as vde_switch writes them) and a
zero version-1 length: 53 bytes, not padded.  On a tagged member of a VLAN
the 802.1Q tag with the VLAN id sits before the length.  The spec
(C{vde-wire.md} 4.6) has a captured example, which the tests decode.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vtwisted.wire.vlan import TPID

#: The destination of every BPDU.
BPDU_ADDRESS = b"\x01\x80\xc2\x00\x00\x00"
#: Length of an untagged BPDU (no padding).
LENGTH = 53

TC = 0x01
PROPOSAL = 0x02
ROLE_MASK = 0x0C
ROLE_ROOT = 0x04
LEARNING = 0x10
FORWARDING = 0x20
AGREEMENT = 0x40

_LLC = b"\x00\x27\x42\x42\x03\x00\x00\x02\x02"
_BODY = struct.Struct(">B8sI8s2s")
_TIMES = struct.Struct("<HHHHB")


class BpduError(ValueError):
    """
    A frame to the BPDU address that is not an FSTP BPDU.
    """


class OtherSpanningTree(BpduError):
    """
    A sound BPDU of another spanning tree protocol (IEEE 802.1D's, a Linux
    bridge's or a hardware switch's), which FSTP does not speak.
    """


#: What the BPDUs of other spanning trees are, by (version, type).
_OTHERS = {
    (0, 0x00): "an IEEE 802.1D configuration BPDU",
    (0, 0x80): "an IEEE 802.1D topology change notification",
    (3, 0x02): "an MSTP BPDU",
}


@dataclass(frozen=True)
class Bpdu:
    """
    The fields of one BPDU.

    @ivar rootCost: the sender's path cost to the root.
    @ivar portId: two bytes, C{0x80 | port >> 4} and C{port & 0xff}.
    """

    flags: int
    root: bytes
    rootCost: int
    bridge: bytes
    portId: bytes
    age: int = 0
    maxAge: int = 40
    hello: int = 4
    forwardDelay: int = 0


def portId(number: int) -> bytes:
    """
    The port id vde_switch puts in BPDUs for port C{number}.
    """
    return bytes((0x80 | (number >> 4) & 0xFF, number & 0xFF))


def pack(source: bytes, bpdu: Bpdu, vid: int | None = None) -> bytes:
    """
    The frame carrying C{bpdu} from MAC C{source}, tagged for C{vid} if
    given.
    """
    tag = b"" if vid is None else TPID + vid.to_bytes(2, "big")
    return b"".join((
        BPDU_ADDRESS, source, tag, _LLC,
        _BODY.pack(bpdu.flags, bpdu.root, bpdu.rootCost, bpdu.bridge, bpdu.portId),
        _TIMES.pack(min(bpdu.age, 0xFFFF), bpdu.maxAge, bpdu.hello, bpdu.forwardDelay, 0),
    ))


def parse(frame: bytes, offset: int = 0) -> Bpdu:
    """
    Decode the BPDU in C{frame} starting at C{offset} (the destination
    address), tagged or not.

    @raise OtherSpanningTree: it is another protocol's BPDU (protocol 0,
        not version 2, type 2).
    @raise BpduError: it is too short or no BPDU at all.
    """
    start = offset + 12
    if frame[start : start + 2] == TPID:
        start += 4
    if len(frame) < start + 9:
        raise BpduError(f"{len(frame) - offset} bytes, too short for a BPDU")
    if frame[start + 2 : start + 5] != b"\x42\x42\x03":
        raise BpduError("not an LLC spanning tree frame")
    version, kind = frame[start + 7], frame[start + 8]
    if (version, kind) != (2, 2):
        if frame[start + 5 : start + 7] == b"\x00\x00":
            what = _OTHERS.get((version, kind), f"a spanning tree BPDU of version {version} "
                                                f"type {kind}")
            raise OtherSpanningTree(f"{what}, not FSTP's (vde_switch's); ignored")
        raise BpduError(f"version {version} type {kind}, not FSTP's 2/2")
    if len(frame) < start + LENGTH - 12 - 2:
        raise BpduError(f"{len(frame) - offset} bytes, too short for a BPDU")
    flags, root, cost, bridge, port = _BODY.unpack_from(frame, start + 9)
    age = maxAge = hello = delay = 0
    if len(frame) >= start + 9 + _BODY.size + 8:
        age, maxAge, hello, delay = struct.unpack_from("<HHHH", frame, start + 9 + _BODY.size)
    return Bpdu(flags, root, cost, bridge, port, age, maxAge, hello, delay)
