"""
Tests for the slirp port's DHCPv6 server (L{vtwisted.slirp.dhcp6}) and the
DHCPv6 codec (L{vtwisted.wire.dhcpv6}), on a fake clock.  The real client
(ISC dhclient) is in C{tests/integration/test_slirp_dhcpv6.py}.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from vtwisted.slirp.config import readConfig
from vtwisted.slirp.dhcp6 import OFFER_HOLD, Dhcp6Server
from vtwisted.slirp.router6 import _bootfileUrl
from vtwisted.spec import PortSpec
from vtwisted.wire import dhcpv6 as d6
from vtwisted.wire.dhcpv6 import Dhcp6Error, Dhcp6Message, IaAddress, IdentityAssociation

PREFIX = ipaddress.IPv6Network("fec0::/64")
SERVER = bytes.fromhex("00030001525600000002")
DNS = ipaddress.IPv6Address("fec0::3").packed
ALICE = bytes.fromhex("00030001020000000001")
BOB = bytes.fromhex("00030001020000000002")


def addr(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def server(clock: Clock | None = None, **kwargs: object) -> Dhcp6Server:
    clock = clock or Clock()
    return Dhcp6Server(prefix=PREFIX, duid=SERVER, nameserver=DNS, clock=clock.seconds,
                       **kwargs)  # type: ignore[arg-type]


def ask(srv: Dhcp6Server, kind: int, client: bytes | None = ALICE, iaids: tuple[int, ...] = (1,),
        serverId: bytes | None = None, hints: tuple[bytes, ...] = (),
        extra: tuple[d6.Option, ...] = ()) -> Dhcp6Message | None:
    """
    Send C{srv} a message of C{kind}; return its parsed answer.
    """
    options: list[d6.Option] = []
    if client is not None:
        options.append((d6.OPT_CLIENTID, client))
    if serverId is not None:
        options.append((d6.OPT_SERVERID, serverId))
    options.append((d6.OPT_ELAPSED_TIME, bytes(2)))
    for iaid in iaids:
        inner = tuple((d6.OPT_IAADDR, IaAddress(h, 0, 0).pack()) for h in hints)
        options.append((d6.OPT_IA_NA, IdentityAssociation(iaid, 0, 0, inner).pack()))
    options.extend(extra)
    answer = srv.handle(Dhcp6Message(kind, b"\x0a\x0b\x0c", tuple(options)).pack())
    return None if answer is None else Dhcp6Message.parse(answer)


def granted(answer: Dhcp6Message | None,
            temporary: bool = False) -> list[tuple[int, bytes | None, int | None]]:
    """
    (IAID, address, valid lifetime) or (IAID, None, status code) per IA_NA
    (per IA_TA if C{temporary}).
    """
    assert answer is not None
    result: list[tuple[int, bytes | None, int | None]] = []
    for value in answer.all(d6.OPT_IA_TA if temporary else d6.OPT_IA_NA):
        ia = IdentityAssociation.parse(value, temporary)
        addresses = [a for a in ia.addresses() if a.valid]
        if addresses:
            result.append((ia.iaid, addresses[0].address, addresses[0].valid))
        else:
            status = d6.first(ia.options, d6.OPT_STATUS_CODE)
            result.append((ia.iaid, None, None if status is None else
                           int.from_bytes(status[:2], "big")))
    return result


def bind(srv: Dhcp6Server, client: bytes = ALICE, iaids: tuple[int, ...] = (1,)) -> list[bytes]:
    """
    Solicit and Request: the addresses bound.
    """
    ask(srv, d6.SOLICIT, client, iaids)
    reply = ask(srv, d6.REQUEST, client, iaids, serverId=SERVER)
    return [a for _, a, _ in granted(reply) if a is not None]


def status(answer: Dhcp6Message | None) -> int | None:
    assert answer is not None
    value = answer.option(d6.OPT_STATUS_CODE)
    return None if value is None else int.from_bytes(value[:2], "big")


def test_solicitIsAdvertisedTheFirstPoolAddress() -> None:
    """
    An Advertise echoes the transaction and client, names the server,
    has preference 255, fec0::15 for a day (T1 half, T2 0.8), and the DNS proxy.
    """
    answer = ask(server(), d6.SOLICIT)
    assert answer is not None
    assert (answer.kind, answer.transactionId) == (d6.ADVERTISE, b"\x0a\x0b\x0c")
    assert answer.option(d6.OPT_CLIENTID) == ALICE
    assert answer.option(d6.OPT_SERVERID) == SERVER
    assert answer.option(d6.OPT_PREFERENCE) == b"\xff"
    assert answer.option(d6.OPT_DNS_SERVERS) == DNS
    [value] = answer.all(d6.OPT_IA_NA)
    ia = IdentityAssociation.parse(value)
    assert (ia.iaid, ia.t1, ia.t2) == (1, 43200, 69120)
    assert ia.addresses() == [IaAddress(addr("fec0::15"), 86400, 86400)]


def test_requestBindsTheAdvertisedAddress() -> None:
    """The Request that follows gets the same address, now listed as a lease."""
    srv = server()
    advertised = granted(ask(srv, d6.SOLICIT))
    reply = ask(srv, d6.REQUEST, serverId=SERVER)
    assert reply is not None and reply.kind == d6.REPLY
    assert granted(reply) == advertised == [(1, addr("fec0::15"), 86400)]
    [lease] = srv.leases()
    assert (lease.address, lease.client, lease.iaid) == (addr("fec0::15"), ALICE, 1)


def test_clientsAndAssociationsGetAddressesOfTheirOwn() -> None:
    """Two clients get ::15 and ::16; a second IA of one client gets ::17."""
    srv = server()
    assert bind(srv, ALICE) == [addr("fec0::15")]
    assert bind(srv, BOB) == [addr("fec0::16")]
    assert bind(srv, ALICE, (1, 2)) == [addr("fec0::15"), addr("fec0::17")]


def test_aClientKeepsItsAddressAcrossSolicits() -> None:
    """A client that starts again (new Solicit, same DUID and IAID) gets its address back."""
    srv = server()
    bind(srv, BOB)
    first = bind(srv, ALICE)
    assert bind(srv, ALICE) == first == [addr("fec0::16")]


def test_anAdvertisementNobodyRequestsIsFreedAfterAMinute() -> None:
    """An address advertised but not requested is held a minute, then another client gets it."""
    clock = Clock()
    srv = server(clock)
    ask(srv, d6.SOLICIT, ALICE)
    assert granted(ask(srv, d6.SOLICIT, BOB))[0][1] == addr("fec0::16")
    clock.advance(OFFER_HOLD + 1)
    assert granted(ask(srv, d6.SOLICIT, b"\x00\x03\x00\x01carol!"))[0][1] == addr("fec0::15")


def test_rapidCommitBindsAtOnce() -> None:
    """A Solicit with Rapid Commit gets a Reply with Rapid Commit and a binding."""
    srv = server()
    answer = ask(srv, d6.SOLICIT, extra=((d6.OPT_RAPID_COMMIT, b""),))
    assert answer is not None and answer.kind == d6.REPLY
    assert answer.option(d6.OPT_RAPID_COMMIT) == b""
    assert [lease.address for lease in srv.leases()] == [addr("fec0::15")]


def test_hintsAreHonouredWhenFree() -> None:
    """A client asking for a free pool address gets it; a taken one, the next free instead."""
    srv = server()
    assert granted(ask(srv, d6.REQUEST, serverId=SERVER, hints=(addr("fec0::20"),)))[0][1] == \
        addr("fec0::20")
    answer = ask(srv, d6.REQUEST, BOB, serverId=SERVER, hints=(addr("fec0::20"),))
    assert granted(answer)[0][1] == addr("fec0::15")


def test_leasesExpireUnlessRenewed() -> None:
    """A Renew before the day is up extends the lease; an unrenewed one expires and is free."""
    clock = Clock()
    srv = server(clock)
    bind(srv, ALICE)
    bind(srv, BOB)
    clock.advance(80000)
    renewed = ask(srv, d6.RENEW, ALICE, serverId=SERVER, hints=(addr("fec0::15"),))
    assert granted(renewed) == [(1, addr("fec0::15"), 86400)]
    clock.advance(10000)
    assert [lease.client for lease in srv.leases()] == [ALICE]
    assert bind(srv, b"\x00\x03\x00\x01carol!") == [addr("fec0::16")]


def test_renewWithoutBindingSaysSoAndRebindCreatesOne() -> None:
    """Renew for an unknown IA gets NoBinding; a Rebind (no server named) is bound."""
    srv = server()
    assert granted(ask(srv, d6.RENEW, serverId=SERVER)) == [(1, None, d6.NO_BINDING)]
    assert srv.leases() == []
    rebound = ask(srv, d6.REBIND, hints=(addr("fec0::40"),))
    assert granted(rebound) == [(1, addr("fec0::40"), 86400)]


def test_renewZeroesAddressesThatAreNotTheClients() -> None:
    """Addresses a client renews that are not its own come back with lifetimes 0."""
    srv = server()
    bind(srv, ALICE)
    answer = ask(srv, d6.RENEW, ALICE, serverId=SERVER,
                 hints=(addr("fec0::15"), addr("fec0::99")))
    assert answer is not None
    ia = IdentityAssociation.parse(answer.all(d6.OPT_IA_NA)[0])
    assert ia.addresses() == [IaAddress(addr("fec0::15"), 86400, 86400),
                              IaAddress(addr("fec0::99"), 0, 0)]


def test_releaseFreesAndDeclineWithholds() -> None:
    """A released address goes to the next client; a declined one to nobody."""
    srv = server()
    bind(srv, ALICE)
    answer = ask(srv, d6.RELEASE, ALICE, serverId=SERVER, hints=(addr("fec0::15"),))
    assert status(answer) == d6.SUCCESS and srv.leases() == []
    assert bind(srv, BOB) == [addr("fec0::15")]
    ask(srv, d6.DECLINE, BOB, serverId=SERVER, hints=(addr("fec0::15"),))
    assert bind(srv, ALICE) == [addr("fec0::16")]
    assert [(lease.address, lease.client) for lease in srv.leases()] == \
        [(addr("fec0::15"), b""), (addr("fec0::16"), ALICE)]


def test_releasingSomebodyElsesAddressChangesNothing() -> None:
    """A Release naming another client's address gets NoBinding and frees nothing."""
    srv = server()
    bind(srv, ALICE)
    answer = ask(srv, d6.RELEASE, BOB, serverId=SERVER, hints=(addr("fec0::15"),))
    assert granted(answer) == [(1, None, d6.NO_BINDING)]
    assert len(srv.leases()) == 1


