"""
ICMPv6 (RFC 4443) and the neighbour discovery messages riding on it
(RFC 4861, RDNSS from RFC 8106).

Theory of operation: every ICMPv6 message starts with type, code and a
checksum; L{ICMPv6Message} keeps everything after those 4 bytes as the
opaque C{body}, so the caller hands L{ICMPv6Message.parse} exactly the
upper-layer part of an IPv6 packet.  Unlike ICMPv4's, the checksum covers
the IPv6 pseudo-header too, which is why L{ICMPv6Message.pack} and
L{checksumOk} take the source and destination addresses.

Neighbour discovery messages carry options after a fixed part: type,
length in units of 8 bytes (0 is invalid and must make the receiver drop
the message), data.  L{iterOptions} walks them.  The builders here return
complete messages, checksum included, ready for an IPv6 header: an echo
reply, a router advertisement with the options libslirp sends (and an MTU
option), neighbour solicitations and advertisements, and a destination
unreachable quoting as much of the offending packet as fits in the minimum
IPv6 MTU.  Parsers raise nothing but L{ICMPv6Error}, whatever the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from vtwisted.wire.checksum import Buffer, checksumValid, internetChecksum, pseudoHeaderSumV6

#: The IPv6 next-header value of ICMPv6.
NEXT_HEADER = 58
HEADER_LENGTH = 4
#: The minimum IPv6 MTU: an error message must fit in a packet this long.
MIN_MTU = 1280
#: The longest error message (the minimum MTU minus the IPv6 header).
MAX_ERROR_LENGTH = MIN_MTU - 40

DEST_UNREACHABLE = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAMETER_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136

#: Codes of L{DEST_UNREACHABLE}.
NO_ROUTE = 0
ADMIN_PROHIBITED = 1
ADDRESS_UNREACHABLE = 3
PORT_UNREACHABLE = 4

#: Neighbour discovery option types.
SOURCE_LL = 1
TARGET_LL = 2
PREFIX_INFO = 3
MTU = 5
RDNSS = 25

#: Flags of a neighbour advertisement (first byte of its body).
NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20

#: Flags of a prefix information option: on-link and autonomous (SLAAC).
PREFIX_ON_LINK = 0x80
PREFIX_AUTONOMOUS = 0x40

#: Where the options start in the body of each neighbour discovery message.
OPTIONS_OFFSET = {
    ROUTER_SOLICITATION: 4,
    ROUTER_ADVERTISEMENT: 12,
    NEIGHBOR_SOLICITATION: 20,
    NEIGHBOR_ADVERTISEMENT: 20,
}

_HEADER = struct.Struct("!BBH")
_RA = struct.Struct("!BBHII")
#: Router advertisement flags: addresses (M) and other configuration (O) by DHCPv6.
RA_MANAGED, RA_OTHER = 0x80, 0x40
_PREFIX = struct.Struct("!BBBBIII16s")
_MTU = struct.Struct("!BBHI")
_RDNSS = struct.Struct("!BBHI")
_SOLICITED_NODE = bytes.fromhex("ff0200000000000000000001ff")


class ICMPv6Error(ValueError):
    """
    The bytes are not a readable ICMPv6 message.
    """


class ICMPv6Message(NamedTuple):
    """
    An ICMPv6 message.

    @ivar type: the message type (L{ECHO_REQUEST}, L{NEIGHBOR_SOLICITATION}...).
    @ivar code: the subtype.
    @ivar checksum: the checksum as read (L{pack} computes a fresh one).
    @ivar body: everything after the 4-byte header.
    """

    type: int
    code: int
    checksum: int
    body: bytes

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> ICMPv6Message:
        """
        Read the message starting at C{offset}; it runs to the end of C{data}.

        @param data: bytes holding the message (the IPv6 upper-layer part).
        @param offset: where the message starts.
        @return: the message, checksum not verified (see L{checksumOk}).
        @raise ICMPv6Error: fewer than 4 bytes.
        """
        if offset < 0 or len(data) - offset < HEADER_LENGTH:
            raise ICMPv6Error(
                f"ICMPv6 message truncated: {max(len(data) - offset, 0)} of "
                f"{HEADER_LENGTH} bytes"
            )
        kind, code, checksum = _HEADER.unpack_from(data, offset)
        return cls(kind, code, checksum, bytes(data[offset + HEADER_LENGTH :]))

    def pack(self, src: bytes, dst: bytes) -> bytes:
        """
        The message as bytes, with its checksum computed for an IPv6 packet
        from C{src} to C{dst} (16 bytes each).
        """
        header = _HEADER.pack(self.type, self.code, 0)
        pseudo = pseudoHeaderSumV6(src, dst, NEXT_HEADER, HEADER_LENGTH + len(self.body))
        checksum = internetChecksum(header + self.body, pseudo)
        return b"".join((header[:2], checksum.to_bytes(2, "big"), self.body))


def checksumOk(src: bytes, dst: bytes, data: Buffer) -> bool:
    """
    Whether the ICMPv6 message C{data}, sent from C{src} to C{dst}, has a
    correct checksum.

    @param data: the whole message, as received.
    """
    return checksumValid(data, pseudoHeaderSumV6(src, dst, NEXT_HEADER, len(data)))


def iterOptions(body: Buffer, offset: int) -> Iterator[tuple[int, bytes]]:
    """
    The neighbour discovery options in C{body} from C{offset} on.

    @param body: the message's body (L{ICMPv6Message.body}).
    @param offset: where the options start (L{OPTIONS_OFFSET}).
    @return: an iterator of (option type, the option's bytes after its type
        and length bytes, padding included).
    @raise ICMPv6Error: while iterating, when an option has length 0 or
        runs past the end, or C{offset} is past the end.
    """
    if offset < 0 or offset > len(body):
        raise ICMPv6Error(f"ICMPv6 message of {len(body)} bytes has no room for options")
    while offset < len(body):
        if len(body) - offset < 2:
            raise ICMPv6Error("neighbour discovery option truncated")
        kind, units = body[offset], body[offset + 1]
        if units == 0:
            raise ICMPv6Error(f"neighbour discovery option {kind} has length 0")
        end = offset + units * 8
        if end > len(body):
            raise ICMPv6Error(f"neighbour discovery option {kind} runs past the message")
        yield kind, bytes(body[offset + 2 : end])
        offset = end


def linkLayerAddress(body: Buffer, offset: int, kind: int) -> bytes | None:
    """
    The MAC address in the first option of type C{kind} (L{SOURCE_LL} or
    L{TARGET_LL}), or L{None} if there is none.

    @raise ICMPv6Error: the options are malformed.
    """
    for option, data in iterOptions(body, offset):
        if option == kind:
            return data[:6]
    return None


def targetAddress(message: ICMPv6Message) -> bytes:
    """
    The target address of a neighbour solicitation or advertisement.

    @raise ICMPv6Error: the message is too short to have one.
    """
    if len(message.body) < 20:
        raise ICMPv6Error(f"neighbour discovery message of {len(message.body) + 4} bytes "
                          "is shorter than 24")
    return message.body[4:20]


def _option(kind: int, data: bytes) -> bytes:
    return bytes((kind, (len(data) + 2) // 8)) + data


def echoReply(request: ICMPv6Message, src: bytes, dst: bytes) -> bytes:
    """
    The answer to an echo request: same identifier, sequence and data.

    @param request: an L{ECHO_REQUEST}.
    @param src: the address answering (the request's destination).
    @param dst: the requester.
    """
    return request._replace(type=ECHO_REPLY, code=0).pack(src, dst)


def routerAdvertisement(
    src: bytes,
    dst: bytes,
    mac: bytes,
    prefix: bytes,
    prefixLength: int,
    dns: bytes | None,
    mtu: int | None,
    hopLimit: int = 64,
    routerLifetime: int = 1800,
    validLifetime: int = 86400,
    preferredLifetime: int = 14400,
    dnsLifetime: int = 1800,
    managed: bool = False,
) -> bytes:
    """
    A router advertisement (reachable and retransmit times 0)
    with a source link-layer option, one prefix (on-link, autonomous), and
    optionally an MTU and a recursive DNS server option.

    @param src: the router's link-local address.
    @param dst: where it goes (C{ff02::1}, usually).
    @param mac: the router's MAC, for the source link-layer option.
    @param prefix: the 16-byte prefix.
    @param prefixLength: its length in bits.
    @param dns: the DNS server's address, or L{None} for no RDNSS option.
    @param mtu: the link MTU, or L{None} for no MTU option.
    @param managed: set the M and O flags (addresses and other
        configuration from DHCPv6); otherwise both are clear.
    """
    flags = RA_MANAGED | RA_OTHER if managed else 0
    body = [_RA.pack(hopLimit, flags, routerLifetime, 0, 0), _option(SOURCE_LL, mac)]
    flags = PREFIX_ON_LINK | PREFIX_AUTONOMOUS
    body.append(_PREFIX.pack(PREFIX_INFO, 4, prefixLength, flags, validLifetime,
                             preferredLifetime, 0, prefix))
    if mtu is not None:
        body.append(_MTU.pack(MTU, 1, 0, mtu))
    if dns is not None:
        body.append(_RDNSS.pack(RDNSS, 3, 0, dnsLifetime) + dns)
    return ICMPv6Message(ROUTER_ADVERTISEMENT, 0, 0, b"".join(body)).pack(src, dst)


def neighborAdvertisement(src: bytes, dst: bytes, target: bytes, mac: bytes,
                          solicited: bool, router: bool = True,
                          override: bool = True) -> bytes:
    """
    A neighbour advertisement saying C{target} is at C{mac} (in a target
    link-layer option).
    """
    flags = ((NA_ROUTER if router else 0) | (NA_SOLICITED if solicited else 0)
             | (NA_OVERRIDE if override else 0))
    body = bytes((flags, 0, 0, 0)) + target + _option(TARGET_LL, mac)
    return ICMPv6Message(NEIGHBOR_ADVERTISEMENT, 0, 0, body).pack(src, dst)


def neighborSolicitation(src: bytes, dst: bytes, target: bytes, mac: bytes) -> bytes:
    """
    A neighbour solicitation asking for C{target}'s MAC, from C{mac} (in a
    source link-layer option).
    """
    body = bytes(4) + target + _option(SOURCE_LL, mac)
    return ICMPv6Message(NEIGHBOR_SOLICITATION, 0, 0, body).pack(src, dst)


def errorMessage(kind: int, code: int, original: Buffer, src: bytes, dst: bytes,
                 rest: int = 0) -> bytes:
    """
    An ICMPv6 error about the IPv6 packet C{original}, quoting as much of
    it as fits in a packet of the minimum IPv6 MTU (RFC 4443 2.4).

    @param rest: the 32 bits after the checksum: the MTU of a
        L{PACKET_TOO_BIG}, the pointer of a L{PARAMETER_PROBLEM}.
    """
    quoted = bytes(original[: MAX_ERROR_LENGTH - 8])
    return ICMPv6Message(kind, code, 0, rest.to_bytes(4, "big") + quoted).pack(src, dst)


def solicitedNodeAddress(address: bytes) -> bytes:
    """
    The solicited-node multicast address of C{address}: C{ff02::1:ff} and
    its last 3 bytes.
    """
    return _SOLICITED_NODE + address[13:16]


def multicastMac(address: bytes) -> bytes:
    """
    The Ethernet address of the IPv6 multicast C{address}: C{33:33} and its
    last 4 bytes (RFC 2464).
    """
    return b"\x33\x33" + address[12:16]
