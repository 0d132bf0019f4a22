"""
Tests for the DHCP server of slirp ports, L{vtwisted.slirp.dhcp.DhcpServer}.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from vtwisted.slirp.dhcp import NAK_MESSAGE, DhcpServer
from vtwisted.wire import dhcp
from vtwisted.wire.dhcp import DHCPMessage

GATEWAY = bytes([10, 0, 2, 2])
DNS = bytes([10, 0, 2, 3])
NETMASK = bytes([255, 255, 255, 0])
ZERO = bytes(4)


def address(last: int) -> bytes:
    """
    The address 10.0.2.C{last}.
    """
    return bytes([10, 0, 2, last])


def mac(n: int) -> bytes:
    """
    A guest MAC, 52:54:00:12:34:C{n}.
    """
    return bytes([0x52, 0x54, 0, 0x12, 0x34, n])


def makeServer(**kwargs: Any) -> DhcpServer:
    """
    A server with QEMU's default plan: pool 10.0.2.15 to .30.
    """
    return DhcpServer(
        gateway=GATEWAY, nameserver=DNS, netmask=NETMASK, poolStart=address(15), **kwargs
    )


def clientMessage(
    kind: int | None, client: bytes, requested: bytes | None = None, ciaddr: bytes = ZERO,
    xid: int = 0x1234, **fields: Any,
) -> DHCPMessage:
    """
    A message from C{client} as it would arrive, with the broadcast flag set.
    """
    options = [] if kind is None else [(dhcp.OPT_MESSAGE_TYPE, bytes([kind]))]
    if requested is not None:
        options.append((dhcp.OPT_REQUESTED_ADDRESS, requested))
    message = DHCPMessage(
        dhcp.BOOTREQUEST, 1, 6, 0, xid, 3, 0x8000, ciaddr, ZERO, ZERO, ZERO,
        client + bytes(10), bytes(64), bytes(128), tuple(options),
    )
    return message._replace(**fields)


def exchange(server: DhcpServer, message: DHCPMessage) -> DHCPMessage | None:
    """
    Send C{message} through the wire format and read the reply back the same way.
    """
    reply = server.handle(DHCPMessage.parse(message.pack(optionsArea=64)))
    if reply is None:
        return None
    packed = reply.pack()
    assert len(packed) == 548
    return DHCPMessage.parse(packed)


def lease(server: DhcpServer, client: bytes, **kwargs: Any) -> bytes:
    """
    Run DISCOVER then REQUEST for C{client} and return the acknowledged address.
    """
    offer = exchange(server, clientMessage(dhcp.DISCOVER, client, **kwargs))
    assert offer is not None
    ack = exchange(server, clientMessage(dhcp.REQUEST, client, offer.yiaddr))
    assert ack is not None and ack.messageType == dhcp.ACK
    return ack.yiaddr


def test_discoverGetsAnOfferWithSlirpsOptionsInOrder() -> None:
    """
    A DISCOVER is offered .15 with 53, 54, 1, 3, 6, 51 in libslirp's order.
    """
    packed = makeServer().handle(clientMessage(dhcp.DISCOVER, mac(1), xid=0xCAFE))
    assert packed is not None
    offer = DHCPMessage.parse(packed.pack())
    assert offer.options == (
        (dhcp.OPT_MESSAGE_TYPE, bytes([dhcp.OFFER])),
        (dhcp.OPT_SERVER_ID, GATEWAY),
        (dhcp.OPT_SUBNET_MASK, NETMASK),
        (dhcp.OPT_ROUTER, GATEWAY),
        (dhcp.OPT_DNS, DNS),
        (dhcp.OPT_LEASE_TIME, (86400).to_bytes(4, "big")),
    )
    assert (offer.op, offer.xid, offer.flags, offer.secs) == (dhcp.BOOTREPLY, 0xCAFE, 0, 0)
    assert (offer.yiaddr, offer.siaddr, offer.ciaddr, offer.giaddr) == (
        address(15), GATEWAY, ZERO, ZERO,
    )
    assert offer.chaddr == mac(1) + bytes(10) and offer.clientMac == mac(1)


def test_offerIsA548BytePayloadLikeSlirps() -> None:
    """
    The offer's options area is byte-for-byte what libslirp sends, zero-padded to 548.
    """
    offer = makeServer().handle(clientMessage(dhcp.DISCOVER, mac(1)))
    assert offer is not None
    packed = offer.pack()
    assert len(packed) == 548
    assert packed[236:] == bytes.fromhex(
        "63825363" "350102" "36040a000202" "0104ffffff00" "03040a000202" "06040a000203"
        "330400015180" "ff"
    ).ljust(312, b"\0")


def test_requestIsAcknowledged() -> None:
    """
    A REQUEST for the offered address is ACKed with the same address and options.
    """
    server = makeServer()
    assert lease(server, mac(1)) == address(15)
    assert server.leases() == [(mac(1), address(15))]


def test_requestForAnotherClientsAddressIsRefused() -> None:
    """
    Asking for an address someone else holds gets a NAK saying it is not available.
    """
    server = makeServer()
    lease(server, mac(1))
    nak = exchange(server, clientMessage(dhcp.REQUEST, mac(2), address(15)))
    assert nak is not None
    assert nak.options == (
        (dhcp.OPT_MESSAGE_TYPE, bytes([dhcp.NAK])),
        (dhcp.OPT_SERVER_ID, GATEWAY),
        (dhcp.OPT_MESSAGE, b"requested address not available"),
    )
    assert nak.yiaddr == ZERO and NAK_MESSAGE == nak.option(dhcp.OPT_MESSAGE)
    assert server.addressOf(mac(2)) is None


def test_requestOutsideThePoolIsRefused() -> None:
    """
    A guest remembering an address from another network (10.0.2.100) gets a NAK.
    """
    reply = exchange(makeServer(), clientMessage(dhcp.REQUEST, mac(1), address(100)))
    assert reply is not None and reply.messageType == dhcp.NAK


def test_renewalWithCiaddrIsAcknowledged() -> None:
    """
    A renewing client naming its address only in ciaddr keeps it.
    """
    server = makeServer()
    held = lease(server, mac(1), requested=address(20))
    ack = exchange(server, clientMessage(dhcp.REQUEST, mac(1), ciaddr=held))
    assert ack is not None and (ack.messageType, ack.yiaddr) == (dhcp.ACK, address(20))


def test_ciaddrOfAnotherClientIsRefused() -> None:
    """
    A REQUEST whose ciaddr belongs to another MAC gets a NAK.
    """
    server = makeServer()
    lease(server, mac(1))
    nak = exchange(server, clientMessage(dhcp.REQUEST, mac(2), ciaddr=address(15)))
    assert nak is not None and nak.messageType == dhcp.NAK


def test_requestNamingNoAddressGetsOne() -> None:
    """
    A REQUEST with neither option 50 nor ciaddr gets the MAC's lease or a fresh one.
    """
    server = makeServer()
    lease(server, mac(1))
    fresh = exchange(server, clientMessage(dhcp.REQUEST, mac(2)))
    known = exchange(server, clientMessage(dhcp.REQUEST, mac(1)))
    assert fresh is not None and (fresh.messageType, fresh.yiaddr) == (dhcp.ACK, address(16))
    assert known is not None and known.yiaddr == address(15)


def test_plainBootpIsAnsweredLikeARequest() -> None:
    """
    An old BOOTP client (no option 53) gets an ACK; its ciaddr is not taken as a request.
    """
    reply = exchange(makeServer(), clientMessage(None, mac(1), ciaddr=address(100)))
    assert reply is not None
    assert (reply.messageType, reply.yiaddr) == (dhcp.ACK, address(15))


def test_plainBootpAskingForATakenAddressIsRefused() -> None:
    """
    A BOOTP message naming another guest's address in option 50 gets a NAK, as in libslirp.
    """
    server = makeServer()
    lease(server, mac(1))
    reply = exchange(server, clientMessage(None, mac(2), address(15)))
    assert reply is not None and reply.messageType == dhcp.NAK


@pytest.mark.parametrize("value", [b"\0", b""])
def test_aMessageTypeOptionWithNoTypeIsRefusedNotLeasedTo(value: bytes) -> None:
    """
    Option 53 holding 0 or nothing is no message type, and not plain BOOTP
    either (which has no option 53): it is refused as malformed, and no
    address is leased for it.
    """
    server = makeServer()
    message = clientMessage(None, mac(1))._replace(options=((dhcp.OPT_MESSAGE_TYPE, value),))
    with pytest.raises(dhcp.DHCPError, match="no message type"):
        exchange(server, message)
    assert server.leases() == []


@pytest.mark.parametrize("kind", [dhcp.RELEASE, dhcp.DECLINE, dhcp.INFORM, dhcp.OFFER, 99])
def test_releaseDeclineInformAndOthersGetNoAnswer(kind: int) -> None:
    """
    Only DISCOVER and REQUEST are answered, and a released lease stays taken.
    """
    server = makeServer()
    lease(server, mac(1))
    assert server.handle(clientMessage(kind, mac(1), ciaddr=address(15))) is None
    assert server.addressOf(mac(1)) == address(15)


def test_repliesAndNonEthernetClientsGetNoAnswer() -> None:
    """
    Another server's reply, or a client that is not on Ethernet, is ignored.
    """
    server = makeServer()
    assert server.handle(clientMessage(dhcp.DISCOVER, mac(1), op=dhcp.BOOTREPLY)) is None
    assert server.handle(clientMessage(dhcp.DISCOVER, mac(1), htype=6)) is None
    assert server.handle(clientMessage(dhcp.DISCOVER, mac(1), hlen=16)) is None
    assert server.leases() == []


def test_seventeenthClientGetsNoAnswer() -> None:
    """
    Sixteen guests get .15 to .30; a seventeenth is not answered; known guests still are.
    """
    server = makeServer()
    assert [lease(server, mac(n)) for n in range(16)] == [address(15 + n) for n in range(16)]
    assert server.handle(clientMessage(dhcp.DISCOVER, mac(16))) is None
    assert server.handle(clientMessage(dhcp.REQUEST, mac(16))) is None
    refused = server.handle(clientMessage(dhcp.REQUEST, mac(16), address(20)))
    assert refused is not None and refused.messageType == dhcp.NAK
    assert lease(server, mac(3)) == address(18)


def test_restrictedOmitsRouterAndDns() -> None:
    """
    With restrict=on the guest gets an address and netmask but no router or DNS.
    """
    offer = exchange(makeServer(restricted=True), clientMessage(dhcp.DISCOVER, mac(1)))
    assert offer is not None
    assert [code for code, _ in offer.options] == [53, 54, 1, 51]


def test_requestedAddressIsHonouredWhenFree() -> None:
    """
    A DISCOVER asking for a free pool address gets it; a taken or outside one does not.
    """
    server = makeServer()
    assert lease(server, mac(1), requested=address(20)) == address(20)
    assert lease(server, mac(2), requested=address(20)) == address(15)
    assert lease(server, mac(3), requested=address(100)) == address(16)
    assert server.leases() == [(mac(2), address(15)), (mac(3), address(16)), (mac(1), address(20))]


def test_knownClientKeepsItsAddress() -> None:
    """
    A guest rebooting with the same MAC gets the same address back.
    """
    server = makeServer()
    first = lease(server, mac(7), requested=address(25))
    lease(server, mac(8))
    assert lease(server, mac(7)) == first == server.addressOf(mac(7))


def test_addressesOtherStationsUseAreNotHandedOut() -> None:
    """
    A free address another station is seen using (a guest configured by
    hand) is neither offered nor acknowledged to a DHCP client, even when
    the pool has nothing else (without probes to tell whether it is still
    used); the station itself may lease it.
    """
    static = {address(15): mac(9), address(16): mac(10)}
    server = makeServer(holder=static.get, poolSize=3)
    assert lease(server, mac(1)) == address(17)
    nak = exchange(server, clientMessage(dhcp.REQUEST, mac(2), address(15)))
    assert nak is not None and nak.messageType == dhcp.NAK
    assert lease(server, mac(9), requested=address(15)) == address(15)
    assert exchange(server, clientMessage(dhcp.DISCOVER, mac(3))) is None


def test_requestFromAStaticGuestsAddressIsNakedByTheRouter() -> None:
    """
    Through the router: a guest using 10.0.2.15 by hand keeps it when a
    second guest asks DHCP for an address.
    """
    from slirpfakes import GUEST, GUEST_MAC, ipFrame, makeRouter

    from vtwisted.slirp.packets import udpDatagram

    router, seen = makeRouter()
    router.dhcp = makeServer(holder=router.neighbours.get)
    router.learn(GUEST, GUEST_MAC)
    broadcast = b"\xff" * 4
    discover = clientMessage(dhcp.DISCOVER, mac(1)).pack()
    router.frameReceived(ipFrame(broadcast, 17, udpDatagram(ZERO, broadcast, 68, 67, discover),
                                 src=ZERO, dstMac=b"\xff" * 6))
    [offer] = [DHCPMessage.parse(frame[42:]) for frame in seen.frames]
    assert offer.messageType == dhcp.OFFER and offer.yiaddr == address(16)
    assert router.neighbours[GUEST] == GUEST_MAC


def test_configuredNamesFollowTheLeaseTime() -> None:
    """
    Host name, domain and search list come after option 51, in that order.
    """
    server = makeServer(
        hostname="guest", domain="example.org", searchDomains=["a.example.org", "example.org"],
        leaseTime=3600,
    )
    offer = exchange(server, clientMessage(dhcp.DISCOVER, mac(1)))
    assert offer is not None
    assert [code for code, _ in offer.options] == [53, 54, 1, 3, 6, 51, 12, 15, 119]
    assert offer.option(dhcp.OPT_LEASE_TIME) == (3600).to_bytes(4, "big")
    assert offer.option(dhcp.OPT_HOST_NAME) == b"guest"
    assert offer.option(dhcp.OPT_DOMAIN_SEARCH) == b"\x01a\x07example\x03org\x00\xc0\x02"


def test_optionsThatDoNotFitAreLeftOut() -> None:
    """
    Names too long for the 548-byte reply are dropped, as libslirp does, not overflowed.
    """
    server = makeServer(hostname="h" * 200, domain="d" * 200)
    offer = exchange(server, clientMessage(dhcp.DISCOVER, mac(1)))
    assert offer is not None
    assert [code for code, _ in offer.options] == [53, 54, 1, 3, 6, 51, 12]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gateway": bytes(3)},
        {"poolStart": b"\xff\xff\xff\xf8"},
        {"poolSize": 0},
        {"leaseTime": 1 << 32},
        {"hostname": "g\u00e4st"},
    ],
)
def test_badConfigurationIsRefused(kwargs: dict[str, Any]) -> None:
    """
    Malformed addresses, an impossible pool or lease time, or a non-ASCII name are refused.
    """
    arguments: dict[str, Any] = {
        "gateway": GATEWAY, "nameserver": DNS, "netmask": NETMASK, "poolStart": address(15),
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError):
        DhcpServer(**arguments)


inPool = st.integers(10, 40).map(address)
messages = st.tuples(
    st.integers(0, 5),
    st.sampled_from([None, dhcp.DISCOVER, dhcp.REQUEST, dhcp.RELEASE, dhcp.DECLINE]),
    st.one_of(st.none(), inPool),
    st.one_of(st.just(ZERO), inPool),
)


@given(st.integers(1, 6), st.lists(messages, max_size=40))
@example(  # a full pool: the address guest 0 released goes to guest 1
    poolSize=2,
    sequence=[(2, None, None, ZERO), (0, None, None, ZERO), (0, dhcp.RELEASE, None, address(16)),
              (1, None, None, ZERO)],
)
def test_noAddressIsEverGivenToTwoClients(
    poolSize: int, sequence: list[tuple[int, int | None, bytes | None, bytes]]
) -> None:
    """
    Whatever a handful of guests send, no address is ever given to two of
    them at once, all from the pool: one goes to another guest only after
    the guest that had it released it (a full pool gives a new guest a
    released address).
    """
    server = makeServer(poolSize=poolSize)
    owners: dict[bytes, bytes] = {}
    for client, kind, requested, ciaddr in sequence:
        if kind == dhcp.RELEASE and owners.get(ciaddr) == mac(client):
            del owners[ciaddr]  # given back: the pool may give it to another guest
        reply = server.handle(clientMessage(kind, mac(client), requested, ciaddr))
        if reply is None or reply.messageType == dhcp.NAK:
            assert reply is None or reply.yiaddr == ZERO
            continue
        assert reply.yiaddr in server.pool
        assert owners.setdefault(reply.yiaddr, mac(client)) == mac(client)
    leased = server.leases()
    assert len({address for _, address in leased}) == len(leased)
    assert set(owners.items()) <= {(a, m) for m, a in leased}


def test_bootfileAndTftpServerNameForPxe() -> None:
    """bootfile= fills the file field; tftp-server-name= is option 66, between 15 and 119."""
    server = makeServer(domain="lab", searchDomains=["lab"], bootfile="pxelinux.0",
                        tftpServerName="10.0.2.2")
    offer = exchange(server, clientMessage(dhcp.DISCOVER, mac(1)))
    assert offer is not None
    assert offer.file == b"pxelinux.0".ljust(128, b"\0")
    codes = [code for code, _ in offer.options]
    assert codes[-3:] == [dhcp.OPT_DOMAIN_NAME, dhcp.OPT_TFTP_SERVER, dhcp.OPT_DOMAIN_SEARCH]
    assert dict(offer.options)[dhcp.OPT_TFTP_SERVER] == b"10.0.2.2"


def test_httpBootfileAddsTheHttpClientVendorClass() -> None:
    """An http:// boot file is announced with vendor class HTTPClient (UEFI HTTP boot)."""
    offer = exchange(makeServer(bootfile="http://10.0.2.2/boot.efi"),
                     clientMessage(dhcp.DISCOVER, mac(1)))
    assert offer is not None
    assert dict(offer.options)[dhcp.OPT_VENDOR_CLASS] == b"HTTPClient"


