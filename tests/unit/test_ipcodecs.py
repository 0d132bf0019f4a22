"""
Tests for the IPv4, IPv6, TCP and UDP header codecs.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtwisted.wire import ipv4, ipv6, tcp, udp
from vtwisted.wire.checksum import pseudoHeaderSumV4, pseudoHeaderSumV6
from vtwisted.wire.ipv4 import IPv4Error, IPv4Header, headerChecksumValid
from vtwisted.wire.ipv6 import IPv6Error, IPv6Header, transportOffset
from vtwisted.wire.tcp import TCPError, TCPHeader, iterOptions
from vtwisted.wire.udp import UDPError, UDPHeader

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
words = st.integers(0, 10).map(lambda n: n * 4)

ipv4Headers = st.builds(
    IPv4Header, u8, st.integers(60, 0xFFFF), u16, st.integers(0, 7), st.integers(0, 0x1FFF),
    u8, u8, u16, st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
    words.flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)
ipv6Headers = st.builds(
    IPv6Header, u8, st.integers(0, 0xFFFFF), u16, u8, u8,
    st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
)
tcpHeaders = st.builds(
    TCPHeader, u16, u16, u32, u32, st.integers(0, 0xFFF), u16, u16, u16,
    words.flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)
udpHeaders = st.builds(UDPHeader, u16, u16, st.integers(8, 0xFFFF), u16)

#: The IPv4 and TCP headers of a TCP super-frame Linux 6.18 sent on a TAP
#: (7,306 bytes, so the total length is 7,292; the TCP checksum field holds
#: the pseudo-header sum).
CAPTURED = bytes.fromhex(
    "45001c7ccde3400040063b040ac900010ac90002"
    "9b201389cbcb5e0fbcedc52a8018003f320300000101080a519cf366798bae74"
)


@given(ipv4Headers)
def test_ipv4HeaderRoundTrips(header: IPv4Header) -> None:
    """
    An IPv4 header reads back exactly as it was written, options included.
    """
    assert IPv4Header.parse(header.pack(computeChecksum=False)) == header


@given(ipv4Headers)
def test_ipv4PackComputesAValidChecksum(header: IPv4Header) -> None:
    """
    A header packed with its checksum passes the receiver's check.
    """
    packed = header.pack()
    assert headerChecksumValid(packed)
    assert IPv4Header.parse(packed)._replace(checksum=header.checksum) == header


@given(ipv6Headers)
def test_ipv6HeaderRoundTrips(header: IPv6Header) -> None:
    """
    An IPv6 header reads back exactly as it was written.
    """
    assert IPv6Header.parse(header.pack()) == header


@given(tcpHeaders)
def test_tcpHeaderRoundTrips(header: TCPHeader) -> None:
    """
    A TCP header reads back exactly as it was written, all 12 flag bits included.
    """
    assert TCPHeader.parse(header.pack()) == header


@given(udpHeaders)
def test_udpHeaderRoundTrips(header: UDPHeader) -> None:
    """
    A UDP header reads back exactly as it was written.
    """
    assert UDPHeader.parse(header.pack()) == header


@given(ipv4Headers, st.binary(max_size=30))
def test_headersParseAtAnOffset(header: IPv4Header, prefix: bytes) -> None:
    """
    Headers are read in place inside a frame, after an Ethernet header say.
    """
    assert IPv4Header.parse(prefix + header.pack(False), len(prefix)) == header


def test_capturedSegmentParses() -> None:
    """
    A super-frame header Linux sent parses; its TCP checksum field is the whole-length pseudo sum.
    """
    ip = IPv4Header.parse(CAPTURED)
    assert (ip.totalLength, ip.ident, ip.flags, ip.ttl, ip.protocol) == (7292, 0xCDE3, 2, 64, 6)
    assert ip.src == bytes([10, 201, 0, 1]) and not ip.isFragment
    assert headerChecksumValid(CAPTURED)
    segment = TCPHeader.parse(CAPTURED, ip.headerLength)
    assert (segment.dstPort, segment.flags, segment.headerLength) == (5001, tcp.ACK | tcp.PSH, 32)
    assert segment.checksum == pseudoHeaderSumV4(ip.src, ip.dst, 6, 7292 - 20)
    assert list(iterOptions(segment.options)) == [
        (tcp.OPT_TIMESTAMPS, bytes.fromhex("519cf366798bae74"))
    ]


@pytest.mark.parametrize(
    "data, message",
    [
        (bytes(19), "truncated"),
        (b"\x65" + bytes(19), "version 6"),
        (b"\x44" + bytes(19), "IHL 4"),
        (b"\x46" + bytes(19), "truncated: 20 of 24"),
        (b"\x45\x00\x00\x13" + bytes(16), "total length 19"),
    ],
)
def test_malformedIpv4IsRefusedWithAReason(data: bytes, message: str) -> None:
    """
    Unreadable IPv4 headers raise IPv4Error saying what is wrong.
    """
    with pytest.raises(IPv4Error, match=message):
        IPv4Header.parse(data)


def test_ipv4TotalLengthZeroIsAccepted() -> None:
    """
    A total length of 0 (Linux BIG TCP super-frames) is not an error.
    """
    assert IPv4Header.parse(b"\x45" + bytes(19)).totalLength == 0


def test_ipv4OptionsMustBeWords() -> None:
    """
    Options that are not a multiple of 4 bytes cannot be packed.
    """
    header = IPv4Header(0, 20, 0, 0, 0, 64, 6, 0, bytes(4), bytes(4), b"\x01")
    with pytest.raises(IPv4Error, match="options"):
        header.pack()


def test_fragmentsAreRecognised() -> None:
    """
    MF or a fragment offset marks a fragment; DF alone does not.
    """
    base = IPv4Header(0, 20, 0, ipv4.FLAG_DF, 0, 64, 6, 0, bytes(4), bytes(4))
    assert not base.isFragment
    assert base._replace(flags=ipv4.FLAG_MF).isFragment
    assert base._replace(fragmentOffset=1).isFragment


@pytest.mark.parametrize(
    "data, message",
    [(bytes(39), "truncated"), (b"\x45" + bytes(39), "version 4")],
)
def test_malformedIpv6IsRefusedWithAReason(data: bytes, message: str) -> None:
    """
    Unreadable IPv6 headers raise IPv6Error saying what is wrong.
    """
    with pytest.raises(IPv6Error, match=message):
        IPv6Header.parse(data)


def _ipv6(nextHeader: int, rest: bytes) -> bytes:
    return IPv6Header(0, 0, len(rest), nextHeader, 64, bytes(16), bytes(16)).pack() + rest


def test_transportOffsetWalksExtensionHeaders() -> None:
    """
    Hop-by-hop, destination options and AH are skipped to find TCP.
    """
    hopByHop = bytes([ipv6.NH_DEST_OPTS, 0]) + bytes(6)
    destination = bytes([ipv6.NH_AUTH, 1]) + bytes(14)
    auth = bytes([ipv6.NH_TCP, 1]) + bytes(10)
    packet = _ipv6(ipv6.NH_HOP_BY_HOP, hopByHop + destination + auth + bytes(20))
    assert transportOffset(packet) == (ipv6.NH_TCP, 40 + 8 + 16 + 12)
    assert transportOffset(_ipv6(ipv6.NH_UDP, bytes(8))) == (ipv6.NH_UDP, 40)


def test_transportOffsetStopsAtFragments() -> None:
    """
    A fragment header is returned as is: the caller decides.
    """
    packet = _ipv6(ipv6.NH_FRAGMENT, bytes([ipv6.NH_TCP]) + bytes(7))
    assert transportOffset(packet) == (ipv6.NH_FRAGMENT, 40)


def test_transportOffsetRefusesTruncatedOrEndlessChains() -> None:
    """
    A chain running past the data, or longer than 8, raises IPv6Error.
    """
    with pytest.raises(IPv6Error, match="truncated"):
        transportOffset(_ipv6(ipv6.NH_HOP_BY_HOP, bytes([ipv6.NH_TCP, 3]) + bytes(6)))
    chain = bytes([ipv6.NH_DEST_OPTS, 0]) + bytes(6)
    with pytest.raises(IPv6Error, match="more than"):
        transportOffset(_ipv6(ipv6.NH_DEST_OPTS, chain * 9))


@given(st.binary(max_size=120), st.integers(0, 60))
def test_transportOffsetOnGarbageRaisesOnlyIPv6Error(data: bytes, offset: int) -> None:
    """
    Random bytes never crash the walk with anything but IPv6Error.
    """
    try:
        protocol, position = transportOffset(b"\x60" + data, offset)
    except IPv6Error:
        return
    assert 0 <= protocol <= 255 and position <= len(data) + 1


@pytest.mark.parametrize(
    "data, message",
    [
        (bytes(19), "truncated"),
        (bytes(12) + b"\x40" + bytes(7), "data offset 4"),
        (bytes(12) + b"\x60" + bytes(7), "truncated: 20 of 24"),
    ],
)
def test_malformedTcpIsRefusedWithAReason(data: bytes, message: str) -> None:
    """
    Unreadable TCP headers raise TCPError saying what is wrong.
    """
    with pytest.raises(TCPError, match=message):
        TCPHeader.parse(data)


def test_tcpOptionsSplitIntoKindAndValue() -> None:
    """
    MSS, window scale and SACK-permitted come out as pairs; NOPs vanish.
    """
    options = bytes.fromhex("020405b4 0103030a 04020000".replace(" ", ""))
    assert list(iterOptions(options)) == [
        (tcp.OPT_MSS, b"\x05\xb4"),
        (tcp.OPT_WINDOW_SCALE, b"\x0a"),
        (tcp.OPT_SACK_PERMITTED, b""),
    ]


@pytest.mark.parametrize("options", [b"\x02", b"\x02\x01\x00\x00", b"\x02\x08\x05\xb4"])
def test_badTcpOptionsAreRefused(options: bytes) -> None:
    """
    An option without a length, or with one under 2 or past the end, is an error.
    """
    with pytest.raises(TCPError, match="option"):
        list(iterOptions(options))


def test_tcpChecksumOverPseudoHeaderVerifies() -> None:
    """
    A segment with segmentChecksum in place sums to zero with its pseudo-header.
    """
    header = TCPHeader(1, 2, 3, 4, tcp.ACK, 5, 0, 0)
    segment = header.pack() + b"hello"
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    pseudo = pseudoHeaderSumV4(src, dst, 6, len(segment))
    filled = header._replace(checksum=tcp.segmentChecksum(pseudo, segment)).pack() + b"hello"
    assert (int.from_bytes(filled + b"\x00", "big") + pseudo) % 0xFFFF == 0


def test_udpChecksumOverIpv6PseudoHeaderVerifies() -> None:
    """
    A datagram with datagramChecksum in place sums to zero with its pseudo-header.
    """
    payload = b"abc"
    header = UDPHeader(53, 5353, 8 + len(payload), 0)
    pseudo = pseudoHeaderSumV6(bytes(15) + b"\x01", bytes(15) + b"\x02", 17, 11)
    value = udp.datagramChecksum(pseudo, header.pack() + payload)
    assert value != 0
    filled = header._replace(checksum=value).pack() + payload
    assert (int.from_bytes(filled + b"\x00", "big") + pseudo) % 0xFFFF == 0


@pytest.mark.parametrize(
    "data, message", [(bytes(7), "truncated"), (bytes(4) + b"\x00\x07" + bytes(2), "length 7")]
)
def test_malformedUdpIsRefusedWithAReason(data: bytes, message: str) -> None:
    """
    Unreadable UDP headers raise UDPError saying what is wrong.
    """
    with pytest.raises(UDPError, match=message):
        UDPHeader.parse(data)


@given(ipv4Headers)
def test_plainHeaderEncoderMatchesTheCodec(header: IPv4Header) -> None:
    """The fast encoder for headers without options gives what the codec gives."""
    plain = header._replace(options=b"", totalLength=max(header.totalLength, 20))
    fast = ipv4.packPlainHeader(plain.ident, plain.src, plain.dst, plain.protocol,
                                plain.totalLength, plain.ttl,
                                plain.flags << 13 | plain.fragmentOffset, plain.tos)
    assert fast == plain.pack()
