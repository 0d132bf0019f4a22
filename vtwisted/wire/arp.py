"""
ARP for Ethernet and IPv4 (RFC 826).

Theory of operation: an ARP packet for Ethernet/IPv4 is 28 bytes: hardware
type 1, protocol type 0x0800, address lengths 6 and 4, an operation, then
the sender's and the target's MAC and IPv4 address.  L{ARPPacket.parse}
refuses anything with other types or lengths (ARP for other networks is of
no use to a user-mode NAT) and ignores what follows the 28 bytes, the
Ethernet padding of a 60-byte frame.  L{ARPPacket.pack} emits exactly 28
bytes; padding the frame is the sender's business.  L{replyTo} builds the
answer a host gives to a request for one of its own addresses, and
L{rarpAnnouncement} the frame that announces a migrated guest.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vtwisted.wire.checksum import Buffer

OP_REQUEST = 1
OP_REPLY = 2
#: RARP's request (RFC 903), which announces a moved guest.
OP_REVERSE_REQUEST = 3
ETHERTYPE_RARP = 0x8035
#: The length of an Ethernet/IPv4 ARP packet.
LENGTH = 28

HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800

_PACKET = struct.Struct("!HHBBH6s4s6s4s")


class ARPError(ValueError):
    """
    The bytes are not a readable Ethernet/IPv4 ARP packet.
    """


class ARPPacket(NamedTuple):
    """
    An Ethernet/IPv4 ARP packet.

    @ivar op: the operation, L{OP_REQUEST} or L{OP_REPLY} (others are kept).
    @ivar senderMac: the sender's 6-byte MAC address.
    @ivar senderIp: the sender's 4-byte IPv4 address.
    @ivar targetMac: the target's MAC (zeros in a request, by custom).
    @ivar targetIp: the target's IPv4 address.
    """

    op: int
    senderMac: bytes
    senderIp: bytes
    targetMac: bytes
    targetIp: bytes

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> ARPPacket:
        """
        Read the packet starting at C{offset}; bytes after it are ignored.

        @param data: bytes holding the packet.
        @param offset: where the packet starts (after the Ethernet header).
        @return: the packet.
        @raise ARPError: truncated, or not for Ethernet and IPv4.
        """
        if offset < 0 or len(data) - offset < LENGTH:
            raise ARPError(
                f"ARP packet truncated: {max(len(data) - offset, 0)} of {LENGTH} bytes"
            )
        (htype, ptype, hlen, plen, op, sha, spa, tha, tpa) = _PACKET.unpack_from(data, offset)
        if htype != HTYPE_ETHERNET:
            raise ARPError(f"ARP hardware type {htype} is not Ethernet (1)")
        if ptype != PTYPE_IPV4:
            raise ARPError(f"ARP protocol type {ptype:#06x} is not IPv4 (0x0800)")
        if (hlen, plen) != (6, 4):
            raise ARPError(f"ARP address lengths {hlen}/{plen} are not 6/4")
        return cls(op, sha, spa, tha, tpa)

    def pack(self) -> bytes:
        """
        The packet as L{LENGTH} bytes.

        @raise ARPError: an address has the wrong length.
        """
        for name, value, size in (
            ("sender MAC", self.senderMac, 6),
            ("sender IP", self.senderIp, 4),
            ("target MAC", self.targetMac, 6),
            ("target IP", self.targetIp, 4),
        ):
            if len(value) != size:
                raise ARPError(f"ARP {name} is {len(value)} bytes, not {size}")
        return _PACKET.pack(
            HTYPE_ETHERNET, PTYPE_IPV4, 6, 4, self.op,
            self.senderMac, self.senderIp, self.targetMac, self.targetIp,
        )


def replyTo(request: ARPPacket, mac: bytes) -> ARPPacket:
    """
    The reply to C{request} from the owner of its target address.

    @param request: a request (L{OP_REQUEST}) for an address we answer for.
    @param mac: the 6-byte MAC that owns C{request.targetIp}.
    @return: a L{OP_REPLY} from C{mac}/C{request.targetIp} to the requester.
    """
    return ARPPacket(OP_REPLY, mac, request.targetIp, request.senderMac, request.senderIp)


def rarpAnnouncement(mac: bytes) -> bytes:
    """
    The broadcast frame a migrated guest is announced with, as QEMU sends
    it: a RARP request (RFC 903) from C{mac} about C{mac}, no IPv4
    addresses, padded to 60 bytes.  Switches learn C{mac} where it arrives.
    """
    packet = ARPPacket(OP_REVERSE_REQUEST, mac, bytes(4), mac, bytes(4)).pack()
    return (b"\xff" * 6 + mac + ETHERTYPE_RARP.to_bytes(2, "big") + packet).ljust(60, b"\x00")
