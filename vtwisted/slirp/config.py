"""
The address plan and options of one slirp port.

Theory of operation
-------------------
A slirp port is a small NAT router on the LAN, with QEMU's C{-netdev user}
address plan so guests and habits carry over: in C{net=10.0.2.0/24} the
gateway, which stands for the host, is C{.2}, the DNS proxy C{.3}, and DHCP
hands out 16 addresses from C{.15}.  Each of them may be moved (C{host=},
C{dns=}, C{dhcpstart=}) as long as they stay inside the network and apart.

Port forwards use QEMU's C{hostfwd} syntax, C{PROTO:[HOSTADDR]:HOSTPORT-
[GUESTADDR]:GUESTPORT}, several separated by commas; inside a spec the
colons are escaped (C{hostfwd=tcp\\:\\:2222-\\:22}).  Unlike QEMU, a forward
without a host address listens on loopback only: whoever connects reaches
the guest.

C{hostloopback=off} keeps guests off the host's loopback: the gateway then
stands for nothing (slirp4netns's C{--disable-host-loopback}); the DNS proxy
and guest forwards still work.

IPv6 (C{ipv6=on}, the default) uses QEMU's prefix C{fec0::/64} unless
C{net6=} names another /64: the gateway is C{::2} (C{host6=}), the DNS
proxy C{::3} (C{dns6=}), and guests configure themselves from the router's
advertisements; C{pd=PREFIX} delegates prefixes (C{pdlen=}, /64 by
default) to guests that route and ask DHCPv6 for them (IA_PD).
C{ipv4=off} leaves guests IPv6 alone (no ARP, DHCP or
IPv4 routing).  QEMU's names for options are taken too: C{domainname=},
C{ipv6-net=}, C{ipv6-host=}, C{ipv6-dns=}.  Guests that
ask DHCPv6 for an address get one from C{::15} on (C{dhcpv6=off}: as in
libslirp, DHCPv6 answers information requests only).

The host's resolver is the first C{nameserver} line of C{/etc/resolv.conf},
read again when the file changes, unless C{resolver=} names one.  Everything
here is pure: L{readConfig} turns a spec into a L{SlirpConfig} or raises
L{vtwisted.spec.SpecError}.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable
from typing import NamedTuple

from vtwisted.slirp import config6
from vtwisted.slirp.config6 import either
from vtwisted.spec import PortSpec
from vtwisted.wire.dhcp import packDomainSearch

DEFAULT_NET = "10.0.2.0/24"
DEFAULT_MTU = 1500
MAX_MTU = 9000
POOL_SIZE = 16
RESOLV_CONF = "/etc/resolv.conf"


class Forward(NamedTuple):
    """
    One host port forward: connections or datagrams to C{hostAddress}:
    C{hostPort} on the host reach C{guestAddress}:C{guestPort} in the LAN.
    """

    protocol: str
    hostAddress: str
    hostPort: int
    guestAddress: bytes
    guestPort: int

    def __str__(self) -> str:
        host = f"[{self.hostAddress}]" if ":" in self.hostAddress else self.hostAddress
        if len(self.guestAddress) == 16:
            guest = f"[{ipaddress.IPv6Address(self.guestAddress)}]"
        else:
            guest = str(ipaddress.IPv4Address(self.guestAddress))
        return f"{self.protocol}:{host}:{self.hostPort}-{guest}:{self.guestPort}"


class GuestForward(NamedTuple):
    """
    A guest forward: guests' TCP connections to C{address}:C{port} in the
    LAN (an address only this forward uses) reach whatever the Twisted
    client endpoint C{endpoint} names, a Unix socket say.
    """

    address: bytes
    port: int
    endpoint: str

    def __str__(self) -> str:
        return f"tcp:{ipaddress.IPv4Address(self.address)}:{self.port}-{self.endpoint}"


class SlirpConfig(NamedTuple):
    """
    What one slirp port was configured with.

    @ivar network: the LAN's IPv4 network.
    @ivar gateway: the router's address (4 bytes), the host seen from inside.
    @ivar nameserver: the DNS proxy's address.
    @ivar poolStart: the first DHCP address.
    @ivar restricted: guests reach only forwarded ports (QEMU's C{restrict=on}).
    @ivar mtu: the largest IPv4 packet sent to or taken from a guest.
    @ivar forwards: the host port forwards at start-up.
    @ivar resolver: the host's DNS server, or L{None} to read resolv.conf.
    @ivar resolverPort: its port.
    @ivar tftpRoot: the directory the TFTP server serves, if any.
    @ivar bootfile: the boot file DHCP names (PXE), if any.
    @ivar tftpServerName: DHCP's option 66, if given.
    @ivar dhcp6: DHCPv6 hands out addresses (not only DNS information).
    """

    network: ipaddress.IPv4Network
    gateway: bytes
    nameserver: bytes
    poolStart: bytes
    restricted: bool = False
    mtu: int = DEFAULT_MTU
    forwards: tuple[Forward, ...] = ()
    resolver: str | None = None
    resolverPort: int = 53
    hostname: str | None = None
    domain: str | None = None
    searchDomains: tuple[str, ...] = ()
    network6: ipaddress.IPv6Network | None = None
    guestForwards: tuple[GuestForward, ...] = ()
    hostLoopback: bool = True
    tftpRoot: str | None = None
    bootfile: str | None = None
    tftpServerName: str | None = None
    dhcp6: bool = True
    #: The gateway's and the DNS proxy's IPv6 addresses (C{host6=},
    #: C{dns6=}), if not prefix::2 and prefix::3.
    host6: bytes | None = None
    dns6: bytes | None = None
    #: Guests get IPv4 (C{ipv4=off}: IPv6 alone, as QEMU's).
    ipv4: bool = True
    #: The directory shared over SMB (C{smb=}), and the server's address.
    smbRoot: str | None = None
    smbServer: bytes = b""
    #: Where prefixes for routing guests come from (C{pd=}), and their length.
    delegated: ipaddress.IPv6Network | None = None
    delegatedLength: int = 64
    #: Megabytes all TCP connections may buffer together (C{tcpbuffers=}).
    tcpBuffers: int = 256
    #: Seconds a TCP connection's guest may stay silent before it is
    #: given up (C{keepalive=}; 0: never).
    tcpKeepalive: int = 7200
    #: Whether C{mtu=} was given: only then do router advertisements carry
    #: it, since the LAN may be a jumbo one whose other hosts it would cap.
    mtuGiven: bool = False

    @property
    def gateway6(self) -> bytes | None:
        """
        The gateway's IPv6 address (prefix::2), or L{None} without IPv6.
        """
        if self.network6 is None:
            return None
        return self.host6 or (self.network6.network_address + 2).packed

    @property
    def nameserver6(self) -> bytes | None:
        """
        The DNS proxy's IPv6 address (prefix::3), or L{None} without IPv6.
        """
        if self.network6 is None:
            return None
        return self.dns6 or (self.network6.network_address + 3).packed

    @property
    def netmask(self) -> bytes:
        """
        The network's mask, 4 bytes.
        """
        return self.network.netmask.packed

    def contains(self, address: bytes) -> bool:
        """
        Whether C{address} (4 bytes) is inside the network.
        """
        return ipaddress.IPv4Address(address) in self.network

    def describe(self) -> str:
        """
        One line for C{port/print}.
        """
        gateway = ipaddress.IPv4Address(self.gateway)
        dns = ipaddress.IPv4Address(self.nameserver)
        if not self.ipv4:
            text = f"NAT IPv6 {self.network6} only"
        else:
            text = f"NAT {self.network}, gateway {gateway}, DNS {dns}"
            if self.network6 is not None:
                text += f", IPv6 {self.network6}"
        return text + (", restricted" if self.restricted else "")


def _address(spec: PortSpec, key: str, text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise spec.error(f"{key}={text!r} is not an IPv4 address") from None


def _inside(spec: PortSpec, key: str, network: ipaddress.IPv4Network,
            default: int, given: str | None) -> bytes:
    if given is None:
        return (network.network_address + default).packed
    address = _address(spec, key, given)
    if address not in network or address in (network.network_address, network.broadcast_address):
        raise spec.error(f"{key}={given} is not a host address of {network}")
    return address.packed


def readConfig(spec: PortSpec) -> SlirpConfig:
    """
    The address plan and options a C{slirp:} spec gives, checked.

    @raise SpecError: an option is malformed or the plan is inconsistent.
    """
    rawNet = spec.string("net", DEFAULT_NET) or DEFAULT_NET
    try:
        network = ipaddress.IPv4Network(rawNet, strict=False)
    except ValueError:
        raise spec.error(f"net={rawNet!r} is not an IPv4 network (like 10.0.2.0/24)") from None
    if network.num_addresses < 32:
        raise spec.error(f"net={rawNet}: the network needs at least 32 addresses (/27)")
    gateway = _inside(spec, "host", network, 2, spec.string("host"))
    nameserver = _inside(spec, "dns", network, 3, spec.string("dns"))
    poolStart = _inside(spec, "dhcpstart", network, 15, spec.string("dhcpstart"))
    if gateway == nameserver:
        raise spec.error("dns= must differ from host= (the gateway)")
    if poolStart in (gateway, nameserver):
        raise spec.error("dhcpstart= must differ from the gateway and the DNS addresses")
    mtu = spec.integer("mtu", DEFAULT_MTU, 576, MAX_MTU)
    assert mtu is not None
    resolver = spec.string("resolver")
    if resolver is not None:
        try:
            ipaddress.ip_address(resolver)
        except ValueError:
            raise spec.error(f"resolver={resolver!r} is not an IP address") from None
    resolverPort = spec.integer("resolverport", 53, 1, 65535)
    assert resolverPort is not None
    tcpBuffers = spec.integer("tcpbuffers", 256, 1, 1 << 20)
    assert tcpBuffers is not None
    tcpKeepalive = spec.integer("keepalive", 7200, 0, 1 << 31)
    assert tcpKeepalive is not None
    firstLease = ipaddress.IPv4Address(poolStart)
    try:
        forwards = tuple(
            parseForward(item, firstLease.packed)
            for value in spec.values("hostfwd") for item in value.split(",") if item
        )
    except ValueError as e:
        raise spec.error(str(e)) from None
    search = tuple(d for d in (spec.string("dnssearch") or "").split(",") if d)
    domain = either(spec, "domain", "domainname")
    _checkNames(spec, search, spec.string("hostname"), domain)
    network6 = config6.network6(spec)
    host6, dns6 = config6.addresses6(spec, network6)
    smbRoot = _directory(spec, "smb")
    if spec.string("smbserver") is not None and smbRoot is None:
        raise spec.error("smbserver= says where the SMB share is: it needs smb=DIR")
    guestForwards = tuple(
        _guestForward(spec, item, network, (gateway, nameserver))
        for value in spec.values("guestfwd") for item in value.split(",") if item
    )
    return SlirpConfig(
        network, gateway, nameserver, poolStart, spec.boolean("restrict", False), mtu,
        forwards, resolver, resolverPort, spec.string("hostname"), domain,
        search, network6, guestForwards, spec.boolean("hostloopback", True),
        _directory(spec, "tftp"), spec.string("bootfile"), spec.string("tftp-server-name"),
        spec.boolean("dhcpv6", True), host6, dns6, _ipv4(spec, network6, forwards, guestForwards),
        smbRoot, _smbServer(spec, network, guestForwards, (gateway, nameserver, poolStart))
        if smbRoot is not None else b"", *config6.delegation(spec, network6),
    )._replace(tcpBuffers=tcpBuffers, tcpKeepalive=tcpKeepalive,
               mtuGiven=spec.string("mtu") is not None)


def _smbServer(spec: PortSpec, network: ipaddress.IPv4Network,
               guestForwards: tuple[GuestForward, ...], taken: tuple[bytes, ...]) -> bytes:
    """
    The SMB server's address (C{smbserver=}, QEMU's C{.4} by default): a
    free host address of the network, outside the DHCP pool.
    """
    address = _inside(spec, "smbserver", network, 4, spec.string("smbserver"))
    pool = range(int.from_bytes(taken[2], "big"), int.from_bytes(taken[2], "big") + POOL_SIZE)
    if address in taken[:2] or address in (f.address for f in guestForwards) or \
            int.from_bytes(address, "big") in pool:
        raise spec.error(f"smbserver={ipaddress.IPv4Address(address)} must be a free address "
                         "(not the gateway, the DNS, a guest forward's or a DHCP lease's)")
    return address


def _ipv4(spec: PortSpec, network6: ipaddress.IPv6Network | None,
          forwards: tuple[Forward, ...], guestForwards: tuple[GuestForward, ...]) -> bool:
    """
    Whether guests get IPv4; without it, IPv6 must be on and nothing may
    lead to an IPv4 guest.
    """
    if spec.boolean("ipv4", True):
        return True
    if network6 is None:
        raise spec.error("ipv4=off and ipv6=off leave guests nothing")
    if guestForwards or spec.string("smb") is not None or \
            any(len(f.guestAddress) == 4 for f in forwards):
        raise spec.error("with ipv4=off, forwards lead to IPv6 guests only "
                         "(hostfwd=tcp\\:[\\:\\:1]\\:2222-[fec0\\:\\:15]\\:22)")
    return False


def _checkNames(spec: PortSpec, search: tuple[str, ...], *names: str | None) -> None:
    """
    Refuse names DHCP cannot carry, now rather than when the port starts.
    """
    for name in (*search, *names):
        if name is not None:
            try:
                packDomainSearch([name])
            except ValueError as e:
                raise spec.error(str(e)) from None


def _directory(spec: PortSpec, key: str) -> str | None:
    """
    The directory C{key=} names (C{tftp=}, C{smb=}), checked now so that a
    typo fails at start-up.
    """
    root = spec.string(key)
    if root is None:
        return None
    try:
        mode = os.stat(root).st_mode
    except OSError as e:
        raise spec.error(f"{key}={root}: {e.strerror} (errno {e.errno})") from None
    if not stat.S_ISDIR(mode):
        raise spec.error(f"{key}={root}: not a directory")
    return os.path.abspath(root)


def _guestForward(spec: PortSpec, text: str, network: ipaddress.IPv4Network,
                  taken: tuple[bytes, ...]) -> GuestForward:
    """
    Read one guest forward in QEMU's C{guestfwd} form, C{[tcp:]ADDR:PORT-
    ENDPOINT}, where ENDPOINT is a Twisted client endpoint description
    (C{unix:/run/app.sock}, C{tcp:host=127.0.0.1:port=8080}).
    """
    target, dash, endpoint = text.partition("-")
    fields = target.split(":")
    if fields[0] == "tcp":
        fields = fields[1:]
    if not dash or not endpoint or len(fields) != 2:
        raise spec.error(f"guestfwd {text!r}: expected [tcp:]ADDR:PORT-ENDPOINT")
    try:
        address = ipaddress.IPv4Address(fields[0])
        port = int(fields[1])
    except ValueError:
        raise spec.error(f"guestfwd {text!r}: {fields[0]}:{fields[1]} is not an IPv4 address "
                         "and port") from None
    if address not in network or address.packed in taken or not 0 < port < 65536:
        raise spec.error(f"guestfwd {text!r}: {address}:{port} must be a free host address "
                         f"of {network} (not the gateway or DNS) and a port")
    return GuestForward(address.packed, port, endpoint)


_FORWARD = re.compile(
    r"(?:(?P<protocol>[a-z]*):)?(?P<host>\[[^\]]*\]|[^:\[\]]*):(?P<hostPort>[^:-]*)"
    r"-(?P<guest>\[[^\]]*\]|[^:\[\]]*):(?P<guestPort>[^:]*)"
)


def parseForward(text: str, defaultGuest: bytes) -> Forward:
    """
    Read one forward in QEMU's C{hostfwd} syntax:
    C{[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT}, IPv6 addresses
    in brackets (C{tcp:[::1]:8080-[fec0::99]:80}).

    @param defaultGuest: the guest address when none is given (the first
        DHCP address, as in QEMU).
    @raise ValueError: the text is not a forward; the message says why.
    """
    def fail(problem: str) -> ValueError:
        return ValueError(f"hostfwd {text!r}: {problem}")

    match = _FORWARD.fullmatch(text)
    if match is None:
        raise fail("expected [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT")
    protocol = match["protocol"] or "tcp"
    if protocol not in ("tcp", "udp"):
        raise fail(f"protocol {protocol!r} is not tcp or udp")
    hostAddress = match["host"].strip("[]") or "127.0.0.1"
    try:
        # as the address reads, so that a removal may write it otherwise
        hostAddress = str(ipaddress.ip_address(hostAddress))
    except ValueError:
        raise fail(f"{hostAddress!r} is not an IP address") from None
    guestText = match["guest"]
    try:
        if guestText.startswith("["):
            guest = ipaddress.IPv6Address(guestText.strip("[]")).packed
        else:
            guest = ipaddress.IPv4Address(guestText).packed if guestText else defaultGuest
    except ValueError:
        raise fail(f"{guestText!r} is not an IPv4 address or a bracketed IPv6 one") from None
    return Forward(protocol, hostAddress, _portNumber(match["hostPort"], fail, 1),
                   guest, _portNumber(match["guestPort"], fail, 1))


def _portNumber(text: str, fail: Callable[[str], ValueError], low: int) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not low <= number <= 65535:
        raise fail(f"{text!r} is not a port number")
    return number


class ResolvConf:
    """
    The host's nameserver, from the first C{nameserver} line of a
    resolv.conf, read again when the file's inode, size or time changes
    (looked at no more than once a second, like libslirp).

    @ivar path: the file.
    """

    def __init__(self, path: str = RESOLV_CONF) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -1.0
        self._address: str | None = None

    def nameserver(self, now: float) -> str | None:
        """
        The first nameserver's address, or L{None} if there is none.
        """
        if now - self._checked < 1.0 and self._checked >= 0:
            return self._address
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._address = None, None
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._stamp = stamp
            self._address = _firstNameserver(self.path)
        return self._address


def _firstNameserver(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    address = words[1].split("%")[0]
                    try:
                        ipaddress.ip_address(address)
                    except ValueError:
                        continue
                    return address
    except OSError:
        return None
    return None
