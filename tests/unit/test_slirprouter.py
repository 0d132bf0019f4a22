"""
Tests for the slirp router (L{vtwisted.slirp.router}), its address plan
(L{vtwisted.slirp.config}) and its UDP engine (L{vtwisted.slirp.udp}) on
real loopback sockets.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from slirpfakes import FakeEngine, Recorder, noFailuresLogged, recordingRouter
from twisted.internet.task import Clock
from zope.interface import implementer

from vtwisted.interfaces import IGuestNetwork
from vtwisted.slirp.config import ResolvConf, parseForward, readConfig
from vtwisted.slirp.dhcp import DhcpServer
from vtwisted.slirp.packets import udpDatagram
from vtwisted.slirp.router import SlirpRouter, macFor
from vtwisted.slirp.udp import UdpNat
from vtwisted.spec import PortSpec, SpecError
from vtwisted.wire import arp, dhcp, icmp, ipv4, vnet
from vtwisted.wire.checksum import checksumValid, pseudoHeaderSumV4
from vtwisted.wire.udp import UDPHeader

GUEST_MAC = bytes.fromhex("020000000015")
GUEST = bytes([10, 0, 2, 15])
GATEWAY = bytes([10, 0, 2, 2])
DNS = bytes([10, 0, 2, 3])
GW_MAC = macFor(GATEWAY)


def makeRouter(options: str = "", clock: Any = None) -> tuple[SlirpRouter, Recorder]:
    router, seen, config = recordingRouter(options, clock)
    router.dhcp = DhcpServer(gateway=GATEWAY, nameserver=DNS, netmask=config.netmask,
                             poolStart=config.poolStart)
    return router, seen


def ipFrame(dst: bytes, protocol: int, payload: bytes, src: bytes = GUEST,
            dstMac: bytes = GW_MAC, flags: int = 0, offset: int = 0) -> bytes:
    header = ipv4.IPv4Header(0, 20 + len(payload), 1, flags, offset, 64, protocol, 0,
                             src, dst).pack()
    return dstMac + GUEST_MAC + b"\x08\x00" + header + payload


def echoRequest(payload: bytes = b"ping!") -> bytes:
    return icmp.ICMPMessage(icmp.ECHO_REQUEST, 0, 0, b"\x12\x34\x00\x01", payload).pack()


def test_answersArpForGatewayAndDnsOnly() -> None:
    """ARP requests for .2 and .3 get 52:55 answers; other addresses get none."""
    router, seen = makeRouter()
    for target in (GATEWAY, DNS, bytes([10, 0, 2, 4])):
        request = arp.ARPPacket(arp.OP_REQUEST, GUEST_MAC, GUEST, bytes(6), target).pack()
        router.frameReceived(b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + request)
    assert len(seen.frames) == 2
    for frame, target in zip(seen.frames, (GATEWAY, DNS)):
        reply = arp.ARPPacket.parse(frame, 14)
        assert frame[:6] == GUEST_MAC and len(frame) == 60
        assert reply.op == arp.OP_REPLY and reply.senderMac == macFor(target)
        assert reply.senderIp == target and reply.targetIp == GUEST
    assert router.neighbours[GUEST] == GUEST_MAC


def test_pingToGatewayAndDnsIsAnswered() -> None:
    """Echo requests to the gateway and the DNS proxy come back with TTL 255."""
    router, seen = makeRouter()
    for dst, mac in ((GATEWAY, GW_MAC), (DNS, macFor(DNS))):
        router.frameReceived(ipFrame(dst, ipv4.PROTO_ICMP, echoRequest(), dstMac=mac))
    assert len(seen.frames) == 2
    for frame, dst in zip(seen.frames, (GATEWAY, DNS)):
        header = ipv4.IPv4Header.parse(frame, 14)
        assert (header.src, header.dst, header.ttl) == (dst, GUEST, 255)
        assert frame[:12] == GUEST_MAC + GW_MAC
        reply = icmp.ICMPMessage.parse(frame, 34)
        assert reply.type == icmp.ECHO_REPLY and reply.payload == b"ping!"
        assert icmp.checksumOk(frame[34:])


def test_framesForOtherStationsAreIgnoredSilently() -> None:
    """A unicast frame to another guest's MAC is not the router's business."""
    router, seen = makeRouter()
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest(),
                                 dstMac=bytes.fromhex("020000000099")))
    assert seen.frames == [] and seen.drops == []


@pytest.mark.parametrize("mangle, problem", [
    (lambda f: f[:24] + b"\0\0" + f[26:], "bad header checksum"),
    (lambda f: f[:40], "truncated"),
    (lambda f: f[:14] + b"\x35" + f[15:], "IPv4"),
])
def test_malformedIpv4IsCountedAndDropped(mangle: Any, problem: str) -> None:
    """Broken IPv4 headers are counted as malformed, with what was wrong."""
    router, seen = makeRouter()
    router.frameReceived(mangle(ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest(b"x" * 40))))
    assert seen.frames == []
    assert seen.drops and seen.drops[0][0] == "malformed" and problem in seen.drops[0][1]


def test_badTcpChecksumNeverReachesTheEngine() -> None:
    """A TCP segment with a wrong checksum is dropped; a good one is handed on."""
    router, seen = makeRouter()
    segment = bytearray(20)
    segment[12] = 0x50
    good = bytes(segment)
    from vtwisted.wire.checksum import internetChecksum

    value = internetChecksum(good, pseudoHeaderSumV4(GUEST, GATEWAY, 6, 20))
    good = good[:16] + value.to_bytes(2, "big") + good[18:]
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_TCP, bytes(segment[:16]) + b"\1\1" +
                                 bytes(segment[18:])))
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_TCP, good))
    assert [d[0] for d in seen.drops] == ["malformed"]
    assert len(router.tcp.calls) == 1
    src, dst, body, packet = router.tcp.calls[0]
    assert (src, dst, bytes(body)) == (GUEST, GATEWAY, good)


def test_kernelVouchedChecksumsAreNotChecked() -> None:
    """A packet from an offload TAP with NEEDS_CSUM reaches the engine without a check."""
    router, seen = makeRouter()
    segment = bytes([0] * 12 + [0x50] + [0] * 7)
    header = vnet.VnetHeader(vnet.NEEDS_CSUM, 0, 54, 0, 34, 16).pack()
    router.vnetPacketReceived(header + ipFrame(GATEWAY, ipv4.PROTO_TCP, segment))
    assert seen.drops == [] and len(router.tcp.calls) == 1


def fragmentsOf(payload: bytes, size: int, ident: int = 77) -> list[bytes]:
    """
    Frames carrying C{payload} (an ICMP message to the gateway) in IPv4
    fragments of C{size} bytes (a multiple of 8).
    """
    frames = []
    for offset in range(0, len(payload), size):
        piece = payload[offset:offset + size]
        more = ipv4.FLAG_MF if offset + size < len(payload) else 0
        header = ipv4.IPv4Header(0, 20 + len(piece), ident, more, offset // 8, 64,
                                 ipv4.PROTO_ICMP, 0, GUEST, GATEWAY).pack()
        frames.append(GW_MAC + GUEST_MAC + b"\x08\x00" + header + piece)
    return frames


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40).map(lambda n: n * 8), st.randoms(use_true_random=False))
def test_fragmentedPingIsReassembledInAnyOrder(size: int, rnd: Any) -> None:
    """A 3000-byte ping cut into fragments, sent in any order, is answered whole."""
    router, seen = makeRouter()
    router.learn(GUEST, GUEST_MAC)
    request = echoRequest(bytes(range(256)) * 12)
    frames = fragmentsOf(request, size)
    rnd.shuffle(frames)
    for frame in frames:
        router.frameReceived(frame)
    assert seen.drops == []
    pieces = {}
    for frame in seen.frames:
        header = ipv4.IPv4Header.parse(frame, 14)
        pieces[header.fragmentOffset * 8] = frame[34:14 + header.totalLength]
    reply = b"".join(pieces[k] for k in sorted(pieces))
    assert icmp.ICMPMessage.parse(reply).payload == bytes(range(256)) * 12


def test_overlappingFragmentsAreRefused() -> None:
    """Pieces that overlap drop the datagram as malformed; nothing is answered."""
    router, seen = makeRouter()
    request = echoRequest(b"x" * 100)
    first, second = fragmentsOf(request, 64)
    header = ipv4.IPv4Header.parse(second, 14)._replace(fragmentOffset=4, checksum=0).pack()
    router.frameReceived(first)
    router.frameReceived(second[:14] + header + second[34:])
    assert seen.frames == [] and seen.drops[0][0] == "malformed"
    assert "overlap" in seen.drops[0][1]


def test_incompleteDatagramIsDroppedAfterThirtySeconds() -> None:
    """A datagram missing a piece is given up after 30 s, and counted."""
    clock = Clock()
    router, seen = makeRouter(clock=clock)
    router.frameReceived(fragmentsOf(echoRequest(b"x" * 100), 64)[0])
    assert len(router.fragments.pending) == 1
    clock.advance(31)
    assert router.fragments.pending == {}
    assert seen.drops[0][0] == "peer" and "did not arrive whole" in seen.drops[0][1]


def discoverFrame() -> bytes:
    """A guest's DHCP DISCOVER, broadcast from 0.0.0.0:68."""
    discover = dhcp.DHCPMessage(
        1, 1, 6, 0, 0x1234, 0, 0, bytes(4), bytes(4), bytes(4), bytes(4),
        GUEST_MAC + bytes(10), bytes(64), bytes(128), ((dhcp.OPT_MESSAGE_TYPE, b"\x01"),),
    ).pack()
    return ipFrame(b"\xff" * 4, ipv4.PROTO_UDP, udpDatagram(
        bytes(4), b"\xff" * 4, 68, 67, discover), src=bytes(4), dstMac=b"\xff" * 6)


