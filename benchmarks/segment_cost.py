"""
Benchmark: the CPU a switch spends cutting one offload TAP's super-frame
into plain frames for a port without the virtio-net header (a VDE client,
QEMU's sockets, slirp), per frame made, in this process (no root needed).

Each figure is the best of several repeats, to leave out the machine's
other work; compare runs of two versions one after the other
(C{PYTHONPATH=OTHER python3 benchmarks/segment_cost.py}).
"""

from __future__ import annotations

import argparse
import os
import timeit

from vtwisted.testing import mac, tcpSuperFrame
from vtwisted.wire import checksum, vnet
from vtwisted.wire.ipv4 import IPv4Header
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.tcp import TCPHeader
from vtwisted.wire.udp import UDPHeader

SEGMENT = 1448
COUNT = 45


def tcp6SuperFrame(payload: bytes) -> bytes:
    """
    An IPv6 TCP super-frame as a TAP with offloads hands it over.
    """
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    length = 20 + len(payload)
    partial = checksum.pseudoHeaderSumV6(src, dst, 6, length)
    tcp = TCPHeader(40000, 5001, 1000, 2000, 0x10, 502, partial, 0).pack()
    ip = IPv6Header(0, 0, length, 6, 64, src, dst).pack()
    header = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_TCPV6, 74, SEGMENT - 20, 54, 16).pack()
    return header + mac(1) + mac(2) + b"\x86\xdd" + ip + tcp + payload


def usoSuperFrame(payload: bytes) -> bytes:
    """
    An IPv4 UDP super-frame (USO) of 1400-byte datagrams.
    """
    addresses = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
    length = 8 + len(payload)
    partial = checksum.pseudoHeaderSumV4(*addresses, 17, length)
    udp = UDPHeader(40000, 5001, length, partial).pack()
    ip = IPv4Header(0, 20 + length, 7, 2, 0, 64, 17, 0, *addresses).pack()
    ip = ip[:10] + checksum.internetChecksum(ip).to_bytes(2, "big") + ip[12:]
    header = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_UDP_L4, 42, 1400, 34, 6).pack()
    return header + mac(1) + mac(2) + b"\x08\x00" + ip + udp + payload


def perFrame(packet: bytes, repeats: int) -> tuple[float, int]:
    """
    The best time, in microseconds, that L{vnet.toFrames} took per frame
    made, and the number of frames.
    """
    frames = len(vnet.toFrames(packet))
    number = 50
    best = min(timeit.repeat(lambda: vnet.toFrames(packet), number=number, repeat=repeats))
    return best / number / frames * 1e6, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    payload = os.urandom(SEGMENT * COUNT)
    cases = {
        "TCP over IPv4, 1448-byte segments": tcpSuperFrame(mac(1), mac(2), payload),
        "TCP over IPv6, 1428-byte segments": tcp6SuperFrame(payload[: 1428 * COUNT]),
        "UDP (USO) over IPv4, 1400-byte datagrams": usoSuperFrame(payload[: 1400 * COUNT]),
    }
    for name, packet in cases.items():
        micros, frames = perFrame(packet, args.repeats)
        print(f"  {name:42} {micros:6.3f} us per frame ({frames} frames)")


if __name__ == "__main__":
    main()
