"""
Property tests of the slirp TCP engine over a lossy virtual link: whatever
a channel that drops, duplicates and reorders segments (as hypothesis
decides) does, bytes cross exactly once and in order, both ways.  The
memory reactor's clock drives the retransmissions.
"""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from slirptcpharness import FATES, MASK, Harness, mssOption

from vtwisted.wire.tcp import ACK, FIN, PSH, RST


def channel(fates: list[str]) -> Iterator[str]:
    """
    The fates in order, then delivery forever; never more than three drops
    in a row (so the engine does not give up on a guest that is alive).
    """
    drops = 0
    for fate in fates:
        drops = drops + 1 if fate == "drop" else 0
        yield "deliver" if drops > 3 else fate
    while True:
        yield "deliver"


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=40000),
    fates=st.lists(FATES, max_size=60),
    ackFates=st.lists(FATES, max_size=20),
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
)
def test_guestDataReachesHostOnceAndInOrder(data: bytes, fates: list[str], ackFates: list[str],
                                            sizes: list[int]) -> None:
    """
    A go-back-N guest sender over a lossy, duplicating, reordering channel
    (cutting its data differently each round, and missing some ACKs) gets
    its bytes to the host exactly once, in order, then its FIN.
    """
    h = Harness()
    transport = h.open(window=65535)
    start = h.seq
    una = 0
    fate, ackFate = channel(fates), channel(ackFates)
    for turn in range(1000):
        if una >= len(data):
            break
        delayed: list[tuple[int, bytes]] = []
        offset, i = una, turn
        while offset < len(data) and offset - una < 65535:
            chunk = data[offset : min(offset + sizes[i % len(sizes)], una + 65535)]
            i += 1
            what = next(fate)
            segments = {"deliver": 1, "drop": 0, "duplicate": 2, "delay": 0}[what]
            for _ in range(segments):
                h.send(ACK | PSH, seq=start + offset, payload=chunk)
            if what == "delay":
                delayed.append((start + offset, chunk))
            offset += len(chunk)
        for seq, chunk in reversed(delayed):
            h.send(ACK | PSH, seq=seq, payload=chunk)
        h.turn()
        for header in h.take():
            if next(ackFate) != "drop":
                una = max(una, (header.ack - start) & MASK)
    assert transport.value() == data
    h.send(ACK | FIN, seq=start + len(data))
    assert transport.writeClosed


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=60000),
    fates=st.lists(FATES, max_size=80),
    ackFates=st.lists(FATES, max_size=40),
    window=st.integers(1000, 20000),
)
def test_hostDataReachesGuestDespiteLoss(data: bytes, fates: list[str], ackFates: list[str],
                                         window: int) -> None:
    """
    Host data reaches an in-order guest receiver intact however the channel
    treats the segments and the guest's ACKs; the FIN follows it.
    """
    h = Harness()
    transport = h.open(options=mssOption(1000), window=window)
    h.host(transport).dataReceived(data)
    h.host(transport).readConnectionLost()
    received = bytearray()
    rcvNxt = h.ours
    finished = False
    fate, ackFate = channel(fates), channel(ackFates)
    for _ in range(5000):
        if finished:
            break
        sent = h.takeAll()
        if not sent:
            h.clock.advance(0.1)
            continue
        arriving: list[tuple[int, bytes, int]] = []
        late: list[tuple[int, bytes, int]] = []
        for header, payload in sent:
            assert not header.flags & RST
            what = next(fate)
            copies = {"deliver": 1, "drop": 0, "duplicate": 2, "delay": 0}[what]
            arriving += [(header.seq, payload, header.flags)] * copies
            if what == "delay":
                late.append((header.seq, payload, header.flags))
        for seq, payload, flags in arriving + late:
            skip = (rcvNxt - seq) & MASK
            if skip < len(payload):
                received += payload[skip:]
                rcvNxt = (rcvNxt + len(payload) - skip) & MASK
            if flags & FIN and (seq + len(payload)) & MASK == rcvNxt:
                rcvNxt = (rcvNxt + 1) & MASK
                finished = True
            if next(ackFate) != "drop":
                h.ack(rcvNxt, window=window)
    assert bytes(received) == data
    assert finished
    assert h.nat.timeouts == 0