def test_dhcpDiscoverGetsABroadcastOffer() -> None:
    """A DISCOVER to 255.255.255.255 gets an OFFER of 10.0.2.15, broadcast from .2:67."""
    router, seen = makeRouter()
    router.frameReceived(discoverFrame())
    [frame] = seen.frames
    assert frame[:12] == b"\xff" * 6 + GW_MAC
    ip = ipv4.IPv4Header.parse(frame, 14)
    assert (ip.src, ip.dst, ip.tos, ip.totalLength) == (GATEWAY, b"\xff" * 4, 0x10, 576)
    udp = UDPHeader.parse(frame, 34)
    assert (udp.srcPort, udp.dstPort) == (67, 68)
    assert checksumValid(frame[34:], pseudoHeaderSumV4(GATEWAY, b"\xff" * 4, 17, udp.length))
    offer = dhcp.DHCPMessage.parse(frame[42:])
    assert offer.messageType == dhcp.OFFER and offer.yiaddr == GUEST and offer.xid == 0x1234
    assert router.neighbours[GUEST] == GUEST_MAC


def test_withIpv4OffTheRouterIgnoresArpDhcpAndIpv4() -> None:
    """
    ipv4=off: ARP for the gateway, a DHCP discover and a ping get nothing
    back, and no engine hears of them.
    """
    router, seen = makeRouter(":ipv4=off")
    request = arp.ARPPacket(arp.OP_REQUEST, GUEST_MAC, GUEST, bytes(6), GATEWAY).pack()
    router.frameReceived(b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + request)
    router.frameReceived(discoverFrame())
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest()))
    assert seen.frames == [] and GUEST not in router.neighbours
    assert readConfig(PortSpec("slirp:ipv4=off")).describe() == "NAT IPv6 fec0::/64 only"


