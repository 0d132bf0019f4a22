"""
Reassembly of the IPv6 fragments guests send (RFC 8200 section 4.5).

Theory of operation
-------------------
A guest's kernel cuts an IPv6 datagram past the link's MTU into packets
with a fragment header (next header 44): the unfragmentable part (the fixed
header and the extension headers before the fragment header), then the
fragment header (next header, offset, M flag, identification), then a piece
of the rest.  A datagram is known by (source, destination, identification).
Pieces are kept as for IPv4 (L{vtwisted.slirp.fragments}: at most 64
datagrams of 64 KB pending, each given up 30 seconds after its first
piece, overlaps refused as RFC 5722 asks); once whole, the datagram is the
first piece's unfragmentable part, the fragment header taken out (the byte
that named it now names what it carried), and the payload length fresh.
The router then handles it like any other packet, checksums included.  A
datagram that is whole but holds one more fragment header is refused:
reassembly does not nest.

An atomic fragment (offset 0, M clear: a fragment header on a whole
datagram) is handled at once, apart from any other (RFC 6946).
"""

from __future__ import annotations

import struct

from vtwisted.slirp.fragments import FragmentStore
from vtwisted.wire import ipv6
from vtwisted.wire.checksum import Buffer

_FRAGMENT = struct.Struct("!BBHI")
_LENGTH = struct.Struct("!H")


class Reassembler6(FragmentStore):
    """
    Rebuilds fragmented IPv6 datagrams.
    """

    #: The payload length field's limit; the first piece's extension
    #: headers are checked when the datagram is whole.
    maxPayload = 65535

    def add(self, header: ipv6.IPv6Header, packet: Buffer, at: int, field: int) -> bytes | None:
        """
        Take one fragment.

        @param header: the fixed header, parsed.
        @param packet: the whole packet from its fixed header on.
        @param at: where in C{packet} the fragment header starts.
        @param field: where in C{packet} the byte naming the fragment header is.
        @return: the whole datagram as one IPv6 packet without a fragment
            header once complete, else L{None}.
        @raise ipv6.IPv6Error: the fragment header is truncated.
        """
        if len(packet) < at + 8:
            raise ipv6.IPv6Error("IPv6 fragment header truncated")
        nextHeader, _, place, ident = _FRAGMENT.unpack_from(packet, at)
        offset, more = place & ~7, bool(place & 1)
        first = None
        if offset == 0:
            head = bytearray(packet[:at])
            head[field] = nextHeader
            first = bytes(head)
        piece = bytes(packet[at + 8:])
        if first is not None and not more:  # atomic
            whole = self._join(first, len(piece), piece)
            if whole is None:
                self._malformed(header.src, "the datagram would exceed 64 KB")
        else:
            whole = self._collect((header.src, header.dst, ident), offset, more, piece, first)
        if whole is not None and _nested(whole):
            self._malformed(header.src, "a fragment header within a fragmented datagram")
            return None
        return whole

    def _join(self, header: bytes, length: int, payload: bytes) -> bytes | None:
        total = len(header) - ipv6.HEADER_LENGTH + length
        if total > 65535:
            return None
        return header[:4] + _LENGTH.pack(total) + header[6:] + payload


def _nested(packet: bytes) -> bool:
    """
    Whether the headers of C{packet} lead to one more fragment header (a
    chain that does not read is left for the router to report).
    """
    try:
        return ipv6.transportOffset(packet)[0] == ipv6.NH_FRAGMENT
    except ipv6.IPv6Error:
        return False
