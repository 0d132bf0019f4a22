"""
ICMP errors a guest sends about what the engines sent it: a firewall's
reject answering a host forward's SYN or datagram, a time exceeded, a
parameter problem.

Theory of operation
-------------------
A guest whose firewall rejects a connection (C{iptables -j REJECT},
nftables' C{reject}) answers the SYN with an ICMP or ICMPv6 destination
unreachable (port unreachable, administratively prohibited...) rather than
a RST; a guest that routes the forward's packets on (a delegated prefix,
a guest forwarding to a container) may answer with a time exceeded, and
one that cannot read them with a parameter problem.  Each error quotes the
start of the packet it is about: its IP header and at least the first 8
bytes of TCP or UDP, the ports (and TCP's sequence number).  The router
hands L{errorReceived} destination unreachable (but fragmentation needed),
time exceeded and parameter problem, ICMP (RFC 792) and ICMPv6 (RFC 4443)
alike; L{quotedPacket} reads the quote, and it goes to the engine of the
quoted protocol:

  - B{TCP} (L{vtwisted.slirp.tcp.TcpNat.errorReceived}): an error about a
    host forward's unanswered SYN fails that forward at once, its host
    client reset as by a RST, instead of after the SYN's retransmissions.
    Linux's own C{connect} fails the same way on every one of these
    (C{tcp_v4_err}, C{tcp_v6_err}: in SYN-SENT any destination unreachable
    but fragmentation needed, time exceeded (C{EHOSTUNREACH}) and
    parameter problem (C{EPROTO}) end the connect; RFC 5461 describes
    this departure from RFC 1122's soft errors).  Destination unreachable
    is counted as a refusal, the others as failures.
  - B{UDP} (L{vtwisted.slirp.udp.UdpNat.errorReceived}): an error about a
    datagram a UDP host forward sent the guest is counted on that forward
    and logged once (L{vtwisted.slirp.udpforward}); its host client
    cannot be told, as the forward's socket is one for all its clients,
    and only the host's kernel could send that client an ICMP error.

As RFC 5927 advises, an error is believed only if it names a packet we
sent: the quoted packet must go from where the error is sent to, its
addresses and ports must be a live connection's or forward session's, and
for TCP, since only a connection whose SYN is unanswered is failed, its
sequence number must be that SYN's (our ISN), which a guest cannot guess
for another guest's connection.  An error about an established connection
is a soft error, as Linux takes it (RFC 1122 4.2.3.9): the connection
goes on; with no host socket to report it on, it is only counted, as are
errors quoting nothing we sent.  Fragmentation needed and packet too big
are not failures (our segments keep to the guest's MSS).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from vtwisted.wire import icmp, icmpv6, ipv4
from vtwisted.wire.checksum import Buffer

_PORTS_SEQ = struct.Struct("!HHI")

#: ICMP destination unreachable codes (RFC 792, 1122, 1812), for the log.
_UNREACHABLE4 = {
    0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable",
    3: "port unreachable", 5: "source route failed", 6: "destination network unknown",
    7: "destination host unknown", 8: "source host isolated",
    9: "network administratively prohibited", 10: "host administratively prohibited",
    11: "network unreachable for TOS", 12: "host unreachable for TOS",
    13: "administratively prohibited", 14: "host precedence violation",
    15: "precedence cutoff",
}
#: ICMPv6 destination unreachable codes (RFC 4443).
_UNREACHABLE6 = {
    0: "no route to destination", 1: "administratively prohibited",
    2: "beyond scope of source address", 3: "address unreachable", 4: "port unreachable",
    5: "source address failed ingress/egress policy", 6: "reject route to destination",
}
#: Names of the other errors' types and codes, by family.
_OTHERS: dict[bool, dict[int, tuple[str, dict[int, str]]]] = {
    False: {
        icmp.TIME_EXCEEDED: ("time exceeded", {
            0: "TTL exceeded in transit", 1: "fragment reassembly time exceeded"}),
        icmp.PARAMETER_PROBLEM: ("parameter problem", {
            0: "pointer indicates the error", 1: "missing a required option",
            2: "bad length"}),
    },
    True: {
        icmpv6.TIME_EXCEEDED: ("time exceeded", {
            0: "hop limit exceeded in transit", 1: "fragment reassembly time exceeded"}),
        icmpv6.PARAMETER_PROBLEM: ("parameter problem", {
            0: "erroneous header field", 1: "unrecognized next header",
            2: "unrecognized IPv6 option", 3: "incomplete header chain"}),
    },
}


class GuestError(NamedTuple):
    """
    One ICMP (C{v6} false) or ICMPv6 error from a guest: its type and code.
    """

    kind: int
    code: int
    v6: bool

    @property
    def refusal(self) -> bool:
        """
        Whether it is a destination unreachable (a firewall's reject), not a
        time exceeded or parameter problem.
        """
        return self.kind == (icmpv6.DEST_UNREACHABLE if self.v6 else icmp.DEST_UNREACHABLE)

    @property
    def name(self) -> str:
        """
        What it says, for the log: C{ICMP port unreachable}, C{ICMPv6 time
        exceeded (hop limit exceeded in transit)}...
        """
        family = "ICMPv6" if self.v6 else "ICMP"
        if self.refusal:
            codes = _UNREACHABLE6 if self.v6 else _UNREACHABLE4
            return f"{family} " + codes.get(self.code,
                                           f"destination unreachable code {self.code}")
        kind, codes = _OTHERS[self.v6].get(self.kind, (f"type {self.kind}", {}))
        return f"{family} {kind} ({codes.get(self.code, f'code {self.code}')})"


class Quote(NamedTuple):
    """
    The TCP segment or UDP datagram an ICMP error is about, as far as it is
    quoted.

    @ivar protocol: 6 (TCP) or 17 (UDP).
    @ivar src: its IP source (ours: the remote side of a connection).
    @ivar dst: its IP destination (the guest).
    @ivar seq: its sequence number (TCP; for UDP, its length and checksum).
    """

    protocol: int
    src: bytes
    srcPort: int
    dst: bytes
    dstPort: int
    seq: int


#: The errors L{errorReceived} reads, by family: the others are not about
#: what we sent (fragmentation needed and packet too big are left out by
#: the router).
ERRORS = {False: frozenset((icmp.DEST_UNREACHABLE, icmp.TIME_EXCEEDED,
                            icmp.PARAMETER_PROBLEM)),
          True: frozenset((icmpv6.DEST_UNREACHABLE, icmpv6.TIME_EXCEEDED,
                           icmpv6.PARAMETER_PROBLEM))}
_TRANSPORTS = frozenset((ipv4.PROTO_TCP, ipv4.PROTO_UDP))


def quotedPacket(quoted: Buffer, v6: bool) -> Quote | None:
    """
    The TCP segment or UDP datagram quoted by an ICMP (C{v6} false) or
    ICMPv6 error whose body after the type-specific word is C{quoted};
    L{None} if it quotes something else (another protocol, another IP
    version, a later fragment, an IPv6 extension header) or too little of it.
    """
    if v6:
        if len(quoted) < 48 or quoted[0] >> 4 != 6 or quoted[6] not in _TRANSPORTS:
            return None
        protocol, src, dst, start = quoted[6], bytes(quoted[8:24]), bytes(quoted[24:40]), 40
    else:
        start = (quoted[0] & 15) * 4 if quoted else 0
        if start < 20 or len(quoted) < start + 8 or quoted[0] >> 4 != 4 \
                or quoted[9] not in _TRANSPORTS or int.from_bytes(quoted[6:8], "big") & 0x1FFF:
            return None
        protocol, src, dst = quoted[9], bytes(quoted[12:16]), bytes(quoted[16:20])
    srcPort, dstPort, seq = _PORTS_SEQ.unpack_from(quoted, start)
    return Quote(protocol, src, srcPort, dst, dstPort, seq)


def errorReceived(router: Any, dst: bytes, kind: int, code: int, quoted: Buffer) -> None:
    """
    A guest sent C{dst} (4 bytes: ICMP; 16: ICMPv6) an error of one of the
    L{ERRORS} types, with C{code}, quoting C{quoted}: hand it to the UDP
    engine of C{router} if it quotes UDP, else to the TCP engine (which
    counts errors that quote neither as ignored).
    """
    v6 = len(dst) == 16
    error = GuestError(kind, code, v6)
    quote = quotedPacket(quoted, v6)
    if quote is not None and quote.protocol == ipv4.PROTO_UDP:
        router.udp.errorReceived(dst, quote, error)
    else:
        router.tcp.errorReceived(dst, quote, error)


__all__ = ["ERRORS", "GuestError", "Quote", "errorReceived", "quotedPacket"]