def test_packetForUnknownGuestWaitsForArp() -> None:
    """A packet to an unknown guest waits for its ARP reply, then leaves to its MAC."""
    clock = Clock()
    router, seen = makeRouter(clock=clock)
    router.sendIPv4(GATEWAY, GUEST, ipv4.PROTO_UDP, udpDatagram(GATEWAY, GUEST, 1, 2, b"hi"))
    [request] = seen.frames
    asked = arp.ARPPacket.parse(request, 14)
    assert request[:6] == b"\xff" * 6 and asked.targetIp == GUEST and asked.senderIp == GATEWAY
    reply = arp.ARPPacket(arp.OP_REPLY, GUEST_MAC, GUEST, GW_MAC, GATEWAY).pack()
    router.frameReceived(GW_MAC + GUEST_MAC + b"\x08\x06" + reply)
    assert seen.frames[1][:12] == GUEST_MAC + GW_MAC
    assert seen.frames[1].endswith(b"hi")


def test_unansweredArpDropsThePacketAfterASecond() -> None:
    """If the guest never answers ARP, its packets are dropped and counted after 1 s."""
    clock = Clock()
    router, seen = makeRouter(clock=clock)
    router.sendIPv4(GATEWAY, GUEST, ipv4.PROTO_UDP, udpDatagram(GATEWAY, GUEST, 1, 2, b"hi"))
    clock.advance(1.1)
    reply = arp.ARPPacket(arp.OP_REPLY, GUEST_MAC, GUEST, GW_MAC, GATEWAY).pack()
    router.frameReceived(GW_MAC + GUEST_MAC + b"\x08\x06" + reply)
    assert len(seen.frames) == 1
    assert seen.drops[0][0] == "peer" and "did not answer ARP" in seen.drops[0][1]


def test_bigDatagramsAreFragmentedToTheMtu() -> None:
    """A 4000-byte datagram leaves in fragments that reassemble to it."""
    router, seen = makeRouter()
    router.learn(GUEST, GUEST_MAC)
    datagram = udpDatagram(GATEWAY, GUEST, 1, 2, bytes(range(256)) * 16)
    router.sendIPv4(GATEWAY, GUEST, ipv4.PROTO_UDP, datagram)
    assert len(seen.frames) == 3
    pieces = {}
    for frame in seen.frames:
        header = ipv4.IPv4Header.parse(frame, 14)
        assert header.totalLength <= 1500 and ipv4.headerChecksumValid(frame, 14)
        pieces[header.fragmentOffset * 8] = frame[34:14 + header.totalLength]
    assert b"".join(pieces[k] for k in sorted(pieces)) == datagram


