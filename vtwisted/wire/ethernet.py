"""
Ethernet II framing: addresses, EtherTypes and sizes.

A frame is destination MAC (6), source MAC (6), EtherType or 802.3 length (2),
payload; no preamble and no FCS, as on VDE data sockets and TAP devices.
"""

from __future__ import annotations

import re

HEADER_LENGTH = 14
MIN_FRAME = 14
#: The largest IP MTU a port accepts by default (jumbo frames).
DEFAULT_MTU = 9216
#: Ethernet header plus one 802.1Q tag: a frame carries at most MTU + this.
FRAME_OVERHEAD = 18

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
#: An 802.1ad (QinQ) service tag: the switch does not read it as a VLAN tag.
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD

BROADCAST = b"\xff" * 6

_MAC = re.compile(r"^([0-9a-fA-F]{1,2})([:.-][0-9a-fA-F]{1,2}){5}$")


def isMulticast(mac: bytes) -> bool:
    """
    True for group addresses (broadcast included): the I/G bit is set.
    """
    return bool(mac[0] & 1)


def formatMac(mac: bytes) -> str:
    """
    C{aa:bb:cc:dd:ee:ff}, lower-case hex.
    """
    return ":".join(f"{b:02x}" for b in mac)


def parseMac(text: str) -> bytes:
    """
    Parse C{aa:bb:cc:dd:ee:ff} (or with C{.} or C{-} separators).

    @raise ValueError: not a MAC address.
    """
    if not _MAC.match(text):
        raise ValueError(f"{text!r} is not a MAC address")
    return bytes(int(part, 16) for part in re.split(r"[:.-]", text))


def maxFrameFor(mtu: int) -> int:
    """
    The longest frame (tag included) a port with IP MTU C{mtu} carries.
    """
    return mtu + FRAME_OVERHEAD
