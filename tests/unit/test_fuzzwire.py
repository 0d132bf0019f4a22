"""
Every parser of L{vtwisted.wire}, fed random and mutated bytes at random
offsets, returns or raises only the error type its docstring names.

The examples per test are few by default so that the suite stays fast; set
C{VTWISTED_FUZZ_EXAMPLES} (say to 20000) for a long run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtwisted.wire import (
    arp,
    bpdu,
    checksum,
    dhcp,
    dhcpv6,
    ethernet,
    icmp,
    icmpv6,
    ipv4,
    ipv6,
    pcap,
    tcp,
    tcpgro,
    tftp,
    udp,
    vdecontrol,
    vhostuser,
    vnet,
    vnetcheck,
    vxlan,
)

EXAMPLES = int(os.environ.get("VTWISTED_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def mutated(base: bytes, changes: list[tuple[int, int]], cut: int) -> bytes:
    """C{base} with some bytes changed, then perhaps cut short."""
    data = bytearray(base)
    for offset, value in changes:
        if data:
            data[offset % len(data)] = value
    return bytes(data[:cut]) if 0 <= cut < len(data) else bytes(data)


def around(*bases: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or one of C{bases} a little damaged."""
    return st.one_of(
        st.binary(max_size=300),
        st.builds(mutated, st.sampled_from(bases),
                  st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=4),
                  st.integers(-1, 600)),
    )


OFFSETS = st.integers(-4, 80)

_IP4 = ipv4.IPv4Header(0, 48, 1, 0, 0, 64, 17, 0, b"\x0a\0\0\x01", b"\x0a\0\0\x02").pack()
_IP6 = ipv6.IPv6Header(0, 0, 8, 0, 64, bytes(16), bytes(16)).pack() + bytes([17, 0]) + bytes(6)
_TCP = tcp.TCPHeader(1, 2, 3, 4, 0x18, 5, 0, 0, bytes([2, 4, 5, 0xB4, 1, 3, 3, 7])).pack()
_DHCP = dhcp.DHCPMessage(1, 1, 6, 0, 7, 0, 0, bytes(4), bytes(4), bytes(4), bytes(4),
                         bytes(6), b"", b"", ((53, b"\x01"), (50, bytes(4)))).pack()
_IAADDR = (5).to_bytes(2, "big") + (24).to_bytes(2, "big") + bytes(24)
_DHCP6 = b"\x01\0\0\x01" + dhcpv6.packOptions([(1, b"\0\3\0\1abcdef"),
                                               (3, bytes(12) + _IAADDR)])
_NS = icmpv6.neighborSolicitation(bytes(16), bytes(16), bytes(16), bytes(6))
_VDE = vdecontrol.packRequest(b"/tmp/vde.ctl/x", 3, "qemu")
_VHOST = vhostuser.message(2, vhostuser.packNumber(7))
_TFTP = tftp.request(tftp.RRQ, "file", options={"blksize": "1400"})

#: Each parser, the bytes to feed it, and the errors it may raise.
Parser = tuple[Callable[[bytes, int], Any], st.SearchStrategy[bytes],
               tuple[type[Exception], ...]]