def test_confirmSaysWhetherAddressesAreOnLink() -> None:
    """Confirm: Success for addresses in the prefix, NotOnLink otherwise, nothing for none."""
    srv = server()
    assert status(ask(srv, d6.CONFIRM, hints=(addr("fec0::15"),))) == d6.SUCCESS
    assert status(ask(srv, d6.CONFIRM, hints=(addr("2001:db8::15"),))) == d6.NOT_ON_LINK
    assert ask(srv, d6.CONFIRM) is None


def test_exhaustedPoolSaysNoAddrsAvail() -> None:
    """With every address bound, a new client's IA gets NoAddrsAvail."""
    srv = server(poolSize=1)
    bind(srv, ALICE)
    assert granted(ask(srv, d6.SOLICIT, BOB)) == [(1, None, d6.NO_ADDRS_AVAIL)]


def test_prefixesAreRefusedWithoutAPool() -> None:
    """Without pd=, an IA_PD gets NoPrefixAvail with its IAID."""
    answer = ask(server(), d6.SOLICIT, iaids=(), extra=(
        (d6.OPT_IA_PD, b"\x00\x00\x00\x0a" + bytes(8)),))
    assert answer is not None
    [pd] = answer.all(d6.OPT_IA_PD)
    assert pd[:12] == b"\x00\x00\x00\x0a" + bytes(8)
    assert d6.parseOptions(pd, 12)[0][1][:2] == b"\x00\x06"


