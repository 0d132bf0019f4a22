"""
Reassembly of the IPv4 fragments guests send (RFC 791, with RFC 815's
bookkeeping reduced to a dict of pieces).

Theory of operation
-------------------
A fragmented datagram is known by (source, destination, protocol,
identification).  Its pieces are kept by offset until the last one (MF
clear) says how long it is and the pieces cover it without gap; then one
IPv4 packet is rebuilt from the first piece's header (options included,
flags and offset cleared, length and checksum fresh) and the payload, and
the router handles it like any other packet.

Memory stays bounded: at most L{MAX_DATAGRAMS} datagrams are pending, each
at most 64 KB, and one that is not complete L{TIMEOUT} seconds after its
first piece is dropped.  Overlapping pieces are refused as a whole datagram
(RFC 5722 says so for IPv6; for IPv4 they are a known evasion trick).
"""

from __future__ import annotations

import bisect
from typing import Any

from vtwisted.slirp.addresses import dotted
from vtwisted.wire import ipv4
from vtwisted.wire.checksum import Buffer

#: Datagrams being reassembled at once.
MAX_DATAGRAMS = 64
#: Seconds a datagram may take to arrive whole.
TIMEOUT = 30.0
#: The largest IPv4 payload.
MAX_PAYLOAD = 65535 - 20

Key = tuple[bytes, bytes, int, int]


class Reassembly:
    """
    The pieces of one datagram.
    """

    __slots__ = ("header", "pieces", "starts", "received", "furthest", "length", "timer")

    def __init__(self) -> None:
        self.header: bytes | None = None
        self.pieces: dict[int, bytes] = {}
        #: The pieces' offsets in order, to place each piece in log time:
        #: a guest may cut a datagram into 8190 pieces of 8 bytes.
        self.starts: list[int] = []
        #: Bytes held, and the end of the furthest piece.
        self.received = 0
        self.furthest = 0
        self.length: int | None = None
        self.timer: Any = None


class Reassembler:
    """
    Rebuilds fragmented IPv4 datagrams.

    @ivar reactor: for timeouts (C{callLater}).
    @ivar dropped: called as C{dropped(reason, message)} for a datagram given up.
    """

    def __init__(self, reactor: Any, dropped: Any) -> None:
        self.reactor = reactor
        self.dropped = dropped
        self.pending: dict[Key, Reassembly] = {}
        self.completed = 0

    def add(self, header: ipv4.IPv4Header, packet: Buffer) -> bytes | None:
        """
        Take one fragment (C{packet} is the whole IPv4 packet, C{header}
        its parsed header).

        @return: the whole datagram as one IPv4 packet once complete, else
            L{None}.
        """
        key = (header.src, header.dst, header.protocol, header.ident)
        entry = self.pending.get(key)
        if entry is None:
            if len(self.pending) >= MAX_DATAGRAMS:
                self.dropped("busy", f"{MAX_DATAGRAMS} fragmented datagrams pending")
                return None
            entry = self.pending[key] = Reassembly()
            entry.timer = self.reactor.callLater(TIMEOUT, self._expire, key)
        offset = header.fragmentOffset * 8
        piece = bytes(packet[header.headerLength:header.totalLength])
        problem = self._place(entry, header, offset, piece)
        if problem is not None:
            self._forget(key)
            self.dropped("malformed", f"fragments from {dotted(header.src)}: {problem}")
            return None
        return self._complete(key, entry)

    def _place(self, entry: Reassembly, header: ipv4.IPv4Header, offset: int,
               piece: bytes) -> str | None:
        end = offset + len(piece)
        if end > MAX_PAYLOAD:
            return "the datagram would exceed 64 KB"
        if header.flags & ipv4.FLAG_MF:
            if len(piece) % 8:
                return "a piece before the last is not a multiple of 8 bytes"
            if entry.length is not None and end > entry.length:
                return "a piece lies past the last one"
        elif entry.length is not None and entry.length != end:
            return "two last pieces disagree on the length"
        elif entry.furthest > end:
            return "a piece lies past the last one"
        else:
            entry.length = end
        pieces, starts = entry.pieces, entry.starts
        if pieces.get(offset) == piece:
            return None  # a duplicate
        i = bisect.bisect_left(starts, offset)
        if (i < len(starts) and (starts[i] == offset or starts[i] < end)) or \
                (i and starts[i - 1] + len(pieces[starts[i - 1]]) > offset):
            return "pieces overlap"
        pieces[offset] = piece
        starts.insert(i, offset)
        entry.received += len(piece)
        entry.furthest = max(entry.furthest, end)
        if offset == 0:
            entry.header = bytes(ipv4.IPv4Header.pack(header._replace(
                flags=header.flags & ~ipv4.FLAG_MF, fragmentOffset=0)))
        return None

    def _complete(self, key: Key, entry: Reassembly) -> bytes | None:
        if entry.length is None or entry.header is None or entry.received != entry.length:
            return None
        # Pieces never overlap nor pass the last one: all the bytes are there.
        covered = entry.length
        self._forget(key)
        header = ipv4.IPv4Header.parse(entry.header)
        if header.headerLength + covered > 65535:
            # the first piece's options leave less than MAX_PAYLOAD
            self.dropped("malformed", f"fragments from {dotted(key[0])}: the datagram would "
                         "exceed 64 KB")
            return None
        self.completed += 1
        whole = header._replace(totalLength=header.headerLength + covered, checksum=0)
        return whole.pack() + b"".join(entry.pieces[k] for k in entry.starts)

    def _expire(self, key: Key) -> None:
        entry = self.pending.pop(key, None)
        if entry is not None:
            self.dropped("peer", f"fragments from {dotted(key[0])}: the datagram did not "
                         f"arrive whole within {TIMEOUT:g} s")

    def _forget(self, key: Key) -> None:
        entry = self.pending.pop(key, None)
        if entry is not None and entry.timer is not None and entry.timer.active():
            entry.timer.cancel()

    def close(self) -> None:
        """
        Drop everything pending and cancel the timers.
        """
        for key in list(self.pending):
            self._forget(key)
