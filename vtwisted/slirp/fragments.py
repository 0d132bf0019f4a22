"""
Reassembly of the IPv4 fragments guests send (RFC 791, with RFC 815's
bookkeeping reduced to a dict of pieces), and the part of it IPv6's
reassembly (L{vtwisted.slirp.fragments6}) shares.

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
import ipaddress
from typing import Any

from vtwisted.wire import ipv4
from vtwisted.wire.checksum import Buffer

#: Datagrams being reassembled at once (per family).
MAX_DATAGRAMS = 64
#: Seconds a datagram may take to arrive whole.
TIMEOUT = 30.0
#: The largest IPv4 payload.
MAX_PAYLOAD = 65535 - 20

Key = tuple[Any, ...]


class Reassembly:
    """
    The pieces of one datagram.
    """

    __slots__ = ("header", "pieces", "starts", "received", "furthest", "length", "timer")

    def __init__(self) -> None:
        #: What goes before the payload once whole, from the first piece.
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


class FragmentStore:
    """
    The pieces of fragmented datagrams, whatever the family: bounded in
    number, size and time, overlaps refused.  Subclasses read their
    family's fragments and say how a whole datagram is rebuilt
    (L{_join}).

    @ivar reactor: for timeouts (C{callLater}).
    @ivar dropped: called as C{dropped(reason, message)} for a datagram given up.
    @ivar maxPayload: the end no piece may pass.
    """

    maxPayload = MAX_PAYLOAD

    def __init__(self, reactor: Any, dropped: Any) -> None:
        self.reactor = reactor
        self.dropped = dropped
        self.pending: dict[Key, Reassembly] = {}
        self.completed = 0

    def _collect(self, key: Key, offset: int, more: bool, piece: bytes,
                 header: bytes | None) -> bytes | None:
        """
        Keep one piece of the datagram known by C{key} (its source first).

        @param more: whether pieces follow this one (MF set).
        @param header: what goes before the payload, from the first piece
            (L{None} for the others).
        @return: the whole datagram once complete, else L{None}.
        """
        entry = self.pending.get(key)
        if entry is None:
            if len(self.pending) >= MAX_DATAGRAMS:
                self.dropped("busy", f"{MAX_DATAGRAMS} fragmented datagrams pending")
                return None
            entry = self.pending[key] = Reassembly()
            entry.timer = self.reactor.callLater(TIMEOUT, self._expire, key)
        problem = self._place(entry, offset, more, piece)
        if problem is not None:
            self._forget(key)
            self._malformed(key[0], problem)
            return None
        if offset == 0 and header is not None:
            entry.header = header
        return self._complete(key, entry)

    def _place(self, entry: Reassembly, offset: int, more: bool, piece: bytes) -> str | None:
        end = offset + len(piece)
        if end > self.maxPayload:
            return "the datagram would exceed 64 KB"
        if more:
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
        return None

    def _complete(self, key: Key, entry: Reassembly) -> bytes | None:
        if entry.length is None or entry.header is None or entry.received != entry.length:
            return None
        # Pieces never overlap nor pass the last one: all the bytes are there.
        self._forget(key)
        whole = self._join(entry.header, entry.length,
                           b"".join(entry.pieces[k] for k in entry.starts))
        if whole is None:
            # the first piece's headers leave less room than maxPayload
            self._malformed(key[0], "the datagram would exceed 64 KB")
            return None
        self.completed += 1
        return whole

    def _join(self, header: bytes, length: int, payload: bytes) -> bytes | None:
        """
        The whole datagram from the first piece's C{header} and the
        C{payload} of C{length} bytes, or L{None} if it would be too long.
        """
        raise NotImplementedError

    def _malformed(self, source: bytes, problem: str) -> None:
        self.dropped("malformed", f"fragments from {_text(source)}: {problem}")

    def _expire(self, key: Key) -> None:
        entry = self.pending.pop(key, None)
        if entry is not None:
            self.dropped("peer", f"fragments from {_text(key[0])}: the datagram did not "
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


class Reassembler(FragmentStore):
    """
    Rebuilds fragmented IPv4 datagrams.
    """

    def add(self, header: ipv4.IPv4Header, packet: Buffer) -> bytes | None:
        """
        Take one fragment (C{packet} is the whole IPv4 packet, C{header}
        its parsed header).

        @return: the whole datagram as one IPv4 packet once complete, else
            L{None}.
        """
        offset = header.fragmentOffset * 8
        first = None
        if offset == 0:
            first = bytes(ipv4.IPv4Header.pack(header._replace(
                flags=header.flags & ~ipv4.FLAG_MF, fragmentOffset=0)))
        return self._collect((header.src, header.dst, header.protocol, header.ident), offset,
                             bool(header.flags & ipv4.FLAG_MF),
                             bytes(packet[header.headerLength:header.totalLength]), first)

    def _join(self, header: bytes, length: int, payload: bytes) -> bytes | None:
        parsed = ipv4.IPv4Header.parse(header)
        if parsed.headerLength + length > 65535:
            return None
        whole = parsed._replace(totalLength=parsed.headerLength + length, checksum=0)
        return whole.pack() + payload


def _text(address: bytes) -> str:
    return str(ipaddress.ip_address(bytes(address)))
