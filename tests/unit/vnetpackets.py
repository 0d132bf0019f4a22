"""
Virtio-net packets built the way Linux builds them, and an independent check
of what L{vtwisted.wire.vnet} makes of them: shared by the tests of the
virtio-net header, segmentation, coalescing, VLANs and the switch.

Packets are built the way Linux 6.18 hands them to a reader of a TAP with
offloads (measured, see the module docstring of L{vtwisted.wire.vnet}), and
every segment is checked from scratch with a word-by-word checksum
(L{checkSegments}).  Hypothesis strategies draw TCP and UDP super-frames.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from test_checksum import referenceSum

from vtwisted.wire import tcp, vlan, vnet
from vtwisted.wire.ipv4 import IPv4Header
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.tcp import TCPHeader
from vtwisted.wire.udp import UDPHeader
from vtwisted.wire.vnet import VnetHeader

MAC_A = bytes.fromhex("020000007701")
MAC_B = bytes.fromhex("020000007702")
SRC4, DST4 = bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2])
SRC6 = bytes.fromhex("fd770000000000000000000000000001")
DST6 = bytes.fromhex("fd770000000000000000000000000002")
TCP, UDP = 6, 17


# -- an independent reference (referenceSum: RFC 1071 done the textbook way) ---


def referenceChecksum(data: bytes) -> int:
    """
    The checksum of C{data} (field zeroed), 0 written as 0xFFFF.
    """
    return (~referenceSum(data) & 0xFFFF) or 0xFFFF


def pseudoHeader(v6: bool, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """
    The pseudo-header bytes of RFC 793 (IPv4) or RFC 8200 (IPv6).
    """
    if v6:
        return src + dst + length.to_bytes(4, "big") + bytes(3) + bytes([proto])
    return src + dst + bytes([0, proto]) + length.to_bytes(2, "big")


# -- building packets the way Linux does ---------------------------------------


class Built(NamedTuple):
    """
    A packet and what it was built from.
    """

    packet: bytes
    payload: bytes
    gsoSize: int
    l3: int
    l4: int
    v6: bool
    proto: int


def ethernet(etherType: int, vid: int | None, dst: bytes = MAC_B, src: bytes = MAC_A) -> bytes:
    """
    An Ethernet header, with an 802.1Q tag if C{vid} is given.
    """
    tag = b"" if vid is None else vlan.TPID + vid.to_bytes(2, "big")
    return dst + src + tag + etherType.to_bytes(2, "big")


def kernelPacket(
    payload: bytes,
    gsoSize: int = 1448,
    *,
    proto: int = TCP,
    v6: bool = False,
    vid: int | None = None,
    gso: bool = True,
    tcpFlags: int = tcp.ACK | tcp.PSH,
    tcpOptions: bytes = b"",
    ipOptions: bytes = b"",
    hopByHop: bytes | None = None,
    seq: int = 1000,
    ack: int = 2000,
    window: int = 502,
    ident: int = 7,
    ipFlags: int = 2,
    tos: int = 0,
    ttl: int = 64,
    flowLabel: int = 0,
    ports: tuple[int, int] = (40000, 5001),
    addresses: tuple[bytes, bytes] | None = None,
    macs: tuple[bytes, bytes] = (MAC_B, MAC_A),
) -> Built:
    """
    A packet as Linux hands it to the reader of a TAP with offloads: IP and
    UDP lengths of the whole packet, a valid IPv4 header checksum, and in the
    TCP or UDP checksum field the folded pseudo-header sum computed with the
    whole transport length; C{NEEDS_CSUM}, and with C{gso} the GSO type (ECN
    when CWR is set), C{hdr_len} of the headers and C{gso_size}.
    """
    src, dst = addresses or ((SRC6, DST6) if v6 else (SRC4, DST4))
    if proto == TCP:
        transport = TCPHeader(*ports, seq, ack, tcpFlags, window, 0, 0, tcpOptions).pack()
    else:
        transport = UDPHeader(*ports, (8 + len(payload)) & 0xFFFF, 0).pack()
    length = len(transport) + len(payload)
    field = referenceSum(pseudoHeader(v6, src, dst, proto, length))
    where = 16 if proto == TCP else 6
    transport = transport[:where] + field.to_bytes(2, "big") + transport[where + 2 :]
    if v6:
        extension = b""
        if hopByHop is not None:
            extension = bytes([proto, (len(hopByHop) + 2) // 8 - 1]) + hopByHop
        network = IPv6Header(
            tos, flowLabel, len(extension) + length, 0 if extension else proto, ttl, src, dst
        ).pack() + extension
    else:
        network = IPv4Header(
            tos, 20 + len(ipOptions) + length, ident, ipFlags, 0, ttl, proto, 0, src, dst,
            ipOptions,
        ).pack()
    link = ethernet(0x86DD if v6 else 0x0800, vid, *macs)
    l4 = len(link) + len(network)
    if not gso:
        header = VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_NONE, 0, 0, l4, where)
    else:
        if proto == UDP:
            gsoType = vnet.GSO_UDP_L4
        else:
            gsoType = vnet.GSO_TCPV6 if v6 else vnet.GSO_TCPV4
            if tcpFlags & tcp.CWR:
                gsoType |= vnet.GSO_ECN
        header = VnetHeader(
            vnet.NEEDS_CSUM, gsoType, l4 + len(transport), gsoSize, l4, where
        )
    packet = header.pack() + link + network + transport + payload
    return Built(packet, payload, gsoSize, len(link), l4, v6, proto)


def expectedFlags(flags: int, index: int, count: int) -> int:
    """
    FIN and PSH only on the last segment, CWR only on the first.
    """
    if count == 1:
        return flags
    if index > 0:
        flags &= ~tcp.CWR
    if index < count - 1:
        flags &= ~(tcp.FIN | tcp.PSH)
    return flags


def checkSegments(built: Built, frames: list[bytes]) -> None:
    """
    Check each segment from scratch against the packet it was cut from.
    """
    original = built.packet[vnet.HEADER_LENGTH :]
    l3, l4 = built.l3, built.l4
    transportLength = (original[l4 + 12] >> 4) * 4 if built.proto == TCP else 8
    start = l4 + transportLength
    chunks = [frame[start:] for frame in frames]
    assert b"".join(chunks) == built.payload
    assert all(len(chunk) == built.gsoSize for chunk in chunks[:-1])
    assert len(chunks[-1]) <= built.gsoSize
    seq0 = int.from_bytes(original[l4 + 4 : l4 + 8], "big")
    ident0 = int.from_bytes(original[l3 + 4 : l3 + 6], "big")
    for index, frame in enumerate(frames):
        assert frame[:l3] == original[:l3]
        segment = frame[l4:]
        if built.v6:
            assert int.from_bytes(frame[l3 + 4 : l3 + 6], "big") == len(frame) - l3 - 40
            assert frame[l3 : l3 + 4] == original[l3 : l3 + 4]
            assert frame[l3 + 6 : l4] == original[l3 + 6 : l4]
            src, dst = frame[l3 + 8 : l3 + 24], frame[l3 + 24 : l3 + 40]
        else:
            network = frame[l3:l4]
            assert referenceSum(network) == 0xFFFF, "IPv4 header checksum"
            assert int.from_bytes(network[2:4], "big") == len(frame) - l3
            assert int.from_bytes(network[4:6], "big") == (ident0 + index) & 0xFFFF
            assert network[:2] + network[6:10] + network[12:] == (
                original[l3 : l3 + 2] + original[l3 + 6 : l3 + 10] + original[l3 + 12 : l4]
            )
            src, dst = network[12:16], network[16:20]
        pseudo = pseudoHeader(built.v6, src, dst, built.proto, len(segment))
        assert referenceSum(pseudo + segment) == 0xFFFF, f"checksum of segment {index}"
        if built.proto == TCP:
            seq = int.from_bytes(segment[4:8], "big")
            assert seq == (seq0 + index * built.gsoSize) % 2**32
            assert segment[13] == expectedFlags(original[l4 + 13], index, len(frames))
            assert segment[:4] + segment[8:13] + segment[14:16] + segment[18:transportLength] == (
                original[l4 : l4 + 4] + original[l4 + 8 : l4 + 13] + original[l4 + 14 : l4 + 16]
                + original[l4 + 18 : start]
            )
        else:
            assert segment[:4] == original[l4 : l4 + 4]
            assert int.from_bytes(segment[4:6], "big") == len(segment)


def randomPayload(size: int, seed: int) -> bytes:
    """
    C{size} reproducible random bytes.
    """
    return random.Random(seed).randbytes(size)


TCP_OPTIONS = [
    b"",
    bytes.fromhex("0101080a5e2a57e8a77d8d3c"),
    bytes.fromhex("020405b40103030a0101080a0000000100000002"),
    b"\x01" * 40,
]
IP_OPTIONS = [b"", b"\x01\x01\x01\x00", bytes.fromhex("94040000")]
FLAG_SETS = st.sets(st.sampled_from([tcp.FIN, tcp.PSH, tcp.CWR, tcp.ECE, tcp.URG])).map(
    lambda flags: sum(flags) | tcp.ACK
)


@st.composite
def tcpSuperFrames(draw: st.DrawFn, maxPayload: int = 65000) -> Built:
    """
    Random IPv4 and IPv6 TCP super-frames, built as Linux builds them.
    """
    v6 = draw(st.booleans())
    size = draw(st.integers(1, maxPayload) | st.integers(maxPayload * 2 // 3, maxPayload))
    return kernelPacket(
        randomPayload(size, draw(st.integers(0, 2**32))),
        draw(st.integers(500, 9000)),
        v6=v6,
        vid=draw(st.none() | st.integers(1, 4094)),
        tcpFlags=draw(FLAG_SETS),
        tcpOptions=draw(st.sampled_from(TCP_OPTIONS)),
        ipOptions=b"" if v6 else draw(st.sampled_from(IP_OPTIONS)),
        hopByHop=draw(st.none() | st.just(bytes(6))) if v6 else None,
        seq=draw(st.integers(0, 2**32 - 1)),
        ident=draw(st.integers(0, 0xFFFF)),
        tos=draw(st.integers(0, 255)),
        flowLabel=draw(st.integers(0, 0xFFFFF)),
    )


@st.composite
def udpSuperFrames(draw: st.DrawFn, maxPayload: int = 60000) -> Built:
    """
    Random IPv4 and IPv6 USO super-frames, built as Linux builds them.
    """
    v6 = draw(st.booleans())
    size = draw(st.integers(1, maxPayload) | st.integers(maxPayload * 2 // 3, maxPayload))
    return kernelPacket(
        randomPayload(size, draw(st.integers(0, 2**32))),
        draw(st.integers(1000, 9000)),
        proto=UDP,
        v6=v6,
        vid=draw(st.none() | st.integers(1, 4094)),
        ident=draw(st.integers(0, 0xFFFF)),
    )


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _patched(packet: bytes, offset: int, value: bytes) -> bytes:
    return packet[:offset] + value + packet[offset + len(value) :]


GOOD = kernelPacket(randomPayload(4000, 4), 1448).packet
GOOD6 = kernelPacket(randomPayload(4000, 5), 1448, v6=True).packet
ARP = vnet.PLAIN_HEADER + ethernet(0x0806, None) + bytes(28)