PARSERS: dict[str, Parser] = {
    "arp": (lambda d, o: arp.ARPPacket.parse(d, o),
            around(arp.ARPPacket(1, bytes(6), bytes(4), bytes(6), bytes(4)).pack()),
            (arp.ARPError,)),
    "bpdu": (lambda d, o: bpdu.parse(d, max(o, 0)), st.binary(max_size=120), (bpdu.BpduError,)),
    "completePartial": (lambda d, o: checksum.completePartial(d, o, o % 20, o % 5),
                        st.binary(max_size=120), (ValueError,)),
    "dhcp": (lambda d, o: _dhcpFields(dhcp.DHCPMessage.parse(d, max(o, 0))), around(_DHCP),
             (dhcp.DHCPError,)),
    "dhcpAddresses": (lambda d, o: dhcp.parseAddresses(d), st.binary(max_size=40),
                      (dhcp.DHCPError,)),
    "dhcpv6": (lambda d, o: _dhcp6Fields(dhcpv6.Dhcp6Message.parse(d)), around(_DHCP6),
               (dhcpv6.Dhcp6Error,)),
    "dhcpv6Options": (lambda d, o: dhcpv6.parseOptions(d, max(o, 0)), around(_DHCP6),
                      (dhcpv6.Dhcp6Error,)),
    "iaPrefix": (lambda d, o: dhcpv6.IaPrefix.parse(d), st.binary(max_size=60),
                 (dhcpv6.Dhcp6Error,)),
    "icmp": (lambda d, o: icmp.ICMPMessage.parse(d, max(o, 0)), st.binary(max_size=60),
             (icmp.ICMPError,)),
    "icmpError": (lambda d, o: icmp.errorMessage(3, o & 0xFF, d), around(_IP4), ()),
    "icmpv6": (lambda d, o: _ndFields(icmpv6.ICMPv6Message.parse(d, max(o, 0))),
               around(_NS), (icmpv6.ICMPv6Error,)),
    "icmpv6Options": (lambda d, o: list(icmpv6.iterOptions(d, max(o, 0))), around(_NS),
                      (icmpv6.ICMPv6Error,)),
    "ipv4": (lambda d, o: ipv4.IPv4Header.parse(d, max(o, 0)), around(_IP4), (ipv4.IPv4Error,)),
    "ipv4Checksum": (lambda d, o: ipv4.IPv4Header.parse(d, max(o, 0))
                     and ipv4.headerChecksumValid(d, max(o, 0)), around(_IP4), (ipv4.IPv4Error,)),
    "ipv6": (lambda d, o: ipv6.IPv6Header.parse(d, max(o, 0)), around(_IP6), (ipv6.IPv6Error,)),
    "ipv6Chain": (lambda d, o: ipv6.headerChain(d, max(o, 0)), around(_IP6), (ipv6.IPv6Error,)),
    "mac": (lambda d, o: ethernet.parseMac(d.decode("latin-1")),
            around(b"02:00:00:00:00:01", b"2:0:0:0:0:1"), (ValueError,)),
    "pcap": (lambda d, o: pcap.readRecords(d), around(pcap.fileHeader(100) + pcap.record(
        1.5, bytes(60), 100)), (ValueError,)),
    "tcp": (lambda d, o: list(tcp.iterOptions(tcp.TCPHeader.parse(d, max(o, 0)).options)),
            around(_TCP), (tcp.TCPError,)),
    "tftpRequest": (lambda d, o: tftp.parseRequest(d), around(_TFTP), (tftp.TftpError,)),
    "tftpError": (lambda d, o: tftp.parseError(d), around(tftp.error(1, "no")),
                  (tftp.TftpError,)),
    "udp": (lambda d, o: udp.UDPHeader.parse(d, max(o, 0)), st.binary(max_size=20),
            (udp.UDPError,)),
    "vdeRequest": (lambda d, o: vdecontrol.parseRequest(d), around(_VDE),
                   (vdecontrol.MalformedRequest,)),
    "vdeReply": (lambda d, o: vdecontrol.parseReply(d), around(vdecontrol.packReply(b"/x")),
                 (ValueError,)),
    "vhostUser": (lambda d, o: _vhostPayload(d), around(_VHOST), (vhostuser.VhostUserError,)),
    "vnet": (lambda d, o: vnet.toFrames(d), st.binary(max_size=120), (vnet.VnetError,)),
    "vnetTags": (lambda d, o: vnet.removeTag(vnet.insertTag(d, o & 0xFFF)),
                 st.binary(max_size=80), (vnet.VnetError,)),
    "vnetcheck": (lambda d, o: vnetcheck.validate(d), st.binary(max_size=120), ()),
    "vxlan": (lambda d, o: vxlan.parse(d), around(vxlan.header(5) + bytes(14)), (ValueError,)),
}


def _dhcpFields(message: dhcp.DHCPMessage) -> object:
    return message.clientMac, message.messageType, message.option(50)


def _dhcp6Fields(message: dhcpv6.Dhcp6Message) -> object:
    found: list[object] = []
    for code in (dhcpv6.OPT_IA_NA, dhcpv6.OPT_IA_TA, dhcpv6.OPT_IA_PD):
        for value in message.all(code):
            ia = dhcpv6.IdentityAssociation.parse(value, code == dhcpv6.OPT_IA_TA)
            found += ia.prefixes() if code == dhcpv6.OPT_IA_PD else ia.addresses()
    return found


def _ndFields(message: icmpv6.ICMPv6Message) -> object:
    body = message.pack(bytes(16), bytes(16))
    return icmpv6.targetAddress(message), icmpv6.linkLayerAddress(body, 24, 1)


def _vhostPayload(data: bytes) -> object:
    header = vhostuser.Header.parse(data)
    payload = data[vhostuser.HEADER.size:]
    return [f(header.request, payload) for f in (
        vhostuser.number, vhostuser.ringState, vhostuser.ringAddresses, vhostuser.logArea,
        vhostuser.memoryTable)]


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsersRaiseOnlyTheirOwnErrors(name: str) -> None:
    """
    Whatever the bytes and the offset, a parser returns or raises the error
    it documents, never an IndexError, struct.error or the like.
    """
    parse, data, errors = PARSERS[name]

    @FUZZ
    @given(data, OFFSETS)
    def check(data: bytes, offset: int) -> None:
        try:
            parse(data, offset)
        except errors:
            pass

    check()


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=100), st.builds(
    mutated, st.sampled_from([_TCP]), st.lists(st.tuples(st.integers(0, 80),
                                                          st.integers(0, 255)), max_size=3),
    st.integers(-1, 100))), max_size=8))
def test_tcpCoalescerTakesAnyFrames(frames: list[bytes]) -> None:
    """
    Whatever frames a VXLAN socket reads, the TCP coalescer hands each on
    and every packet it merges is one a TAP accepts.
    """
    out: list[bytes] = []
    packets: list[bytes] = []
    coalescer = tcpgro.TcpCoalescer(out.append, packets.append)
    base = b"\x02" * 12 + b"\x08\x00" + ipv4.IPv4Header(
        0, 40, 1, 0, 0, 64, 6, 0, b"\x0a\0\0\x01", b"\x0a\0\0\x02").pack()
    for frame in frames:
        coalescer.add(frame if len(frame) < 20 else base + frame)
    coalescer.flush()
    for packet in packets:
        assert vnetcheck.validate(packet) is None


def test_aShortVhostUserHeaderIsAVhostUserError() -> None:
    """
    Fewer bytes than a header raise the module's own error (they raised
    C{struct.error}), as its docstring promises for any bytes.
    """
    with pytest.raises(vhostuser.VhostUserError, match="shorter than a 12-byte header"):
        vhostuser.Header.parse(bytes(11))
