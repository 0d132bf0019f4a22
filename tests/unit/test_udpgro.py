"""
Receive coalescing of UDP datagrams into USO packets (L{vtwisted.wire.udpgro}).

The reference is the switch's own segmentation, itself tested against the
kernel's in C{test_vnetkernel}: whatever the coalescer makes of a sequence of
packets, cutting its output into plain frames must give exactly the frames
the input gives, in the same order.  The kernel test, which writes merged
packets into a real TAP and reads back what a router behind it forwards, is
in C{test_udpgrokernel}.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_checksum import referenceSum
from vnetpackets import DST4, MAC_A, MAC_B, SRC4, UDP, kernelPacket, pseudoHeader, randomPayload

from vtwisted.wire import udpgro, vnet, vnetcheck
from vtwisted.wire.checksum import MODULUS


def coalesce(
    packets: list[bytes], pays: Callable[[bytes], bool] | None = None
) -> tuple[list[bytes], udpgro.UdpCoalescer]:
    """
    What the coalescer hands on for C{packets}, read as one batch.
    """
    # as TapLink.readBatch does: candidates go to the coalescer, anything
    # else is handed on after every run
    out: list[bytes] = []
    coalescer = udpgro.UdpCoalescer(out.append, pays)
    for packet in packets:
        if candidate(packet):
            coalescer.add(packet)
        else:
            coalescer.flush()
            out.append(packet)
    coalescer.finish()
    return out, coalescer


def candidate(packet: bytes) -> bool:
    return packet[6:10] in udpgro.CANDIDATES and packet[:2] == udpgro.PARTIAL


def flowOf(packet: bytes) -> bytes:
    """
    The bytes the coalescer tells flows apart by.
    """
    return packet[36:48] if packet[6:7] == b"\x22" else packet[32:68]


def checkSameFramesPerFlow(packets: list[bytes], out: list[bytes]) -> None:
    """
    Between packets that are not candidates (which pass as they came, in
    their place), C{out} cut into frames has the frames of C{packets}, and
    each flow's in the same order.
    """
    barriers = [p for p in packets if not candidate(p)]
    assert [p for p in out if any(p is b for b in barriers)] == barriers

    def segments(sequence: list[bytes]) -> list[list[tuple[bytes, bytes]]]:
        result: list[list[tuple[bytes, bytes]]] = [[]]
        for packet in sequence:
            if any(packet is b for b in barriers):
                result.append([])
            else:
                result[-1] += [(flowOf(packet), f) for f in vnet.toFrames(packet)]
        return result

    for expected, got in zip(segments(packets), segments(out), strict=True):
        assert sorted(got) == sorted(expected)
        for flow in {f for f, _ in expected}:
            assert [x for x in got if x[0] == flow] == [x for x in expected if x[0] == flow]


def plain(packets: list[bytes]) -> list[bytes]:
    return [f for p in packets for f in vnet.toFrames(p)]


def datagrams(count: int, size: int = 100, *, v6: bool = False, ident: int = 7,
              **fields: object) -> list[bytes]:
    """
    C{count} datagrams of one flow as Linux hands them to a TAP reader.
    """
    return [
        kernelPacket(randomPayload(size, n + ident), proto=UDP, gso=False, v6=v6,
                     ident=(ident + n) & 0xFFFF, **fields).packet  # type: ignore[arg-type]
        for n in range(count)
    ]


def test_aRunBecomesOneUsoPacketThatCutsBackIntoTheSameFrames() -> None:
    """Ten datagrams make one valid USO packet; cut, it gives the ten frames back."""
    for v6 in (False, True):
        run = datagrams(10, v6=v6)
        out, coalescer = coalesce(run)
        assert len(out) == 1 and (coalescer.datagrams, coalescer.packets) == (10, 1)
        assert vnetcheck.validate(out[0]) is None
        header = vnet.VnetHeader.parse(out[0])
        assert (header.gsoType, header.gsoSize) == (vnet.GSO_UDP_L4, 100)
        assert plain(out) == plain(run)


def test_theChecksumFieldHoldsThePseudoHeaderSumOfTheWholeLength() -> None:
    """As the kernel leaves it in a USO packet: the partial sum for all the datagrams."""
    out, _ = coalesce(datagrams(5, 300, ident=0xFFFE))
    field = int.from_bytes(out[0][50:52], "big")
    expected = referenceSum(pseudoHeader(False, SRC4, DST4, UDP, 8 + 1500))
    assert field % MODULUS == expected % MODULUS
    assert int.from_bytes(out[0][24:44], "big") % MODULUS == 0  # IPv4 header checksum


def test_aLoneDatagramAndEverythingElsePassUntouched() -> None:
    """One datagram, TCP, ARP and tagged frames are handed on as they came."""
    arp = bytes(10) + MAC_B + MAC_A + b"\x08\x06" + bytes(28)
    packets = [
        datagrams(1)[0],
        kernelPacket(b"x" * 50, gso=False).packet,
        arp,
        *datagrams(2, vid=5),
    ]
    out, coalescer = coalesce(packets)
    assert all(a is b for a, b in zip(out, packets, strict=True))
    assert coalescer.datagrams == 0


def test_runsAreCappedAtSixtyFourDatagramsAndSixtyFourKilobytes() -> None:
    """200 small datagrams make 64+64+64+8; 1400-byte ones at most 46 to a packet."""
    out, _ = coalesce(datagrams(200, 20))
    assert [len(vnet.toFrames(p)) for p in out] == [64, 64, 64, 8]
    out, _ = coalesce(datagrams(100, 1400))
    assert [len(vnet.toFrames(p)) for p in out] == [46, 46, 8]
    assert all(len(p) - 24 <= 0xFFFF for p in out)


@pytest.mark.parametrize("change", ["ident", "ttl", "size", "badChecksum", "trailer"])
def test_aDatagramThatTheCutWouldNotGiveBackEndsTheRun(change: str) -> None:
    """
    A gap in ids, another TTL, size or port, a bad header checksum or bytes
    after the datagram end the run, even where the id would continue it.
    """
    run = datagrams(6)
    odd = {
        "ident": datagrams(1, ident=100)[0],
        "ttl": datagrams(1, ident=10, ttl=3)[0],
        "size": datagrams(1, 99, ident=10)[0],
        "badChecksum": _corrupt(datagrams(1, ident=10)[0], 34),
        "trailer": datagrams(1, ident=10)[0] + b"\0\0",
    }[change]
    packets = [*run[:3], odd, *run[3:]]
    out, _ = coalesce(packets)
    assert [len(vnet.toFrames(p)) for p in out] == [3, 1, 3]
    assert plain(out) == plain(packets)
    assert odd in out


def _sourcePort(packet: bytes) -> int:
    at = 44 if packet[6:7] == b"\x22" else 64
    return int.from_bytes(packet[at : at + 2], "big")


def test_aFlowForWhichMergingDoesNotPayPassesAsItCame() -> None:
    """Asked once per batch, at its second datagram; its datagrams then pass one by one."""
    asked: list[bytes] = []
    paid, unpaid = datagrams(5, ports=(1000, 7)), datagrams(5, ports=(1001, 7))
    packets = [p for pair in zip(paid, unpaid) for p in pair]

    def pays(packet: bytes) -> bool:
        asked.append(packet)
        return _sourcePort(packet) == 1000

    out, _ = coalesce(packets, pays)
    assert asked == [paid[1], unpaid[1]]
    assert out[:5] == unpaid and vnet.toFrames(out[5]) == plain(paid) and len(out) == 6


def test_interleavedFlowsEachMakeTheirRun() -> None:
    """Two flows sent alternately make one packet each, each in its order."""
    a = datagrams(20, ports=(1000, 7))
    b = datagrams(20, 60, v6=True, ports=(2000, 7))
    packets = [p for pair in zip(a, b) for p in pair]
    out, coalescer = coalesce(packets)
    assert [vnet.toFrames(p) for p in out] == [plain(a), plain(b)]
    assert (coalescer.datagrams, coalescer.packets) == (40, 2)


def test_anotherFlowInARunDoesNotEndIt() -> None:
    """A datagram of another port between two of a flow is handed on after the run."""
    run = datagrams(6)
    other = datagrams(1, ident=10, ports=(1, 2))[0]
    out, _ = coalesce([*run[:3], other, *run[3:]])
    assert [len(vnet.toFrames(p)) for p in out] == [6, 1] and out[1] is other


def test_theOldestRunIsHandedOnWhenTooManyFlowsWait() -> None:
    """One flow more than MAX_FLOWS hands on the first one's run; the rest wait."""
    flows = [datagrams(2, ports=(1000 + n, 7), ident=100 * n)
             for n in range(udpgro.MAX_FLOWS + 1)]
    out: list[bytes] = []
    coalescer = udpgro.UdpCoalescer(out.append)
    for packet in [p for flow in flows for p in flow]:
        coalescer.add(packet)
    assert [vnet.toFrames(p) for p in out] == [plain(flows[0])]
    coalescer.flush()
    assert [vnet.toFrames(p) for p in out] == [plain(flow) for flow in flows]


