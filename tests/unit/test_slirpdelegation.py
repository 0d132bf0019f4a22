"""
Prefix delegation (DHCPv6 IA_PD) from a slirp port: the pool
(L{vtwisted.slirp.delegation}), the server's answers
(L{vtwisted.slirp.dhcp6}), and the IPv6 router sending packets for a
delegated prefix to the guest it went to.  The real client (ISC dhclient
-P, and a namespace routed behind it) is in
C{tests/integration/test_slirp_dhcpv6.py}.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slirpfakes import recordingRouter
from test_slirpdhcp6 import ALICE, BOB, DNS, PREFIX, SERVER, addr
from twisted.internet.task import Clock

from vtwisted.slirp.config import readConfig
from vtwisted.slirp.delegation import PrefixPool
from vtwisted.slirp.dhcp6 import Dhcp6Server
from vtwisted.spec import PortSpec, SpecError
from vtwisted.wire import dhcpv6 as d6
from vtwisted.wire.dhcpv6 import Dhcp6Message, IaPrefix, IdentityAssociation

POOL = ipaddress.IPv6Network("fec0:0:0:100::/56")
ALICE_LL = addr("fe80::a11c")
BOB_LL = addr("fe80::b0b")


def delegating(clock: Clock, size: int = 64) -> Dhcp6Server:
    return Dhcp6Server(prefix=PREFIX, duid=SERVER, nameserver=DNS, clock=clock.seconds,
                       delegation=PrefixPool(POOL, size, clock.seconds))


def askPrefix(srv: Dhcp6Server, kind: int, client: bytes = ALICE, source: bytes = ALICE_LL,
              serverId: bytes | None = None, hint: bytes | None = None,
              iaid: int = 7) -> list[tuple[bytes | None, int]]:
    """
    Send an IA_PD; return (prefix, valid lifetime) or (None, status code).
    """
    inner = () if hint is None else ((d6.OPT_IAPREFIX, IaPrefix(0, 0, 64, hint).pack()),)
    options = [(d6.OPT_CLIENTID, client), (d6.OPT_ELAPSED_TIME, bytes(2)),
               (d6.OPT_IA_PD, IdentityAssociation(iaid, 0, 0, inner).pack())]
    if serverId is not None:
        options.insert(1, (d6.OPT_SERVERID, serverId))
    answer = srv.handle(Dhcp6Message(kind, b"\x01\x02\x03", tuple(options)).pack(), source)
    assert answer is not None
    result: list[tuple[bytes | None, int]] = []
    for value in Dhcp6Message.parse(answer).all(d6.OPT_IA_PD):
        ia = IdentityAssociation.parse(value)
        prefixes = ia.prefixes()
        if prefixes:
            assert prefixes[0].length == 64
            result.append((prefixes[0].prefix, prefixes[0].valid))
        else:
            status = d6.first(ia.options, d6.OPT_STATUS_CODE)
            assert status is not None
            result.append((None, int.from_bytes(status[:2], "big")))
    return result


def test_aRouterGetsAPrefixRoutedThroughIt() -> None:
    """
    Solicit, Request: the first /64 of the pool, bound for a day and routed
    through the address the client asked from; a second client gets the next.
    """
    clock = Clock()
    srv = delegating(clock)
    first = addr("fec0:0:0:100::")
    assert askPrefix(srv, d6.SOLICIT) == [(first, 86400)]
    assert askPrefix(srv, d6.REQUEST, serverId=SERVER) == [(first, 86400)]
    pool = srv.delegation
    assert pool is not None
    assert pool.nextHop(addr("fec0:0:0:100::42")) == ALICE_LL
    assert pool.nextHop(addr("fec0:0:0:101::42")) is None
    askPrefix(srv, d6.SOLICIT, BOB, BOB_LL)
    assert askPrefix(srv, d6.REQUEST, BOB, BOB_LL, serverId=SERVER) == \
        [(addr("fec0:0:0:101::"), 86400)]
    assert pool.nextHop(addr("fec0:0:0:101::1")) == BOB_LL


def test_renewKeepsReleaseFreesExpiryForgets() -> None:
    """A Renew keeps the prefix, a Release frees it, an unrenewed one expires."""
    clock = Clock()
    srv = delegating(clock)
    askPrefix(srv, d6.SOLICIT)
    [(prefix, _)] = askPrefix(srv, d6.REQUEST, serverId=SERVER)
    assert prefix is not None
    clock.advance(80000)
    assert askPrefix(srv, d6.RENEW, serverId=SERVER) == [(prefix, 86400)]
    clock.advance(80000)
    assert srv.delegation is not None and srv.delegation.nextHop(prefix) == ALICE_LL
    askPrefix(srv, d6.RELEASE, serverId=SERVER, hint=prefix)
    assert srv.delegation.nextHop(prefix) is None
    assert askPrefix(srv, d6.RENEW, serverId=SERVER) == [(None, d6.NO_BINDING)]
    askPrefix(srv, d6.SOLICIT, BOB, BOB_LL)
    askPrefix(srv, d6.REQUEST, BOB, BOB_LL, serverId=SERVER)
    clock.advance(86401)
    assert srv.delegation.delegations() == []


def test_theLastPrefixGoneTheNextAskerGetsNone() -> None:
    """With pdlen equal to the pool's length there is one prefix."""
    clock = Clock()
    srv = Dhcp6Server(prefix=PREFIX, duid=SERVER, nameserver=DNS, clock=clock.seconds,
                      delegation=PrefixPool(ipaddress.IPv6Network("fec0:0:0:100::/64"), 64,
                                            clock.seconds))
    askPrefix(srv, d6.REQUEST, serverId=SERVER)
    assert askPrefix(srv, d6.SOLICIT, BOB, BOB_LL) == [(None, d6.NO_PREFIX_AVAIL)]


