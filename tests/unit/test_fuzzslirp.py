"""
A slirp port on a switch, fed well-formed and damaged IPv4, IPv6 and ARP
packets for its gateway, DNS proxy, DHCP, DHCPv6, TFTP and neighbour
discovery servers: nothing fails (every bad packet is counted and dropped),
every packet it sends a TAP passes the header validation, and it still
answers pings afterwards.

The engines run on a memory reactor and pings beyond the gateway go to a
fake, so nothing leaves this process.  The examples are few by default; set
C{VTWISTED_FUZZ_EXAMPLES} for a long run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from slirpfakes import FakeEngine, noFailuresLogged
from twisted.internet.testing import MemoryReactorClock

from vtwisted.portoptions import PortOptions
from vtwisted.ports.slirp import SlirpService
from vtwisted.slirp.arpcache import macFor
from vtwisted.slirp.config import readConfig
from vtwisted.slirp.router6 import LINK_LOCAL, macFor6
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, plug
from vtwisted.wire import arp, dhcp, icmp, ipv4, ipv6, vnet, vnetcheck
from vtwisted.wire.checksum import internetChecksum, pseudoHeaderSumV4, pseudoHeaderSumV6

EXAMPLES = int(os.environ.get("VTWISTED_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

MAC = bytes.fromhex("020000000015")
GUEST, GATEWAY, DNS = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2]), bytes([10, 0, 2, 3])
OUTSIDE = bytes([192, 0, 2, 7])
GUEST6 = bytes.fromhex("fec00000000000000000000000000015")
GATEWAY6 = bytes.fromhex("fec00000000000000000000000000002")
DNS6 = bytes.fromhex("fec00000000000000000000000000003")
LOCAL6 = bytes.fromhex("fe800000000000000000000000000015")
ALL_DHCP6 = bytes.fromhex("ff020000000000000000000000010002")
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")
SERVER_DUID = bytes.fromhex("00030001") + macFor6(LINK_LOCAL)
SPECS = ["slirp", "slirp:restrict=on", "slirp:pd=fd00\\:\\:/48:pdlen=56"]


class Packets:
    """
    Packets for the router's servers, drawn from one random generator.
    """

    def __init__(self, r: random.Random) -> None:
        self.r = r

    def some(self, most: int) -> bytes:
        return self.r.randbytes(self.r.randrange(most))

    def damaged(self, data: bytes) -> bytes:
        r, out = self.r, bytearray(data)
        for _ in range(r.choice([0, 0, 0, 1, 2])):
            if out:
                at = r.randrange(len(out))
                if r.random() < 0.5:
                    out[at] = r.randrange(256)
                else:
                    del out[at:]
        return bytes(out)

    def option6(self, code: int, value: bytes) -> bytes:
        return code.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value

    def ia(self, code: int) -> bytes:
        r = self.r
        inner = b""
        for _ in range(r.randrange(3)):
            if code == 25:
                inner += self.option6(26, r.randbytes(8) + bytes([r.choice([48, 56, 64, 129])])
                                      + r.choice([bytes.fromhex("fd00") + bytes(14),
                                                  r.randbytes(16)]))
            else:
                inner += self.option6(5, r.choice([GUEST6, r.randbytes(16)]) + r.randbytes(8))
        return self.option6(code, r.randbytes(4 if code == 4 else 12) + inner)

    def dhcp6(self) -> bytes:
        r = self.r
        kind = r.choice([1, 3, 4, 5, 6, 8, 9, 11, r.randrange(256)])
        body = self.option6(1, r.choice([bytes.fromhex("00030001") + MAC, b"\0", self.some(9)]))
        if kind in (3, 5, 8, 9) or r.random() < 0.1:
            body += self.option6(2, r.choice([SERVER_DUID, self.some(9)]))
        for _ in range(r.randrange(4)):
            body += self.ia(r.choice([3, 4, 25]))
        if r.random() < 0.3:
            body += self.option6(6, r.choice([b"\0\x17\0\x18", self.some(5)]))
        return self.damaged(bytes([kind]) + r.randbytes(3) + body)

    def dhcp4(self) -> bytes:
        r = self.r
        options = [(53, bytes([r.randrange(10)]))] + [
            (r.choice([50, 54, 61, 12, 55, 57, 82, r.randrange(1, 255)]), self.some(12))
            for _ in range(r.randrange(4))]
        message = dhcp.DHCPMessage(1, 1, r.choice([6, 0, 16]), 0, r.randrange(1 << 32), 0,
                                   r.choice([0, 0x8000]), r.choice([bytes(4), GUEST]),
                                   bytes(4), bytes(4), bytes(4), MAC, b"", b"", tuple(options))
        return self.damaged(message.pack())

    def tftp(self) -> bytes:
        return self.damaged(self.r.choice([
            b"\0\1file\0octet\0", b"\0\1file\0octet\0blksize\0" + str(
                self.r.randrange(100000)).encode() + b"\0windowsize\0-1\0",
            b"\0\4\0\1", b"\0\5\0\1no\0", b"\0\2file\0netascii\0", b"\0\1\0\0"]))

    def dns(self) -> bytes:
        return self.damaged(self.r.randbytes(2) + b"\1\0\0\1\0\0\0\0\0\0\7example\3com\0\0\1\0\1")

    def icmp6(self) -> bytes:
        r = self.r
        kind = r.choice([128, 133, 134, 135, 136, 137, 1, r.randrange(256)])
        body = r.randbytes(4)
        if kind in (135, 136, 137):
            body += r.choice([GATEWAY6, GUEST6, r.randbytes(16)])
        for _ in range(r.randrange(3)):
            length = r.randrange(3)
            body += bytes([r.choice([1, 2, 3, 5, 25]), length]) + r.randbytes(max(8 * length - 2,
                                                                                  0))
        return self.damaged(bytes([kind, 0, 0, 0]) + body)

    def udp(self, src: bytes, dst: bytes, ports: tuple[int, int], payload: bytes) -> bytes:
        datagram = bytearray(ports[0].to_bytes(2, "big") + ports[1].to_bytes(2, "big")
                             + (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload)
        return self.transport(src, dst, 17, datagram, 6)

    def transport(self, src: bytes, dst: bytes, proto: int, data: bytearray, at: int) -> bytes:
        """C{data} with its checksum at C{at} set right (most of the time)."""
        if len(data) >= at + 2 and self.r.random() < 0.95:
            pseudo = (pseudoHeaderSumV6 if len(src) == 16 else pseudoHeaderSumV4)(
                src, dst, proto, len(data)) if proto != 1 else 0
            data[at:at + 2] = internetChecksum(bytes(data), pseudo).to_bytes(2, "big")
        return bytes(data)

    def ip4(self, dst: bytes, proto: int, payload: bytes, src: bytes = GUEST,
            dstMac: bytes = b"") -> bytes:
        r = self.r
        flags, offset = r.choice([(0, 0)] * 8 + [(1, 0), (0, 3), (1, r.randrange(8192))])
        header = ipv4.IPv4Header(0, 20 + len(payload), r.randrange(65536), flags, offset,
                                 r.choice([64, 1]), proto, 0, src, dst).pack()
        return (dstMac or macFor(GATEWAY)) + MAC + b"\x08\x00" + header + payload

    def ip6(self, src: bytes, dst: bytes, nextHeader: int, payload: bytes,
            dstMac: bytes) -> bytes:
        header = ipv6.IPv6Header(0, 0, len(payload), nextHeader, self.r.choice([255, 64, 1]),
                                 src, dst).pack()
        return dstMac + MAC + b"\x86\xdd" + header + payload

    def frame(self) -> bytes:
        r = self.r
        kind = r.choice(["dhcp", "dhcp6", "tftp", "dns", "nd", "ping", "tcp", "arp", "udp"])
        router6 = macFor6(GATEWAY6)
        if kind == "dhcp":
            source = r.choice([bytes(4), GUEST])
            return self.ip4(r.choice([GATEWAY, b"\xff" * 4]), 17, self.udp(
                source, GATEWAY, (68, 67), self.dhcp4()), source, b"\xff" * 6)
        if kind == "dhcp6":
            payload = self.udp(LOCAL6, ALL_DHCP6, (546, 547), self.dhcp6())
            return self.ip6(LOCAL6, ALL_DHCP6, 17, payload, bytes.fromhex("333300010002"))
        if kind == "tftp":
            return self.ip4(GATEWAY, 17, self.udp(GUEST, GATEWAY, (2000, 69), self.tftp()))
        if kind == "dns":
            if r.random() < 0.5:
                return self.ip4(DNS, 17, self.udp(GUEST, DNS, (2000, 53), self.dns()),
                                dstMac=macFor(DNS))
            return self.ip6(GUEST6, DNS6, 17, self.udp(GUEST6, DNS6, (2000, 53), self.dns()),
                            macFor6(DNS6))
        if kind == "nd":
            src, dst = r.choice([GUEST6, LOCAL6, bytes(16)]), r.choice([GATEWAY6, ALL_ROUTERS])
            data = self.transport(src, dst, 58, bytearray(self.icmp6()), 2)
            return self.ip6(src, dst, 58, data, r.choice([router6, bytes.fromhex("333300000002")]))
        if kind == "ping":
            echo = bytearray(icmp.ICMPMessage(8, 0, 0, r.randbytes(4), self.some(40)).pack())
            message = self.transport(GUEST, GATEWAY, 1, echo, 2)
            return self.ip4(r.choice([GATEWAY, DNS, OUTSIDE]), 1, self.damaged(message))
        if kind == "tcp":
            segment = bytearray(r.randbytes(12) + bytes([r.choice([5, 6, 15, 2]) << 4,
                                                         r.randrange(256)]) + r.randbytes(30))
            dst = r.choice([GATEWAY, DNS, OUTSIDE])
            return self.ip4(dst, 6, self.transport(GUEST, dst, 6, segment, 16))
        if kind == "arp":
            packet = arp.ARPPacket(r.choice([1, 2, 3]), MAC, r.choice([GUEST, bytes(4)]),
                                   bytes(6), r.choice([GATEWAY, DNS, GUEST])).pack()
            return b"\xff" * 6 + MAC + b"\x08\x06" + self.damaged(packet)
        return self.ip4(r.choice([GATEWAY, b"\xff" * 4, bytes([10, 0, 2, 255])]), 17, self.udp(
            GUEST, GATEWAY, (r.randrange(65536), r.choice([137, 138, 123, 9])), self.some(30)))


def _slirp(spec: str, tmp: Path) -> tuple[MemoryReactorClock, SlirpService, FakeLink, FakeLink]:
    """A slirp port, an offload TAP and a plain port on one switch."""
    switch, reactor = Switch(), MemoryReactorClock()
    (tmp / "file").write_bytes(b"x" * 2000)
    spec = f"{spec}:tftp={tmp}"
    service = SlirpService(switch, reactor, readConfig(PortSpec(spec)), PortOptions(), spec)
    service.startService()
    assert service.router is not None
    service.router.icmp = FakeEngine()  # no pings leave this process
    service.router.icmp6 = FakeEngine()
    tap, plain = FakeLink("tap", vnetHeader=True), FakeLink("plain")
    plug(switch, tap)
    plug(switch, plain)
    return reactor, service, tap, plain


@FUZZ
@given(st.sampled_from(SPECS), st.randoms(use_true_random=False),
       st.lists(st.booleans(), min_size=1, max_size=25))
def test_slirpTakesAnyPacketForItsServers(tmp_path_factory, spec: str, r: random.Random,
                                          sides: list[bool]) -> None:
    """
    Whatever the guests send its servers, well-formed or damaged, through an
    offload TAP or a plain port, the slirp port never fails, hands the TAP
    only packets the header validation passes, and answers a ping after.
    """
    reactor, service, tap, plain = _slirp(spec, tmp_path_factory.mktemp("tftp"))
    packets = Packets(r)
    with noFailuresLogged():
        for viaTap in sides:
            frame = packets.frame()
            note(f"{viaTap} {frame.hex()}")
            if viaTap:
                tap.receivePacket(vnet.PLAIN_HEADER + frame)
            else:
                plain.receive(frame)
            if r.random() < 0.1:
                reactor.advance(r.choice([1, 30, 600]))
            for packet in tap.sentPackets:
                assert vnetcheck.validate(packet) is None, packet[:60].hex()
            tap.sentPackets.clear()
        plain.sent.clear()
        tap.sent.clear()
        tap.sentPackets.clear()
        ping = icmp.ICMPMessage(8, 0, 0, b"\0\1\0\1", b"still there?").pack()
        header = ipv4.IPv4Header(0, 20 + len(ping), 1, 0, 0, 64, 1, 0, GUEST, GATEWAY).pack()
        plain.receive(macFor(GATEWAY) + MAC + b"\x08\x00" + header + ping)
    frames = plain.sent + tap.sent + [p[vnet.HEADER_LENGTH:] for p in tap.sentPackets]
    # to whatever MAC a (damaged) ARP packet said the guest has
    replies = [f for f in frames if f[6:14] == macFor(GATEWAY) + b"\x08\x00" and f[23] == 1]
    assert replies, frames
    assert icmp.ICMPMessage.parse(replies[-1], 34).type == icmp.ECHO_REPLY


def test_aDhcpMessageOfTypeZeroIsCountedNotLeasedTo(tmp_path: Path) -> None:
    """
    A DHCP message whose type option holds 0 (found by the test above) was
    answered as plain BOOTP, with an ACK and a day's lease; it is counted as
    malformed and gets no answer.
    """
    _, service, tap, plain = _slirp("slirp", tmp_path)
    message = dhcp.DHCPMessage(1, 1, 6, 0, 0, 0, 0, bytes(4), bytes(4), bytes(4), bytes(4), MAC,
                               b"", b"", ((53, b"\0"),)).pack()
    packets = Packets(random.Random(0))
    header = ipv4.IPv4Header(0, 28 + len(message), 0, 0, 0, 64, 17, 0, bytes(4), GATEWAY).pack()
    datagram = packets.udp(bytes(4), GATEWAY, (68, 67), message)
    with noFailuresLogged():
        tap.receivePacket(vnet.PLAIN_HEADER + b"\xff" * 6 + MAC + b"\x08\x00" + header + datagram)
    assert service.router is not None and service.router.dhcp.leases() == []
    assert [f for f in plain.sent if f[6:12] == macFor(GATEWAY)] == []
    assert service.link is not None
    assert service.link.port.counters.drops["malformed"] == 1