def test_fullPoolGivesANewClientALeaseThatRanOutOrWasReleased() -> None:
    """
    With the pool full, a new client gets the address of a lease not renewed
    within the lease time, or of one released; a client that released its
    address gets it back while nobody else needed it.
    """
    clock = [0.0]
    server = makeServer(now=lambda: clock[0], leaseTime=3600)
    assert [lease(server, mac(n)) for n in range(16)] == [address(15 + n) for n in range(16)]
    server.handle(clientMessage(dhcp.RELEASE, mac(0), ciaddr=address(15)))
    assert lease(server, mac(0)) == address(15), "the releasing client comes back first"
    server.handle(clientMessage(dhcp.RELEASE, mac(0), ciaddr=address(15)))
    server.handle(clientMessage(dhcp.RELEASE, mac(1), ciaddr=address(20)))
    assert server.addressOf(mac(1)) == address(16), "only its owner releases an address"
    assert lease(server, mac(16)) == address(15)
    assert server.handle(clientMessage(dhcp.DISCOVER, mac(17))) is None
    clock[0] = 1800.0
    for n in range(1, 16):
        if n != 7:
            assert lease(server, mac(n)) == address(15 + n), "renewed"
    assert lease(server, mac(16)) == address(15)
    clock[0] = 3600.0
    assert lease(server, mac(17)) == address(22), "mac(7) did not renew in time"
    assert server.handle(clientMessage(dhcp.DISCOVER, mac(18))) is None
    assert server.addressOf(mac(7)) is None and server.addressOf(mac(0)) is None
