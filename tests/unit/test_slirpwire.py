"""
Tests for the ARP, ICMP and DHCP codecs of the slirp ports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtwisted.wire import arp, dhcp, icmp
from vtwisted.wire.arp import ARPError, ARPPacket, replyTo
from vtwisted.wire.dhcp import MAGIC, DHCPError, DHCPMessage
from vtwisted.wire.icmp import ICMPError, ICMPMessage

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
macs = st.binary(min_size=6, max_size=6)
ips = st.binary(min_size=4, max_size=4)
offsets = st.integers(-3, 400)

arpPackets = st.builds(ARPPacket, u16, macs, ips, macs, ips)
icmpMessages = st.builds(
    ICMPMessage, u8, u8, st.just(0), st.binary(min_size=4, max_size=4), st.binary(max_size=64)
)
dhcpOptions = st.lists(
    st.tuples(st.integers(1, 254), st.binary(max_size=255)), max_size=8
).map(tuple)
dhcpMessages = st.builds(
    DHCPMessage, u8, u8, u8, u8, u32, u16, u16, ips, ips, ips, ips,
    st.binary(min_size=16, max_size=16), st.binary(min_size=64, max_size=64),
    st.binary(min_size=128, max_size=128), dhcpOptions,
)

GUEST_MAC = bytes.fromhex("525400123456")
GATEWAY_MAC = bytes.fromhex("52550a000202")
GUEST = bytes([10, 0, 2, 15])
GATEWAY = bytes([10, 0, 2, 2])

#: "Who has 10.0.2.2? Tell 10.0.2.15", as a Linux guest sends it.
ARP_REQUEST = bytes.fromhex("0001080006040001525400123456" "0a00020f000000000000" "0a000202")
#: The answer slirp gives it.
ARP_REPLY = bytes.fromhex("000108000604000252550a000202" "0a000202525400123456" "0a00020f")

#: A DHCPDISCOVER as busybox udhcpc sends it: options 53, client id, max
#: size 576, parameter list, END, zero-padded to the 300-byte BOOTP size.
BUSYBOX_DISCOVER = bytes.fromhex(
    "010106003903f32600000000" + "00" * 16 + "525400123456" + "00" * 10 + "00" * 192
    + "63825363" + "350101" + "3d0701525400123456" + "39020240"
    + "3707010306" + "0c0f1c2a" + "ff"
).ljust(300, b"\0")


@given(arpPackets)
def test_arpRoundTrips(packet: ARPPacket) -> None:
    """
    An ARP packet reads back exactly as it was written, in 28 bytes.
    """
    packed = packet.pack()
    assert len(packed) == arp.LENGTH
    assert ARPPacket.parse(packed) == packet


def test_arpRequestFromAGuestParses() -> None:
    """
    A guest's request for the gateway is understood, Ethernet padding ignored.
    """
    frame = bytes(14) + ARP_REQUEST + bytes(18)
    packet = ARPPacket.parse(frame, 14)
    assert packet == ARPPacket(arp.OP_REQUEST, GUEST_MAC, GUEST, bytes(6), GATEWAY)


def test_arpReplyAnswersTheRequester() -> None:
    """
    The reply to a request comes from the asked-for address and goes to the asker.
    """
    reply = replyTo(ARPPacket.parse(ARP_REQUEST), GATEWAY_MAC)
    assert reply.pack() == ARP_REPLY


@pytest.mark.parametrize(
    "data, message",
    [
        (ARP_REQUEST[:27], "truncated: 27 of 28"),
        (b"\x00\x06" + ARP_REQUEST[2:], "hardware type 6"),
        (ARP_REQUEST[:2] + b"\x86\xdd" + ARP_REQUEST[4:], "protocol type 0x86dd"),
        (ARP_REQUEST[:4] + b"\x06\x10" + ARP_REQUEST[6:], "lengths 6/16"),
    ],
)
def test_malformedArpIsRefusedWithAReason(data: bytes, message: str) -> None:
    """
    ARP that is not Ethernet/IPv4, or is cut short, raises ARPError saying why.
    """
    with pytest.raises(ARPError, match=message):
        ARPPacket.parse(data)


def test_arpWithShortAddressesCannotBePacked() -> None:
    """
    A 4-byte MAC is refused when packing instead of silently padded.
    """
    with pytest.raises(ARPError, match="sender MAC is 4 bytes"):
        ARPPacket(arp.OP_REPLY, bytes(4), GUEST, GUEST_MAC, GATEWAY).pack()


def parseOnlyRaises(
    parse: Callable[[bytes, int], object], error: type[Exception],
    packets: st.SearchStrategy[bytes],
) -> Callable[..., None]:
    """
    A test that whatever bytes arrive (drawn from C{packets}), at any
    offset, C{parse} fails only with C{error}.

    A factory rather than C{pytest.mark.parametrize}: pytest-twisted
    wraps a parametrized C{@given} test's inner test again for each case.
    """

    @given(packets, offsets)
    def test(data: bytes, offset: int) -> None:
        try:
            parse(data, offset)
        except error:
            pass

    test.__doc__ = f"Whatever bytes arrive, parsing fails only with {error.__name__}."
    return test


test_arpParseOnlyRaisesARPError = parseOnlyRaises(
    ARPPacket.parse, ARPError,
    st.one_of(st.binary(max_size=40), st.binary(max_size=30).map(ARP_REQUEST[:6].__add__)),
)
test_icmpParseOnlyRaisesICMPError = parseOnlyRaises(
    ICMPMessage.parse, ICMPError, st.binary(max_size=30)
)


@given(icmpMessages)
def test_icmpRoundTripsWithAValidChecksum(message: ICMPMessage) -> None:
    """
    An ICMP message reads back as written, with a checksum receivers accept.
    """
    packed = message.pack()
    assert icmp.checksumOk(packed)
    assert ICMPMessage.parse(packed)._replace(checksum=0) == message


def test_icmpEchoChecksumsMatchKnownValues() -> None:
    """
    A ping and its answer carry the checksums computed by hand (RFC 1071).
    """
    request = ICMPMessage(icmp.ECHO_REQUEST, 0, 0, b"\x12\x34\x00\x01", b"abcd")
    assert request.pack() == bytes.fromhex("080021041234000161626364")
    reply = icmp.echoReply(ICMPMessage.parse(request.pack()))
    assert reply == bytes.fromhex("000029041234000161626364")


def test_icmpBadChecksumIsNoticed() -> None:
    """
    A flipped payload bit makes the checksum check fail.
    """
    packed = bytearray(ICMPMessage(8, 0, 0, bytes(4), b"ping").pack())
    packed[-1] ^= 1
    assert not icmp.checksumOk(packed)


def test_icmpTruncatedIsRefused() -> None:
    """
    Fewer than 8 bytes raise ICMPError saying how many there were.
    """
    with pytest.raises(ICMPError, match="truncated: 7 of 8"):
        ICMPMessage.parse(bytes(7))
    with pytest.raises(ICMPError, match="rest of header is 3 bytes"):
        ICMPMessage(0, 0, 0, bytes(3), b"").pack()


def test_icmpErrorQuotesHeaderAndEightBytes() -> None:
    """
    An unreachable error quotes the offender's IP header (options too) and 8 bytes.
    """
    plain = b"\x45" + bytes(19) + b"UDPHEADR" + bytes(100)
    withOptions = b"\x46" + bytes(23) + b"UDPHEADR" + bytes(100)
    for original, quoted in ((plain, 28), (withOptions, 32)):
        packed = icmp.errorMessage(icmp.DEST_UNREACHABLE, icmp.PORT, original)
        message = ICMPMessage.parse(packed)
        assert (message.type, message.code, message.rest) == (3, 3, bytes(4))
        assert message.payload == original[:quoted] and icmp.checksumOk(packed)


def test_icmpErrorCarriesTheNextHopMtu() -> None:
    """
    "Fragmentation needed" tells the sender the MTU in the rest of the header.
    """
    packed = icmp.errorMessage(
        icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED, b"\x45" + bytes(40), b"\0\0\x05\xdc"
    )
    assert ICMPMessage.parse(packed).rest == b"\0\0\x05\xdc"


@given(st.binary(max_size=700), u8, u8)
def test_icmpErrorIsBoundedAndValid(original: bytes, kind: int, code: int) -> None:
    """
    Errors about any packet quote a prefix of it, stay under 548 bytes and sum right.
    """
    packed = icmp.errorMessage(kind, code, original)
    assert len(packed) <= icmp.MAX_ERROR_LENGTH and icmp.checksumOk(packed)
    assert original.startswith(ICMPMessage.parse(packed).payload)


@given(dhcpMessages)
def test_dhcpRoundTrips(message: DHCPMessage) -> None:
    """
    A DHCP message reads back exactly as written, options in wire order.
    """
    packed = message.pack()
    assert len(packed) >= 548
    assert DHCPMessage.parse(packed) == message


def test_busyboxDiscoverParses() -> None:
    """
    The DISCOVER busybox udhcpc broadcasts is understood field by field.
    """
    message = DHCPMessage.parse(BUSYBOX_DISCOVER)
    assert (message.op, message.xid, message.flags) == (dhcp.BOOTREQUEST, 0x3903F326, 0)
    assert message.clientMac == GUEST_MAC
    assert message.messageType == dhcp.DISCOVER
    assert message.option(dhcp.OPT_CLIENT_ID) == b"\x01" + GUEST_MAC
    assert message.option(dhcp.OPT_PARAMETER_LIST) == bytes([1, 3, 6, 12, 15, 28, 42])
    assert [code for code, _ in message.options] == [53, 61, 57, 55]
    assert message.option(dhcp.OPT_REQUESTED_ADDRESS) is None


def test_busyboxDiscoverPacksBackByteForByte() -> None:
    """
    Packing with a 64-byte options area reproduces the 300-byte original.
    """
    assert DHCPMessage.parse(BUSYBOX_DISCOVER).pack(optionsArea=64) == BUSYBOX_DISCOVER


def test_dhcpReplyIsPaddedTo548Bytes() -> None:
    """
    By default a message fills the 548-byte BOOTP payload slirp sends.
    """
    packed = DHCPMessage.parse(BUSYBOX_DISCOVER).pack()
    assert len(packed) == 548 and packed[240 + 25] == dhcp.OPT_END
    assert packed[240 + 26 :] == bytes(548 - 266)


def test_dhcpPadAndEndAreHonoured() -> None:
    """
    PAD bytes are skipped and whatever follows END is not read.
    """
    fixed = BUSYBOX_DISCOVER[:236] + MAGIC
    message = DHCPMessage.parse(fixed + b"\0\0\x35\x01\x03\xff\x35\x09garbage")
    assert message.options == ((53, b"\x03"),) and message.messageType == dhcp.REQUEST


def test_plainBootpHasNoMessageType() -> None:
    """
    A BOOTP message with the cookie and no options, not even END, is accepted.
    """
    message = DHCPMessage.parse(BUSYBOX_DISCOVER[:240])
    assert message.options == () and message.messageType is None


def test_longOptionIsSplitAndJoined() -> None:
    """
    A value over 255 bytes goes out as consecutive options and reads back whole.
    """
    value = bytes(range(256)) * 2
    message = DHCPMessage.parse(BUSYBOX_DISCOVER)._replace(options=((119, value),))
    parsed = DHCPMessage.parse(message.pack())
    assert [len(v) for _, v in parsed.options] == [255, 255, 2]
    assert parsed.option(119) == value


@pytest.mark.parametrize(
    "data, message",
    [
        (BUSYBOX_DISCOVER[:239], "truncated: 239 of at least 240"),
        (BUSYBOX_DISCOVER[:236] + b"\x63\x82\x53\x64", "no DHCP magic cookie"),
        (BUSYBOX_DISCOVER[:240] + b"\x35", "option 53 truncated before its length"),
        (BUSYBOX_DISCOVER[:240] + b"\x35\x05\x01", "option 53 truncated: 1 of 5"),
    ],
)
def test_malformedDhcpIsRefusedWithAReason(data: bytes, message: str) -> None:
    """
    Short messages, a missing cookie and cut options raise DHCPError saying why.
    """
    with pytest.raises(DHCPError, match=message):
        DHCPMessage.parse(data)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ciaddr": bytes(3)}, "ciaddr is 3 bytes"),
        ({"chaddr": bytes(17)}, "chaddr is 17 bytes"),
        ({"xid": 1 << 32}, "out of range"),
        ({"options": ((255, b"x"),)}, "code 255"),
        ({"options": ((0, b""),)}, "code 0"),
    ],
)
def test_unencodableDhcpIsRefused(change: dict[str, Any], message: str) -> None:
    """
    Fields that do not fit raise DHCPError rather than being cut or padded silently.
    """
    bad = DHCPMessage.parse(BUSYBOX_DISCOVER)._replace(**change)
    with pytest.raises(DHCPError, match=message):
        bad.pack()


def test_nonEthernetClientHasNoMac() -> None:
    """
    A client on other hardware (htype 6, say) has no Ethernet MAC.
    """
    assert DHCPMessage.parse(BUSYBOX_DISCOVER)._replace(htype=6).clientMac is None


def test_addressListsEncode() -> None:
    """
    Router and DNS lists are addresses back to back, refused if not 4 bytes each.
    """
    assert dhcp.packAddresses([GATEWAY, GUEST]) == GATEWAY + GUEST
    assert dhcp.parseAddresses(GATEWAY + GUEST) == [GATEWAY, GUEST]
    with pytest.raises(DHCPError):
        dhcp.packAddresses([b"\x0a\x00\x02"])
    with pytest.raises(DHCPError):
        dhcp.parseAddresses(bytes(5))


def test_domainSearchMatchesRfc3397Example() -> None:
    """
    Option 119 encodes "eng.apple.com" and "marketing.apple.com" as RFC 3397 shows.
    """
    assert dhcp.packDomainSearch(["eng.apple.com.", "marketing.apple.com"]) == bytes.fromhex(
        "03656e67056170706c6503636f6d00" "096d61726b6574696e67c004"
    )


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".com", "caf\u00e9.example"])
def test_badSearchDomainIsRefused(name: str) -> None:
    """
    Names with empty or 64-byte labels, or not ASCII, raise DHCPError.
    """
    with pytest.raises(DHCPError):
        dhcp.packDomainSearch([name])


@given(
    st.one_of(
        st.binary(max_size=300),
        st.tuples(st.binary(min_size=236, max_size=236), st.binary(max_size=60)).map(
            lambda parts: parts[0] + MAGIC + parts[1]
        ),
    ),
    st.integers(-3, 20),
)
def test_dhcpParseOnlyRaisesDHCPError(data: bytes, offset: int) -> None:
    """
    Whatever bytes arrive on port 67, parsing fails only with DHCPError.
    """
    try:
        message = DHCPMessage.parse(data, offset)
    except DHCPError:
        return
    assert message.messageType is None or 0 <= message.messageType < 256
