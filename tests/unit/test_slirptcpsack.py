"""
What a slirp TCP connection does with a guest's SACK blocks: the scoreboard
(L{Scoreboard}) holds exactly what was SACKed and names the gaps below it,
and a connection in recovery resends each gap once, never SACKed data.
"""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from slirptcpharness import FATES, MASK, Harness, HostTransport, mssOption

from vtwisted.slirp.tcpsack import MAX_RANGES, Scoreboard, sackEdges
from vtwisted.wire.tcp import ACK, FIN, OPT_NOP, OPT_SACK, OPT_SACK_PERMITTED

RANGES = st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(ranges=RANGES, una=st.integers(0, 320), start=st.integers(0, 340))
def test_scoreboardHoldsWhatWasSacked(ranges: list[tuple[int, int]], una: int,
                                      start: int) -> None:
    """
    Whatever ranges are SACKed, in any order and overlapping: the
    scoreboard's ranges are sorted and apart, cover exactly the SACKed
    bytes from C{una} on, C{add} counts only new bytes, and C{nextHole}
    names the first gap from C{start} below the highest SACKed byte.
    """
    board = Scoreboard()
    sacked: set[int] = set()
    for first, length in ranges:
        new = set(range(first, first + length)) - sacked
        assert board.add(first, first + length) == len(new)
        sacked |= new
    board.acknowledged(una)
    sacked = {byte for byte in sacked if byte >= una}
    flat = [edge for low, high in board.ranges for edge in (low, high)]
    assert all(a < b for a, b in itertools.pairwise(flat))
    assert {byte for low, high in board.ranges for byte in range(low, high)} == sacked
    assert board.highest() == (max(sacked) + 1 if sacked else 0)
    hole = board.nextHole(start)
    gaps = [byte for byte in range(start, board.highest()) if byte not in sacked]
    if not gaps:
        assert hole is None
    else:
        assert hole is not None
        first, end = hole
        assert first == gaps[0]
        assert end > first and all(byte not in sacked for byte in range(first, end))
        assert end in sacked


def test_scoreboardIsBounded() -> None:
    """
    A guest naming ever more separate blocks cannot grow the scoreboard
    past L{MAX_RANGES}: the highest are forgotten (we then resend more).
    """
    board = Scoreboard()
    for i in range(10 * MAX_RANGES):
        board.add(10 * i, 10 * i + 5)
    assert len(board.ranges) == MAX_RANGES
    assert board.ranges[0] == [0, 5]


def test_sackEdgesReadsTheOptionAndSurvivesGarbage() -> None:
    """
    The edges of a SACK option, after NOPs; truncated options give none.
    """
    edges = struct.pack("!IIII", 1, 2, 3, 4)
    assert sackEdges(bytes((OPT_NOP, OPT_NOP, OPT_SACK, 18)) + edges) == [(1, 2), (3, 4)]
    assert sackEdges(bytes((OPT_SACK, 40, 0, 0))) == []
    assert sackEdges(b"") == []


def sackOption(blocks: list[tuple[int, int]]) -> bytes:
    edges = b"".join(struct.pack("!II", left & MASK, right & MASK) for left, right in blocks)
    return bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + len(edges))) + edges


def openSacking(h: Harness, window: int = 65535) -> HostTransport:
    return h.open(options=mssOption(1000) + bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2)),
                  window=window)


def test_recoveryResendsEveryHoleOnceAndNothingSacked() -> None:
    """
    Segments 2, 5 and 8 of ten are lost: the third duplicate ACK naming the
    others makes the engine resend exactly those three at once (NewReno
    would resend one per round trip), and further duplicates resend nothing.
    """
    h = Harness()
    transport = openSacking(h)
    h.host(transport).dataReceived(bytes(10000))
    sent = h.takeAll()
    assert [len(payload) for _, payload in sent] == [1000] * 10
    base = h.ours
    ack = base + 2000
    blocks = [(base + 3000, base + 5000), (base + 6000, base + 8000), (base + 9000, base + 10000)]
    h.send(ACK, seq=h.seq, ack=ack)
    for _ in range(3):
        h.send(ACK, seq=h.seq, ack=ack, options=sackOption(blocks))
    resent = h.takeAll()
    assert [((header.seq - base) & MASK, len(payload)) for header, payload in resent] == [
        (2000, 1000), (5000, 1000), (8000, 1000)]
    for _ in range(3):
        h.send(ACK, seq=h.seq, ack=ack, options=sackOption(blocks))
    assert [p for _, p in h.takeAll() if p] == []