def test_withoutAPoolPrefixesAreRefused() -> None:
    """No pd=: IA_PD gets NoPrefixAvail, as before."""
    srv = Dhcp6Server(prefix=PREFIX, duid=SERVER, nameserver=DNS, clock=Clock().seconds)
    assert askPrefix(srv, d6.SOLICIT) == [(None, d6.NO_PREFIX_AVAIL)]


def test_theRouterSendsADelegatedPrefixsPacketsToItsGuest() -> None:
    """
    A packet for an address in a delegated prefix leaves to the MAC of the
    guest the prefix went to, not to a neighbour solicitation for the
    address itself; hosts in the pool are not NATed to the host.
    """
    from vtwisted.slirp.router6 import Ipv6Router

    router, seen, config = recordingRouter(":pd=fec0\\:0\\:0\\:100\\:\\:/56")
    assert config.network6 and config.gateway6 and config.nameserver6
    v6 = router.v6 = Ipv6Router(router, config.network6, config.gateway6, config.nameserver6)
    assert v6.delegation is not None
    guestMac = bytes.fromhex("020000000077")
    v6.learn(ALICE_LL, guestMac)
    v6.delegation.bind(addr("fec0:0:0:100::"), ALICE, 7, 600, ALICE_LL)
    v6.sendIP(addr("fec0::2"), addr("fec0:0:0:100::9"), 59, b"")
    assert seen.frames[-1][:6] == guestMac
    assert v6.hostAddress(addr("fec0:0:0:1ff::1"), 80, 6) is None


@pytest.mark.parametrize(("options", "problem"), [
    (":pd=banana", "not an IPv6 prefix"),
    (":pd=fec0\\:\\:/48", "overlaps the port's own prefix"),
    (":pd=fec0\\:0\\:0\\:100\\:\\:/56:pdlen=60", "multiple of 8"),
    (":pd=fec0\\:0\\:0\\:100\\:\\:/56:ipv6=off", "needs IPv6"),
])
def test_badPoolsAreRefused(options: str, problem: str) -> None:
    with pytest.raises(SpecError, match=problem):
        readConfig(PortSpec("slirp" + options))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.sampled_from([d6.SOLICIT, d6.REQUEST, d6.RENEW, d6.REBIND,
                                                d6.RELEASE]))
