"""
BOOTP and DHCP messages (RFC 951, RFC 2131, RFC 2132).

Theory of operation: a message is a 236-byte fixed part (addresses, the
client's hardware address, the server name and boot file fields), the magic
cookie, then options: a code byte, a length byte and that many value bytes,
except PAD (one zero byte) and END (one 0xFF byte, after which nothing is
read).  L{DHCPMessage.parse} keeps the options as (code, value) pairs in
wire order, PAD and END left out; it refuses a message without the cookie
and an option running past the data, and accepts options with no END.
L{DHCPMessage.pack} writes the options back followed by END and pads with
zeros up to a minimum options area: a slirp reply is 236 + 312 = 548 bytes,
the size RFC 2131 says every client must accept.  A value longer than 255
bytes is written as consecutive options of the same code (RFC 3396), which
L{DHCPMessage.option} joins again.  The helpers encode the values this
project sends: address lists and the RFC 3397 domain search list.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from vtwisted.wire.checksum import Buffer

MAGIC = b"\x63\x82\x53\x63"
#: The fixed part, before the magic cookie.
FIXED_LENGTH = 236
#: The shortest message L{DHCPMessage.parse} accepts: fixed part and cookie.
MIN_LENGTH = FIXED_LENGTH + len(MAGIC)
#: The options area (cookie included) of a 548-byte reply.
OPTIONS_AREA = 312

BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHERNET = 1

DISCOVER = 1
OFFER = 2
REQUEST = 3
DECLINE = 4
ACK = 5
NAK = 6
RELEASE = 7
INFORM = 8

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOST_NAME = 12
OPT_DOMAIN_NAME = 15
OPT_REQUESTED_ADDRESS = 50
OPT_LEASE_TIME = 51
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAMETER_LIST = 55
OPT_MESSAGE = 56
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_TFTP_SERVER = 66
OPT_DOMAIN_SEARCH = 119
OPT_END = 255

_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_PADDED = (("chaddr", 16), ("sname", 64), ("file", 128))
_ADDRESSES = ("ciaddr", "yiaddr", "siaddr", "giaddr")

#: An option as (code, value).
Option = tuple[int, bytes]


class DHCPError(ValueError):
    """
    The bytes are not a readable BOOTP/DHCP message, or a value cannot be
    encoded.
    """


class DHCPMessage(NamedTuple):
    """
    A BOOTP or DHCP message.

    @ivar op: L{BOOTREQUEST} or L{BOOTREPLY}.
    @ivar htype: the hardware type (1 for Ethernet).
    @ivar hlen: the hardware address length (6 for Ethernet).
    @ivar hops: relay hops.
    @ivar xid: the transaction id chosen by the client.
    @ivar secs: seconds since the client started.
    @ivar flags: the flags field (0x8000: the client wants broadcast).
    @ivar ciaddr: the client's current 4-byte address, if it has one.
    @ivar yiaddr: the 4-byte address the server gives ("your" address).
    @ivar siaddr: the next server's 4-byte address.
    @ivar giaddr: the relay agent's 4-byte address.
    @ivar chaddr: the 16-byte client hardware address field (shorter values
        are zero-padded by L{pack}).
    @ivar sname: the 64-byte server name field (likewise padded).
    @ivar file: the 128-byte boot file field (likewise padded).
    @ivar options: (code, value) pairs in wire order, without PAD and END.
    """

    op: int
    htype: int
    hlen: int
    hops: int
    xid: int
    secs: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    giaddr: bytes
    chaddr: bytes
    sname: bytes
    file: bytes
    options: tuple[Option, ...] = ()

    @property
    def clientMac(self) -> bytes | None:
        """
        The client's 6-byte MAC, or None if the hardware is not Ethernet.
        """
        if (self.htype, self.hlen) != (HTYPE_ETHERNET, 6):
            return None
        return self.chaddr[:6]

    @property
    def messageType(self) -> int | None:
        """
        The DHCP message type (option 53), or None for plain BOOTP.
        """
        value = self.option(OPT_MESSAGE_TYPE)
        return value[0] if value else None

    def option(self, code: int) -> bytes | None:
        """
        The value of option C{code}, the values of repeated instances joined
        (RFC 3396), or None if the message does not carry it.
        """
        values = [value for (each, value) in self.options if each == code]
        return b"".join(values) if values else None

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> DHCPMessage:
        """
        Read the message starting at C{offset} and running to the end of
        C{data} (the UDP payload).

        @return: the message.
        @raise DHCPError: under 240 bytes, no magic cookie, or an option
            running past the end of the data.
        """
        if offset < 0 or len(data) - offset < MIN_LENGTH:
            raise DHCPError(
                f"BOOTP message truncated: {max(len(data) - offset, 0)} of at least "
                f"{MIN_LENGTH} bytes"
            )
        fields = _FIXED.unpack_from(data, offset)
        cookie = bytes(data[offset + FIXED_LENGTH : offset + MIN_LENGTH])
        if cookie != MAGIC:
            raise DHCPError(f"BOOTP message has no DHCP magic cookie (found {cookie.hex()})")
        return cls._make((*fields, parseOptions(bytes(data[offset + MIN_LENGTH :]))))

    def pack(self, optionsArea: int = OPTIONS_AREA) -> bytes:
        """
        The message as bytes.

        @param optionsArea: the least length of what follows the fixed part
            (cookie, options, END, zero padding); 312 makes a 548-byte
            message, 64 the classic 300-byte BOOTP size.
        @raise DHCPError: a field does not fit (see L{packOptions} too).
        """
        for name in _ADDRESSES:
            if len(getattr(self, name)) != 4:
                raise DHCPError(f"BOOTP {name} is {len(getattr(self, name))} bytes, not 4")
        for name, size in _PADDED:
            if len(getattr(self, name)) > size:
                raise DHCPError(f"BOOTP {name} is {len(getattr(self, name))} bytes, over {size}")
        try:
            fixed = _FIXED.pack(*self[:-1])
        except struct.error as e:
            raise DHCPError(f"BOOTP header field out of range: {e}") from None
        area = MAGIC + packOptions(self.options) + bytes([OPT_END])
        return fixed + area + bytes(max(optionsArea - len(area), 0))


def parseOptions(area: bytes) -> tuple[Option, ...]:
    """
    Split an options area (after the cookie) into (code, value) pairs.

    @param area: the bytes after the magic cookie.
    @return: the options up to END or the end of C{area}, PAD skipped.
    @raise DHCPError: an option's length or value runs past C{area}.
    """
    options = []
    position = 0
    while position < len(area):
        code = area[position]
        if code == OPT_PAD:
            position += 1
            continue
        if code == OPT_END:
            break
        if position + 2 > len(area):
            raise DHCPError(f"DHCP option {code} truncated before its length")
        length = area[position + 1]
        value = area[position + 2 : position + 2 + length]
        if len(value) < length:
            raise DHCPError(f"DHCP option {code} truncated: {len(value)} of {length} bytes")
        options.append((code, value))
        position += 2 + length
    return tuple(options)


def packOptions(options: Iterable[Option]) -> bytes:
    """
    Encode options, without END; values over 255 bytes become consecutive
    options of the same code (RFC 3396).

    @raise DHCPError: a code is PAD, END or not a byte.
    """
    out = bytearray()
    for code, value in options:
        if not OPT_PAD < code < OPT_END:
            raise DHCPError(f"DHCP option code {code} cannot carry a value")
        chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes([code, len(chunk)]) + chunk
    return bytes(out)


def packAddresses(addresses: Iterable[bytes]) -> bytes:
    """
    Encode a list of IPv4 addresses (router, DNS options).

    @raise DHCPError: an address is not 4 bytes.
    """
    addresses = list(addresses)
    for address in addresses:
        if len(address) != 4:
            raise DHCPError(f"{len(address)}-byte value is not an IPv4 address")
    return b"".join(addresses)


def parseAddresses(value: bytes) -> list[bytes]:
    """
    Decode a list of IPv4 addresses.

    @raise DHCPError: the length is not a multiple of 4.
    """
    if len(value) % 4:
        raise DHCPError(f"{len(value)} bytes are not a list of IPv4 addresses")
    return [value[i : i + 4] for i in range(0, len(value), 4)]


def packDomainSearch(names: Iterable[str]) -> bytes:
    """
    Encode the domain search list of option 119 (RFC 3397): the names in
    RFC 1035 wire format, a suffix already written replaced by a pointer to
    it (offsets count from the start of the option value).

    @param names: ASCII domain names; a trailing dot is allowed.
    @raise DHCPError: a name is not ASCII or has an empty or long label.
    """
    out = bytearray()
    seen: dict[tuple[bytes, ...], int] = {}
    for name in names:
        labels = domainLabels(name)
        for i in range(len(labels)):
            suffix = labels[i:]
            if suffix in seen:
                out += (0xC000 | seen[suffix]).to_bytes(2, "big")
                break
            if len(out) < 0x4000:
                seen[suffix] = len(out)
            out += bytes([len(labels[i])]) + labels[i]
        else:
            out.append(0)
    return bytes(out)


def domainLabels(name: str) -> tuple[bytes, ...]:
    """
    The labels of a domain name, checked for RFC 1035 limits.

    @raise DHCPError: not ASCII, or an empty or overlong label.
    """
    try:
        encoded = name.encode("ascii")
    except UnicodeEncodeError:
        raise DHCPError(f"domain name {name!r} is not ASCII") from None
    if encoded in (b"", b"."):
        return ()
    labels = tuple(encoded.removesuffix(b".").split(b"."))
    if any(not 0 < len(label) < 64 for label in labels) or len(encoded) > 253:
        raise DHCPError(f"domain name {name!r} has an empty or overlong label")
    return labels