def test_tcpSegmentsLeaveAsPartialChecksumPacketsAndSuperFrames() -> None:
    """Small segments carry NEEDS_CSUM; longer than the MSS, they are TSO super-frames."""
    router, seen = makeRouter()
    router.learn(GUEST, GUEST_MAC)
    header = bytes([0, 80, 0x9C, 0x40] + [0] * 8 + [0x50, 0x18] + [0] * 6)
    router.sendTcp(GATEWAY, GUEST, header, b"a" * 100, 1460)
    router.sendTcp(GATEWAY, GUEST, header, b"b" * 10000, 1460)
    small, big = (vnet.VnetHeader.parse(p) for p in seen.packets)
    assert small.flags == vnet.NEEDS_CSUM and small.gsoType == vnet.GSO_NONE
    assert big.gsoType == vnet.GSO_TCPV4 and big.gsoSize == 1460
    frames = vnet.toFrames(seen.packets[1])
    assert len(frames) == 7
    for frame in frames:
        length = len(frame) - 34
        assert checksumValid(frame[34:], pseudoHeaderSumV4(GATEWAY, GUEST, 6, length))
    assert b"".join(f[54:] for f in frames) == b"b" * 10000


def test_hostAddressesFollowQemusRules() -> None:
    """.2 is loopback, .3:53 the resolver, other .3 ports and LAN addresses nowhere."""
    router, _ = makeRouter(":resolver=127.0.0.53:resolverport=5300")
    assert router.hostAddress(GATEWAY, 80, 6) == ("127.0.0.1", 80)
    assert router.hostAddress(DNS, 53, 17) == ("127.0.0.53", 5300)
    assert router.hostAddress(DNS, 80, 6) is None
    assert router.hostAddress(bytes([10, 0, 2, 9]), 80, 6) is None
    assert router.hostAddress(bytes([192, 0, 2, 1]), 443, 6) == ("192.0.2.1", 443)
    assert router.guestAddress("127.0.0.1") == GATEWAY
    restricted, _ = makeRouter(":restrict=on")
    assert restricted.hostAddress(GATEWAY, 80, 6) is None


def test_resolverComesFromResolvConfAndFollowsChanges(tmp_path: Any) -> None:
    """The first nameserver line is used, and a changed file is read again."""
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\nsearch example\nnameserver 127.0.0.53\nnameserver 1.1.1.1\n")
    conf = ResolvConf(str(path))
    assert conf.nameserver(0.0) == "127.0.0.53"
    path.write_text("nameserver 127.0.0.54\n")
    assert conf.nameserver(0.5) == "127.0.0.53", "looked at no more than once a second"
    assert conf.nameserver(2.0) == "127.0.0.54"


@pytest.mark.parametrize("options, problem", [
    (":net=10.0.2.0/30", "at least 32 addresses"),
    (":net=banana", "not an IPv4 network"),
    (":host=10.0.3.2", "not a host address"),
    (":dns=10.0.2.2", "must differ"),
    (":dhcpstart=10.0.2.3", "must differ"),
    (":hostfwd=tcp\\:\\:99999-\\:22", "not a port number"),
    (":hostfwd=icmp\\:\\:22-\\:22", "not tcp or udp"),
    (":mtu=70000", "out of range"),
    (":colour=blue", "unknown option colour"),
    (":net6=fd00\\:\\:/48", "only in a /64"),
    (":net6=banana", "not an IPv6 prefix"),
    (":ipv6=maybe", "not on or off"),
    (":guestfwd=banana", "expected \\[tcp:\\]ADDR:PORT-ENDPOINT"),
    (":guestfwd=10.0.2.2\\:80-unix\\:/x", "must be a free host address"),
    (":guestfwd=10.0.2.100\\:80-nonsense\\:x", "is not a client endpoint"),
    (":guestfwd=10.0.2.100\\:80-cmd\\:no-such-program-here", "no command 'no-such-program"),
    (":guestfwd=10.0.2.100\\:80-cmd\\:", "names no command"),
    (":dhcpv6=sometimes", "not on or off"),
    (":domain=a:domainname=b", "domain= and domainname= are one option"),
    (":host6=fec0\\:\\:20", "outside its DHCPv6 pool"),
    (":ipv6-dns=fd00\\:\\:3", "must be an address of fec0::/64"),
    (":host6=fec0\\:\\:3", "dns6= must differ from host6="),
    (":dns6=banana", "not an IPv6 address"),
    (":ipv4=off:ipv6=off", "leave guests nothing"),
    (":smb=/nonexistent/share", "smb=/nonexistent/share: No such file or directory"),
    (":smb=/etc/hostname", "not a directory"),
    (":smb=/tmp:smbserver=10.0.2.3", "must be a free address"),
    (":smb=/tmp:smbserver=10.0.2.20", "must be a free address"),
    (":smb=/tmp:guestfwd=10.0.2.4\\:80-unix\\:/x", "must be a free address"),
    (":smb=/tmp:ipv4=off", "forwards lead to IPv6 guests only"),
    (":ipv4=off:hostfwd=tcp\\:\\:2222-\\:22", "forwards lead to IPv6 guests only"),
    (":ipv4=off:guestfwd=10.0.2.100\\:80-unix\\:/x", "forwards lead to IPv6 guests only"),
    (":dnssearch=lab..test", "empty or overlong label"),
    (":hostname=caf\u00e9", "not ASCII"),
    (":domain=" + "x" * 64, "empty or overlong label"),
])
def test_badOptionsAreRefusedWithTheReason(options: str, problem: str) -> None:
    """A spec with a bad option fails at start-up, saying what is wrong."""
    from vtwisted.ports.slirp import makeService

    with pytest.raises(SpecError, match=problem):
        makeService(None, PortSpec("slirp" + options), None)


