"""
Two throwaway network namespaces joined by TAP devices with the virtio-net
header and every offload, for tests that check packets against the kernel.

L{twoNamespaces} creates them (10.77.0.1 / fd77::1 and 10.77.0.2 / fd77::2)
and deletes them afterwards; L{_inNamespace} runs a call in a thread inside
one, so the sockets it opens live there.  They need root, C{/dev/net/tun}
and iproute2 (L{needKernel}).
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

from helpers import unavailable
from vnetpackets import MAC_A, MAC_B

TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_ALL = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40
CLONE_NEWNET = 0x40000000
SOL_UDP, UDP_SEGMENT = 17, 103
T = TypeVar("T")


def needKernel() -> None:
    """
    Skip a kernel test that cannot run here (root, /dev/net/tun, iproute2),
    or fail it when peers are required (C{VTWISTED_REQUIRE_PEERS=1}).
    """
    if os.geteuid() != 0:
        unavailable("needs root")
    if not os.path.exists("/dev/net/tun") or shutil.which("ip") is None:
        unavailable("needs /dev/net/tun and iproute2")


def _inNamespace(name: str, call: Callable[[], T]) -> T:
    """
    Run C{call} in a thread that has entered network namespace C{name}, so
    the devices and sockets it creates live there; this thread stays put.
    """

    def run() -> T:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        return call()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def _openTap(name: str) -> int:
    """
    A TAP with the virtio-net header and every offload this kernel has.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR)
    mode = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), mode))
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_ALL)
    except OSError:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_ALL & 0x0F)
    return fd


class Side(NamedTuple):
    """
    One namespace of L{twoNamespaces} and its TAP.
    """

    namespace: str
    tap: int
    mac: bytes
    ipv4: str
    ipv6: str


@contextmanager
def twoNamespaces() -> Iterator[tuple[Side, Side]]:
    """
    Two fresh namespaces, each with a TAP (virtio-net header, all offloads)
    addressed 10.77.0.1 / fd77::1 and 10.77.0.2 / fd77::2; deleted afterwards.
    """
    sides: list[Side] = []
    names = [f"vnettest-{os.getpid()}-{n}" for n in (1, 2)]
    try:
        for n, (name, mac) in enumerate(zip(names, (MAC_A, MAC_B)), 1):
            subprocess.run(["ip", "netns", "add", name], check=True)
            tap = _inNamespace(name, lambda: _openTap("vnt0"))
            sides.append(Side(name, tap, mac, f"10.77.0.{n}", f"fd77::{n}"))
            for command in (
                ["link", "set", "lo", "up"],
                ["link", "set", "vnt0", "address", mac.hex(":")],
                ["addr", "add", f"10.77.0.{n}/24", "dev", "vnt0"],
                ["addr", "add", f"fd77::{n}/64", "dev", "vnt0", "nodad"],
                ["link", "set", "vnt0", "up"],
            ):
                subprocess.run(["ip", "-n", name, *command], check=True)
        yield sides[0], sides[1]
    finally:
        for side in sides:
            os.close(side.tap)
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, stderr=subprocess.DEVNULL)


def _checksumErrors(namespace: str) -> int:
    """
    TCP and UDP checksum errors counted in a namespace.
    """
    text = subprocess.run(
        ["ip", "netns", "exec", namespace, "cat", "/proc/net/snmp", "/proc/net/snmp6"],
        check=True, capture_output=True, text=True,
    ).stdout
    lines = text.splitlines()
    errors = 0
    for names, values in itertools.pairwise(line.split() for line in lines):
        if names[0] in ("Tcp:", "Udp:") and values[0] == names[0] and "InCsumErrors" in names:
            errors += int(values[names.index("InCsumErrors")])
    for line in lines:
        if line.startswith(("Udp6InCsumErrors", "UdpLite6InCsumErrors")):
            errors += int(line.split()[1])
    return errors
