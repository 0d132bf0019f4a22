"""
Prefixes a slirp port delegates to guests that route (DHCPv6 IA_PD,
C{slirp:pd=fec0:0:0:100::/56}): a router VM behind the NAT gets a /64 of
its own for the network behind it.

Theory of operation
-------------------
The pool is the first (at most 256) prefixes of C{length} bits inside the
configured one.  Each is free or bound to one identity association (a
client's DUID and IAID) until a time, and remembers the address the
client asked from (its link-local address): the next hop for everything
inside the prefix.  An association keeps its prefix across requests,
renewals and restarts; an advertised one is held a minute for the
Request that follows.  L{PrefixPool.nextHop} is what the IPv6 router asks
before sending to an address outside its own /64: one dictionary lookup
on the address's first C{length / 8} bytes.

Pure bookkeeping, on an injected clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import NamedTuple

#: Prefixes in a pool at most.
POOL_SIZE = 256


class Delegation(NamedTuple):
    """
    A prefix bound to a client's identity association until C{expires},
    routed through C{via}.
    """

    prefix: bytes
    client: bytes
    iaid: int
    expires: float
    via: bytes


class PrefixPool:
    """
    The prefixes of one slirp port, of C{length} bits each.
    """

    def __init__(self, network: ipaddress.IPv6Network, length: int,
                 clock: Callable[[], float]) -> None:
        """
        @param length: the delegated prefixes' length, a multiple of 8 no
            shorter than C{network}'s and at most 64.
        """
        self.network = network
        self.length = length
        self.clock = clock
        count = min(POOL_SIZE, 2 ** (length - network.prefixlen))
        step = 2 ** (128 - length)
        base = int(network.network_address)
        self.prefixes = tuple(ipaddress.IPv6Address(base + i * step).packed for i in range(count))
        self._bytes = length // 8
        self._bound: dict[bytes, Delegation] = {}
        self._byIa: dict[tuple[bytes, int], bytes] = {}

    def contains(self, address: bytes) -> bool:
        """
        Whether C{address} is inside the pool's network.
        """
        return ipaddress.IPv6Address(address) in self.network

    def nextHop(self, address: bytes) -> bytes | None:
        """
        The guest that routes C{address}, if it is inside a bound prefix.
        """
        delegation = self._bound.get(address[:self._bytes])
        if delegation is None or delegation.expires <= self.clock():
            return None
        return delegation.via

    def current(self, client: bytes, iaid: int) -> bytes | None:
        """
        The prefix bound to an association now, if any.
        """
        key = self._byIa.get((client, iaid))
        delegation = None if key is None else self._bound.get(key)
        if delegation is None or (delegation.client, delegation.iaid) != (client, iaid) \
                or delegation.expires <= self.clock():
            return None
        return delegation.prefix

    def assign(self, client: bytes, iaid: int, hints: list[bytes], seconds: float,
               via: bytes, keep: bool = False) -> bytes | None:
        """
        Bind the association's prefix (its own, else a free one it hinted
        at, else the first free one) for C{seconds} (with C{keep}, no
        shorter than it is bound already); None if none is free.
        """
        prefix = self.current(client, iaid)
        if prefix is None:
            free = self._free()
            prefix = next((p for p in hints if p in free), None) or next(iter(free), None)
        if prefix is not None:
            self.bind(prefix, client, iaid, seconds, via, keep)
        return prefix

    def bind(self, prefix: bytes, client: bytes, iaid: int, seconds: float,
             via: bytes, keep: bool = False) -> None:
        """
        Bind C{prefix} to an association for C{seconds} from now (with
        C{keep}, no shorter than it is bound to that association already);
        whatever held it or the association's other prefix is let go.
        """
        key = prefix[:self._bytes]
        expires = self.clock() + seconds
        held = self._bound.get(key)
        if held is not None:
            if (held.client, held.iaid) == (client, iaid):
                expires = max(expires, held.expires) if keep else expires
            else:
                self.release(held.prefix)
        old = self._byIa.get((client, iaid))
        previous = None if old is None or old == key else self._bound.get(old)
        if previous is not None:
            self.release(previous.prefix)
        self._bound[key] = Delegation(prefix, client, iaid, expires, via)
        self._byIa[(client, iaid)] = key

    def owns(self, prefix: bytes, client: bytes, iaid: int) -> bool:
        delegation = self._bound.get(prefix[:self._bytes])
        return delegation is not None and (delegation.client, delegation.iaid) == (client, iaid)

    def release(self, prefix: bytes) -> None:
        """
        Free C{prefix}.
        """
        delegation = self._bound.pop(prefix[:self._bytes], None)
        if delegation is not None and \
                self._byIa.get((delegation.client, delegation.iaid)) == prefix[:self._bytes]:
            del self._byIa[(delegation.client, delegation.iaid)]

    def delegations(self) -> list[Delegation]:
        """
        The prefixes bound now, in order.
        """
        now = self.clock()
        return sorted(d for d in self._bound.values() if d.expires > now)

    def _free(self) -> dict[bytes, None]:
        now = self.clock()
        bound = self._bound
        return {p: None for p in self.prefixes
                if p[:self._bytes] not in bound or bound[p[:self._bytes]].expires <= now}