def test_qemusOptionNamesAreTaken() -> None:
    """domainname=, ipv6-net=, ipv6-host= and ipv6-dns= as QEMU spells them."""
    import ipaddress

    config = readConfig(PortSpec(
        "slirp:domainname=lab:ipv6-net=fd00\\:1\\:\\:/64:ipv6-host=fd00\\:1\\:\\:1"
        ":ipv6-dns=fd00\\:1\\:\\:beef"))
    assert config.domain == "lab" and str(config.network6) == "fd00:1::/64"
    assert config.gateway6 == ipaddress.IPv6Address("fd00:1::1").packed
    assert config.nameserver6 == ipaddress.IPv6Address("fd00:1::beef").packed
    default = readConfig(PortSpec("slirp"))
    assert default.gateway6 == ipaddress.IPv6Address("fec0::2").packed
    assert default.nameserver6 == ipaddress.IPv6Address("fec0::3").packed


def test_smbIsQemusAtTheNetworksFourthAddress() -> None:
    """smb=DIR serves at .4 unless smbserver= says otherwise; a guest forward may use .4."""
    assert readConfig(PortSpec("slirp:smb=/tmp")).smbServer == bytes([10, 0, 2, 4])
    moved = readConfig(PortSpec("slirp:smb=/tmp:smbserver=10.0.2.9"))
    assert moved.smbRoot == "/tmp" and moved.smbServer == bytes([10, 0, 2, 9])
    assert readConfig(PortSpec("slirp:guestfwd=10.0.2.4\\:80-unix\\:/x")).smbRoot is None


def test_smbWithoutSambaSaysWhatToInstall(monkeypatch) -> None:
    """No smbd: the spec fails at start-up naming the package."""
    from vtwisted.ports.slirp import makeService
    from vtwisted.slirp import smb

    monkeypatch.setattr(smb, "findSmbd", lambda: None)
    with pytest.raises(SpecError, match=r"smb= needs Samba's smbd.*apt install samba"):
        makeService(None, PortSpec("slirp:smb=/tmp"), None)


def test_forwardsFollowQemusSyntax() -> None:
    """hostfwd rules read as QEMU's, defaulting to loopback and the first lease."""
    first = bytes([10, 0, 2, 15])
    assert str(parseForward("tcp::2222-:22", first)) == "tcp:127.0.0.1:2222-10.0.2.15:22"
    assert str(parseForward("udp:0.0.0.0:53-10.0.2.16:5353", first)) == \
        "udp:0.0.0.0:53-10.0.2.16:5353"
    assert str(parseForward(":8080-:80", first)) == "tcp:127.0.0.1:8080-10.0.2.15:80"


@pytest.mark.parametrize(
    ("rule", "shown"),
    [("tcp:[::1]:8080-[fec0::99]:80", "tcp:[::1]:8080-[fec0::99]:80"),
     ("udp:[::]:5353-[FEC0::0:5]:53", "udp:[::]:5353-[fec0::5]:53"),
     ("[::1]:2222-:22", "tcp:[::1]:2222-10.0.2.15:22")],
)
def test_forwardsTakeBracketedIpv6Addresses(rule: str, shown: str) -> None:
    """IPv6 addresses are written in brackets on either side."""
    assert str(parseForward(rule, bytes([10, 0, 2, 15]))) == shown


@pytest.mark.parametrize(
    ("rule", "problem"),
    [("tcp:[::1:8080-:80", "expected"), ("tcp::8080-[10.0.2.15]:80", "bracketed IPv6"),
     ("tcp::8080-fec0::99:80", "expected"), ("tcp:[nohost]:1-:2", "not an IP address")],
)
def test_badForwardsSayWhatIsWrong(rule: str, problem: str) -> None:
    """A malformed rule is refused with the rule and the reason."""
    with pytest.raises(ValueError, match=problem):
        parseForward(rule, bytes([10, 0, 2, 15]))


#: Frames to the router: every EtherType it handles (IPv4 ones headed by
#: 0x45 often enough to get past the header), and others.
routerFrames = st.tuples(
    st.binary(min_size=6, max_size=6),
    st.sampled_from([b"\x08\x00\x45", b"\x08\x00", b"\x08\x06", b"\x86\xdd", b"\x88\xf8"]),
    st.binary(max_size=200),
).map(lambda parts: GW_MAC + b"".join(parts))


