"""
Temporary addresses (IA_TA) from the slirp port's DHCPv6 server: random
interface identifiers, bound, renewed, released and declined per
association, never from the pool and never more than it holds.  The real
client (ISC C{dhclient -6 -T}) is in C{tests/integration/test_slirp_dhcpv6.py}.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

import pytest
from test_slirpdhcp6 import ALICE, BOB, PREFIX, SERVER, ask, granted, server
from twisted.internet.task import Clock

from vtwisted.slirp.dhcp6 import OFFER_HOLD, Dhcp6Server
from vtwisted.wire import dhcpv6 as d6
from vtwisted.wire.dhcpv6 import Dhcp6Message, IaAddress, IdentityAssociation


def temporary(iaid: int, *hints: bytes) -> d6.Option:
    inner = tuple((d6.OPT_IAADDR, IaAddress(h, 0, 0).pack()) for h in hints)
    return (d6.OPT_IA_TA, IdentityAssociation(iaid, None, None, inner).pack())


def temporaries(answer: Dhcp6Message | None) -> list[tuple[int, bytes | None, int | None]]:
    """
    (IAID, address, valid lifetime) or (IAID, None, status code) per IA_TA.
    """
    return granted(answer, temporary=True)


def draws(*values: int) -> Callable[[int], int]:
    """A random source that gives C{values}, in order."""
    pending = iter(values)
    return lambda bits: next(pending)


def bindTemporary(srv: Dhcp6Server, client: bytes = ALICE, iaid: int = 9) -> bytes:
    """Solicit and Request one IA_TA: the address bound."""
    [(_, offered, _)] = temporaries(ask(srv, d6.SOLICIT, client, (), extra=(temporary(iaid),)))
    assert offered is not None
    reply = ask(srv, d6.REQUEST, client, (), serverId=SERVER, extra=(temporary(iaid, offered),))
    [(got, address, valid)] = temporaries(reply)
    assert (got, address, valid) == (iaid, offered, srv.leaseTime)
    return offered


def test_temporaryAddressIsRandomInThePrefix() -> None:
    """An IA_TA gets a random address of the /64 next to its IA_NA's ::15."""
    srv = server(randomBits=random.Random(7).getrandbits)
    answer = ask(srv, d6.REQUEST, ALICE, (1,), serverId=SERVER, extra=(temporary(9),))
    [(_, stable, _)] = granted(answer)
    [(iaid, address, _)] = temporaries(answer)
    assert stable == ipaddress.IPv6Address("fec0::15").packed
    assert iaid == 9 and address is not None and address != stable
    assert ipaddress.IPv6Address(address) in PREFIX
    assert address not in srv.pool


def test_requestGetsWhatWasAdvertised() -> None:
    """The address a Solicit advertised is the one the Request binds, for long."""
    clock = Clock()
    srv = server(clock)
    address = bindTemporary(srv)
    clock.advance(OFFER_HOLD * 2)
    [lease] = srv.leases()
    assert (lease.address, lease.client, lease.iaid, lease.temporary) == (address, ALICE, 9, True)


def test_eachAssociationAndClientGetsItsOwn() -> None:
    """Two IA_TAs of a client, and another client's, get three addresses."""
    srv = server()
    addresses = {bindTemporary(srv, ALICE, 1), bindTemporary(srv, ALICE, 2),
                 bindTemporary(srv, BOB, 1)}
    assert len(addresses) == 3


def test_sameIaidInIaNaAndIaTaAreDistinct() -> None:
    """IA_NA 1 and IA_TA 1 of one client are different associations."""
    srv = server()
    answer = ask(srv, d6.REQUEST, ALICE, (1,), serverId=SERVER, extra=(temporary(1),))
    [(_, stable, _)] = granted(answer)
    [(_, address, _)] = temporaries(answer)
    assert stable != address and len(srv.leases()) == 2


