"""
ICMP errors a guest sends about the TCP engine's segments: a firewall's
reject in the guest answering a host forward's SYN.

Theory of operation
-------------------
A guest whose firewall rejects a connection (C{iptables -j REJECT},
nftables' C{reject}) answers the SYN with an ICMP or ICMPv6 destination
unreachable (port unreachable, administratively prohibited...) rather than
a RST.  The error quotes the start of the SYN it is about: its IP header
and at least the first 8 bytes of TCP, the ports and the sequence number.
L{quotedSegment} reads those; the TCP engine
(L{vtwisted.slirp.tcp.TcpNat.unreachableReceived}) then fails the forward
whose SYN it quotes at once, as a RST would, instead of waiting out the
SYN's retransmissions.

As RFC 5927 advises, an error is believed only if it names a segment we
sent: the quoted packet must go from where the error is sent to, its
addresses and ports must be a connection's, and, since only a connection
whose SYN is unanswered is failed, its sequence number must be that SYN's
(our ISN), which a guest cannot guess for another guest's connection.  An
error about an established connection is a soft error, as Linux takes it
(RFC 1122 4.2.3.9): the connection goes on; with no host socket to report
it on, it is only counted.  Fragmentation needed and packet too big are
not failures either (our segments keep to the guest's MSS).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vtwisted.wire import ipv4, ipv6
from vtwisted.wire.checksum import Buffer

_PORTS_SEQ = struct.Struct("!HHI")

#: ICMP destination unreachable codes (RFC 792, 1122, 1812), for the log.
_CODES4 = {
    0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable",
    3: "port unreachable", 5: "source route failed", 6: "destination network unknown",
    7: "destination host unknown", 8: "source host isolated",
    9: "network administratively prohibited", 10: "host administratively prohibited",
    11: "network unreachable for TOS", 12: "host unreachable for TOS",
    13: "administratively prohibited", 14: "host precedence violation",
    15: "precedence cutoff",
}
#: ICMPv6 destination unreachable codes (RFC 4443).
_CODES6 = {
    0: "no route to destination", 1: "administratively prohibited",
    2: "beyond scope of source address", 3: "address unreachable", 4: "port unreachable",
    5: "source address failed ingress/egress policy", 6: "reject route to destination",
}


class Quote(NamedTuple):
    """
    The TCP segment an ICMP error is about, as far as it is quoted.

    @ivar src: its IP source (ours: the remote side of a connection).
    @ivar dst: its IP destination (the guest).
    @ivar seq: its sequence number.
    """

    src: bytes
    srcPort: int
    dst: bytes
    dstPort: int
    seq: int


def quotedSegment(quoted: Buffer, v6: bool) -> Quote | None:
    """
    The TCP segment quoted by an ICMP (C{v6} false) or ICMPv6 error whose
    body after the type-specific word is C{quoted}; L{None} if it quotes
    something else (another protocol, another IP version, a later
    fragment, an IPv6 extension header) or too little of it.
    """
    if v6:
        if len(quoted) < 48 or quoted[0] >> 4 != 6 or quoted[6] != ipv6.NH_TCP:
            return None
        src, dst, start = bytes(quoted[8:24]), bytes(quoted[24:40]), 40
    else:
        start = (quoted[0] & 15) * 4 if quoted else 0
        if start < 20 or len(quoted) < start + 8 or quoted[0] >> 4 != 4 \
                or quoted[9] != ipv4.PROTO_TCP or int.from_bytes(quoted[6:8], "big") & 0x1FFF:
            return None
        src, dst = bytes(quoted[12:16]), bytes(quoted[16:20])
    srcPort, dstPort, seq = _PORTS_SEQ.unpack_from(quoted, start)
    return Quote(src, srcPort, dst, dstPort, seq)


def unreachableName(code: int, v6: bool) -> str:
    """
    What destination unreachable with C{code} says, for the log.
    """
    name = (_CODES6 if v6 else _CODES4).get(code, f"destination unreachable code {code}")
    return f"ICMPv6 {name}" if v6 else f"ICMP {name}"
