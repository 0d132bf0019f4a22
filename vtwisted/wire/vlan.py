"""
IEEE 802.1Q tags.

A tag is the TPID C{81 00} and a 16-bit TCI (priority 3 bits, DEI 1 bit,
VLAN id 12 bits) inserted after the source MAC address.  Inserting writes
priority 0 and DEI 0; removing drops the tag whole.
"""

from __future__ import annotations

TPID = b"\x81\x00"
TAG_LENGTH = 4
#: MAC addresses, a tag and the EtherType: the shortest tagged frame.
TAGGED_HEADER_LENGTH = 18
#: VLAN ids usable for tagging (0 is the priority tag, 4095 reserved).
MAX_VID = 4095


def isTagged(frame: bytes, offset: int = 0) -> bool:
    """
    True if the frame starting at C{offset} carries an 802.1Q tag.
    """
    return frame[offset + 12 : offset + 14] == TPID


def vidOf(frame: bytes, offset: int = 0) -> int:
    """
    The VLAN id of a tagged frame starting at C{offset}.
    """
    return ((frame[offset + 14] & 0x0F) << 8) | frame[offset + 15]


def insertTag(frame: bytes, vid: int, offset: int = 0) -> bytes:
    """
    The frame starting at C{offset} with a tag for C{vid} added; bytes
    before C{offset} are kept as they are.
    """
    cut = offset + 12
    return b"".join((frame[:cut], TPID, vid.to_bytes(2, "big"), frame[cut:]))


def removeTag(frame: bytes, offset: int = 0) -> bytes:
    """
    The tagged frame starting at C{offset} without its tag.
    """
    cut = offset + 12
    return frame[:cut] + frame[cut + TAG_LENGTH :]
