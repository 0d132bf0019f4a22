"""
Receive coalescing for TCP: runs of plain TCP frames of one flow, read one
by one from a port without the virtio-net header (a VXLAN socket), become
one TSO super-frame for ports with it (what Linux calls GRO).

Theory of operation: a switch pays a system call per frame it writes to a
TAP, and the receiving kernel pays its TCP stack once per frame.  An
offload TAP takes a C{GSO_TCPV4}/C{GSO_TCPV6} packet instead: one
virtio-net header, one set of Ethernet, IP and TCP headers, and the
payloads of consecutive segments.  L{TcpCoalescer} watches the frames of
one read batch in order, keeps one run per flow (addresses and ports, at
most L{MAX_FLOWS}), and merges the segments that follow each other when the
kernel's cut of the merged packet gives the same stream back, with Linux's
own GRO rules:

  - an untagged IPv4 (20-byte header, not a fragment) or IPv6 (no
    extension header) TCP segment with data, lengths consistent, flags ACK
    or ACK|PSH only, and a valid TCP checksum (the merged packet's checksum
    is left to the receiver, so a damaged segment must never be merged: it
    is handed on alone, for its receiver to drop);
  - every header byte equal to the run's first segment's but for the
    lengths, the IPv4 id and header checksum, the sequence number, the PSH
    flag and the checksum: same MACs, TOS, TTL, DF, flow label, ports,
    acknowledgement number, window and options (timestamps);
  - the sequence number where the run's data ends, and the IPv4 id one more
    than the last (as TSO numbers them);
  - every segment as long as the first, but the last which may be shorter;
    a shorter one or one with PSH ends the run; at most 64 KB of data.

A segment that does not continue its flow's run ends it: the run is handed
on first, so each flow keeps its order (different flows may not).  A run of
one frame is handed on as the plain frame it was.  The merged packet has
C{NEEDS_CSUM}, its TCP checksum field holding the pseudo-header sum for the
whole length (the kernel's convention, see L{vtwisted.wire.vnet}), and a
recomputed IPv4 header checksum; L{vtwisted.wire.vnet.toFrames} cuts it
back into the very segments that came in (the tests check exactly that).
No timer is involved: runs end with the batch (L{TcpCoalescer.flush}).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from vtwisted.wire import gsocut
from vtwisted.wire.checksum import MODULUS, internetChecksum
from vtwisted.wire.vnet import GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM

#: Flows with a run in progress at once.
MAX_FLOWS = 64
#: The most payload bytes in one merged packet.
MAX_PAYLOAD = 65535 - 40 - 60

_HEADER = struct.Struct("<BBHHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IPV4 = b"\x08\x00"
_IPV6 = b"\x86\xdd"
_ACK, _PSH = 0x10, 0x08
_PROTO_TCP = 6


class _Run:
    """
    The segments of one flow waiting to be merged, and what the next one
    must look like to join them.
    """

    __slots__ = ("frames", "key", "seq", "ident", "mss", "room", "isV4", "l4", "start",
                 "closed")

    def __init__(self, frame: bytes, isV4: bool, l4: int, start: int, key: bytes) -> None:
        self.frames = [frame]
        self.isV4, self.l4, self.start, self.key = isV4, l4, start, key
        self.mss = len(frame) - start
        self.seq = (_U32.unpack_from(frame, l4 + 4)[0] + self.mss) & 0xFFFFFFFF
        self.ident = (_U16.unpack_from(frame, 18)[0] + 1) & 0xFFFF if isV4 else 0
        self.room = MAX_PAYLOAD - self.mss
        self.closed = bool(frame[l4 + 13] & _PSH)


def _parse(frame: bytes) -> tuple[bool, int, int, bytes] | None:
    """
    Whether C{frame} may join a run: its IP version, transport offset,
    payload offset and the header bytes every segment of its run shares;
    L{None} if it is not a candidate (checksum not checked here).
    """
    size = len(frame)
    etherType = frame[12:14]
    if etherType == _IPV4:
        if size < 55 or frame[14] != 0x45 or frame[23] != _PROTO_TCP or frame[20] & 0x3F \
                or frame[21] or _U16.unpack_from(frame, 16)[0] != size - 14:
            return None
        l4, isV4 = 34, True
        fixed = frame[:16] + frame[20:24] + frame[26:34]
    elif etherType == _IPV6:
        if size < 75 or frame[20] != _PROTO_TCP or _U16.unpack_from(frame, 18)[0] != size - 54:
            return None
        l4, isV4 = 54, False
        fixed = frame[:18] + frame[20:54]
    else:
        return None
    start = l4 + (frame[l4 + 12] >> 4) * 4
    if start >= size or start < l4 + 20 or frame[l4 + 13] & ~_PSH != _ACK:
        return None
    return isV4, l4, start, fixed + frame[l4:l4 + 4] + frame[l4 + 8:l4 + 13] \
        + frame[l4 + 14:l4 + 16] + frame[l4 + 18:start]


def _pseudoSum(frame: bytes, isV4: bool, tcpLength: int) -> int:
    addresses = frame[26:34] if isV4 else frame[22:54]
    return int.from_bytes(addresses, "big") + _PROTO_TCP + tcpLength


def checksumOk(frame: bytes, isV4: bool, l4: int) -> bool:
    """
    Whether the TCP checksum of C{frame} is valid.

    The segment is summed as L{vtwisted.wire.gsocut} sums a payload: read
    as one little-endian integer, folded four times at 16-bit boundaries,
    and byte-swapped by multiplying by 256; this runs once per segment.
    """
    length = len(frame) - l4
    x = int.from_bytes(frame[l4:], "little")
    a, am, b, bm, c, cm, d, dm = gsocut.foldsFor(length)
    x = (x >> a) + (x & am)
    x = (x >> b) + (x & bm)
    x = (x >> c) + (x & cm)
    x = (x >> d) + (x & dm)
    return ((x << 8) + _pseudoSum(frame, isV4, length)) % MODULUS == 0


def merge(run: list[bytes], isV4: bool, l4: int, start: int) -> bytes:
    """
    One TSO packet carrying the segments of C{run}, which L{TcpCoalescer}
    found mergeable (at least two).
    """
    first = run[0]
    mss = len(first) - start
    payload = sum(len(frame) for frame in run) - start * len(run)
    headers = bytearray(first[:start])
    if isV4:
        _U16.pack_into(headers, 16, start - 14 + payload)
        headers[24:26] = b"\0\0"
        _U16.pack_into(headers, 24, internetChecksum(headers[14:34]))
    else:
        _U16.pack_into(headers, 18, start - 54 + payload)
    headers[l4 + 13] |= run[-1][l4 + 13] & _PSH
    tcpLength = start - l4 + payload
    headers[l4 + 16:l4 + 18] = b"\0\0"
    partial = _pseudoSum(first, isV4, tcpLength) % MODULUS or MODULUS
    _U16.pack_into(headers, l4 + 16, partial)
    vnetHeader = _HEADER.pack(NEEDS_CSUM, GSO_TCPV4 if isV4 else GSO_TCPV6, start, mss, l4, 16)
    return b"".join([vnetHeader, headers, *[frame[start:] for frame in run]])


def _always(frame: bytes) -> bool:
    return True


class TcpCoalescer:
    """
    Merge runs of TCP segments, frame by frame, and hand everything on:
    plain frames to C{deliverFrame}, merged packets to C{deliverPacket};
    the frames of one flow in the order they came, those of different flows
    perhaps not.

    @ivar segments: how many segments went into merged packets.
    @ivar packets: how many merged packets were handed on.
    """

    __slots__ = ("_frame", "_packet", "_pays", "_runs", "segments", "packets")

    def __init__(self, deliverFrame: Callable[[bytes], object],
                 deliverPacket: Callable[[bytes], object],
                 pays: Callable[[bytes], bool] | None = None) -> None:
        """
        @param pays: asked when a flow's run starts whether merging frames
            like this one pays (not when they would only be cut apart again
            for a port without the header).
        """
        self._frame = deliverFrame
        self._packet = deliverPacket
        self._pays = pays or _always
        self._runs: dict[bytes, _Run] = {}
        self.segments = 0
        self.packets = 0

    def add(self, frame: bytes) -> None:
        """
        Take the next frame of the batch: it joins its flow's run, or ends
        that run and perhaps starts another, or is handed on.
        """
        etherType = frame[12:14]
        if etherType == _IPV4 and len(frame) > 34 and frame[23] == _PROTO_TCP:
            flow = frame[26:38]
        elif etherType == _IPV6 and len(frame) > 54 and frame[20] == _PROTO_TCP:
            flow = frame[22:58]
        else:  # not TCP: no run to join, and none to keep it behind
            self._frame(frame)
            return
        runs = self._runs
        run = runs.pop(flow, None)
        parsed = _parse(frame)
        if run is not None:
            if parsed is not None and self._joins(run, frame, parsed):
                runs[flow] = run
                return
            self._hand(run)
        if parsed is None or not self._pays(frame) or not checksumOk(frame, parsed[0], parsed[1]):
            self._frame(frame)
            return
        runs[flow] = _Run(frame, *parsed)
        if len(runs) > MAX_FLOWS:
            self._hand(runs.pop(next(iter(runs))))

    def _joins(self, run: _Run, frame: bytes, parsed: tuple[bool, int, int, bytes]) -> bool:
        isV4, l4, start, key = parsed
        length = len(frame) - start
        if run.closed or key != run.key or start != run.start or length > run.mss \
                or length > run.room \
                or _U32.unpack_from(frame, l4 + 4)[0] != run.seq \
                or (isV4 and _U16.unpack_from(frame, 18)[0] != run.ident) \
                or not checksumOk(frame, isV4, l4):
            return False
        run.frames.append(frame)
        run.seq = (run.seq + length) & 0xFFFFFFFF
        run.ident = (run.ident + 1) & 0xFFFF
        run.room -= length
        run.closed = length < run.mss or bool(frame[l4 + 13] & _PSH)
        return True

    def flush(self) -> None:
        """
        Hand on every run, oldest first: merged if it holds more than one
        segment.
        """
        runs = self._runs
        if runs:
            self._runs = {}
            for run in runs.values():
                self._hand(run)

    def _hand(self, run: _Run) -> None:
        frames = run.frames
        if len(frames) == 1:
            self._frame(frames[0])
            return
        self.segments += len(frames)
        self.packets += 1
        self._packet(merge(frames, run.isV4, run.l4, run.start))
