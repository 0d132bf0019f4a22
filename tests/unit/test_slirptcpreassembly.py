"""
What a slirp TCP connection keeps past a hole (L{Reassembly}): whatever
pieces of a stream arrive, in any order, overlapping or repeated, the
blocks hand back the stream once and in order, and SACK options name them.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from vtwisted.slirp.tcpreassembly import Reassembly
from vtwisted.wire.tcp import OPT_NOP, OPT_SACK

MASK = 0xFFFFFFFF


@settings(max_examples=300, deadline=None)
@given(
    base=st.integers(0, MASK),
    length=st.integers(1, 400),
    pieces=st.lists(st.tuples(st.integers(0, 399), st.integers(1, 120)), max_size=40),
    fin=st.booleans(),
)
def test_piecesComeBackOnceAndInOrder(base: int, length: int,
                                      pieces: list[tuple[int, int]], fin: bool) -> None:
    """
    Pieces of a stream past its first byte (which is missing), then the
    first byte: popping from where the receiver is gives back every byte
    that was covered, in order, up to the first gap; the FIN only after the
    last byte.
    """
    stream = bytes(i % 251 for i in range(length))
    reassembly = Reassembly()
    rcvNxt = base
    covered = [False] * length
    for offset, size in pieces:
        offset = offset % length
        if offset == 0:
            continue
        piece = stream[offset : offset + size]
        last = fin and offset + len(piece) == length
        reassembly.add((base + offset) & MASK, offset, memoryview(piece), last, rcvNxt)
        covered[offset : offset + len(piece)] = [True] * len(piece)
    assert reassembly.size <= sum(covered)
    received = bytearray(stream[:1])
    rcvNxt = (base + 1) & MASK
    sawFin = False
    while (block := reassembly.pop(rcvNxt)) is not None:
        data, sawFin = block
        received += data
        rcvNxt = (rcvNxt + len(data)) & MASK
    expected = 1
    while expected < length and covered[expected]:
        expected += 1
    assert bytes(received) == stream[:expected]
    if sawFin:
        assert expected == length


def test_sackNamesTheLatestBlockFirst() -> None:
    """
    The SACK option names the block the latest segment joined first, then
    the others in order, at most four.
    """
    reassembly = Reassembly()
    for offset in (10, 30, 50, 70, 90):
        reassembly.add(1000 + offset, offset, memoryview(b"x" * 5), False, 1000)
    reassembly.add(1055, 55, memoryview(b"y" * 5), False, 1000)
    option = reassembly.sackOption()
    assert option[:4] == bytes((OPT_NOP, OPT_NOP, OPT_SACK, 34))
    edges = struct.unpack("!8I", option[4:])
    assert edges == (1050, 1060, 1010, 1015, 1030, 1035, 1070, 1075)