@settings(max_examples=400, deadline=None)
@given(routerFrames, st.booleans())
def test_anyFrameIsCountedNeverFatal(frame: bytes, asVnet: bool) -> None:
    """Whatever arrives, the router neither fails nor stops answering pings."""
    router, seen = makeRouter()
    router.udp = router.tcp = router.icmp = FakeEngine()
    with noFailuresLogged():
        if asVnet:
            router.vnetPacketReceived(bytes(10) + GW_MAC + frame[6:])
        else:
            router.frameReceived(GW_MAC + frame[6:])
    seen.frames.clear()
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest()))
    assert icmp.ICMPMessage.parse(seen.frames[-1], 34).type == icmp.ECHO_REPLY


# The UDP engine, on real loopback sockets


@implementer(IGuestNetwork)
class UdpGuest:
    """
    A router stand-in that records what the UDP engine sends to guests.
    """

    gateway = GATEWAY
    nameserver = DNS
    gateway6 = None
    nameserver6 = None
    restricted = False
    mtu = 1500
    maxSegment = 1460

    def __init__(self, resolver: tuple[str, int]) -> None:
        self.sent: list[tuple[bytes, bytes, bytes]] = []
        self.unreachable: list[tuple[bytes, int]] = []
        self.resolver = resolver

    def hostAddress(self, dst: bytes, port: int, protocol: int) -> tuple[str, int] | None:
        if dst == GATEWAY:
            return ("127.0.0.1", port)
        if dst == DNS:
            return self.resolver if port == 53 else None
        return None

    def guestAddress(self, host: str, v6: bool = False) -> bytes:
        assert not v6 and not host.startswith("::ffff:"), "IPv4 peers come unmapped"
        return GATEWAY if host == "127.0.0.1" else socket.inet_aton(host)

    def sendIP(self, src: bytes, dst: bytes, protocol: int, payload: bytes,
               ttl: int = 64) -> None:
        self.sent.append((src, dst, payload))

    def sendIPv4(self, src: bytes, dst: bytes, protocol: int, payload: bytes,
                 ttl: int = 64) -> None:
        raise AssertionError("the UDP engine sends through sendIP")

    def sendTcp(self, src: bytes, dst: bytes, header: bytes, payload: Any, mss: int) -> None:
        raise AssertionError("the UDP engine sends no TCP")

    def sendIcmpError(self, packet: bytes, kind: int, code: int, mtu: int,
                      reporter: bytes) -> None:
        raise AssertionError("the UDP engine relays no ICMP errors")

    def sendUdp(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                payload: bytes) -> None:
        self.sendIP(src, dst, 17, udpDatagram(src, dst, srcPort, dstPort, payload))

    def sendUdpRun(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                   payloads: list[bytes]) -> None:
        for payload in payloads:
            self.sendUdp(src, dst, srcPort, dstPort, payload)

    def sendUnreachable(self, packet: bytes, code: int) -> None:
        self.unreachable.append((packet, code))

    def dropped(self, reason: str, message: str) -> None:
        pass


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    from reactortools import until

    await until(predicate, timeout)


@pytest_twisted.ensureDeferred
async def test_udpRepliesComeBackFromTheGatewayOrTheDnsProxy() -> None:
    """Datagrams reach loopback servers; answers return from .2:port and from .3:53."""
    from twisted.internet import reactor

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.setblocking(False)
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 0))
    resolver.setblocking(False)
    network = UdpGuest(resolver.getsockname())
    engine = UdpNat(network, reactor)
    try:
        engine.datagramReceived(GUEST, 4000, GATEWAY, echo.getsockname()[1], b"hello", b"")
        engine.datagramReceived(GUEST, 4000, DNS, 53, b"query", b"")
        for server in (echo, resolver):
            await _until(lambda s=server: _readable(s))
            data, peer = server.recvfrom(100)
            server.sendto(data.upper(), peer)
        await _until(lambda: len(network.sent) == 2)
        replies = {}
        for src, dst, payload in network.sent:
            header = UDPHeader.parse(payload)
            assert dst == GUEST and header.dstPort == 4000
            assert checksumValid(payload, pseudoHeaderSumV4(src, dst, 17, len(payload)))
            replies[(src, header.srcPort)] = payload[8:]
        assert replies == {(GATEWAY, echo.getsockname()[1]): b"HELLO", (DNS, 53): b"QUERY"}
        assert len(engine.mappings) == 1, "one host socket per guest source"
        engine.datagramReceived(GUEST, 4000, DNS, 80, b"x", b"packet")
        assert network.unreachable == [(b"packet", 0)]
    finally:
        engine.close()
        echo.close()
        resolver.close()


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_idleUdpMappingsClose() -> None:
    """A DNS-only mapping closes after about 10 s idle, another after about 240 s."""
    clock = Clock()

    closed: list[int] = []

    class FakePort:
        def __init__(self, n: int) -> None:
            self.n = n

        def stopListening(self) -> None:
            closed.append(self.n)

    ports = iter(range(10))

    def listenUDP(port: int, protocol: Any, interface: str, maxPacketSize: int) -> FakePort:
        protocol.transport = type("T", (), {"write": lambda self, d, a: None})()
        return FakePort(next(ports))

    clock.listenUDP = listenUDP  # type: ignore[attr-defined]
    network = UdpGuest(("127.0.0.1", 53))
    engine = UdpNat(network, clock)
    engine.datagramReceived(GUEST, 1, DNS, 53, b"q", b"")
    engine.datagramReceived(GUEST, 2, GATEWAY, 9, b"q", b"")
    clock.advance(5)
    clock.advance(5)
    clock.advance(5)
    assert closed == [0]
    for _ in range(48):
        clock.advance(5)
    assert closed == [0, 1]
    engine.close()


