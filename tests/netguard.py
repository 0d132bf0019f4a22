"""
A guard against tests sending traffic off the machine.

Tests may only use loopback and the network namespaces they make.  The
guard wraps the socket calls that name a destination (C{connect},
C{connect_ex}, C{sendto}, C{sendmsg}) in this process: an IPv4 or IPv6
destination the kernel would route through a device of one of the host's
default routes (its way out) is refused with C{EPERM} before anything is
sent, and recorded, so that the test fails even where the code under test
takes the error in its stride (slirp answers the guest "unreachable").
Multicast is let through when the socket sends it on loopback
(C{IP_MULTICAST_IF} 127.0.0.1 or C{lo}'s index, or bound to C{lo}), and
so is whatever a socket sends from another network namespace (one a test
made and entered to open it; told by C{SO_NETNS_COOKIE}).

Processes the tests start (C{twistd}, QEMU, C{vde_plug}) are not covered:
they run in namespaces without a way out, or on loopback.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_INET = (socket.AF_INET, socket.AF_INET6)


@functools.cache
def _waysOut() -> frozenset[str]:
    """
    The devices of the host's default routes, IPv4 and IPv6.
    """
    devices: set[str] = set()
    for family in ("-4", "-6"):
        try:
            found = subprocess.run(["ip", "-j", family, "route", "show", "default"],
                                   capture_output=True, text=True, check=False).stdout
            devices.update(route["dev"] for route in json.loads(found or "[]") if "dev" in route)
        except (OSError, ValueError):
            continue
    return frozenset(devices)


@functools.lru_cache(maxsize=4096)
def _leaves(host: str) -> bool:
    """
    Whether the kernel would send a packet to C{host} out of the machine.
    """
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name: resolving it is the resolver's business
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_unspecified:
        return False
    found = subprocess.run(["ip", "-j", "route", "get", str(address)],
                           capture_output=True, text=True, check=False).stdout
    try:
        routes = json.loads(found or "[]")
    except ValueError:
        return False
    return any(route.get("dev") in _waysOut() for route in routes)


_SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)
#: The IPv4 multicast device each socket was given by index (C{ip_mreqn}),
#: which C{getsockopt} cannot tell; by inode, as a socket may be adopted
#: into another object on a copy of its descriptor (C{adoptDatagramPort}).
_multicastIndex: dict[int, int] = {}


def _namespaceCookie(sock: socket.socket) -> int | None:
    try:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return None


@functools.cache
def _ownNamespace() -> int | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return _namespaceCookie(sock)


def _elsewhere(sock: socket.socket) -> bool:
    """
    Whether C{sock} lives in another network namespace (one a test made).
    """
    cookie = _namespaceCookie(sock)
    return cookie is not None and cookie != _ownNamespace()


def _onLoopback(sock: socket.socket) -> bool:
    """
    Whether multicast from C{sock} stays on loopback.
    """
    lo = socket.if_nametoindex("lo")
    try:
        device = sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
        if device.rstrip(b"\0") == b"lo":
            return True
        if sock.family == socket.AF_INET:
            chosen = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
            byIndex = _multicastIndex.get(os.fstat(sock.fileno()).st_ino)
            return socket.inet_ntoa(chosen) == "127.0.0.1" or byIndex == lo
        return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF) == lo
    except OSError:
        return False


class NetworkGuard:
    """
    The wrapped calls, and what they refused.
    """

    def __init__(self) -> None:
        self.refused: list[str] = []

    def check(self, sock: socket.socket, address: Any, call: str) -> None:
        """
        Refuse (C{EPERM}) and record a destination off the machine.
        """
        if sock.family not in _INET or not isinstance(address, tuple) or not address:
            return
        host = str(address[0])
        if not _leaves(host) or _elsewhere(sock):
            return
        try:
            multicast = ipaddress.ip_address(host.split("%")[0]).is_multicast
        except ValueError:
            multicast = False
        if multicast and _onLoopback(sock):
            return
        line = f"{call} to {address!r}: off the machine (the test network guard)"
        self.refused.append(line)
        raise PermissionError(errno.EPERM, line)

    def wrap(self, name: str, where: Callable[..., Any]) -> Callable[..., Any]:
        original = getattr(socket.socket, name)
        guard = self

        @functools.wraps(original)
        def guarded(sock: socket.socket, *args: Any) -> Any:
            guard.check(sock, where(*args), name)
            return original(sock, *args)

        return guarded


_WHERE: dict[str, Callable[..., Any]] = {
    "connect": lambda address: address,
    "connect_ex": lambda address: address,
    "sendto": lambda data, *rest: rest[-1] if rest else None,
    "sendmsg": lambda *args: args[3] if len(args) > 3 else None,
}


def _setsockopt(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def noting(sock: socket.socket, level: int, option: int, *value: Any) -> Any:
        if (level, option) == (socket.IPPROTO_IP, socket.IP_MULTICAST_IF) and \
                isinstance(value[0], bytes) and len(value[0]) == 12:
            index = int.from_bytes(value[0][8:], sys.byteorder, signed=True)
            _multicastIndex[os.fstat(sock.fileno()).st_ino] = index
        return original(sock, level, option, *value)

    return noting


@contextmanager
def networkGuard() -> Iterator[NetworkGuard]:
    """
    Guard this process's sockets for the length of the block.
    """
    guard = NetworkGuard()
    saved = {name: getattr(socket.socket, name) for name in (*_WHERE, "setsockopt")}
    for name, where in _WHERE.items():
        setattr(socket.socket, name, guard.wrap(name, where))
    socket.socket.setsockopt = _setsockopt(saved["setsockopt"])  # type: ignore[method-assign]
    try:
        yield guard
    finally:
        for name, original in saved.items():
            setattr(socket.socket, name, original)
