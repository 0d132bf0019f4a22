"""
Addresses in the slirp engines' messages: C{10.0.2.15:40000} for IPv4,
C{[fec0::15]:40000} for IPv6, guest-side (packed) or host-side (text).

Only logs, errors and console lines use these; no packet does.
"""

from __future__ import annotations

import ipaddress
import socket

from vtwisted.wire.checksum import Buffer


def guestEndpoint(address: Buffer, port: int) -> str:
    """
    C{address:port} for a guest-side address of 4 (IPv4) or 16 (IPv6)
    bytes, an IPv6 address in brackets.
    """
    if len(address) == 16:
        return f"[{ipaddress.IPv6Address(bytes(address))}]:{port}"
    return f"{socket.inet_ntoa(bytes(address))}:{port}"


def dotted(address: Buffer) -> str:
    """
    C{10.0.2.15} for a 4-byte IPv4 address.
    """
    return ".".join(str(b) for b in address)


def hostEndpoint(host: str, port: int) -> str:
    """
    C{host:port} for a host-side address as Twisted gives it, an IPv6
    literal in brackets.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unmapped(host: str) -> str:
    """
    C{host} without the C{::ffff:} an IPv6 socket puts before an IPv4
    peer's address.
    """
    return host[7:] if host.startswith("::ffff:") and "." in host else host
