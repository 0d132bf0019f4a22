"""
The DHCP server of a slirp port, as libslirp behaves.

Theory of operation: the pool is a row of slots, one per address from
C{poolStart}, each empty or owned by a MAC; a slot once owned stays its
owner's while the pool has room (libslirp never frees a lease, whatever the
lease time says).  Unlike libslirp, whose pool serves one guest, a full
pool gives a new client the slot whose lease ran out longest ago: not
acknowledged again within the lease time, offered and never requested
within L{OFFER_HOLD} seconds, or released (RELEASE).  Only DISCOVER and
REQUEST are answered, a message without a type (plain BOOTP, or type 0)
counting as a REQUEST; RELEASE, DECLINE, INFORM and the rest get no answer.

Which address: the requested address (option 50, or C{ciaddr} in a DHCP
REQUEST without it) if it is in the pool and free or already this MAC's.
Failing that, a DISCOVER, or a REQUEST that named no address, gets the
MAC's lowest existing slot, else the first empty one; with the pool full it
gets no answer at all.  A REQUEST naming an address it cannot have gets a
NAK (yiaddr 0, as RFC 2131 says).  A MAC that asks for a second free
address gets it and keeps the first, as in libslirp: no address ever has
two owners.

Unlike libslirp, which serves one guest, the server checks an address
before it gives it to a client it has no record of, as ISC dhcpd and
dnsmasq ping one: a slirp port that is deleted and added again, or a
switch restarted, forgets its leases while the guests keep their addresses.
An address the router's ARP cache has seen another station use (a guest
configured by hand, or one leased before the restart) goes neither to a
DISCOVER nor to a REQUEST that names it.  Any other address new to the
client is probed first: the router asks for it in an ARP request (RFC
5227's probe, from 0.0.0.0) and answers the client L{PROBE_WAIT} seconds
later, or at once if another station answers.  An answered address is in
use: it is kept for that station (the lease it will renew, or its static
address) for a lease time, counted and logged once, and the client gets
the next address, probed in turn.  A client's own address is not probed:
one it holds here, or that the ARP cache saw it use (a guest renewing,
whose REQUEST comes from that address).  A REQUEST for an address the
server has no record of (INIT-REBOOT after a restart) is acknowledged if
the probe finds it free, as libslirp and dnsmasq's C{dhcp-authoritative}
do, rather than ignored as RFC 2131 4.3.2 says a server sharing the link
with others must: the router is the only server of its network, and
silence would leave the client waiting and then on a new address.  When
no address is left that nobody is known to use, one a station was seen
using but that nobody answered for since is probed again, as dhcpd takes
back an abandoned lease last; so is one whose lease ran out.

Replies are always broadcast, with C{flags} 0, C{siaddr} the gateway, and
the options in libslirp's order: 53, 54, 1, 3 and 6 (not when restricted),
51, then 12, 15 and 119 when configured and when they fit the 312-byte
options area (libslirp leaves out what does not fit too).  A NAK carries
53, 54 and 56: libslirp's lacks the server id (54) that RFC 2131 requires,
and busybox's udhcpc ignores a NAK without one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from vtwisted.slirp.addresses import dotted
from vtwisted.wire import dhcp
from vtwisted.wire.dhcp import DHCPMessage, Option
from vtwisted.wire.ethernet import formatMac

#: Text of option 56 in a NAK, as libslirp sends it.
NAK_MESSAGE = b"requested address not available"
#: Seconds an offered address waits for its REQUEST before a full pool may
#: give it to another client.
OFFER_HOLD = 60.0
#: Seconds an ARP probe of an address waits for an answer before the
#: address is given out (dnsmasq waits as long for its ping).
PROBE_WAIT = 0.5

log = Logger()

_ZERO = bytes(4)


def _checkAddress(name: str, value: bytes) -> bytes:
    """
    C{value} if it is a 4-byte address; otherwise raise C{ValueError}.
    """
    if len(value) != 4:
        raise ValueError(f"{name} must be a 4-byte IPv4 address, not {value!r}")
    return bytes(value)


@dataclass
class _Probe:
    """
    An address being probed for a client.

    @ivar slot: the address's slot, kept for the client meanwhile.
    @ivar mac: the client.
    @ivar message: the client's latest message, answered when the probe ends.
    @ivar timer: the delayed call that ends the probe.
    """

    slot: int
    mac: bytes
    message: DHCPMessage
    timer: Any = None


class DhcpServer:
    """
    The DHCP server of one slirp network; pure logic, the router does I/O.

    @ivar gateway: the server id and router address.
    @ivar nameserver: the DNS address offered.
    @ivar netmask: the subnet mask offered.
    @ivar pool: the addresses this server hands out, in order.
    @ivar leaseTime: the lease time announced, in seconds.
    @ivar restricted: if true, offer no router and no DNS (C{restrict=on}).
    @ivar conflicts: how many probed addresses another station answered for.
    """

    def __init__(
        self,
        *,
        gateway: bytes,
        nameserver: bytes,
        netmask: bytes,
        poolStart: bytes,
        poolSize: int = 16,
        leaseTime: int = 86400,
        restricted: bool = False,
        hostname: str | None = None,
        domain: str | None = None,
        searchDomains: Iterable[str] = (),
        bootfile: str | None = None,
        tftpServerName: str | None = None,
        holder: Callable[[bytes], bytes | None] = lambda address: None,
        now: Callable[[], float] = lambda: 0.0,
        probe: Callable[[bytes], None] | None = None,
        answer: Callable[[DHCPMessage, DHCPMessage], None] | None = None,
        callLater: Callable[..., Any] | None = None,
        spec: str = "slirp",
    ) -> None:
        """
        @param bootfile: the boot file (the C{file} field; option 60
            C{HTTPClient} too if it is an C{http://} URL), for PXE.
        @param tftpServerName: option 66.
        @param hostname: the host name (option 12) to give the client.
        @param domain: the domain name (option 15) to give the client.
        @param searchDomains: the domain search list (option 119).
        @param holder: the MAC of the station seen using an address, if any
            (the router's ARP cache knows).
        @param now: the time in seconds, for lease expiry.
        @param probe: sends an ARP probe for an address; without it (or
            C{answer} or C{callLater}) addresses are given without a probe.
        @param answer: sends a reply (the second argument) to a client's
            message (the first) that waited for a probe.
        @param callLater: schedules a call, as C{IReactorTime.callLater}.
        @param spec: the port spec, named in the log.
        @raise ValueError: an address is not 4 bytes, the pool is empty or
            runs past 255.255.255.255, a lease time does not fit 32 bits,
            or a name is not ASCII.
        """
        self.gateway = _checkAddress("gateway", gateway)
        self.nameserver = _checkAddress("nameserver", nameserver)
        self.netmask = _checkAddress("netmask", netmask)
        self._start = int.from_bytes(_checkAddress("poolStart", poolStart), "big")
        if poolSize < 1 or self._start + poolSize > 1 << 32:
            raise ValueError(f"a pool of {poolSize} addresses does not fit from {poolStart!r}")
        if not 0 <= leaseTime < 1 << 32:
            raise ValueError(f"lease time {leaseTime} does not fit 32 bits")
        self.pool = tuple((self._start + i).to_bytes(4, "big") for i in range(poolSize))
        self.leaseTime = leaseTime
        self.restricted = restricted
        self._holder = holder
        self._probe = probe if answer is not None and callLater is not None else None
        self._send = answer
        self._spec = spec
        self._callLater = callLater
        #: Probes under way, by client and by address.
        self._probes: dict[bytes, _Probe] = {}
        self._probing: dict[bytes, _Probe] = {}
        #: Slots kept for a station that answered a probe for them.
        self._taken: set[int] = set()
        self._logged: set[bytes] = set()
        self.conflicts = 0
        self._owners: list[bytes | None] = [None] * poolSize
        #: When each owned slot's lease (or offer) runs out.
        self._expires: list[float] = [0.0] * poolSize
        self._now = now
        self._extras = self._fitting(_configured(hostname, domain, searchDomains,
                                                 tftpServerName, bootfile))
        self._file = (bootfile or "").encode("latin-1")[:127].ljust(128, b"\0")

    def handle(self, message: DHCPMessage) -> DHCPMessage | None:
        """
        The answer to a message from a client, if any.

        @param message: a message received on port 67.
        @return: an OFFER, ACK or NAK to broadcast, or None for no answer.
        @raise dhcp.DHCPError: its message type option is empty or 0 (not
            plain BOOTP, which has none, and not to be leased to as such).
        """
        mac = message.clientMac
        if message.op != dhcp.BOOTREQUEST or mac is None:
            return None
        kind = message.messageType
        if kind is None and message.option(dhcp.OPT_MESSAGE_TYPE) is None:
            kind = dhcp.REQUEST  # plain BOOTP
        elif not kind:
            raise dhcp.DHCPError(f"DHCP message type option holds {kind!r}, no message type")
        if kind == dhcp.RELEASE:
            self._release(message.ciaddr, mac)
            return None
        if kind not in (dhcp.DISCOVER, dhcp.REQUEST):
            return None
        probe = self._probes.get(mac)
        if probe is not None:
            probe.message = message  # the latest is answered when the probe ends
            return None
        return self._answer(message, kind, mac)

    def _answer(self, message: DHCPMessage, kind: int, mac: bytes) -> DHCPMessage | None:
        """
        The answer to a DISCOVER or REQUEST, or None: none, or an address
        to probe first (the answer is sent when the probe ends).
        """
        wanted = _requestedAddress(message)
        slot = self._claim(wanted, mac) if wanted is not None else None
        if slot is None and kind == dhcp.REQUEST and wanted is not None:
            return self._reply(message, _ZERO, self._nakOptions())
        if slot is None:
            slot = self._allocate(mac)
        if slot is None:
            return None
        if self._mustProbe(slot, mac):
            self._startProbe(slot, mac, message)
            return None
        self._owners[slot] = mac
        self._taken.discard(slot)
        now = self._now()
        if kind == dhcp.DISCOVER:
            self._expires[slot] = max(self._expires[slot], now + OFFER_HOLD)
            answer = dhcp.OFFER
        else:
            self._expires[slot] = now + self.leaseTime
            answer = dhcp.ACK
        return self._reply(message, self.pool[slot], self._leaseOptions(answer))

    def _mustProbe(self, slot: int, mac: bytes) -> bool:
        """
        Whether the address of C{slot} is to be probed before C{mac} gets
        it: it is not the client's, by lease or as the ARP cache saw.
        """
        if self._probe is None or self._owners[slot] == mac:
            return False
        return self._holder(self.pool[slot]) != mac

    def _startProbe(self, slot: int, mac: bytes, message: DHCPMessage) -> None:
        """
        Probe the address of C{slot} for C{mac}, keeping it meanwhile.
        """
        assert self._probe is not None and self._callLater is not None
        address = self.pool[slot]
        self._owners[slot] = mac
        self._taken.discard(slot)
        self._expires[slot] = max(self._expires[slot], self._now() + OFFER_HOLD)
        probe = self._probes[mac] = self._probing[address] = _Probe(slot, mac, message)
        probe.timer = self._callLater(PROBE_WAIT, self._probeEnded, probe, None)
        self._probe(address)

    def heard(self, address: bytes, mac: bytes) -> None:
        """
        Station C{mac} says it has C{address} (its ARP packet): if that
        address is being probed for another, it is in use.
        """
        probe = self._probing.get(address)
        if probe is not None and mac != probe.mac:
            if probe.timer is not None and probe.timer.active():
                probe.timer.cancel()
            self._probeEnded(probe, mac)

    def _probeEnded(self, probe: _Probe, answeredBy: bytes | None) -> None:
        """
        The probe for C{probe.mac} is over, C{answeredBy} the station that
        answered, if any: answer the client's latest message.
        """
        address = self.pool[probe.slot]
        del self._probes[probe.mac], self._probing[address]
        if answeredBy is not None:
            self._conflict(probe.slot, answeredBy)
        kind = probe.message.messageType or dhcp.REQUEST
        reply = self._answer(probe.message, kind, probe.mac)
        if reply is not None and self._send is not None:
            self._send(probe.message, reply)

    def _conflict(self, slot: int, holder: bytes) -> None:
        """
        Station C{holder} answered a probe for the address of C{slot}:
        keep it for that station for a lease time, and count it.
        """
        address = self.pool[slot]
        self._owners[slot] = holder
        self._expires[slot] = self._now() + self.leaseTime
        self._taken.add(slot)
        self.conflicts += 1
        if address not in self._logged:
            self._logged.add(address)
            log.warn("{spec}: DHCP: {address} answered an ARP probe from {mac}, not a "
                     "client of ours: kept for it, not offered", spec=self._spec,
                     address=dotted(address), mac=formatMac(holder))

    def close(self) -> None:
        """
        Stop the probes under way; their clients get no answer.
        """
        for probe in self._probes.values():
            if probe.timer is not None and probe.timer.active():
                probe.timer.cancel()
        self._probes.clear()
        self._probing.clear()

    def inUseElsewhere(self) -> list[tuple[bytes, bytes]]:
        """
        The addresses kept for stations that answered a probe, as (MAC,
        address) in address order.
        """
        return [(self._owners[i] or b"", self.pool[i]) for i in sorted(self._taken)]

    def _inUse(self, slot: int, mac: bytes) -> bool:
        """
        Whether the ARP cache saw a station other than C{mac} use the
        address of C{slot}.
        """
        return self._holder(self.pool[slot]) not in (None, mac)

    def _release(self, address: bytes, mac: bytes) -> None:
        """
        C{mac} gives up C{address}: it stays the client's unless a full
        pool needs it for another.
        """
        slot = int.from_bytes(address, "big") - self._start
        if 0 <= slot < len(self.pool) and self._owners[slot] == mac:
            self._expires[slot] = min(self._expires[slot], self._now())

    def leases(self) -> list[tuple[bytes, bytes]]:
        """
        The leases given so far, as (MAC, address) in address order.
        """
        return [(mac, address) for i, (mac, address) in enumerate(zip(self._owners, self.pool))
                if mac and i not in self._taken]

    def addressOf(self, mac: bytes) -> bytes | None:
        """
        The (lowest) address leased to C{mac}, or None.
        """
        slot = self._slotOf(mac)
        return None if slot is None else self.pool[slot]

    def _slotOf(self, mac: bytes) -> int | None:
        """
        The first slot C{mac} owns, or None.
        """
        return next((i for i, owner in enumerate(self._owners) if owner == mac), None)

    def _claim(self, address: bytes, mac: bytes) -> int | None:
        """
        The slot of C{address} if C{mac} may have it, or None.
        """
        slot = int.from_bytes(address, "big") - self._start
        if not 0 <= slot < len(self.pool):
            return None
        owner = self._owners[slot]
        if owner == mac or (owner is None and not self._inUse(slot, mac)):
            return slot
        return None

    def _allocate(self, mac: bytes) -> int | None:
        """
        The slot C{mac} already owns, else the first empty one that no other
        station is seen using, else the one whose lease ran out first, else
        (if addresses are probed) the first empty one a station was seen
        using, else None.
        """
        slot = self._slotOf(mac)
        if slot is not None:
            return slot
        empty = [i for i, owner in enumerate(self._owners) if owner is None]
        slot = next((i for i in empty if not self._inUse(i, mac)), None)
        if slot is None:
            now = self._now()
            expired = [i for i, expires in enumerate(self._expires)
                       if expires <= now and self._owners[i] is not None]
            slot = min(expired, key=self._expires.__getitem__, default=None)
        if slot is None and empty and self._probe is not None:
            slot = empty[0]
        return slot

    def _leaseOptions(self, answer: int) -> list[Option]:
        """
        The options of an OFFER or ACK, in libslirp's order.
        """
        return self._mandatory(answer) + self._extras

    def _mandatory(self, answer: int) -> list[Option]:
        """
        The options every OFFER or ACK carries.
        """
        options = [
            (dhcp.OPT_MESSAGE_TYPE, bytes([answer])),
            (dhcp.OPT_SERVER_ID, self.gateway),
            (dhcp.OPT_SUBNET_MASK, self.netmask),
        ]
        if not self.restricted:
            options.append((dhcp.OPT_ROUTER, self.gateway))
            options.append((dhcp.OPT_DNS, self.nameserver))
        options.append((dhcp.OPT_LEASE_TIME, self.leaseTime.to_bytes(4, "big")))
        return options

    def _nakOptions(self) -> list[Option]:
        """
        The options of a NAK: unlike libslirp's, with the server id RFC 2131
        requires, without which busybox's udhcpc ignores the NAK.
        """
        return [(dhcp.OPT_MESSAGE_TYPE, bytes([dhcp.NAK])), (dhcp.OPT_SERVER_ID, self.gateway),
                (dhcp.OPT_MESSAGE, NAK_MESSAGE)]

    def _fitting(self, extras: list[Option]) -> list[Option]:
        """
        The configured options that fit the options area after the
        mandatory ones, in order.
        """
        room = dhcp.OPTIONS_AREA - len(dhcp.MAGIC) - 1
        room -= len(dhcp.packOptions(self._mandatory(dhcp.ACK)))
        kept = []
        for option in extras:
            size = len(dhcp.packOptions([option]))
            if size <= room:
                kept.append(option)
                room -= size
        return kept

    def _reply(self, request: DHCPMessage, address: bytes, options: list[Option]) -> DHCPMessage:
        """
        A reply to C{request} giving C{address} with C{options}.
        """
        return DHCPMessage(
            op=dhcp.BOOTREPLY, htype=dhcp.HTYPE_ETHERNET, hlen=6, hops=0, xid=request.xid,
            secs=0, flags=0, ciaddr=_ZERO, yiaddr=address, siaddr=self.gateway, giaddr=_ZERO,
            chaddr=request.chaddr, sname=bytes(64), file=self._file, options=tuple(options),
        )


def _requestedAddress(message: DHCPMessage) -> bytes | None:
    """
    The address a client asks for: option 50, or C{ciaddr} in a DHCP
    REQUEST (not in plain BOOTP, as in libslirp); None if neither is set.
    """
    value = message.option(dhcp.OPT_REQUESTED_ADDRESS)
    wanted = value[:4] if value is not None and len(value) >= 4 else _ZERO
    if wanted == _ZERO and message.messageType == dhcp.REQUEST:
        wanted = message.ciaddr
    return None if wanted == _ZERO else wanted


def _configured(hostname: str | None, domain: str | None, search: Iterable[str],
                tftpServerName: str | None = None, bootfile: str | None = None) -> list[Option]:
    """
    The optional options, in libslirp's order: 12, 15, 66, 119, 60.

    @raise ValueError: a name is not ASCII or not a domain name.
    """
    options = []
    if hostname:
        options.append((dhcp.OPT_HOST_NAME, hostname.encode("ascii")))
    if domain:
        options.append((dhcp.OPT_DOMAIN_NAME, domain.encode("ascii")))
    if tftpServerName:
        options.append((dhcp.OPT_TFTP_SERVER, tftpServerName.encode("ascii")))
    search = list(search)
    if search:
        options.append((dhcp.OPT_DOMAIN_SEARCH, dhcp.packDomainSearch(search)))
    if bootfile and bootfile.startswith("http://"):
        options.append((dhcp.OPT_VENDOR_CLASS, b"HTTPClient"))
    return options
