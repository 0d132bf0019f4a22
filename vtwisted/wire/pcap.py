"""
The classic libpcap file format, for Ethernet captures.

A file is a 24-byte header (magic C{a1b2c3d4} in the writer's byte order,
version 2.4, time zone and accuracy 0, the snapshot length, link type 1 for
Ethernet) and then, per frame, a 16-byte record header (seconds and
microseconds, the length kept and the length on the wire) and the bytes
kept.  tcpdump, tshark and Wireshark read it.
"""

from __future__ import annotations

import struct

MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
_GLOBAL = struct.Struct("<IHHiIII")
#: The length of the file header.
FILE_HEADER_LENGTH = _GLOBAL.size
RECORD = struct.Struct("<IIII")


def fileHeader(snaplen: int) -> bytes:
    """
    The header that starts a capture of frames cut at C{snaplen} bytes.
    """
    return _GLOBAL.pack(MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def record(when: float, frame: bytes, snaplen: int) -> bytes:
    """
    One frame's record: header and the first C{snaplen} bytes.
    """
    seconds = int(when)
    kept = frame[:snaplen]
    return RECORD.pack(seconds, int((when - seconds) * 1e6), len(kept), len(frame)) + kept


def readRecords(data: bytes) -> list[tuple[float, bytes, int]]:
    """
    The (time, bytes kept, length on the wire) of each record of a capture
    written by this module (for tests and tools).

    @raise ValueError: not such a capture.
    """
    if len(data) < _GLOBAL.size or _GLOBAL.unpack_from(data)[0] != MAGIC:
        raise ValueError("not a little-endian libpcap file")
    records = []
    offset = _GLOBAL.size
    while offset + RECORD.size <= len(data):
        seconds, micros, kept, length = RECORD.unpack_from(data, offset)
        offset += RECORD.size
        records.append((seconds + micros / 1e6, data[offset:offset + kept], length))
        offset += kept
    return records
