"""
Whether a virtio-net packet is safe to write to a TAP, and how long the
frames it stands for are.

Theory of operation: L{validate} repeats the checks of Linux's
C{virtio_net_hdr_to_skb} (6.x) and adds the switch's own (no UFO, no GSO
without C{NEEDS_CSUM}, EtherType matching the GSO type).  It remembers the
headers it found valid, with the packet lengths they are valid for, so the
next packets of a flow are checked with one dictionary lookup.
L{largestFrame} is the longest plain frame a packet stands for (a GSO
packet's longest segment), which is what an MTU limits; L{routeBounds} turns
both into the range of lengths for which a switch may forward the next
packets with the same header without looking again.
"""

from __future__ import annotations

from vtwisted.wire import ipv4, ipv6, tcp, udp
from vtwisted.wire.ethernet import ETH_P_IP, ETH_P_IPV6, MIN_FRAME
from vtwisted.wire.ethernet import HEADER_LENGTH as ETH_HEADER_LENGTH
from vtwisted.wire.vlan import TPID
from vtwisted.wire.vnet import (
    _GSO_BY_FRAGS,
    _HEADER,
    _MIN_PACKET,
    _TCP_GSO,
    DATA_VALID,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    HEADER_LENGTH,
    MIN_CSUM_START,
    NEEDS_CSUM,
    USO_MAX_SEGMENTS,
    networkHeader,
)

#: Headers without GSO already found valid, each with the shortest packet it
#: is valid for (see L{validate}); bounded by L{_KNOWN_LIMIT}.
knownPlainHeaders: dict[bytes, int] = {}
#: Untagged GSO headers already found valid, each with its EtherType and the
#: shortest and longest packet it is valid for (see L{validate}).
knownGsoHeaders: dict[bytes, tuple[bytes, int, int]] = {}
#: The most headers each of those two remembers.
_KNOWN_LIMIT = 4096
_NO_LIMIT = 1 << 62


def validate(packet: bytes) -> str | None:
    """
    Whether C{packet} is safe to write to a TAP opened with C{IFF_VNET_HDR}
    and offloads (checksum, TSO4, TSO6, TSO_ECN, USO4, USO6).

    Headers found valid are remembered (see L{_remember}).  A valid header
    without GSO stays valid for any longer frame, so it goes into
    L{knownPlainHeaders} with the shortest packet it fits: a caller checking
    many small packets can look it up there first, one dictionary lookup
    instead of this function.  An untagged GSO header goes into
    L{knownGsoHeaders}: its validity depends only on the EtherType and the
    packet's length, so the next super-frames of a flow are checked here with
    one lookup and three comparisons (0.2 us against 0.7 for the full check).

    @param packet: a virtio-net header followed by an Ethernet frame.
    @return: None if it is, else a sentence saying what is wrong.
    """
    known = knownGsoHeaders.get(packet[:HEADER_LENGTH])
    if known is not None and known[1] <= len(packet) <= known[2] and packet[22:24] == known[0]:
        return None
    problem = _problem(packet)
    if problem is None:
        _remember(packet)
    return problem


def _remember(packet: bytes) -> None:
    """
    Remember the header of C{packet}, just found valid, with the lengths it is
    valid for.  Beyond the header, L{_problem} looks only at the length of a
    GSO packet and at its EtherType (and at the inner one of a tagged frame:
    those are not remembered).
    """
    flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset = _HEADER.unpack_from(packet)
    shortest = max(ETH_HEADER_LENGTH, hdrLen)
    if flags & NEEDS_CSUM:
        shortest = max(shortest, csumStart + csumOffset + 2)
    head = packet[:HEADER_LENGTH]
    if gsoType == GSO_NONE:
        if len(knownPlainHeaders) < _KNOWN_LIMIT:
            knownPlainHeaders[head] = HEADER_LENGTH + shortest
        return
    etherType = packet[_MIN_PACKET - 2 : _MIN_PACKET]
    if etherType == TPID or len(knownGsoHeaders) >= _KNOWN_LIMIT:
        return
    if gsoType & ~GSO_ECN in _TCP_GSO:
        shortest = max(shortest, csumStart + tcp.HEADER_LENGTH)
        longest = _NO_LIMIT
    else:
        shortest = max(shortest, csumStart + udp.HEADER_LENGTH)
        longest = HEADER_LENGTH + csumStart + udp.HEADER_LENGTH + gsoSize * USO_MAX_SEGMENTS
    knownGsoHeaders[head] = (etherType, HEADER_LENGTH + shortest, longest)


