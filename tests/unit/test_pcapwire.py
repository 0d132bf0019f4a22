"""
The libpcap writer (L{vtwisted.wire.pcap}): records read back as written,
cut at the snapshot length, in the format tcpdump checks.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from vtwisted.wire import pcap


def test_headerIsLibpcaps() -> None:
    """Magic, version 2.4, the snapshot length and link type 1 (Ethernet)."""
    magic, major, minor, zone, sigfigs, snaplen, link = struct.unpack(
        "<IHHiIII", pcap.fileHeader(1500))
    assert (magic, major, minor, zone, sigfigs, snaplen, link) == (
        0xA1B2C3D4, 2, 4, 0, 0, 1500, 1)


@given(st.lists(st.tuples(st.floats(0, 2e9), st.binary(max_size=300)), max_size=8),
       st.integers(64, 400))
def test_recordsReadBackCutAtTheSnapshotLength(frames: list[tuple[float, bytes]],
                                               snaplen: int) -> None:
    """Each record keeps at most snaplen bytes, its wire length and its time to the microsecond."""
    data = pcap.fileHeader(snaplen) + b"".join(pcap.record(t, f, snaplen) for t, f in frames)
    records = pcap.readRecords(data)
    assert [(kept, length) for _, kept, length in records] == [
        (f[:snaplen], len(f)) for _, f in frames]
    assert all(abs(when - t) < 2e-6 for (when, _, _), (t, _) in zip(records, frames))