def test_coalescingRestsAfterABatchOfManyFlowsThatFormNoRuns() -> None:
    """
    A batch of single datagrams from many flows makes the next batches skip
    coalescing for a while; a batch that merges keeps it going.
    """
    coalescer = udpgro.UdpCoalescer(lambda packet: None)
    for n in range(2):
        for packet in datagrams(20, ports=(1000, 7), ident=100 * n):
            coalescer.add(packet)
        coalescer.finish()
        assert not coalescer.resting()
    for port in range(100):
        coalescer.add(datagrams(1, ports=(port, 7))[0])
    coalescer.finish()
    assert [coalescer.resting() for _ in range(udpgro._REST + 1)] == [True] * udpgro._REST + [False]


def test_coalescingRestsAfterABatchWhereOnlyFlowsThatDoNotPayPassed() -> None:
    """
    A batch in which a flow bound for a port without the header passed and
    nothing merged makes the next batches skip coalescing (the switch gets
    each datagram straight away); one that also merged another flow keeps
    it going.
    """
    toTap, toVde = datagrams(10, ports=(1000, 7)), datagrams(10, ports=(1001, 7))
    coalescer = udpgro.UdpCoalescer(lambda packet: None,
                                    lambda packet: _sourcePort(packet) == 1000)
    for packet in [p for pair in zip(toTap, toVde) for p in pair]:
        coalescer.add(packet)
    coalescer.finish()
    assert not coalescer.resting()
    for packet in toVde:
        coalescer.add(packet)
    coalescer.finish()
    assert [coalescer.resting() for _ in range(udpgro._REST + 1)] == [True] * udpgro._REST + [False]


