"""
The IPv6 addresses of the slirp engine tests, and UDP servers on the
loopback addresses (C{::1} or C{127.0.0.1}) that answer in capitals: for
tests whose host side is real sockets.  L{needIpv6Loopback} skips a test on
a host without C{::1} (and fails it there with C{VTWISTED_REQUIRE_PEERS=1}).
"""

from __future__ import annotations

import ipaddress
import select
import socket
from typing import Any

from helpers import unavailable
from reactortools import until

GUEST6 = ipaddress.IPv6Address("fec0::15").packed
GATEWAY6 = ipaddress.IPv6Address("fec0::2").packed
DNS6 = ipaddress.IPv6Address("fec0::3").packed
NEIGHBOUR6 = ipaddress.IPv6Address("fec0::9").packed
REMOTE6 = ipaddress.IPv6Address("2001:db8::7").packed


def needIpv6Loopback() -> None:
    """
    Make sure this host can bind C{::1}; skip (or fail, when peers are
    required) if not.
    """
    if not socket.has_ipv6:
        unavailable("Python was built without IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        unavailable(f"no IPv6 loopback: {e}")


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _server(family: socket.AddressFamily, host: str) -> socket.socket:
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.setblocking(False)
    return server


async def _answer(server: socket.socket) -> tuple[bytes, Any]:
    """
    Wait for one datagram on C{server} and send it back in capitals.
    """
    await until(lambda: _readable(server), what="a datagram")
    data, peer = server.recvfrom(2000)
    server.sendto(data.upper(), peer)
    return data, peer
