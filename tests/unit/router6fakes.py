"""
The IPv6 side of a slirp router under test: a real L{SlirpRouter} with fake
engines and IPv6 on (L{makeRouter}), its address plan, and the guest's IPv6
frames to it (ICMPv6, neighbour solicitations, TCP segments).
"""

from __future__ import annotations

import ipaddress
import struct

import slirpfakes
from slirpfakes import Recorder, recordingRouter
from twisted.internet.task import Clock

from vtwisted.slirp.router import SlirpRouter
from vtwisted.slirp.router6 import Ipv6Router
from vtwisted.wire import icmp, icmpv6, ipv4, ipv6
from vtwisted.wire.checksum import internetChecksum, pseudoHeaderSumV6


def addr(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


PREFIX = ipaddress.IPv6Network("fec0::/64")
GATEWAY = addr("fec0::2")
DNS = addr("fec0::3")
ROUTER_LL = addr("fe80::2")
ROUTER_MAC = bytes.fromhex("525600000002")
DNS_MAC = bytes.fromhex("525600000003")
GUEST_MAC = bytes.fromhex("020000000015")
GUEST = addr("fec0::15")
GUEST_LL = addr("fe80::15")
ALL_NODES = addr("ff02::1")


def makeRouter(options: str = "", clock: Clock | None = None,
               start: bool = True) -> tuple[SlirpRouter, Recorder]:
    """
    A router with an IPv6 side on fec0::/64 whose first advertisement is
    out (and cleared from the record) if C{start}.
    """
    clock = clock or Clock()
    router, seen, _ = recordingRouter(options, clock)
    router.v6 = Ipv6Router(router, PREFIX, GATEWAY, DNS)
    router.gateway6, router.nameserver6 = GATEWAY, DNS
    if start:
        clock.advance(0)
        seen.frames.clear()
    return router, seen


def frame6(src: bytes, dst: bytes, nextHeader: int, payload: bytes, hopLimit: int = 64,
           dstMac: bytes = ROUTER_MAC, srcMac: bytes = GUEST_MAC) -> bytes:
    header = ipv6.IPv6Header(0, 0, len(payload), nextHeader, hopLimit, src, dst).pack()
    return dstMac + srcMac + b"\x86\xdd" + header + payload


def icmpFrame(src: bytes, dst: bytes, kind: int, body: bytes, hopLimit: int = 255,
              dstMac: bytes = ROUTER_MAC) -> bytes:
    message = icmpv6.ICMPv6Message(kind, 0, 0, body).pack(src, dst)
    return frame6(src, dst, ipv6.NH_ICMPV6, message, hopLimit, dstMac)


def echo(src: bytes = GUEST, dst: bytes = GATEWAY, dstMac: bytes = ROUTER_MAC) -> bytes:
    return icmpFrame(src, dst, icmpv6.ECHO_REQUEST, b"\x12\x34\x00\x01ping!", 64, dstMac)


def slla(mac: bytes = GUEST_MAC, kind: int = icmpv6.SOURCE_LL) -> bytes:
    return bytes((kind, 1)) + mac


def solicitation(target: bytes, src: bytes = GUEST_LL, withMac: bool = True) -> bytes:
    group = icmpv6.solicitedNodeAddress(target)
    return icmpFrame(src, group, icmpv6.NEIGHBOR_SOLICITATION,
                     bytes(4) + target + (slla() if withMac else b""),
                     dstMac=icmpv6.multicastMac(group))


def tcpSegment(src: bytes, dst: bytes, payload: bytes = b"", good: bool = True) -> bytes:
    header = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x18, 65535, 0, 0)
    value = internetChecksum(header + payload, pseudoHeaderSumV6(src, dst, 6, 20 + len(payload)))
    if not good:
        value ^= 0x0101
    return header[:16] + value.to_bytes(2, "big") + header[18:] + payload


def parsed(frame: bytes) -> tuple[ipv6.IPv6Header, icmpv6.ICMPv6Message]:
    header = ipv6.IPv6Header.parse(frame, 14)
    assert icmpv6.checksumOk(header.src, header.dst, frame[54:])
    return header, icmpv6.ICMPv6Message.parse(frame, 54)


def routerWithGuest(v6: bool, clock: Clock) -> tuple[SlirpRouter, Recorder, bytes, bytes]:
    """
    A router (with its IPv6 side if C{v6}) that knows the guest's MAC: the
    router, what it sends, and the guest's and the gateway's addresses of
    that family.
    """
    if v6:
        router, seen = makeRouter(clock=clock)
        router.v6.learn(GUEST, GUEST_MAC)
        return router, seen, GUEST, GATEWAY
    router, seen, _ = recordingRouter("", clock)
    router.learn(slirpfakes.GUEST, slirpfakes.GUEST_MAC)
    return router, seen, slirpfakes.GUEST, slirpfakes.GATEWAY


def sendGuestError(router: SlirpRouter, v6: bool, kind: int, code: int, quoted: bytes,
                   to: bytes) -> None:
    """
    The guest sends C{to} an ICMP (or, if C{v6}, ICMPv6) error of C{kind}
    and C{code} quoting C{quoted}.
    """
    if v6:
        message = icmpv6.errorMessage(kind, code, quoted, GUEST, to)
        router.frameReceived(frame6(GUEST, to, ipv6.NH_ICMPV6, message))
    else:
        message = icmp.errorMessage(kind, code, quoted)
        router.frameReceived(slirpfakes.ipFrame(to, ipv4.PROTO_ICMP, message))
