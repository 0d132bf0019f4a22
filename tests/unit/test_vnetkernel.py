"""
L{vtwisted.wire.vnet} against the Linux kernel: the kernel accepts every
segment the segmenter cuts, and builds super-frames the way the test
builder (L{vnetpackets.kernelPacket}) does.
"""

from __future__ import annotations

import itertools
import os
import random
import select
import socket
import struct
import threading
import time

import pytest
from tapnamespaces import (
    SOL_UDP,
    UDP_SEGMENT,
    Side,
    _checksumErrors,
    _inNamespace,
    needKernel,
    twoNamespaces,
)
from vnetpackets import MAC_A, MAC_B, TCP, UDP, kernelPacket, randomPayload

from vtwisted.wire import vnet, vnetcheck
from vtwisted.wire.ipv4 import IPv4Header
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.tcp import TCPHeader
from vtwisted.wire.udp import UDPHeader
from vtwisted.wire.vnet import VnetError, VnetHeader


class Hub:
    """
    Forwards between two TAPs the way a switch forwards to ports without the
    header: through L{vnet.toFrames}, each frame written with a plain header.
    """

    def __init__(self, a: int, b: int) -> None:
        self.fds = {a: b, b: a}
        self.seen: dict[int, int] = {}
        self.kept: list[bytes] = []
        self.unsafe: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while self.running:
            ready, _, _ = select.select(list(self.fds), [], [], 0.05)
            for fd in ready:
                packet = os.read(fd, 65536 + vnet.HEADER_LENGTH + 4)
                verdict = vnetcheck.validate(packet)
                if verdict is not None:
                    self.unsafe.append(verdict)
                kind = packet[1] & ~vnet.GSO_ECN
                self.seen[kind] = self.seen.get(kind, 0) + 1
                if kind != vnet.GSO_NONE and len(self.kept) < 40:
                    self.kept.append(packet)
                try:
                    frames = vnet.toFrames(packet)
                except VnetError as e:
                    self.unsafe.append(str(e))
                    continue
                for frame in frames:
                    os.write(self.fds[fd], vnet.PLAIN_HEADER + frame)

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def _rebuild(packet: bytes) -> bytes:
    """
    Rebuild a super-frame the kernel sent with L{kernelPacket} from its fields.
    """
    header = VnetHeader.parse(packet)
    frame = packet[vnet.HEADER_LENGTH :]
    v6 = frame[12:14] == b"\x86\xdd"
    if v6:
        ip6 = IPv6Header.parse(frame, 14)
        fields: dict[str, object] = {
            "tos": ip6.trafficClass, "flowLabel": ip6.flowLabel, "ttl": ip6.hopLimit,
            "addresses": (ip6.src, ip6.dst), "proto": ip6.nextHeader,
        }
        l4 = 54
    else:
        ip4 = IPv4Header.parse(frame, 14)
        fields = {
            "tos": ip4.tos, "ident": ip4.ident, "ipFlags": ip4.flags, "ttl": ip4.ttl,
            "addresses": (ip4.src, ip4.dst), "ipOptions": ip4.options, "proto": ip4.protocol,
        }
        l4 = 14 + ip4.headerLength
    if fields["proto"] == TCP:
        th = TCPHeader.parse(frame, l4)
        fields.update(tcpFlags=th.flags, tcpOptions=th.options, seq=th.seq, ack=th.ack,
                      window=th.window, ports=(th.srcPort, th.dstPort))
        start = l4 + th.headerLength
    else:
        uh = UDPHeader.parse(frame, l4)
        fields.update(ports=(uh.srcPort, uh.dstPort))
        start = l4 + 8
    built = kernelPacket(frame[start:], header.gsoSize, v6=v6, macs=(frame[:6], frame[6:12]),
                         **fields)  # type: ignore[arg-type]
    return built.packet