@pytest.mark.parametrize("kind, serverId, client", [
    (d6.SOLICIT, SERVER, ALICE), (d6.CONFIRM, SERVER, ALICE), (d6.REBIND, SERVER, ALICE),
    (d6.REQUEST, None, ALICE), (d6.RENEW, None, ALICE), (d6.RELEASE, None, ALICE),
    (d6.SOLICIT, None, None), (d6.REQUEST, SERVER, b"\x00"),
])
def test_messagesBreakingTheServerIdRulesAreMalformed(kind: int, serverId: bytes | None,
                                                     client: bytes | None) -> None:
    """RFC 8415's rules on which messages name a server and carry a client id."""
    srv = server()
    with pytest.raises(Dhcp6Error):
        ask(srv, kind, client, serverId=serverId)
    assert srv.leases() == []


def test_messagesForAnotherServerAreNotAnswered() -> None:
    """A Request to another server's DUID binds nothing here."""
    srv = server()
    assert ask(srv, d6.REQUEST, serverId=b"\x00\x03\x00\x01other!") is None
    assert srv.leases() == []


def test_statelessServerAnswersInformationRequestsOnly() -> None:
    """With stateful=False, Solicits get nothing and information requests their DNS."""
    srv = server(stateful=False)
    assert ask(srv, d6.SOLICIT) is None
    answer = ask(srv, d6.INFORMATION_REQUEST, iaids=())
    assert answer is not None and answer.option(d6.OPT_DNS_SERVERS) == DNS