def _problem(packet: bytes) -> str | None:
    """
    What makes C{packet} unsafe to write, or None (see L{validate}).
    """
    if len(packet) < HEADER_LENGTH:
        return f"packet of {len(packet)} bytes is shorter than the virtio-net header"
    size = len(packet) - HEADER_LENGTH
    if size < ETH_HEADER_LENGTH:
        return f"frame of {size} bytes is shorter than an Ethernet header"
    flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset = _HEADER.unpack_from(packet)
    if flags & ~(NEEDS_CSUM | DATA_VALID):
        return f"unknown flags {flags:#04x}"
    if hdrLen > size:
        return f"hdr_len {hdrLen} is larger than the {size}-byte frame"
    if 0 < hdrLen < ETH_HEADER_LENGTH:
        return f"hdr_len {hdrLen} is shorter than an Ethernet header"
    if flags & NEEDS_CSUM and csumStart + csumOffset + 2 > size:
        return (
            f"checksum field at csum_start {csumStart} + csum_offset {csumOffset} runs past "
            f"the {size}-byte frame"
        )
    if flags & NEEDS_CSUM and csumStart < MIN_CSUM_START:
        return f"csum_start {csumStart} is before any transport header (under {MIN_CSUM_START})"
    if gsoType == GSO_NONE:
        return None
    kind = gsoType & ~GSO_ECN
    if kind == GSO_UDP:
        return "legacy UFO (gso_type 3) is never written"
    if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        return f"unknown gso_type {gsoType:#04x}"
    if kind == GSO_UDP_L4 and gsoType & GSO_ECN:
        return "the ECN bit is set on UDP GSO"
    if gsoSize == 0 or gsoSize == _GSO_BY_FRAGS:
        return f"gso_size {gsoSize} is not a segment size"
    if not flags & NEEDS_CSUM:
        return "a GSO packet without NEEDS_CSUM"
    isTcp = kind in _TCP_GSO
    wanted = tcp.CHECKSUM_OFFSET if isTcp else udp.CHECKSUM_OFFSET
    if csumOffset != wanted:
        return f"csum_offset {csumOffset} is not {wanted} for gso_type {gsoType:#04x}"
    l3, etherType = networkHeader(packet)
    if etherType == ETH_P_IP and kind != GSO_TCPV6:
        minimum = ipv4.HEADER_LENGTH
    elif etherType == ETH_P_IPV6 and kind != GSO_TCPV4:
        minimum = ipv6.HEADER_LENGTH
    else:
        return f"gso_type {gsoType:#04x} on a frame of EtherType {etherType:#06x}"
    if csumStart + HEADER_LENGTH < l3 + minimum:
        return f"csum_start {csumStart} points inside the IP header"
    transport = tcp.HEADER_LENGTH if isTcp else udp.HEADER_LENGTH
    if csumStart + transport > size:
        return f"the transport header at csum_start {csumStart} runs past the frame"
    if not isTcp and size - csumStart - transport > gsoSize * USO_MAX_SEGMENTS:
        return f"more than {USO_MAX_SEGMENTS} UDP segments of {gsoSize} bytes"
    return None


def largestFrame(packet: bytes) -> int:
    """
    The longest plain frame C{packet} stands for: its frame, or for a GSO
    packet its longest segment (the headers and one C{gso_size} of
    payload), which is what an MTU limits.

    @param packet: a packet L{validate} accepts.
    """
    size = len(packet) - HEADER_LENGTH
    if packet[1] == GSO_NONE:
        return size
    _, gsoType, _, gsoSize, csumStart, _ = _HEADER.unpack_from(packet)
    if gsoType & ~GSO_ECN == GSO_UDP_L4:
        headers = csumStart + udp.HEADER_LENGTH
    else:
        at = HEADER_LENGTH + csumStart + 12
        headers = csumStart + (packet[at] >> 4) * 4 if at < len(packet) else size
    return min(size, headers + gsoSize)


def segmentReach(header: bytes) -> int:
    """
    The longest segment any packet with this GSO C{header} can stand for
    (L{largestFrame} with the longest TCP header), so that one check covers
    a whole flow.
    """
    _, gsoType, _, gsoSize, csumStart, _ = _HEADER.unpack_from(header)
    if gsoType & ~GSO_ECN == GSO_UDP_L4:
        return csumStart + udp.HEADER_LENGTH + gsoSize
    return csumStart + tcp.MAX_HEADER_LENGTH + gsoSize


def routeBounds(packet: bytes, limit: int) -> tuple[int, int] | None:
    """
    The frame lengths (header excluded) for which packets with C{packet}'s
    header, just found valid, are known to be valid and to stand for frames
    of at most C{limit} bytes; None if the header was not remembered.
    """
    head = packet[:HEADER_LENGTH]
    shortest = knownPlainHeaders.get(head)
    if shortest is not None:
        return max(MIN_FRAME, shortest - HEADER_LENGTH), limit
    known = knownGsoHeaders.get(head)
    if known is not None and known[0] == packet[22:24]:
        longest = known[2] - HEADER_LENGTH
        if segmentReach(head) > limit:
            longest = min(longest, limit)
        return max(MIN_FRAME, known[1] - HEADER_LENGTH), longest
    return None