@pytest.mark.integration
def test_kernelAcceptsEverySegmentAndBuildsSuperFramesLikeTheTestBuilder() -> None:
    """
    TCP (v4, v6) and UDP GSO streams through a segmenting hub arrive intact.
    """
    # The kernel on each side verifies every segment's checksums; the super-
    # frames it sends are byte for byte what kernelPacket builds from the
    # same fields, and every packet it sends passes vnetcheck.validate.
    needKernel()
    with twoNamespaces() as (a, b):
        hub = Hub(a.tap, b.tap)
        try:
            for family, address in ((socket.AF_INET, b.ipv4), (socket.AF_INET6, b.ipv6)):
                _tcpTransfer(a, b, family, address)
            _udpTransfer(a, b)
        finally:
            hub.stop()
        assert _checksumErrors(a.namespace) == _checksumErrors(b.namespace) == 0
    assert hub.unsafe == []
    assert {vnet.GSO_TCPV4, vnet.GSO_TCPV6, vnet.GSO_UDP_L4} <= set(hub.seen), hub.seen
    for packet in hub.kept:
        rebuilt = _rebuild(packet)
        assert rebuilt[:2] + rebuilt[4:] == packet[:2] + packet[4:]


def _tcpTransfer(a: Side, b: Side, family: int, address: str) -> None:
    """
    Send 400 KB over TCP from C{a} to C{b} and check it arrives intact.
    """
    data = randomPayload(400_000, family)
    server = _inNamespace(b.namespace, lambda: socket.socket(family, socket.SOCK_STREAM))
    client = _inNamespace(a.namespace, lambda: socket.socket(family, socket.SOCK_STREAM))
    received = bytearray()
    with server, client:
        server.bind((address, 5001))
        server.listen(1)
        server.settimeout(10)
        client.settimeout(10)
        client.connect((address, 5001))
        connection, _ = server.accept()
        with connection:
            connection.settimeout(10)

            def send() -> None:
                client.sendall(data)
                client.close()

            sender = threading.Thread(target=send)
            sender.start()
            while chunk := connection.recv(1 << 20):
                received += chunk
            sender.join()
    assert received == data


