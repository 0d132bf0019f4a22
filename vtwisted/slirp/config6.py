"""
The IPv6 options of a slirp port (see L{vtwisted.slirp.config}): its
prefix (C{net6=}), where its gateway and DNS proxy are in it (C{host6=},
C{dns6=}), and the prefixes it delegates to guests that route (C{pd=},
C{pdlen=}); QEMU's names for them are taken too.  Pure: each reads a spec
or raises L{vtwisted.spec.SpecError}.
"""

from __future__ import annotations

import ipaddress

from vtwisted.slirp.dhcp6 import POOL_SIZE, POOL_START
from vtwisted.spec import PortSpec

DEFAULT_NET6 = "fec0::/64"


def delegation(spec: PortSpec, network6: ipaddress.IPv6Network | None,
               ) -> tuple[ipaddress.IPv6Network | None, int]:
    """
    The network prefixes are delegated from (C{pd=}) and their length
    (C{pdlen=}, 64 by default, a multiple of 8 no shorter than the
    network's): outside the port's own /64.
    """
    raw, length = spec.string("pd"), spec.integer("pdlen", 64, 8, 64)
    assert length is not None
    if raw is None:
        return None, length
    if network6 is None:
        raise spec.error("pd= delegates IPv6 prefixes: it needs IPv6 (not ipv6=off)")
    try:
        network = ipaddress.IPv6Network(raw, strict=False)
    except ValueError:
        raise spec.error(f"pd={raw!r} is not an IPv6 prefix (like fec0:0:0:100::/56)") from None
    if length % 8 or length < network.prefixlen:
        raise spec.error(f"pdlen={length} must be a multiple of 8 between pd=/"
                         f"{network.prefixlen} and 64")
    if network.overlaps(network6):
        raise spec.error(f"pd={network} overlaps the port's own prefix {network6}")
    return network, length


def either(spec: PortSpec, ours: str, qemus: str) -> str | None:
    """
    An option that has QEMU's name too (C{domain=} or C{domainname=}).
    """
    value, other = spec.string(ours), spec.string(qemus)
    if value is not None and other is not None:
        raise spec.error(f"{ours}= and {qemus}= are one option (QEMU's name and ours); "
                         "give one")
    return value if value is not None else other


def addresses6(spec: PortSpec, network: ipaddress.IPv6Network | None,
               ) -> tuple[bytes | None, bytes | None]:
    """
    The gateway's and DNS proxy's IPv6 addresses if given (C{host6=},
    C{dns6=}, or QEMU's C{ipv6-host=}, C{ipv6-dns=}): inside the prefix,
    apart, and outside the DHCPv6 pool (prefix::15 and the 255 after it).
    """
    found: list[bytes | None] = []
    pool = range(POOL_START, POOL_START + POOL_SIZE)
    for ours, qemus in (("host6", "ipv6-host"), ("dns6", "ipv6-dns")):
        text = either(spec, ours, qemus)
        if text is None or network is None:
            found.append(None)
            continue
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            raise spec.error(f"{ours}={text!r} is not an IPv6 address") from None
        offset = int(address) - int(network.network_address)
        if address not in network or offset in pool or offset == 0:
            raise spec.error(f"{ours}={text} must be an address of {network} outside its "
                             f"DHCPv6 pool (::{pool[0]:x} to ::{pool[-1]:x})")
        found.append(address.packed)
    host6, dns6 = found
    if network is not None and (host6 or (network.network_address + 2).packed) == \
            (dns6 or (network.network_address + 3).packed):
        raise spec.error("dns6= must differ from host6= (the IPv6 gateway)")
    return host6, dns6


def network6(spec: PortSpec) -> ipaddress.IPv6Network | None:
    """
    The IPv6 prefix (C{net6=}, QEMU's fec0::/64 by default; QEMU spells it
    C{ipv6-net=}, or C{ipv6-prefix=} and C{ipv6-prefixlen=} as its QAPI
    does), or L{None} with C{ipv6=off}.
    """
    raw = either(spec, "net6", "ipv6-net")
    prefix, length = spec.string("ipv6-prefix"), spec.string("ipv6-prefixlen")
    if prefix is not None or length is not None:
        if raw is not None:
            raise spec.error("ipv6-prefix= (with ipv6-prefixlen=) and net6= or ipv6-net= are "
                             "one option; give one")
        raw = f"{prefix or DEFAULT_NET6.split('/')[0]}/{length or 64}"
    raw = raw or DEFAULT_NET6
    if not spec.boolean("ipv6", True):
        return None
    try:
        network = ipaddress.IPv6Network(raw, strict=False)
    except ValueError:
        raise spec.error(f"net6={raw!r} is not an IPv6 prefix (like fd00::/64)") from None
    if network.prefixlen != 64:
        raise spec.error(f"net6={raw}: guests configure themselves (SLAAC) only in a /64")
    return network