def test_pingsBeyondTheGatewayGoToTheIcmpEngine() -> None:
    """A ping to an outside host is handed on; restricted or to the LAN, it is not."""
    outside = bytes([192, 0, 2, 7])
    router, seen = makeRouter()
    router.frameReceived(ipFrame(outside, ipv4.PROTO_ICMP, echoRequest()))
    router.frameReceived(ipFrame(bytes([10, 0, 2, 9]), ipv4.PROTO_ICMP, echoRequest()))
    [(src, dst, ident, sequence, data)] = router.icmp.calls
    assert (src, dst, ident, sequence, data) == (GUEST, outside, 0x1234, 1, b"ping!")
    restricted, _ = makeRouter(":restrict=on")
    restricted.frameReceived(ipFrame(outside, ipv4.PROTO_ICMP, echoRequest()))
    assert restricted.icmp.calls == []


def test_ipv6PlanFollowsThePrefix() -> None:
    """IPv6 is on by default with fec0::/64; net6= moves it and ipv6=off removes it."""
    import ipaddress

    config = readConfig(PortSpec("slirp"))
    assert config.network6 == ipaddress.IPv6Network("fec0::/64")
    assert config.gateway6 == ipaddress.IPv6Address("fec0::2").packed
    assert config.nameserver6 == ipaddress.IPv6Address("fec0::3").packed
    moved = readConfig(PortSpec("slirp:net6=fd00\\:1\\:\\:/64"))
    assert moved.gateway6 == ipaddress.IPv6Address("fd00:1::2").packed
    assert readConfig(PortSpec("slirp:ipv6=off")).gateway6 is None


def test_udpLeavesWithItsChecksumLeftToComplete() -> None:
    """A datagram within the MTU leaves as NEEDS_CSUM and checks once cut; a big one fragments."""
    router, seen = makeRouter()
    router.learn(GUEST, GUEST_MAC)
    router.sendUdp(GATEWAY, GUEST, 53, 4000, b"answer" * 100)
    [packet] = seen.packets
    assert vnet.VnetHeader.parse(packet).flags == vnet.NEEDS_CSUM
    [frame] = vnet.toFrames(packet)
    assert frame[:12] == GUEST_MAC + GW_MAC and ipv4.headerChecksumValid(frame, 14)
    udp = UDPHeader.parse(frame, 34)
    assert (udp.srcPort, udp.dstPort, udp.length) == (53, 4000, 608)
    assert checksumValid(frame[34:], pseudoHeaderSumV4(GATEWAY, GUEST, 17, 608))
    router.sendUdp(GATEWAY, GUEST, 53, 4000, b"x" * 3000)
    assert len(seen.frames) == 3, "fragments, as plain frames"


def test_usoPacketsReachTheEngineDatagramByDatagram() -> None:
    """A TAP's merged run of datagrams reaches the UDP engine as the datagrams it was."""
    router, seen = makeRouter()
    datagrams = [bytes([n]) * 1000 for n in range(5)] + [b"tail"]
    payload = b"".join(datagrams)
    length = 8 + len(payload)
    udp = UDPHeader(4000, 5000, length, pseudoHeaderSumV4(GUEST, GATEWAY, 17, length)).pack()
    ip = ipv4.IPv4Header(0, 20 + length, 9, 0, 0, 64, 17, 0, GUEST, GATEWAY).pack()
    header = vnet.VnetHeader(vnet.NEEDS_CSUM, vnet.GSO_UDP_L4, 42, 1000, 34, 6).pack()
    router.vnetPacketReceived(header + GW_MAC + GUEST_MAC + b"\x08\x00" + ip + udp + payload)
    assert seen.drops == []
    got = [(call[0], call[1], call[2], call[3], call[4]) for call in router.udp.calls]
    assert got == [(GUEST, 4000, GATEWAY, 5000, d) for d in datagrams]