def test_anythingButACandidateHandsOnEveryRunFirst() -> None:
    """A TCP segment between datagrams keeps its place: runs before it go before it."""
    a, b = datagrams(4, ports=(1000, 7)), datagrams(4, v6=True)
    segment = kernelPacket(b"x" * 50, gso=False).packet
    packets = [*a[:2], *b[:2], segment, *a[2:], *b[2:]]
    out, _ = coalesce(packets)
    assert [len(vnet.toFrames(p)) for p in out] == [2, 2, 1, 2, 2] and out[2] is segment
    checkSameFramesPerFlow(packets, out)


def _corrupt(packet: bytes, where: int) -> bytes:
    return packet[:where] + bytes([packet[where] ^ 0x40]) + packet[where + 1 :]


# -- random sequences against the reference ------------------------------------------------


class _Fields(TypedDict):
    """
    The header fields L{batches} gives every datagram of a run alike.
    """

    ports: tuple[int, int]
    ttl: int


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """
    A read batch: runs of datagrams of a few flows, some broken, between
    other traffic.
    """
    packets: list[bytes] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["run", "run", "run", "tcp", "fragment", "options",
                                     "corrupt", "complete", "tagged"]))
        v6 = draw(st.booleans())
        size = draw(st.sampled_from([1, 2, 17, 100, 1000, 1472]))
        fields: _Fields = {
            "ports": (draw(st.sampled_from([1000, 1001])), 5001),
            "ttl": draw(st.sampled_from([64, 63])),
        }
        count = draw(st.integers(1, 70))
        ident = draw(st.sampled_from([0, 7, 0xFFF0]))
        if kind == "tcp":
            packets.append(kernelPacket(b"y" * size, gso=False, v6=v6).packet)
        elif kind == "fragment" and not v6:
            packets += datagrams(count, size, ident=ident, ipFlags=1, **fields)
        elif kind == "options" and not v6:
            packets += datagrams(count, size, ident=ident, ipOptions=b"\x01" * 4, **fields)
        elif kind == "tagged":
            packets += datagrams(count, size, v6=v6, ident=ident, vid=3, **fields)
        else:
            run = datagrams(count, size, v6=v6, ident=ident, **fields)
            if kind == "corrupt":
                at = draw(st.integers(0, len(run) - 1))
                run[at] = _corrupt(run[at], draw(st.integers(24, 51)))
            elif kind == "complete":
                run = [bytes(2) + p[2:] for p in run]
            if bool(packets) and draw(st.booleans()):
                packets = _interleave(packets, run, draw(st.randoms(use_true_random=False)))
            else:
                packets += run
    return packets


def _interleave(packets: list[bytes], run: list[bytes], rnd: random.Random) -> list[bytes]:
    """
    C{run} mixed into the end of C{packets}, each keeping its own order.
    """
    tail = packets[-len(run):]
    head = packets[: len(packets) - len(tail)]
    mixed: list[bytes] = []
    i = j = 0
    while i < len(tail) or j < len(run):
        if j == len(run) or (i < len(tail) and rnd.random() < 0.5):
            mixed.append(tail[i])
            i += 1
        else:
            mixed.append(run[j])
            j += 1
    return head + mixed


@given(batches(), st.sampled_from([None, 1000, 1001]))
@settings(max_examples=150, deadline=None)
def test_coalescingNeverChangesTheFramesAnyPortGets(
    packets: list[bytes], unpaid: int | None
) -> None:
    """
    Cutting the output gives the input's frames, each flow's in order;
    merged packets are valid USO; a flow for which merging does not pay is
    never merged.
    """
    out, coalescer = coalesce(packets, lambda packet: _sourcePort(packet) != unpaid)
    checkSameFramesPerFlow(packets, out)
    assert all(_sourcePort(p) != unpaid for p in out if p[1] == vnet.GSO_UDP_L4)
    inputs = {id(p) for p in packets}
    merged = [p for p in out if id(p) not in inputs]
    assert len(merged) == coalescer.packets
    for packet in merged:
        assert vnetcheck.validate(packet) is None
        assert packet[1] == vnet.GSO_UDP_L4 and 2 <= len(vnet.toFrames(packet)) <= 64
    assert coalescer.datagrams == sum(len(vnet.toFrames(p)) for p in merged)
    assert len(out) - len(merged) + coalescer.datagrams == len(packets)