def test_withoutSackOneHoleIsResent() -> None:
    """
    A guest that did not offer SACK gets the old behaviour: its SACK
    options (which it should not send) are not read, and the third
    duplicate ACK resends only the first unacknowledged segment.
    """
    h = Harness()
    transport = h.open(options=mssOption(1000))
    h.host(transport).dataReceived(bytes(10000))
    h.takeAll()
    base = h.ours
    for _ in range(4):
        h.send(ACK, seq=h.seq, ack=base + 2000,
               options=sackOption([(base + 3000, base + 5000), (base + 6000, base + 8000)]))
    resent = h.takeAll()
    assert [((header.seq - base) & MASK, len(payload)) for header, payload in resent] == [
        (2000, 1000)]


def _lostTail(h: Harness, transport: HostTransport) -> int:
    """
    Measure a round trip of 1 ms, then send 4000 bytes and the FIN, of
    which the guest gets only the first 1000 (the tail was lost); return
    where those 4000 bytes start.
    """
    h.host(transport).dataReceived(bytes(1000))
    h.takeAll()
    h.clock.advance(0.001)
    h.ack(h.ours + 1000)
    base = h.ours + 1000
    h.host(transport).dataReceived(bytes(range(250)) * 16)
    h.host(transport).readConnectionLost()
    sent = h.takeAll()
    assert [(header.seq - base) & MASK for header, _ in sent] == [0, 1000, 2000, 3000, 4000]
    h.ack(base + 1000)
    assert h.takeAll() == []
    return base


def test_aLostTailIsProbedForWithinTwoRoundTrips() -> None:
    """
    The last segments of a flight and its FIN are lost, too few for
    duplicate ACKs: 10 ms later (two round trips, at least 10 ms), not
    after the 200 ms timeout, the last segment goes again with the FIN; the
    guest's ACK SACKs it above the gap, which is resent at once, and the
    connection never times out.
    """
    h = Harness()
    base = _lostTail(h, openSacking(h))
    h.clock.advance(0.009)
    assert h.takeAll() == []
    h.clock.advance(0.001)
    ((probe, payload),) = h.takeAll()
    assert ((probe.seq - base) & MASK, len(payload), probe.flags & FIN) == (3000, 1000, FIN)
    assert payload == (bytes(range(250)) * 16)[3000:]
    h.send(ACK, seq=h.seq, ack=base + 1000,
           options=sackOption([(base + 3000, base + 4001)]))
    assert [((header.seq - base) & MASK, len(p)) for header, p in h.takeAll() if p] == [
        (1000, 1000), (2000, 1000)]
    h.ack(base + 4001)
    assert h.nat.tailProbes == 1 and h.nat.timeouts == 0
    h.clock.advance(1)
    assert [p for _, p in h.takeAll() if p] == []


def test_aGapSackedPastTooLittleForDuplicatesIsResentWithinTwoRoundTrips() -> None:
    """
    The guest SACKs the last segment past a gap, one duplicate ACK where
    recovery waits for three: 10 ms later the gap counts as lost (the link
    keeps the order) and is resent, not after the 200 ms timeout.
    """
    h = Harness()
    base = _lostTail(h, openSacking(h))
    h.send(ACK, seq=h.seq, ack=base + 1000, options=sackOption([(base + 3000, base + 4001)]))
    assert [p for _, p in h.takeAll() if p] == []
    h.clock.advance(0.01)
    resent = [((header.seq - base) & MASK, len(p)) for header, p in h.takeAll() if p]
    assert resent[:1] == [(1000, 1000)]
    assert h.nat.tailProbes == 0


