"""
Test doubles for vtwisted and for authors of port type plugins.

L{FakeLink} is an L{ILink} that records what the switch sends it and can
inject frames as if its peer had sent them; L{plug} attaches one to a real
L{vtwisted.switch.Switch}, which has no I/O of its own and so needs no fake.
L{frame} and L{mac} build test traffic, L{tcpSuperFrame} a TCP super-frame
with its virtio-net header as an offload TAP's kernel hands it over.  A port
type plugin is tested by plugging its links into a real switch beside a few
L{FakeLink}s and checking what they receive; its I/O can use L{twisted.internet.testing}'s
C{MemoryReactor} and L{twisted.pair.testing.MemoryIOSystem}.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from zope.interface import implementer

from vtwisted.interfaces import IGuestNetwork, ILink
from vtwisted.wire import checksum, vnet
from vtwisted.wire.ipv4 import IPv4Header
from vtwisted.wire.tcp import TCPHeader
from vtwisted.wire.vlan import TPID

#: The IPv6 LAN of L{FakeGuestNetwork}, as libslirp's default.
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/64")


def mac(n: int, local: bool = True) -> bytes:
    """
    A unicast MAC address C{02:00:00:00:HH:LL} made from C{n}.
    """
    return bytes([0x02 if local else 0x00, 0, 0, 0]) + n.to_bytes(2, "big")


def frame(
    dst: bytes,
    src: bytes,
    payload: bytes = b"\0" * 46,
    ethertype: int = 0x88B5,
    vid: int | None = None,
    pcp: int = 0,
) -> bytes:
    """
    An Ethernet frame, tagged for C{vid} if given.
    """
    tag = b"" if vid is None else TPID + ((pcp << 13) | vid).to_bytes(2, "big")
    return dst + src + tag + ethertype.to_bytes(2, "big") + payload


def tcpSuperFrame(
    dst: bytes,
    src: bytes,
    payload: bytes,
    gsoSize: int = 1448,
    addresses: tuple[bytes, bytes] = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"),
) -> bytes:
    """
    An IPv4 TCP super-frame as Linux hands it to the reader of a TAP with
    offloads: a virtio-net header asking for TSO in C{gsoSize} segments and
    for the checksum (the field holds the pseudo-header's partial sum), then
    Ethernet, IPv4 (valid header checksum) and TCP headers and C{payload}.
    """
    length = 20 + len(payload)
    partial = checksum.pseudoHeaderSumV4(*addresses, 6, length)
    tcp = TCPHeader(40000, 5001, 1000, 2000, 0x18, 502, partial, 0).pack()
    ip = IPv4Header(0, 20 + length, 7, 2, 0, 64, 6, 0, *addresses).pack()
    header = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 54, gsoSize, 34, 16).pack()
    return header + dst + src + b"\x08\x00" + ip + tcp + payload


@implementer(ILink)
class FakeLink:
    """
    A link that records what it is sent.

    @ivar sent: plain frames sent to this link, in order.
    @ivar sentPackets: virtio-net packets sent to this link, in order.
    @ivar closed: whether L{close} was called.
    """

    module = "fake"

    def __init__(
        self,
        description: str = "fake link",
        vnetHeader: bool = False,
        uid: int | None = None,
        linkId: int = 0,
    ) -> None:
        self.description = description
        self.vnetHeader = vnetHeader
        self.uid = uid
        self.linkId = linkId
        self.sent: list[bytes] = []
        self.sentPackets: list[bytes] = []
        self.closed = False
        self.switch: Any = None
        self.port: Any = None

    def __repr__(self) -> str:
        return f"<FakeLink {self.description}>"

    def plug(self, switch: Any, port: Any) -> None:
        """
        Attach to C{port} of C{switch}.
        """
        self.switch = switch
        self.port = port
        switch.attach(port, self)

    def sendFrame(self, frame: bytes) -> None:
        self.sent.append(bytes(frame))

    def sendVnetPacket(self, packet: bytes) -> None:
        if not self.vnetHeader:
            raise AssertionError("virtio-net packet sent to a link without the header")
        self.sentPackets.append(bytes(packet))

    def close(self) -> None:
        self.closed = True
        if self.switch is not None:
            self.switch.detach(self.port, self)

    def receive(self, frame: bytes) -> None:
        """
        Hand C{frame} to the switch as if the peer had sent it.
        """
        self.switch.frameReceived(self.port, frame)

    def receivePacket(self, packet: bytes) -> None:
        """
        Hand a virtio-net packet to the switch as if the peer had sent it.
        """
        self.switch.vnetPacketReceived(self.port, packet)

    def takeSent(self) -> list[bytes]:
        """
        The frames sent so far, forgetting them.
        """
        sent, self.sent = self.sent, []
        return sent


def plug(switch: Any, link: FakeLink, number: int | None = None, uid: int | None = None) -> Any:
    """
    Allocate a port of C{switch} and attach C{link} to it.

    @return: the port.
    """
    port = switch.allocatePort(number, uid)
    link.plug(switch, port)
    return port


@implementer(IGuestNetwork)
class FakeGuestNetwork:
    """
    An L{IGuestNetwork} that records what the slirp engines send, for
    testing them without a router.

    The address plan is libslirp's default: gateway 10.0.2.2 and fec0::2
    (the host's loopback, C{127.0.0.1} and C{::1}), DNS proxy 10.0.2.3 and
    fec0::3 (port 53 goes to L{hostNameserver}); other addresses of
    10.0.2.0/24 and fec0::/64 are the LAN, where guests may not go.

    @ivar tcp: segments sent, as (src, dst, parsed L{TCPHeader}, payload
        bytes, mss).
    @ivar ip: packets sent with L{sendIP} or L{sendIPv4}, as (src, dst,
        protocol, payload, ttl).
    @ivar unreachable: (packet, code) for each ICMP unreachable asked for.
    @ivar drops: (reason, message) for each packet counted as dropped.
    @ivar hostNameserver: where the DNS proxy's port 53 goes on the host.
    @ivar resolverPort: the port it goes to there.
    """

    def __init__(
        self,
        mtu: int = 1500,
        maxSegment: int | None = None,
        restricted: bool = False,
        hostNameserver: str = "127.0.0.53",
        ipv6: bool = True,
        resolverPort: int = 53,
    ) -> None:
        self.gateway = b"\x0a\x00\x02\x02"
        self.nameserver = b"\x0a\x00\x02\x03"
        self.gateway6: bytes | None = None
        self.nameserver6: bytes | None = None
        if ipv6:
            self.gateway6 = ipaddress.IPv6Address("fec0::2").packed
            self.nameserver6 = ipaddress.IPv6Address("fec0::3").packed
        self.mtu = mtu
        self.maxSegment = mtu - 40 if maxSegment is None else maxSegment
        self.restricted = restricted
        self.hostNameserver = hostNameserver
        self.resolverPort = resolverPort
        self.tcp: list[tuple[bytes, bytes, TCPHeader, bytes, int]] = []
        self.ip: list[tuple[bytes, bytes, int, bytes, int]] = []
        self.unreachable: list[tuple[bytes, int]] = []
        #: (packet, kind, code, mtu, reporter) of each relayed ICMP error.
        self.icmpErrors: list[tuple[bytes, int, int, int, bytes]] = []
        self.drops: list[tuple[str, str]] = []

    def sendTcp(self, src: bytes, dst: bytes, header: bytes, payload: Any, mss: int) -> None:
        if len(payload) > self.maxSegment:
            raise AssertionError(f"{len(payload)}-byte payload over maxSegment {self.maxSegment}")
        if len(src) != len(dst):
            raise AssertionError("TCP segment mixes IPv4 and IPv6 addresses")
        self.tcp.append((src, dst, TCPHeader.parse(header), bytes(payload), mss))

    def sendIP(
        self, src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = 64
    ) -> None:
        if len(src) != len(dst) or len(src) not in (4, 16):
            raise AssertionError(f"packet from {len(src)}-byte to {len(dst)}-byte address")
        self.ip.append((src, dst, protocol, bytes(payload), ttl))

    def sendIPv4(
        self, src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = 64
    ) -> None:
        if len(src) != 4 or len(dst) != 4:
            raise AssertionError("sendIPv4 with an IPv6 address")
        self.ip.append((src, dst, protocol, bytes(payload), ttl))

    def sendUdp(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                payload: bytes) -> None:
        """
        Record the datagram in L{ip}, checksum computed, as L{sendIP} would.
        """
        from vtwisted.slirp.packets import udpDatagram

        self.sendIP(src, dst, 17, udpDatagram(src, dst, srcPort, dstPort, payload))

    def sendUdpRun(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                   payloads: list[bytes]) -> None:
        """
        Record each datagram as L{sendUdp} would.
        """
        for payload in payloads:
            self.sendUdp(src, dst, srcPort, dstPort, payload)

    def sendUnreachable(self, packet: bytes, code: int) -> None:
        self.unreachable.append((bytes(packet), code))

    def sendIcmpError(self, packet: bytes, kind: int, code: int, mtu: int,
                      reporter: bytes) -> None:
        self.icmpErrors.append((bytes(packet), kind, code, mtu, reporter))

    def hostAddress(self, dst: bytes, port: int, protocol: int) -> tuple[str, int] | None:
        if self.restricted:
            return None
        if len(dst) == 16:
            if self.gateway6 is None:
                return None
            if dst == self.gateway6:
                return ("::1", port)
            if dst == self.nameserver6:
                return (self.hostNameserver, self.resolverPort) if port == 53 else None
            address = ipaddress.IPv6Address(dst)
            return None if address in _SITE_LOCAL else (str(address), port)
        if dst == self.gateway:
            return ("127.0.0.1", port)
        if dst == self.nameserver:
            return (self.hostNameserver, self.resolverPort) if port == 53 else None
        return (socket.inet_ntoa(dst), port)

    def guestAddress(self, host: str, v6: bool = False) -> bytes:
        gateway = self.gateway6 if v6 and self.gateway6 is not None else self.gateway
        if host.startswith("::ffff:"):
            host = host[7:]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return gateway
        if address.is_loopback or len(address.packed) != len(gateway):
            return gateway
        return address.packed

    def dropped(self, reason: str, message: str) -> None:
        self.drops.append((reason, message))

    def takeTcp(self) -> list[tuple[bytes, bytes, TCPHeader, bytes, int]]:
        """
        The segments sent so far, forgetting them.
        """
        sent, self.tcp = self.tcp, []
        return sent


class FakeCable:
    """
    Two L{FakeLink}s plugged into two switches (or two ports of one) and
    joined: what one end is sent reaches the other end's switch when
    L{pump} runs, so loops of cables can be built and watched in memory.
    """

    def __init__(self, left: Any, right: Any, name: str = "cable") -> None:
        self.ends = (FakeLink(f"{name} left"), FakeLink(f"{name} right"))
        self.ports = (plug(left, self.ends[0]), plug(right, self.ends[1]))
        self.delivered = 0

    def pump(self) -> int:
        """
        Deliver every frame waiting at either end to the other end.

        @return: how many frames were delivered.
        """
        count = 0
        for near, far in (self.ends, self.ends[::-1]):
            if far.closed:
                near.sent.clear()
                continue
            for frame in near.takeSent():
                far.receive(frame)
                count += 1
        self.delivered += count
        return count

    def cut(self) -> None:
        """
        Unplug both ends, as a cable pulled out.
        """
        for end in self.ends:
            if not end.closed:
                end.close()


def pumpCables(cables: Sequence[FakeCable], limit: int = 10000) -> int:
    """
    Pump every cable until nothing moves, or C{limit} frames have crossed
    (a broadcast storm, when a loop is not broken).

    @return: how many frames crossed.
    """
    total = 0
    while total < limit:
        moved = sum(cable.pump() for cable in cables)
        if not moved:
            break
        total += moved
    return total