def test_restrictedGivesNoDnsAndSearchDomainsAreUncompressed() -> None:
    """restrict=on leaves DNS out; search domains are sent uncompressed (RFC 8415 10)."""
    srv = server(restricted=True, searchDomains=["lab.test", "test"])
    answer = ask(srv, d6.INFORMATION_REQUEST, iaids=())
    assert answer is not None and answer.option(d6.OPT_DNS_SERVERS) is None
    assert answer.option(d6.OPT_DOMAIN_LIST) == b"\x03lab\x04test\x00\x04test\x00"


def test_badSearchDomainsAreRefused() -> None:
    with pytest.raises(Dhcp6Error, match="overlong"):
        server(searchDomains=["a" * 64 + ".test"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_anyBytesParseOrRaiseDhcp6Error(data: bytes) -> None:
    """Whatever arrives, the server answers, ignores it or raises Dhcp6Error."""
    srv = server()
    try:
        srv.handle(data)
    except Dhcp6Error:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.binary(min_size=3, max_size=3),
       st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=40)), max_size=6))
def test_messagesRoundTrip(kind: int, transaction: bytes,
                           options: list[tuple[int, bytes]]) -> None:
    message = Dhcp6Message(kind, transaction, tuple(options))
    assert Dhcp6Message.parse(message.pack()) == message


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1),
                          st.integers(0, 2**32 - 1)), max_size=4),
       st.integers(0, 2**32 - 1))
def test_identityAssociationsRoundTrip(addresses: list[tuple[bytes, int, int]],
                                       iaid: int) -> None:
    inner = tuple((d6.OPT_IAADDR, IaAddress(*a).pack()) for a in addresses)
    ia = IdentityAssociation(iaid, 1, 2, inner)
    parsed = IdentityAssociation.parse(ia.pack())
    assert parsed == ia
    assert parsed.addresses() == [IaAddress(*a) for a in addresses]


def test_theBootFileUrlGoesToClientsThatAskForIt() -> None:
    """
    With a boot file (C{tftp=} and C{bootfile=}), a client whose option
    request names the boot file URL (RFC 5970) gets it; others do not.
    """
    url = "tftp://[fec0::2]/pxe.efi"
    srv = server(bootfileUrl=url)
    oro = (d6.OPT_ORO, (23).to_bytes(2, "big") + d6.OPT_BOOTFILE_URL.to_bytes(2, "big"))
    for kind, iaids in ((d6.INFORMATION_REQUEST, ()), (d6.SOLICIT, (1,))):
        answer = ask(srv, kind, iaids=iaids, extra=(oro,))
        assert answer is not None and answer.option(d6.OPT_BOOTFILE_URL) == url.encode()
        plain = ask(srv, kind, client=BOB, iaids=iaids)
        assert plain is not None and plain.option(d6.OPT_BOOTFILE_URL) is None
    answer = ask(server(), d6.INFORMATION_REQUEST, iaids=(), extra=(oro,))
    assert answer is not None and answer.option(d6.OPT_BOOTFILE_URL) is None


def test_theBootFileUrlNamesTheGatewaysTftpServer(tmp_path) -> None:
    """A slirp port with tftp= and bootfile= offers its file at the IPv6 gateway (fec0::2)."""
    config = readConfig(PortSpec(f"slirp:tftp={tmp_path}:bootfile=pxe.efi"))
    assert config.gateway6 is not None
    assert _bootfileUrl(config, config.gateway6) == "tftp://[fec0::2]/pxe.efi"
    bare = readConfig(PortSpec("slirp:bootfile=pxe.efi"))
    assert bare.gateway6 is not None and _bootfileUrl(bare, bare.gateway6) is None