def _udpTransfer(a: Side, b: Side) -> None:
    """
    Send UDP with C{UDP_SEGMENT} (USO) from C{a} to C{b}; check every datagram.
    """
    server = _inNamespace(b.namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client = _inNamespace(a.namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with server, client:
        server.bind((b.ipv4, 5002))
        server.settimeout(5)
        client.setsockopt(SOL_UDP, UDP_SEGMENT, 1000)
        sent = [randomPayload(9500, n) for n in range(5)]
        for payload in sent:
            client.sendto(payload, (b.ipv4, 5002))
            time.sleep(0.01)
        got = [server.recv(2000) for _ in range(50)]
    assert got == [payload[i : i + 1000] for payload in sent for i in range(0, 9500, 1000)]


@pytest.mark.integration
def test_kernelAcceptsTheBuildersUsoSuperFrameAndItsSegments() -> None:
    """
    A USO super-frame built by the test builder, and its segments, reach a UDP socket.
    """
    needKernel()
    with twoNamespaces() as (_, b):
        server = _inNamespace(b.namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        with server:
            server.bind((b.ipv4, 5003))
            server.settimeout(5)
            payload = randomPayload(7000, 9)
            built = kernelPacket(payload, 1200, proto=UDP, ports=(4000, 5003), macs=(MAC_B, MAC_A))
            os.write(b.tap, built.packet)
            whole = [server.recv(2000) for _ in range(6)]
            for frame in vnet.toFrames(built.packet):
                os.write(b.tap, vnet.PLAIN_HEADER + frame)
            cut = [server.recv(2000) for _ in range(6)]
        assert _checksumErrors(b.namespace) == 0
    expected = [payload[i : i + 1200] for i in range(0, 7000, 1200)]
    assert whole == expected and cut == expected


@pytest.mark.integration
@pytest.mark.parametrize("outer", [b"\x88\xa8", b"\x81\x00"])
def test_kernelTakesSuperFramesUnderTwoTagsAndTheirSegments(outer: bytes) -> None:
    """
    A TCP super-frame under two tags (802.1ad or 802.1Q outside, 802.1Q
    inside), as a host's QinQ interface sends it: L{vnetcheck.validate}
    passes it, and the kernel takes it and every segment the switch cuts.
    """
    needKernel()
    built = kernelPacket(randomPayload(9000, 4), 1448, macs=(MAC_B, MAC_A))
    both = vnet.insertTag(vnet.insertTag(built.packet, 10), 100)
    packet = both[:22] + outer + both[24:]
    assert vnetcheck.validate(packet) is None
    segments = vnet.toFrames(packet)
    assert len(segments) == 7 and all(s[12:14] == outer for s in segments)
    with twoNamespaces() as (_, b):
        assert os.write(b.tap, packet) == len(packet)
        for segment in segments:
            assert os.write(b.tap, vnet.PLAIN_HEADER + segment) == vnet.HEADER_LENGTH + len(segment)


def _mutated(r: random.Random, packet: bytes) -> bytes:
    """
    C{packet} with one to three of its header fields, bytes of its frame, or
    its length changed to values near what Linux checks.
    """
    p = bytearray(packet)
    for _ in range(r.randint(1, 3)):
        field = r.randrange(8)
        if field == 0:
            p[0] = r.choice([0, 1, 2, 3, 4, 0x81])
        elif field == 1:
            p[1] = r.choice([0, 1, 2, 3, 4, 5, 6, 0x81, 0x84, 0x85])
        elif field == 2:
            struct.pack_into("<H", p, 2, r.choice([0, 1, 13, 14, 34, 54, 66, 0xFFFF,
                                                   min(len(p), 0xFFFF), r.randrange(200)]))
        elif field == 3:
            struct.pack_into("<H", p, 4, r.choice([0, 1, 8, 536, 1448, 0xFFFF,
                                                   r.randrange(1 << 16)]))
        elif field == 4:
            struct.pack_into("<H", p, 6, r.choice([0, 14, 19, 20, 34, 38, 54, 58, r.randrange(120),
                                                   min(len(p) - 10, 0xFFFF)]))
        elif field == 5:
            struct.pack_into("<H", p, 8, r.choice([0, 2, 6, 10, 16, r.randrange(40)]))
        elif field == 6:
            del p[r.randrange(vnet.HEADER_LENGTH, len(p) + 1):]
        elif len(p) > vnet.HEADER_LENGTH:
            p[r.randrange(vnet.HEADER_LENGTH, min(len(p), 90))] = r.randrange(256)
    return bytes(p)


@pytest.mark.integration
def test_kernelTakesEveryPacketValidatePassesAndItsTaggedForms() -> None:
    """
    Packets as the kernel builds them (TCP and UDP, IPv4 and IPv6, GSO or
    not, tagged or not), with header fields, frame bytes and lengths
    mutated: every one L{vnetcheck.validate} passes, and the forms a switch
    makes of it for a trunk or an access port (tag added, tag removed), the
    kernel takes (a write the kernel refuses fails with EINVAL).
    """
    needKernel()
    r = random.Random(3)
    bases = [vnet.PLAIN_HEADER + MAC_B + MAC_A + b"\x08\x06" + bytes(28)]
    for v6, proto, gso, size, vid in itertools.product(
        (False, True), (TCP, UDP), (True, False), (0, 1, 100, 3000, 20000), (None, 10)
    ):
        bases.append(kernelPacket(randomPayload(size, size), r.choice([536, 1000, 1448]),
                                  proto=proto, v6=v6, gso=gso, vid=vid).packet)
    refused = []
    checked = 0
    with twoNamespaces() as (_, b):
        for _ in range(6000):
            packet = _mutated(r, r.choice(bases))
            if vnetcheck.validate(packet) is not None:
                continue
            forms = [packet]
            try:
                forms.append(vnet.insertTag(packet, 77))
                if packet[22:24] == b"\x81\x00":
                    forms.append(vnet.removeTag(packet))
            except VnetError:
                pass
            for form in forms:
                checked += 1
                try:
                    os.write(b.tap, form)
                except OSError as e:
                    refused.append((e.errno, form[:40].hex()))
    assert checked > 2000 and refused == []
