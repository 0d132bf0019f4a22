"""
DHCPv6 messages (RFC 8415) between a client and a server on one link.

Theory of operation: a message is a type byte, a 3-byte transaction id and
a run of options, each a 16-bit code, a 16-bit length and that many bytes.
Options may repeat (a client can ask for several identity associations),
so L{Dhcp6Message} keeps them as an ordered tuple of C{(code, value)}.
Some options nest options of their own after a fixed part: IA_NA and IA_PD
(IAID, T1, T2), IA_TA (IAID), IAADDR (address, preferred and valid
lifetimes) and IAPREFIX (lifetimes, prefix length, prefix, RFC 8415 21.22);
L{IdentityAssociation}, L{IaAddress} and L{IaPrefix} read and write them.

Everything here is pure; parsers raise nothing but L{Dhcp6Error}, whatever
the bytes.  Domain names in options are never compressed (RFC 8415 10).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from vtwisted.wire.dhcp import DHCPError, domainLabels

#: The ports: clients listen on 546, servers and relays on 547.
CLIENT_PORT, SERVER_PORT = 546, 547

#: Message types.
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY = 1, 2, 3, 4, 5, 6, 7
RELEASE, DECLINE, RECONFIGURE, INFORMATION_REQUEST = 8, 9, 10, 11

#: Option codes.
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 4, 5, 6
OPT_PREFERENCE, OPT_ELAPSED_TIME, OPT_STATUS_CODE, OPT_RAPID_COMMIT = 7, 8, 13, 14
OPT_DNS_SERVERS, OPT_DOMAIN_LIST, OPT_IA_PD, OPT_IAPREFIX = 23, 24, 25, 26
#: Where a network boot loader finds its file (RFC 5970), if it asks.
OPT_BOOTFILE_URL = 59

#: Status codes.
SUCCESS, UNSPEC_FAIL, NO_ADDRS_AVAIL, NO_BINDING, NOT_ON_LINK, USE_MULTICAST = 0, 1, 2, 3, 4, 5
NO_PREFIX_AVAIL = 6

#: The largest DUID (RFC 8415 11.1: 128 bytes after the type).
MAX_DUID = 130

_OPTION = struct.Struct("!HH")
_IA_NA = struct.Struct("!III")
_IAADDR = struct.Struct("!16sII")
_IAPREFIX = struct.Struct("!IIB16s")

Option = tuple[int, bytes]


class Dhcp6Error(ValueError):
    """
    The bytes are not a readable DHCPv6 message or option.
    """


def parseOptions(data: bytes, offset: int = 0) -> tuple[Option, ...]:
    """
    The options from C{offset} to the end of C{data}, in order.

    @raise Dhcp6Error: an option runs past the end.
    """
    options = []
    end = len(data)
    while offset < end:
        if offset + 4 > end:
            raise Dhcp6Error(f"{end - offset} stray bytes after the last option")
        code, length = _OPTION.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise Dhcp6Error(f"option {code} of {length} bytes runs past the end")
        options.append((code, data[offset:offset + length]))
        offset += length
    return tuple(options)


def packOptions(options: Iterable[Option]) -> bytes:
    """
    Options in wire form.
    """
    return b"".join(_OPTION.pack(code, len(value)) + value for code, value in options)


def first(options: Iterable[Option], code: int) -> bytes | None:
    """
    The value of the first option C{code}, or L{None}.
    """
    return next((value for c, value in options if c == code), None)


class Dhcp6Message(NamedTuple):
    """
    One client or server message (not a relay message).
    """

    kind: int
    transactionId: bytes
    options: tuple[Option, ...]

    @classmethod
    def parse(cls, data: bytes) -> Dhcp6Message:
        """
        @raise Dhcp6Error: too short, or an option runs past the end.
        """
        if len(data) < 4:
            raise Dhcp6Error(f"{len(data)} bytes is too short for a message")
        return cls(data[0], bytes(data[1:4]), parseOptions(bytes(data), 4))

    def pack(self) -> bytes:
        return bytes([self.kind]) + self.transactionId + packOptions(self.options)

    def option(self, code: int) -> bytes | None:
        """
        The value of the first option C{code}, or L{None}.
        """
        return first(self.options, code)

    def all(self, code: int) -> list[bytes]:
        """
        The values of every option C{code}, in order.
        """
        return [value for c, value in self.options if c == code]


class IdentityAssociation(NamedTuple):
    """
    An IA_NA or IA_PD (C{t1} and C{t2} set) or IA_TA (both L{None})
    option's value.
    """

    iaid: int
    t1: int | None
    t2: int | None
    options: tuple[Option, ...]

    @classmethod
    def parse(cls, value: bytes, temporary: bool = False) -> IdentityAssociation:
        """
        @param temporary: read an IA_TA (IAID only) instead of an IA_NA.
        @raise Dhcp6Error: too short, or a nested option runs past the end.
        """
        fixed = 4 if temporary else 12
        if len(value) < fixed:
            kind = "IA_TA" if temporary else "IA_NA"
            raise Dhcp6Error(f"{kind} of {len(value)} bytes is too short")
        if temporary:
            return cls(int.from_bytes(value[:4], "big"), None, None, parseOptions(value, 4))
        iaid, t1, t2 = _IA_NA.unpack_from(value)
        return cls(iaid, t1, t2, parseOptions(value, 12))

    def pack(self) -> bytes:
        if self.t1 is None or self.t2 is None:
            fixed = self.iaid.to_bytes(4, "big")
        else:
            fixed = _IA_NA.pack(self.iaid, self.t1, self.t2)
        return fixed + packOptions(self.options)

    def addresses(self) -> list[IaAddress]:
        """
        The IAADDR options inside.

        @raise Dhcp6Error: one is malformed.
        """
        return [IaAddress.parse(value) for code, value in self.options if code == OPT_IAADDR]

    def prefixes(self) -> list[IaPrefix]:
        """
        The IAPREFIX options inside (of an IA_PD).

        @raise Dhcp6Error: one is malformed.
        """
        return [IaPrefix.parse(value) for code, value in self.options if code == OPT_IAPREFIX]


class IaPrefix(NamedTuple):
    """
    An IAPREFIX option's value: a delegated prefix and its lifetimes.
    """

    preferred: int
    valid: int
    length: int
    prefix: bytes
    options: tuple[Option, ...] = ()

    @classmethod
    def parse(cls, value: bytes) -> IaPrefix:
        """
        @raise Dhcp6Error: too short, a length over 128, or a nested option
            running past the end.
        """
        if len(value) < _IAPREFIX.size:
            raise Dhcp6Error(f"IAPREFIX of {len(value)} bytes is too short")
        preferred, valid, length, prefix = _IAPREFIX.unpack_from(value)
        if length > 128:
            raise Dhcp6Error(f"IAPREFIX with a prefix length of {length}")
        return cls(preferred, valid, length, prefix, parseOptions(value, _IAPREFIX.size))

    def pack(self) -> bytes:
        return _IAPREFIX.pack(self.preferred, self.valid, self.length, self.prefix) + \
            packOptions(self.options)


class IaAddress(NamedTuple):
    """
    An IAADDR option's value: an address and its lifetimes, in seconds.
    """

    address: bytes
    preferred: int
    valid: int
    options: tuple[Option, ...] = ()

    @classmethod
    def parse(cls, value: bytes) -> IaAddress:
        """
        @raise Dhcp6Error: too short, or a nested option runs past the end.
        """
        if len(value) < 24:
            raise Dhcp6Error(f"IAADDR of {len(value)} bytes is too short")
        address, preferred, valid = _IAADDR.unpack_from(value)
        return cls(address, preferred, valid, parseOptions(value, 24))

    def pack(self) -> bytes:
        return _IAADDR.pack(self.address, self.preferred, self.valid) + packOptions(self.options)


def statusCode(code: int, message: str = "") -> Option:
    """
    A Status Code option.
    """
    return (OPT_STATUS_CODE, code.to_bytes(2, "big") + message.encode("utf-8"))


def packDomainList(names: Iterable[str]) -> bytes:
    """
    The value of a Domain Search List option (RFC 3646): the names in
    RFC 1035 wire form, uncompressed.

    @raise Dhcp6Error: a name is not ASCII or has an empty or long label.
    """
    out = bytearray()
    for name in names:
        try:
            labels = domainLabels(name)
        except DHCPError as e:
            raise Dhcp6Error(str(e)) from None
        for label in labels:
            out += bytes([len(label)]) + label
        out.append(0)
    return bytes(out)