def test_aLostRetransmissionAtTheEndIsResentWithinTwoRoundTrips() -> None:
    """
    In recovery, the resent gap is lost again and nothing follows it to
    be SACKed: 10 ms after the last ACK it goes once more, not after the
    200 ms timeout.
    """
    h = Harness()
    base = _lostTail(h, openSacking(h))
    blocks = sackOption([(base + 2000, base + 4001)])
    for _ in range(3):
        h.send(ACK, seq=h.seq, ack=base + 1000, options=blocks)
    assert [((header.seq - base) & MASK, len(p)) for header, p in h.takeAll() if p] == [
        (1000, 1000)]
    h.clock.advance(0.009)
    assert h.takeAll() == []
    h.clock.advance(0.001)
    assert [((header.seq - base) & MASK, len(p)) for header, p in h.takeAll() if p] == [
        (1000, 1000)]
    h.ack(base + 4001)
    assert h.nat.timeouts == 0


def test_withoutSackALostTailWaitsForTheTimeout() -> None:
    """
    A guest that did not offer SACK could not tell a probe's gap: the lost
    tail goes again only on the retransmission timeout, as before.
    """
    h = Harness()
    base = _lostTail(h, h.open(options=mssOption(1000)))
    h.clock.advance(0.1)
    assert h.takeAll() == []
    h.clock.advance(0.1)
    assert [(header.seq - base) & MASK for header, _ in h.takeAll()][:1] == [1000]
    assert h.nat.tailProbes == 0


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=60000),
    fates=st.lists(FATES, max_size=80),
    ackFates=st.lists(FATES, max_size=40),
    window=st.integers(3000, 30000),
)
def test_hostDataReachesASackingGuestDespiteLoss(data: bytes, fates: list[str],
                                                 ackFates: list[str], window: int) -> None:
    """
    A guest that keeps what arrives past a hole and SACKs it gets the host's
    data intact however the channel drops, duplicates and reorders segments
    and ACKs; the FIN follows it.
    """
    h = Harness()
    transport = openSacking(h, window)
    h.host(transport).dataReceived(data)
    h.host(transport).readConnectionLost()
    start = h.ours
    have: dict[int, int] = {}
    rcvNxt, finAt = 0, -1
    fate = iter(list(_limited(fates)) + ["deliver"] * 100000)
    ackFate = iter(list(_limited(ackFates)) + ["deliver"] * 100000)
    received = bytearray()
    for _ in range(5000):
        if finAt >= 0 and rcvNxt == finAt + 1:
            break
        sent = h.takeAll()
        if not sent:
            h.clock.advance(0.1)
            continue
        arriving, late = [], []
        for header, payload in sent:
            what = next(fate)
            arriving += [(header, payload)] * {"deliver": 1, "drop": 0, "duplicate": 2,
                                               "delay": 0}[what]
            if what == "delay":
                late.append((header, payload))
        for header, payload in arriving + late:
            at = (header.seq - start) & MASK
            for i, byte in enumerate(payload):
                have.setdefault(at + i, byte)
            if header.flags & 1:
                finAt = at + len(payload)
            while rcvNxt in have:
                received.append(have.pop(rcvNxt))
                rcvNxt += 1
            if rcvNxt == finAt:
                rcvNxt += 1
            if next(ackFate) != "drop":
                h.send(ACK, seq=h.seq, ack=start + rcvNxt, window=window,
                       options=sackOption(_blocks(have, start)))
    assert bytes(received) == data
    assert finAt >= 0 and rcvNxt == finAt + 1
    assert h.nat.timeouts == 0


def _limited(fates: list[str]) -> list[str]:
    drops, out = 0, []
    for fate in fates:
        drops = drops + 1 if fate == "drop" else 0
        out.append("deliver" if drops > 3 else fate)
    return out


def _blocks(have: dict[int, int], start: int) -> list[tuple[int, int]]:
    """
    Up to three SACK blocks of what the guest holds past its hole.
    """
    blocks: list[tuple[int, int]] = []
    for at in sorted(have):
        if blocks and blocks[-1][1] - start == at:
            blocks[-1] = (blocks[-1][0], blocks[-1][1] + 1)
        else:
            blocks.append((start + at, start + at + 1))
    return blocks[:3]
