"""
The VXLAN header (RFC 7348): 8 bytes in front of each Ethernet frame, in
one UDP datagram.

Byte 0 holds the flags, of which only I (0x08, "the VNI is valid") is
defined; bytes 4-6 are the 24-bit VXLAN network identifier (VNI), big
endian; the rest is reserved, sent as zero and ignored on receipt.  Linux's
C{vxlan} devices and vdeplug4's C{vxlan://} send exactly
C{08 00 00 00 VNI VNI VNI 00}.
"""

from __future__ import annotations

#: The header's length.
HEADER_LENGTH = 8
#: The I flag: the VNI field is valid.
FLAG_VNI = 0x08
#: The largest VNI (24 bits).
MAX_VNI = (1 << 24) - 1
#: IANA's port for VXLAN (Linux's devices default to 8472 unless told).
DEFAULT_PORT = 4789


def header(vni: int) -> bytes:
    """
    The header of a frame in network C{vni}, as every sender writes it.
    """
    if not 0 <= vni <= MAX_VNI:
        raise ValueError(f"VNI {vni} is out of range (0 to {MAX_VNI})")
    return bytes((FLAG_VNI, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\0"


def parse(datagram: bytes) -> int:
    """
    The VNI of a datagram, whose frame starts at L{HEADER_LENGTH}.

    Reserved bits are ignored, as RFC 7348 asks.

    @raise ValueError: too short for a header and an Ethernet header, or
        the I flag is not set; the message says which.
    """
    if len(datagram) < HEADER_LENGTH + 14:
        raise ValueError(f"{len(datagram)} bytes, too short for a VXLAN header and a frame")
    if not datagram[0] & FLAG_VNI:
        raise ValueError(f"flags 0x{datagram[0]:02x} lack the I flag (0x08)")
    return int.from_bytes(datagram[4:7], "big")