def test_anyIaPdBytesAreAnsweredOrRefused(body: bytes, kind: int) -> None:
    """Whatever an IA_PD holds, the server answers it or raises Dhcp6Error, nothing else."""
    srv = delegating(Clock())
    options = [(d6.OPT_CLIENTID, ALICE), (d6.OPT_IA_PD, body)]
    if kind in (d6.REQUEST, d6.RENEW, d6.RELEASE):
        options.insert(1, (d6.OPT_SERVERID, SERVER))
    try:
        srv.handle(Dhcp6Message(kind, b"\x01\x02\x03", tuple(options)).pack(), ALICE_LL)
    except d6.Dhcp6Error:
        pass


def test_aPrefixThatWentToAnotherStaysTheirs() -> None:
    """
    A's prefix expires and goes to B: A asking again gets another one (not
    B's), and after B releases its prefix A's messages still get answers.
    """
    clock = Clock()
    srv = delegating(clock, size=64)
    [(first, _)] = askPrefix(srv, d6.REQUEST, serverId=SERVER)
    assert first is not None
    clock.advance(86401)
    assert askPrefix(srv, d6.REQUEST, BOB, BOB_LL, serverId=SERVER, hint=first) == \
        [(first, 86400)]
    [(again, _)] = askPrefix(srv, d6.REQUEST, serverId=SERVER)
    assert again not in (None, first)
    assert srv.delegation is not None and srv.delegation.nextHop(first) == BOB_LL
    askPrefix(srv, d6.RELEASE, BOB, BOB_LL, serverId=SERVER, hint=first)
    assert askPrefix(srv, d6.SOLICIT) == [(again, 86400)]


def test_aSolicitDoesNotShortenABinding() -> None:
    """A client that already holds a prefix and solicits again keeps it for the day."""
    clock = Clock()
    srv = delegating(clock)
    [(prefix, _)] = askPrefix(srv, d6.REQUEST, serverId=SERVER)
    assert prefix is not None
    askPrefix(srv, d6.SOLICIT)
    clock.advance(3600)
    assert srv.delegation is not None and srv.delegation.nextHop(prefix) == ALICE_LL


def test_prefixesTheClientMayNotKeepAreGivenLifetimesOfZero() -> None:
    """
    A Rebind naming a prefix now someone else's gets its own prefix and
    that one with lifetimes of 0; a Release of no prefix says NoBinding.
    """
    clock = Clock()
    srv = delegating(clock)
    [(first, _)] = askPrefix(srv, d6.REQUEST, serverId=SERVER)
    assert first is not None
    clock.advance(86401)
    askPrefix(srv, d6.REQUEST, BOB, BOB_LL, serverId=SERVER, hint=first)
    inner = ((d6.OPT_IAPREFIX, IaPrefix(0, 0, 64, first).pack()),)
    answer = srv.handle(Dhcp6Message(d6.REBIND, b"\x01\x02\x03", (
        (d6.OPT_CLIENTID, ALICE),
        (d6.OPT_IA_PD, IdentityAssociation(7, 0, 0, inner).pack()))).pack(), ALICE_LL)
    assert answer is not None
    [value] = Dhcp6Message.parse(answer).all(d6.OPT_IA_PD)
    prefixes = {p.prefix: p.valid for p in IdentityAssociation.parse(value).prefixes()}
    assert prefixes[first] == 0 and len(prefixes) == 2
    assert [v for p, v in prefixes.items() if p != first] == [86400]
    assert askPrefix(srv, d6.RELEASE, BOB, BOB_LL, serverId=SERVER, iaid=99) == \
        [(None, d6.NO_BINDING)]