def test_renewKeepsAndReleaseFrees() -> None:
    """Renew extends the address; Release frees it; a Renew after that has no binding."""
    clock = Clock()
    srv = server(clock)
    address = bindTemporary(srv)
    clock.advance(srv.leaseTime - 10)
    renewed = ask(srv, d6.RENEW, ALICE, (), serverId=SERVER, extra=(temporary(9, address),))
    assert temporaries(renewed) == [(9, address, srv.leaseTime)]
    clock.advance(20)
    assert [lease.address for lease in srv.leases()] == [address]
    ask(srv, d6.RELEASE, ALICE, (), serverId=SERVER, extra=(temporary(9, address),))
    assert srv.leases() == []
    again = ask(srv, d6.RENEW, ALICE, (), serverId=SERVER, extra=(temporary(9, address),))
    assert temporaries(again) == [(9, None, d6.NO_BINDING)]


def test_othersCannotReleaseIt() -> None:
    """A Release from another client leaves the address bound."""
    srv = server()
    address = bindTemporary(srv)
    answer = ask(srv, d6.RELEASE, BOB, (), serverId=SERVER, extra=(temporary(9, address),))
    assert temporaries(answer) == [(9, None, d6.NO_BINDING)]
    assert [lease.address for lease in srv.leases()] == [address]


def test_declinedAddressIsReleased() -> None:
    """A declined temporary address is simply freed; the next request gets a new one."""
    srv = server(randomBits=draws(0x50000, 0x60000))
    address = bindTemporary(srv)
    ask(srv, d6.DECLINE, ALICE, (), serverId=SERVER, extra=(temporary(9, address),))
    assert srv.leases() == []
    assert bindTemporary(srv) == ipaddress.IPv6Address("fec0::6:0").packed


def test_smallIdentifiersAreNeverTemporary() -> None:
    """Draws of the pool's, the gateway's or the anycast identifier are drawn again."""
    srv = server(randomBits=draws(0x15, 0x2, 0x0, 0xFFFF, 0x12345))
    assert bindTemporary(srv) == ipaddress.IPv6Address("fec0::1:2345").packed


@pytest.mark.parametrize(("named", "kept"), [
    ("fec0::1:2345", True), ("fec0::15", False), ("2001:db8::1:2345", False)])
def test_rebindKeepsAFreeAddressItNames(named: str, kept: bool) -> None:
    """
    After a restart of the switch, a Rebind naming a free temporary address
    of the prefix keeps it; one naming any other gets a new one.
    """
    srv = server(randomBits=draws(0x70000))
    address = ipaddress.IPv6Address(named).packed
    answer = ask(srv, d6.REBIND, ALICE, (), extra=(temporary(9, address),))
    [(_, got, _)] = temporaries(answer)
    expected = address if kept else ipaddress.IPv6Address("fec0::7:0").packed
    assert got == expected


def test_rebindKeepsItsOwnAddressAfterItExpired() -> None:
    """
    A Rebind naming the client's own temporary address after its binding
    expired keeps it, as after a restart (an expired binding is free).
    """
    clock = Clock()
    srv = server(clock, randomBits=draws(0x12345, 0x70000))
    address = bindTemporary(srv)
    clock.advance(srv.leaseTime + 1)
    answer = ask(srv, d6.REBIND, ALICE, (), extra=(temporary(9, address),))
    assert temporaries(answer) == [(9, address, srv.leaseTime)]


def test_atMostPoolSizeAreBound() -> None:
    """Past poolSize bound temporary addresses, NoAddrsAvail; expired ones make room."""
    clock = Clock()
    srv = server(clock, poolSize=2)
    bindTemporary(srv, ALICE, 1)
    bindTemporary(srv, ALICE, 2)
    full = ask(srv, d6.SOLICIT, BOB, (), extra=(temporary(1),))
    assert temporaries(full) == [(1, None, d6.NO_ADDRS_AVAIL)]
    clock.advance(srv.leaseTime + 1)
    bindTemporary(srv, BOB, 1)


def test_confirmChecksTemporaryAddressesToo() -> None:
    """A Confirm naming a temporary address off the link is told NotOnLink."""
    srv = server()
    elsewhere = ipaddress.IPv6Address("2001:db8::1").packed
    answer = ask(srv, d6.CONFIRM, ALICE, (), extra=(temporary(9, elsewhere),))
    assert answer is not None
    status = answer.option(d6.OPT_STATUS_CODE)
    assert status is not None and int.from_bytes(status[:2], "big") == d6.NOT_ON_LINK
