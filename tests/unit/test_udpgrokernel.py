"""
L{vtwisted.wire.udpgro} against the Linux kernel: merged packets are
written into a real TAP, and what a router behind it forwards is read back
and compared with what was sent.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tapnamespaces import Side, _inNamespace, needKernel, twoNamespaces
from test_checksum import referenceSum
from test_udpgro import coalesce, datagrams
from vnetpackets import MAC_B, UDP, pseudoHeader, randomPayload

from vtwisted.wire import udpgro

# -- against the Linux kernel -----------------------------------------------------------------


@pytest.mark.integration
def test_aRouterBehindTheTapForwardsExactlyTheDatagramsThatWereMerged() -> None:
    """
    Merged packets written into a TAP come out of the kernel's forwarding as
    the original datagrams, with valid checksums and the original IPv4 ids.
    """
    # Namespace b routes 10.78.0.0/24 and fd78::/64 out of a second TAP
    # opened without offloads, so its kernel must cut each merged packet and
    # complete every checksum itself; the test reads those frames.
    needKernel()
    with twoNamespaces() as (a, b):
        plainTap = _inNamespace(b.namespace, lambda: _plainTap("vnt1"))
        try:
            _route(a.namespace, b)
            for v6 in (False, True):
                sent = _burst(a, v6)
                read = _drain(a.tap, len(sent))
                out, coalescer = coalesce(read)
                assert coalescer.datagrams >= 100, "the burst was not coalesced"
                for packet in out:
                    os.write(b.tap, packet)
                forwarded = _drainPlain(plainTap, v6, len(sent))
                _checkForwarded(read, forwarded, sent, v6)
        finally:
            os.close(plainTap)


def _plainTap(name: str) -> int:
    """
    A TAP without the header: the kernel completes every checksum for it.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))
    return fd


def _route(aName: str, b: Side) -> None:
    """
    Route a's datagrams through b to the network behind b's plain TAP.
    """
    bName = b.namespace
    for command in (
        ["-n", aName, "route", "add", "10.78.0.0/24", "via", "10.77.0.2"],
        ["-n", aName, "-6", "route", "add", "fd78::/64", "via", "fd77::2"],
        ["-n", aName, "neigh", "replace", "10.77.0.2", "lladdr", MAC_B.hex(":"), "dev", "vnt0"],
        ["-n", aName, "-6", "neigh", "replace", "fd77::2", "lladdr", MAC_B.hex(":"),
         "dev", "vnt0"],
        ["-n", bName, "addr", "add", "10.78.0.2/24", "dev", "vnt1"],
        ["-n", bName, "addr", "add", "fd78::2/64", "dev", "vnt1", "nodad"],
        ["-n", bName, "link", "set", "vnt1", "up"],
        ["-n", bName, "neigh", "replace", "10.78.0.9", "lladdr", "02:00:00:00:78:09",
         "dev", "vnt1"],
        ["-n", bName, "-6", "neigh", "replace", "fd78::9", "lladdr", "02:00:00:00:78:09",
         "dev", "vnt1"],
    ):
        subprocess.run(["ip", *command], check=True)
    for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
        subprocess.run(["ip", "netns", "exec", bName, "sysctl", "-qw", key], check=True)


def _burst(a: Side, v6: bool) -> list[bytes]:
    """
    Send 150 datagrams of mixed sizes from a towards the network behind b,
    before anything reads them, and return their payloads.
    """
    family = socket.AF_INET6 if v6 else socket.AF_INET
    target = ("fd78::9" if v6 else "10.78.0.9", 7000)
    sizes = [100] * 70 + [1400] * 50 + [33] * 30
    payloads = [randomPayload(size, n) for n, size in enumerate(sizes)]
    sender = _inNamespace(a.namespace, lambda: socket.socket(family, socket.SOCK_DGRAM))
    with sender:
        sender.connect(target)
        for payload in payloads:
            sender.send(payload)
    return payloads


def _readWhile(fd: int, wanted: int, keep: Callable[[bytes], bool]) -> list[bytes]:
    """
    The first C{wanted} packets the kernel writes to a TAP that C{keep}
    accepts, read as they come (for up to 5 s), not what waits after a
    fixed sleep: a loaded machine may hand some of the burst on later.
    """
    packets: list[bytes] = []
    deadline = time.monotonic() + 5
    blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    try:
        while len(packets) < wanted and time.monotonic() < deadline:
            try:
                packet = os.read(fd, 70000)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if keep(packet):
                packets.append(packet)
    finally:
        os.set_blocking(fd, blocking)
    return packets


def _drain(fd: int, wanted: int) -> list[bytes]:
    """
    The first C{wanted} UDP packets the kernel writes to a TAP with the header.
    """
    return _readWhile(fd, wanted,
                      lambda packet: packet[1] == 0 and packet[6:10] in udpgro.CANDIDATES)


def _drainPlain(fd: int, v6: bool, wanted: int) -> list[bytes]:
    """
    The first C{wanted} UDP frames the kernel writes to a plain TAP.
    """
    etherType = b"\x86\xdd" if v6 else b"\x08\x00"
    return _readWhile(fd, wanted, lambda frame: frame[12:14] == etherType
                      and frame[23 if not v6 else 20] == UDP)


def _checkForwarded(read: list[bytes], forwarded: list[bytes], sent: list[bytes],
                    v6: bool) -> None:
    """
    Each forwarded frame carries its datagram's payload and IPv4 id, with
    valid checksums.
    """
    assert len(forwarded) == len(sent)
    for original, frame, payload in zip(read, forwarded, sent, strict=True):
        ip = frame[14:]
        l4 = 40 if v6 else 20
        assert ip[l4 + 8 :] == payload
        if v6:
            source, destination = ip[8:24], ip[24:40]
            sums = pseudoHeader(True, source, destination, UDP, len(ip) - 40)
        else:
            assert referenceSum(ip[:20]) in (0, 0xFFFF)
            assert ip[4:6] == original[28:30], "the IPv4 id changed"
            sums = pseudoHeader(False, ip[12:16], ip[16:20], UDP, len(ip) - 20)
        assert referenceSum(sums + ip[l4:]) in (0, 0xFFFF), "bad UDP checksum"


@st.composite
def junk(draw: st.DrawFn) -> list[bytes]:
    """
    Packets that look like candidates for a few bytes, then anything.
    """
    good = datagrams(3, draw(st.integers(1, 60)), v6=draw(st.booleans()))
    packets = []
    for _ in range(draw(st.integers(1, 12))):
        base = draw(st.sampled_from(good))
        cut = draw(st.integers(0, len(base)))
        tail = draw(st.binary(max_size=40))
        packets.append(draw(st.sampled_from([base, base[:cut], base[:cut] + tail, tail])))
    return packets


@given(junk())
@settings(max_examples=300, deadline=None)
def test_truncatedAndRandomPacketsNeverRaiseAndAreAllHandedOn(packets: list[bytes]) -> None:
    """Whatever is read, the coalescer hands every packet on, merged or as it came."""
    out, coalescer = coalesce(packets)
    inputs = [p for p in out if any(p is q for q in packets)]
    assert len(inputs) + coalescer.datagrams == len(packets)
    assert len(out) == len(inputs) + coalescer.packets
