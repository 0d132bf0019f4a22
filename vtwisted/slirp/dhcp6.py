"""
The DHCPv6 server of a slirp port: addresses for guests that ask (libslirp
answers information requests only).

Theory of operation
-------------------
The pool is C{poolSize} addresses of the port's /64 from C{PREFIX::15}, as
IPv4 leases start at C{.15}, so the first guest to ask gets C{fec0::15} and
a host forward can name it.  Every address is free or bound to one
identity association (the client's DUID and an IAID) until a time; an
association keeps its address across requests, renewals and restarts of
the client, and an expired, released or never-requested advertisement
frees it.  An advertised address is held for L{OFFER_HOLD} seconds so that
the Request that follows gets the same one; a declined address stays out
of the pool for a lease time.

Messages are checked as RFC 8415 says: a Solicit, Confirm or Rebind naming
a server, or a Request, Renew, Release or Decline naming none, is
malformed; one naming another server is not for us.  Solicits with Rapid
Commit are answered with a Reply and bound at once; advertisements carry
preference 255, so clients take them without waiting for others.
Temporary addresses (IA_TA, RFC 8415 and RFC 4941's privacy addresses)
are bound as the others are, but each is a random interface identifier in
the /64 (never a small one, which the gateway, the DNS proxy and the pool
use), and at most C{poolSize} are bound at once; one the client names, in
a Rebind after the server restarted, is kept if it is free.  A declined
temporary address is simply released: a new one is random anyway.
Delegated prefixes (IA_PD) are refused with their status code unless the
port has a pool of them (L{vtwisted.slirp.delegation}): then each IA_PD
gets one, bound as an address is, and routed through the address the
client asked from.  With
C{stateful=False} only information requests are answered, as in libslirp.

Pure logic: L{Dhcp6Server.handle} takes a message and returns the answer;
the router does the I/O.  Bad messages raise L{Dhcp6Error}.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Iterable
from typing import NamedTuple

from vtwisted.slirp.delegation import PrefixPool
from vtwisted.wire import dhcpv6 as d6
from vtwisted.wire.dhcpv6 import Dhcp6Error, Dhcp6Message, IaAddress, IdentityAssociation

#: Seconds an advertised address waits for its Request.
OFFER_HOLD = 60.0
#: The first address handed out, as an offset in the prefix (::15).
POOL_START = 0x15
POOL_SIZE = 256
#: The smallest interface identifier a temporary address may have.
TEMPORARY_START = 0x10000
LEASE_TIME = 86400

__all__ = ["Dhcp6Error", "Dhcp6Server", "Lease"]


class Lease(NamedTuple):
    """
    An address bound to a client's identity association (an IA_TA's if
    C{temporary}) until C{expires}; a declined address has an empty
    C{client}.
    """

    address: bytes
    client: bytes
    iaid: int
    expires: float
    temporary: bool = False


class Dhcp6Server:
    """
    The DHCPv6 server of one slirp network.
    """

    def __init__(
        self,
        *,
        prefix: ipaddress.IPv6Network,
        duid: bytes,
        nameserver: bytes,
        clock: Callable[[], float],
        stateful: bool = True,
        restricted: bool = False,
        searchDomains: Iterable[str] = (),
        poolSize: int = POOL_SIZE,
        leaseTime: int = LEASE_TIME,
        delegation: PrefixPool | None = None,
        randomBits: Callable[[int], int] = secrets.randbits,
        bootfileUrl: str | None = None,
    ) -> None:
        """
        @param duid: the server's DUID.
        @param randomBits: a random number of that many bits (temporary
            addresses' interface identifiers).
        @param clock: the current time, in seconds.
        @param restricted: give no DNS server (C{restrict=on}).
        @param bootfileUrl: the boot file's URL (C{tftp://[fec0::2]/NAME}),
            given to clients that ask for it (RFC 5970), as libslirp does.
        @raise Dhcp6Error: a search domain cannot be encoded.
        """
        self.prefix = prefix
        self.duid = duid
        self.clock = clock
        self.stateful = stateful
        self.leaseTime = leaseTime
        #: Prefixes for clients that route (IA_PD), if any.
        self.delegation = delegation
        self._randomBits = randomBits
        self._poolSize = poolSize
        self._source = bytes(16)
        first = int(prefix.network_address) + POOL_START
        self.pool = tuple(ipaddress.IPv6Address(first + i).packed for i in range(poolSize))
        self._leases: dict[bytes, Lease] = {}
        self._byIa: dict[tuple[bytes, int, bool], bytes] = {}
        self._information: list[d6.Option] = []
        if not restricted:
            self._information.append((d6.OPT_DNS_SERVERS, nameserver))
        self._bootfileUrl = None if bootfileUrl is None else bootfileUrl.encode("utf-8")
        search = list(searchDomains)
        if search:
            self._information.append((d6.OPT_DOMAIN_LIST, d6.packDomainList(search)))

    def handle(self, data: bytes, source: bytes = bytes(16)) -> bytes | None:
        """
        The answer to a client's message, or L{None} for none.

        @param source: the address the message came from (the next hop for
            the prefixes delegated to the client).
        @raise Dhcp6Error: the message is malformed.
        """
        message = Dhcp6Message.parse(data)
        self._source = source
        if message.kind == d6.INFORMATION_REQUEST:
            return self._informationReply(message)
        steps = _STEPS.get(message.kind)
        if steps is None or not self.stateful:
            return None
        serverRule, handler = steps
        client = message.option(d6.OPT_CLIENTID)
        if client is None or not 2 <= len(client) <= d6.MAX_DUID:
            raise Dhcp6Error(f"message type {message.kind} without a valid client id")
        server = message.option(d6.OPT_SERVERID)
        if (server is not None) != serverRule:
            named = "names a server" if server is not None else "names no server"
            raise Dhcp6Error(f"message type {message.kind} {named}")
        if server is not None and server != self.duid:
            return None
        return handler(self, message, client)

    def leases(self) -> list[Lease]:
        """
        The addresses bound now, in address order.
        """
        now = self.clock()
        return sorted(lease for lease in self._leases.values() if lease.expires > now)

    # Messages

    def _informationReply(self, message: Dhcp6Message) -> bytes | None:
        server = message.option(d6.OPT_SERVERID)
        if server is not None and server != self.duid:
            return None
        return self._reply(d6.REPLY, message, message.option(d6.OPT_CLIENTID), [])

    def _solicit(self, message: Dhcp6Message, client: bytes) -> bytes:
        rapid = message.option(d6.OPT_RAPID_COMMIT) is not None
        body = self._assignAll(message, client, commit=rapid)
        if rapid:
            return self._reply(d6.REPLY, message, client, [(d6.OPT_RAPID_COMMIT, b""), *body])
        return self._reply(d6.ADVERTISE, message, client, [(d6.OPT_PREFERENCE, b"\xff"), *body])

    def _request(self, message: Dhcp6Message, client: bytes) -> bytes:
        return self._reply(d6.REPLY, message, client,
                           self._assignAll(message, client, commit=True))

    def _renew(self, message: Dhcp6Message, client: bytes) -> bytes:
        body = []
        for ia, temporary in _identityAssociations(message):
            address = self._current(client, ia.iaid, temporary)
            if address is None and message.kind == d6.REBIND:
                address = self._assign(client, ia, temporary, commit=True)
            if address is None:
                body.append(_ia(ia, temporary, [d6.statusCode(d6.NO_BINDING, "no binding")]))
                continue
            self._bind(address, client, ia.iaid, temporary, self.leaseTime)
            others = [IaAddress(a.address, 0, 0) for a in ia.addresses() if a.address != address]
            body.append(self._granted(ia, temporary, address, others))
        body.extend(self._delegateAll(message, client, commit=True,
                                      renewing=message.kind == d6.RENEW))
        return self._reply(d6.REPLY, message, client, body)

    def _confirm(self, message: Dhcp6Message, client: bytes) -> bytes | None:
        addresses = [a.address for ia, _ in _identityAssociations(message)
                     for a in ia.addresses()]
        if not addresses:
            return None
        onLink = all(ipaddress.IPv6Address(a) in self.prefix for a in addresses)
        status = d6.statusCode(d6.SUCCESS, "on link") if onLink else \
            d6.statusCode(d6.NOT_ON_LINK, "not on this link")
        return self._reply(d6.REPLY, message, client, [status], information=False)

    def _release(self, message: Dhcp6Message, client: bytes) -> bytes:
        body = []
        for ia, temporary in _identityAssociations(message):
            mine = [a.address for a in ia.addresses()
                    if self._owns(a.address, client, ia.iaid, temporary)]
            for address in mine:
                self._unbind(address)
                if message.kind == d6.DECLINE and not temporary:
                    self._leases[address] = Lease(address, b"", 0,
                                                  self.clock() + self.leaseTime)
            if not mine:
                body.append(_ia(ia, temporary, [d6.statusCode(d6.NO_BINDING, "no binding")]))
        pool = self.delegation
        if pool is not None and message.kind == d6.RELEASE:
            for value in message.all(d6.OPT_IA_PD):
                ia = IdentityAssociation.parse(value)
                held = [p.prefix for p in ia.prefixes() if pool.owns(p.prefix, client, ia.iaid)]
                for prefix in held:
                    pool.release(prefix)
                if not held:
                    body.append((d6.OPT_IA_PD, IdentityAssociation(ia.iaid, 0, 0, (
                        d6.statusCode(d6.NO_BINDING, "no binding"),)).pack()))
        return self._reply(d6.REPLY, message, client,
                           [d6.statusCode(d6.SUCCESS, "released"), *body], information=False)

    # Addresses

    def _assignAll(self, message: Dhcp6Message, client: bytes, commit: bool) -> list[d6.Option]:
        body = []
        for ia, temporary in _identityAssociations(message):
            address = self._assign(client, ia, temporary, commit)
            if address is None:
                body.append(_ia(ia, temporary,
                                [d6.statusCode(d6.NO_ADDRS_AVAIL, "pool exhausted")]))
            else:
                body.append(self._granted(ia, temporary, address, []))
        body.extend(self._delegateAll(message, client, commit))
        return body

    def _delegateAll(self, message: Dhcp6Message, client: bytes, commit: bool,
                     renewing: bool = False) -> list[d6.Option]:
        """
        An IA_PD answer for each of the message's: a prefix held or bound
        (only the one it has, when C{renewing}), or why there is none.
        """
        body = []
        pool = self.delegation
        for value in message.all(d6.OPT_IA_PD):
            if pool is None:
                iaid = value[:4].rjust(4, b"\0")
                body.append((d6.OPT_IA_PD, iaid + bytes(8) + d6.packOptions(
                    [d6.statusCode(d6.NO_PREFIX_AVAIL, "no prefixes delegated")])))
                continue
            ia = IdentityAssociation.parse(value)
            seconds = self.leaseTime if commit else OFFER_HOLD
            hints = [p.prefix for p in ia.prefixes()]
            if renewing:
                prefix = pool.current(client, ia.iaid)
                if prefix is not None:
                    pool.bind(prefix, client, ia.iaid, seconds, self._source)
            else:
                prefix = pool.assign(client, ia.iaid, hints, seconds, self._source,
                                     keep=not commit)
            others = [p for p in hints if p != prefix]
            body.append(self._delegated(ia, prefix, others, pool.length, renewing))
        return body

    def _delegated(self, ia: IdentityAssociation, prefix: bytes | None, others: list[bytes],
                   length: int, renewing: bool) -> d6.Option:
        """
        An IA_PD answer: the prefix granted (or why none), and the others
        the client named with lifetimes of 0, so it stops using them
        (RFC 8415 18.3.4).
        """
        gone = [(d6.OPT_IAPREFIX, d6.IaPrefix(0, 0, length, p).pack()) for p in others]
        if prefix is None:
            if gone and renewing:
                return (d6.OPT_IA_PD, IdentityAssociation(ia.iaid, 0, 0, tuple(gone)).pack())
            status = d6.NO_BINDING if renewing else d6.NO_PREFIX_AVAIL
            options = [d6.statusCode(status, "no binding" if renewing else "pool exhausted")]
            return (d6.OPT_IA_PD, IdentityAssociation(ia.iaid, 0, 0, tuple(options)).pack())
        valid = self.leaseTime
        granted = (d6.OPT_IAPREFIX, d6.IaPrefix(valid, valid, length, prefix).pack())
        return (d6.OPT_IA_PD, IdentityAssociation(
            ia.iaid, valid // 2, valid * 4 // 5, (granted, *gone)).pack())

    def _assign(self, client: bytes, ia: IdentityAssociation, temporary: bool,
                commit: bool) -> bytes | None:
        """
        The association's address (its own, else the first free one it
        hinted at, else the first free one; a new random one if
        C{temporary}), held or bound; None if the pool is full.
        """
        address = self._current(client, ia.iaid, temporary)
        if address is None and temporary:
            address = next((a.address for a in ia.addresses()
                            if self._temporaryFree(a.address)), None) or self._randomAddress()
        if address is None and not temporary:
            hints = [a.address for a in ia.addresses()]
            address = next((a for a in hints if a in self._free()), None)
        if address is None and not temporary:
            address = next(iter(self._free()), None)
        if address is not None:
            self._bind(address, client, ia.iaid, temporary,
                       self.leaseTime if commit else OFFER_HOLD, keep=not commit)
        return address

    def _randomAddress(self) -> bytes | None:
        """
        A free temporary address: a random interface identifier, never in
        the pool; None when C{poolSize} are bound already.
        """
        now = self.clock()
        for address, lease in list(self._leases.items()):
            if lease.temporary and lease.expires <= now:
                self._unbind(address)
        if sum(lease.temporary for lease in self._leases.values()) >= self._poolSize:
            return None
        network = int(self.prefix.network_address)
        while True:
            candidate = ipaddress.IPv6Address(network | self._randomBits(64)).packed
            if self._temporaryFree(candidate):
                return candidate

    def _temporaryFree(self, address: bytes) -> bool:
        """
        Whether C{address} may be a new temporary address: in the prefix,
        not bound, and its interface identifier past the small numbers the
        router, the DNS proxy, the pool and the subnet anycast address use
        (a binding that expired is free, as everywhere).
        """
        inPrefix = ipaddress.IPv6Address(address) in self.prefix
        lease = self._leases.get(address)
        return inPrefix and int.from_bytes(address[8:], "big") >= TEMPORARY_START \
            and (lease is None or lease.expires <= self.clock())

    def _free(self) -> dict[bytes, None]:
        now = self.clock()
        leases = self._leases
        return {a: None for a in self.pool if a not in leases or leases[a].expires <= now}

    def _current(self, client: bytes, iaid: int, temporary: bool) -> bytes | None:
        address = self._byIa.get((client, iaid, temporary))
        if address is None or self._leases[address].expires <= self.clock():
            return None
        return address

    def _owns(self, address: bytes, client: bytes, iaid: int, temporary: bool) -> bool:
        lease = self._leases.get(address)
        return lease is not None and \
            (lease.client, lease.iaid, lease.temporary) == (client, iaid, temporary)

    def _bind(self, address: bytes, client: bytes, iaid: int, temporary: bool, seconds: float,
              keep: bool = False) -> None:
        """
        Bind C{address} for C{seconds} (with C{keep}, no shorter than now).
        """
        expires = self.clock() + seconds
        old = self._leases.get(address)
        if old is not None:
            self._unbind(address)
            if keep and (old.client, old.iaid, old.temporary) == (client, iaid, temporary):
                expires = max(expires, old.expires)
        previous = self._byIa.get((client, iaid, temporary))
        if previous is not None:
            self._unbind(previous)
        self._leases[address] = Lease(address, client, iaid, expires, temporary)
        self._byIa[(client, iaid, temporary)] = address

    def _unbind(self, address: bytes) -> None:
        lease = self._leases.pop(address, None)
        key = (lease.client, lease.iaid, lease.temporary) if lease is not None else None
        if key is not None and self._byIa.get(key) == address:
            del self._byIa[key]

    # Building answers

    def _granted(self, ia: IdentityAssociation, temporary: bool, address: bytes,
                 others: list[IaAddress]) -> d6.Option:
        valid = self.leaseTime  # what a Request or Renew binds it for
        addresses = [IaAddress(address, valid, valid), *others]
        options = tuple((d6.OPT_IAADDR, a.pack()) for a in addresses)
        if temporary:
            return (d6.OPT_IA_TA, IdentityAssociation(ia.iaid, None, None, options).pack())
        t1, t2 = valid // 2, valid * 4 // 5
        return (d6.OPT_IA_NA, IdentityAssociation(ia.iaid, t1, t2, options).pack())

    def _reply(self, kind: int, message: Dhcp6Message, client: bytes | None,
               body: list[d6.Option], information: bool = True) -> bytes:
        options: list[d6.Option] = []
        if client is not None:
            options.append((d6.OPT_CLIENTID, client))
        options.append((d6.OPT_SERVERID, self.duid))
        options.extend(body)
        if information:
            options.extend(self._information)
            if self._bootfileUrl is not None and _asksFor(message, d6.OPT_BOOTFILE_URL):
                options.append((d6.OPT_BOOTFILE_URL, self._bootfileUrl))
        return Dhcp6Message(kind, message.transactionId, tuple(options)).pack()


def _asksFor(message: Dhcp6Message, code: int) -> bool:
    """
    Whether C{message}'s option request (ORO: 16-bit codes) names C{code}.
    """
    wanted = code.to_bytes(2, "big")
    return any(
        value[i : i + 2] == wanted
        for value in message.all(d6.OPT_ORO)
        for i in range(0, len(value) - 1, 2)
    )


def _identityAssociations(message: Dhcp6Message) -> list[tuple[IdentityAssociation, bool]]:
    """
    The message's IA_NAs, then its IA_TAs, each with whether it is temporary.
    """
    return [(IdentityAssociation.parse(value), False) for value in message.all(d6.OPT_IA_NA)] \
        + [(IdentityAssociation.parse(value, temporary=True), True)
           for value in message.all(d6.OPT_IA_TA)]


def _ia(ia: IdentityAssociation, temporary: bool, options: list[d6.Option]) -> d6.Option:
    if temporary:
        return (d6.OPT_IA_TA, IdentityAssociation(ia.iaid, None, None, tuple(options)).pack())
    return (d6.OPT_IA_NA, IdentityAssociation(ia.iaid, 0, 0, tuple(options)).pack())


#: Per message type: whether it must name a server, and its handler.
_STEPS: dict[int, tuple[bool, Callable[[Dhcp6Server, Dhcp6Message, bytes], bytes | None]]] = {
    d6.SOLICIT: (False, Dhcp6Server._solicit),
    d6.REQUEST: (True, Dhcp6Server._request),
    d6.CONFIRM: (False, Dhcp6Server._confirm),
    d6.RENEW: (True, Dhcp6Server._renew),
    d6.REBIND: (False, Dhcp6Server._renew),
    d6.RELEASE: (True, Dhcp6Server._release),
    d6.DECLINE: (True, Dhcp6Server._release),
}
