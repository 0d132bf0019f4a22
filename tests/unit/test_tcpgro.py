"""
Receive coalescing of TCP segments into TSO packets (L{vtwisted.wire.tcpgro}).

The reference is the switch's own segmentation (itself tested against the
kernel's in C{test_vnet}): whatever the coalescer makes of a sequence of
frames, cutting its output back into plain frames must give exactly the
frames that went in, each flow in its order; and it must merge what Linux's
GRO would merge, and nothing it would not.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vtwisted.wire import checksum, tcpgro, vnet
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.tcp import TCPHeader

MAC_A, MAC_B = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"
V4 = (b"\x0a\0\0\x01", b"\x0a\0\0\x02")
V6 = (b"\xfd" + bytes(14) + b"\x01", b"\xfd" + bytes(14) + b"\x02")


def segments(payload: bytes, mss: int, v6: bool = False, sport: int = 40000,
             seq: int = 1000, ident: int = 7, options: bytes = b"") -> list[bytes]:
    """The frames a TSO super-frame of C{payload} stands for, as a sender's NIC cuts it."""
    source, dest = V6 if v6 else V4
    tcpLength = 20 + len(options) + len(payload)
    if v6:
        partial = checksum.pseudoHeaderSumV6(source, dest, 6, tcpLength)
    else:
        partial = checksum.pseudoHeaderSumV4(source, dest, 6, tcpLength)
    offset = (5 + len(options) // 4) << 4
    tcp = bytearray(TCPHeader(sport, 5001, seq, 2000, 0x18, 502, partial, 0).pack())
    tcp[12] = offset
    l4 = 54 if v6 else 34
    if v6:
        ip = IPv6Header(0, 0, tcpLength, 6, 64, source, dest).pack()
        header = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_TCPV6, l4 + 20, mss, l4, 16)
        ether = b"\x86\xdd"
    else:
        from vtwisted.wire.ipv4 import IPv4Header

        ip = IPv4Header(0, 20 + tcpLength, ident, 2, 0, 64, 6, 0, *V4).pack()
        header = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, l4 + 20, mss, l4, 16)
        ether = b"\x08\x00"
    packet = header.pack() + MAC_B + MAC_A + ether + ip + bytes(tcp) + options + payload
    return vnet.toFrames(packet)


class Collector:
    def __init__(self) -> None:
        self.out: list[tuple[str, bytes]] = []
        self.coalescer = tcpgro.TcpCoalescer(lambda f: self.out.append(("frame", f)),
                                             lambda p: self.out.append(("packet", p)))

    def feed(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.coalescer.add(frame)
        self.coalescer.flush()

    def asFrames(self) -> list[bytes]:
        result = []
        for kind, data in self.out:
            result.extend([data] if kind == "frame" else vnet.toFrames(data))
        return result


@settings(max_examples=60)
@given(st.binary(min_size=1, max_size=20000), st.integers(100, 1460), st.booleans(),
       st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]))
def test_aStreamBecomesOnePacketThatCutsBackToItself(payload: bytes, mss: int, v6: bool,
                                                     options: bytes) -> None:
    """Consecutive segments of one flow merge into one packet; cut, it gives them back."""
    frames = segments(payload, mss, v6, options=options)
    collector = Collector()
    collector.feed(frames)
    assert collector.asFrames() == frames
    kinds = [kind for kind, _ in collector.out]
    assert kinds == (["frame"] if len(frames) == 1 else ["packet"])


@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 4000)), min_size=1, max_size=12),
       st.randoms(use_true_random=False))
def test_interleavedFlowsKeepTheirOrder(chunks, rng) -> None:
    """Segments of three flows, interleaved: each flow's frames come out in order."""
    flows: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    seqs = {0: 1000, 1: 5000, 2: 9000}
    for flow, size in chunks:
        frames = segments(bytes(size), 1000, sport=40000 + flow, seq=seqs[flow],
                          ident=len(flows[flow]))
        seqs[flow] += size
        flows[flow].extend(frames)
    queues = {k: list(v) for k, v in flows.items()}
    stream = []
    while any(queues.values()):
        flow = rng.choice([k for k, v in queues.items() if v])
        stream.append(queues[flow].pop(0))
    collector = Collector()
    collector.feed(stream)
    out = collector.asFrames()
    assert sorted(out) == sorted(stream)
    for flow, frames in flows.items():
        port = (40000 + flow).to_bytes(2, "big")
        assert [f for f in out if f[34:36] == port] == frames


def test_damagedSegmentIsNeverMerged() -> None:
    """A segment whose checksum is wrong is handed on alone, ending the run before it."""
    frames = segments(bytes(range(256)) * 20, 1000)
    damaged = bytearray(frames[2])
    damaged[-1] ^= 0xFF
    frames[2] = bytes(damaged)
    collector = Collector()
    collector.feed(frames)
    assert collector.asFrames() == frames
    assert ("frame", frames[2]) in collector.out
    assert [kind for kind, _ in collector.out] == ["packet", "frame", "packet"]


def test_gapsAndForeignFramesEndRuns() -> None:
    """A missing segment, a non-TCP frame and a SYN are not merged across."""
    frames = segments(bytes(6000), 1000)
    arp = MAC_B + MAC_A + b"\x08\x06" + bytes(28)
    stream = [frames[0], frames[1], frames[3], frames[4], arp]
    collector = Collector()
    collector.feed(stream)
    assert sorted(collector.asFrames()) == sorted(stream)
    assert [kind for kind, _ in collector.out].count("packet") == 2
    syn = bytearray(frames[0])
    syn[47] = 0x02
    collector = Collector()
    collector.feed([bytes(syn), frames[1]])
    assert [kind for kind, _ in collector.out] == ["frame", "frame"]


def test_mergeOnlyWhereItPays() -> None:
    """Told that merging does not pay, the coalescer hands every frame on as it came."""
    frames = segments(bytes(5000), 1000)
    out: list[bytes] = []
    coalescer = tcpgro.TcpCoalescer(out.append, out.append, lambda frame: False)
    for frame in frames:
        coalescer.add(frame)
    coalescer.flush()
    assert out == frames


@given(st.binary(min_size=21, max_size=3000), st.booleans())
def test_checksumCheckAgreesWithTheReference(segment: bytes, v6: bool) -> None:
    """The folded little-endian check gives the plain word sum's verdict, odd lengths too."""
    source, dest = V6 if v6 else V4
    if v6:
        head = bytes(12) + b"\x86\xdd" + bytes(8) + source + dest
        pseudo = checksum.pseudoHeaderSumV6(source, dest, 6, len(segment))
    else:
        head = bytes(12) + b"\x08\x00" + bytes(12) + source + dest
        pseudo = checksum.pseudoHeaderSumV4(source, dest, 6, len(segment))
    fixed = bytearray(segment)
    fixed[16:18] = b"\0\0"
    fixed[16:18] = checksum.internetChecksum(fixed, pseudo).to_bytes(2, "big")
    l4 = len(head)
    assert tcpgro.checksumOk(head + bytes(fixed), not v6, l4)
    assert tcpgro.checksumOk(head + segment, not v6, l4) == checksum.checksumValid(segment, pseudo)
