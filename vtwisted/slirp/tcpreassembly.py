"""
What a guest sent past a hole in its stream, kept until the hole is filled.

Theory of operation: a lossy link drops one of a guest's segments and the
ones after it arrive.  L{Reassembly} keeps them as blocks of contiguous
data (each a 32-bit sequence number where it starts, its bytes, and whether
the guest's FIN follows them), sorted, never touching each other: a segment
that continues a block extends it (the usual case, in order after the
hole), one that overlaps or joins several merges them.  Offsets are counted
from the receiver's C{rcvNxt}, which every call passes in, so nothing
wraps.  The blocks are what SACK options report (RFC 2018: the block the
latest segment went to first), and what L{Reassembly.pop} hands back once
C{rcvNxt} reaches them.  The connection bounds their size.
"""

from __future__ import annotations

import struct

from vtwisted.slirp.tcpsend import MASK, signed
from vtwisted.wire.tcp import OPT_NOP, OPT_SACK

_EDGES = struct.Struct("!II")
#: SACK blocks per ACK: four fit in 40 bytes of options without timestamps.
SACK_BLOCKS = 4


class Reassembly:
    """
    Blocks of data past a hole.

    @ivar blocks: C{[sequence number, data, FIN]} lists, in order.
    @ivar size: their bytes.
    """

    def __init__(self) -> None:
        self.blocks: list[list] = []
        self.size = 0
        self.latest = -1

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def clear(self) -> None:
        self.blocks = []
        self.size = 0

    def add(self, seq: int, offset: int, payload: memoryview, fin: bool, rcvNxt: int) -> None:
        """
        Keep C{payload} (with a FIN after it if C{fin}), which starts at
        sequence number C{seq}, C{offset} bytes past C{rcvNxt}.
        """
        end = offset + len(payload)
        blocks = self.blocks
        i = len(blocks)
        while i and signed(blocks[i - 1][0] - rcvNxt) > end:
            i -= 1
        j = i
        while j and signed(blocks[j - 1][0] - rcvNxt) + len(blocks[j - 1][1]) >= offset:
            j -= 1
        if j == i:
            blocks.insert(i, [seq, bytearray(payload), fin])
            self.size += len(payload)
            self.latest = seq
            return
        first = blocks[j]
        start = signed(first[0] - rcvNxt)
        stop = start + len(first[1])
        if i - j == 1 and start <= offset:
            self.latest = first[0]
            if end > stop:
                first[1] += payload[stop - offset:]
                first[2] = fin
                self.size += end - stop
            elif fin and end == stop:
                first[2] = True
            return
        self.merge(j, i, seq, offset, payload, fin, rcvNxt)

    def merge(self, j: int, i: int, seq: int, offset: int, payload: memoryview, fin: bool,
              rcvNxt: int) -> None:
        """
        Make blocks C{j} to C{i - 1} and the segment one block.
        """
        joined = self.blocks[j:i]
        start = min(offset, signed(joined[0][0] - rcvNxt))
        last = joined[-1]
        lastEnd = signed(last[0] - rcvNxt) + len(last[1])
        end = offset + len(payload)
        stop = max(end, lastEnd)
        data = bytearray(stop - start)
        for blockSeq, blockData, _ in joined:
            at = signed(blockSeq - rcvNxt) - start
            data[at : at + len(blockData)] = blockData
        data[offset - start : end - start] = payload
        first = seq if offset == start else joined[0][0]
        self.blocks[j:i] = [[first, data, (fin and end == stop) or (last[2] and lastEnd == stop)]]
        self.size += len(data) - sum(len(block[1]) for block in joined)
        self.latest = first

    def pop(self, rcvNxt: int) -> tuple[bytearray, bool] | None:
        """
        The first block, if C{rcvNxt} reached it: the part of its data from
        C{rcvNxt} on (perhaps none), and whether a FIN follows; L{None} if
        a hole is still before it.
        """
        if not self.blocks:
            return None
        seq, data, fin = self.blocks[0]
        offset = signed(seq - rcvNxt)
        if offset > 0:
            return None
        del self.blocks[0]
        self.size -= len(data)
        fin = fin and -offset <= len(data)
        if offset:
            del data[:-offset]
        return data, fin

    def sackOption(self) -> bytes:
        """
        A SACK option (two NOPs ahead, for alignment) naming the blocks, the
        one the latest segment went to first.
        """
        blocks = self.blocks
        chosen = [block for block in blocks if block[0] == self.latest][:1]
        chosen += [block for block in blocks if block[0] != self.latest]
        chosen = chosen[:SACK_BLOCKS]
        edges = b"".join(_EDGES.pack(seq, (seq + len(data)) & MASK) for seq, data, _ in chosen)
        return bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + len(edges))) + edges