@pytest.mark.parametrize("writable, pays", [(True, True), (False, True), (True, False)])
def test_runsOfDatagramsLeaveAsOneUsoPacketWhereTheyPay(writable: bool, pays: bool) -> None:
    """A flow's run is one USO packet cutting back to the same datagrams, or single datagrams."""
    router, seen = makeRouter()
    router.usoWritable, router.usoPays = writable, lambda mac: pays
    router.learn(GUEST, GUEST_MAC)
    payloads = [bytes([n]) * 1200 for n in range(10)] + [b"last"]
    router.sendUdpRun(GATEWAY, GUEST, 5201, 40000, payloads)
    if writable and pays:
        [packet] = seen.packets
        assert vnet.VnetHeader.parse(packet).gsoType == vnet.GSO_UDP_L4
    else:
        assert len(seen.packets) == len(payloads)
    frames = [f for p in seen.packets for f in vnet.toFrames(p)]
    assert [f[42:] for f in frames] == payloads
    for frame in frames:
        header = ipv4.IPv4Header.parse(frame, 14)
        assert ipv4.headerChecksumValid(frame, 14) and frame[:6] == GUEST_MAC
        assert checksumValid(frame[34:], pseudoHeaderSumV4(GATEWAY, GUEST, 17,
                                                           header.totalLength - 20))


def test_udpEngineSendsEachTurnsDatagramsInRuns() -> None:
    """Datagrams read in one reactor turn leave after it, one run per flow and length."""
    from vtwisted.slirp.udp import RUN_DATAGRAMS, UdpNat

    clock = Clock()
    runs: list[tuple[int, int]] = []

    class Network(UdpGuest):
        def sendUdpRun(self, src: bytes, dst: bytes, srcPort: int, dstPort: int,
                       payloads: list[bytes]) -> None:
            runs.append((srcPort, len(payloads)))

    engine = UdpNat(Network(("127.0.0.1", 53)), clock)
    for _ in range(RUN_DATAGRAMS + 3):
        engine.queue(GATEWAY, GUEST, 1, 2, b"x" * 100)
    engine.queue(GATEWAY, GUEST, 1, 2, b"short")
    engine.queue(GATEWAY, GUEST, 1, 2, b"x" * 100)
    engine.queue(GATEWAY, GUEST, 7, 2, b"x" * 100)
    assert runs == [], "nothing leaves before the turn ends"
    clock.advance(0)
    assert runs == [(1, RUN_DATAGRAMS), (1, 4), (1, 1), (7, 1)]
    engine.close()


@pytest.mark.parametrize("offload", [True, False])
@pytest_twisted.ensureDeferred
async def test_runOfGuestDatagramsReachesTheHostAsTheSameDatagrams(offload: bool) -> None:
    """A USO run leaves in one UDP_SEGMENT send (or one by one) and arrives datagram by datagram."""
    from twisted.internet import reactor

    from vtwisted.slirp.packets import SegmentRun

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    engine = UdpNat(UdpGuest(("127.0.0.1", 53)), reactor)
    engine.segmentOffload = offload
    datagrams = [bytes([n]) * 1000 for n in range(5)] + [b"tail"]
    try:
        engine.datagramsReceived(GUEST, 4000, GATEWAY, server.getsockname()[1],
                                 SegmentRun(memoryview(b"".join(datagrams)), 1000), b"")
        got: list[bytes] = []

        def drained() -> bool:
            while _readable(server):
                got.append(server.recv(2000))
            return len(got) >= len(datagrams)

        await _until(drained)
        assert got == datagrams
        assert engine.segmentOffload == offload, "the kernel took UDP_SEGMENT"
    finally:
        engine.close()
        server.close()


def test_packetsThatWouldLeaveWithTtlOneGetTimeExceeded() -> None:
    """A datagram beyond the gateway with TTL 1 is answered by 10.0.2.2, as a router does."""
    router, seen = makeRouter()
    outside = bytes([192, 0, 2, 7])
    datagram = udpDatagram(GUEST, outside, 33434, 33434, b"probe")
    header = ipv4.IPv4Header(0, 20 + len(datagram), 5, 0, 0, 1, 17, 0, GUEST, outside).pack()
    router.frameReceived(GW_MAC + GUEST_MAC + b"\x08\x00" + header + datagram)
    [frame] = seen.frames
    assert ipv4.IPv4Header.parse(frame, 14).src == GATEWAY
    message = icmp.ICMPMessage.parse(frame, 34)
    assert (message.type, message.code) == (icmp.TIME_EXCEEDED, 0)
    assert message.payload[:20] == header
    assert router.udp.calls == [], "it does not leave"


def test_hostLoopbackCanBeClosedToGuests() -> None:
    """With hostloopback=off the gateway leads nowhere; DNS still works; 127/8 never leaves."""
    router, _ = makeRouter(":hostloopback=off:resolver=127.0.0.53")
    assert router.hostAddress(GATEWAY, 80, 6) is None
    assert router.hostAddress(DNS, 53, 17) == ("127.0.0.53", 53)
    assert router.hostAddress(bytes([192, 0, 2, 1]), 80, 6) == ("192.0.2.1", 80)
    opened, _ = makeRouter()
    assert opened.hostAddress(bytes([127, 0, 0, 1]), 80, 6) is None, "a guest's own loopback"
