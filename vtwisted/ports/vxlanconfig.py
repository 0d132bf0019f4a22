"""
What a C{vxlan:} spec says (L{VxlanConfig}, L{configFromSpec}) and the
socket it asks for (L{openSocket}): bound to the VXLAN port, in the
multicast group if there is one, sending with fragmentation allowed.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from vtwisted.ports.datagrams import udpPort
from vtwisted.sockettools import growSendBuffer
from vtwisted.spec import PortSpec
from vtwisted.wire import vxlan

#: Socket buffers: room for bursts both ways.
BUFFER = 4 * 1024 * 1024
#: vdeplug4's default groups.
DEFAULT_GROUP = {4: "239.0.0.1", 6: "ff05:56de::1"}


_IP_MTU_DISCOVER, _IPV6_MTU_DISCOVER, _PMTUDISC_DONT = 10, 23, 0
_SO_RCVBUFFORCE = 33
_UDP_GRO = 104


@dataclass
class VxlanConfig:
    """
    What a C{vxlan:} spec says.
    """

    version: int
    vni: int
    dstport: int
    group: str | None = None
    remotes: list[str] = field(default_factory=list)
    local: str | None = None
    interface: str | None = None
    ttl: int = 1
    expire: int = 128
    coalesce: bool = True

    def where(self) -> str:
        """
        C{group 239.0.0.1:4789} or C{remote 10.0.0.2,10.0.0.3:4789}.
        """
        if self.group is not None:
            return f"group {_hostText(self.group)}:{self.dstport}"
        return f"remote {','.join(_hostText(r) for r in self.remotes)}:{self.dstport}"


def socketDevice(config: VxlanConfig) -> str | None:
    """
    The device a port's socket is bound to (C{SO_BINDTODEVICE}): C{if=} in
    the unicast mode, so that its datagrams leave and are heard through
    that device alone (as a Linux vxlan device's C{dev} steers its unicast
    datagrams); none for a group, whose C{if=} is where it is joined and
    sent to.
    """
    return config.interface if config.group is None and config.interface else None


def openSocket(config: VxlanConfig) -> socket.socket:
    """
    A non-blocking UDP socket bound to the VXLAN port (on C{local=} in the
    unicast mode, and to the device C{if=} then: L{socketDevice}), sending
    with fragmentation allowed; L{joinGroup} makes it a member of a port's
    group.

    @raise OSError: from the system, its errno intact.
    """
    v6 = config.version == 6
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        device = socketDevice(config)
        if device is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.bind(socketKey(config)[1:])
        tuneSocket(sock, config.version)
    except BaseException:
        sock.close()
        raise
    return sock


def tuneSocket(sock: socket.socket, version: int) -> None:
    """
    Make C{sock} send with fragmentation allowed, with large buffers both
    ways, reading the kernel's merged datagrams (C{UDP_GRO}, Linux 5.0 and
    later), non-blocking.
    """
    level, option = ((socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER) if version == 6
                     else (socket.IPPROTO_IP, _IP_MTU_DISCOVER))
    sock.setsockopt(level, option, _PMTUDISC_DONT)
    growSendBuffer(sock, BUFFER)
    for name in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, name, BUFFER)
            break
        except OSError:
            continue
    try:
        sock.setsockopt(socket.SOL_UDP, _UDP_GRO, 1)
    except OSError:
        pass  # before Linux 5.0: one datagram per read
    sock.setblocking(False)


def socketKey(config: VxlanConfig) -> tuple[int, str, int]:
    """
    What a port's socket is bound to: IP version, address and UDP port.
    Ports with the same key share one socket (and tell their frames apart
    by VNI).
    """
    wildcard = "::" if config.version == 6 else "0.0.0.0"
    host = config.local if config.group is None and config.local else wildcard
    return config.version, host, config.dstport


def interfaceIndex(config: VxlanConfig) -> int:
    """
    The index of C{config}'s interface (0: none named).

    @raise OSError: ENODEV if there is no such interface (Python's own
        error carries no errno).
    """
    if not config.interface:
        return 0
    try:
        return socket.if_nametoindex(config.interface)
    except OSError:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV)) from None


def _membership(config: VxlanConfig) -> tuple[int, int, bytes]:
    group = config.group
    assert group is not None
    ifindex = interfaceIndex(config)
    if config.version == 6:
        return (socket.IPPROTO_IPV6, ifindex,
                socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", ifindex))
    local = socket.inet_aton(config.local or "0.0.0.0")
    return socket.IPPROTO_IP, ifindex, struct.pack("@4s4si", socket.inet_aton(group), local,
                                                   ifindex)


def joinGroup(sock: socket.socket, config: VxlanConfig) -> None:
    """
    Join C{config}'s group on its interface, and send multicast with its
    TTL through that interface, loopback off (these three are the
    socket's: ports sharing one must agree on them).

    @raise OSError: from the system (ENODEV: no such interface).
    """
    level, _, request = _membership(config)
    option = socket.IPV6_JOIN_GROUP if config.version == 6 else socket.IP_ADD_MEMBERSHIP
    sock.setsockopt(level, option, request)
    sendMulticast(sock, config, loop=False)


def sendMulticast(sock: socket.socket, config: VxlanConfig, loop: bool) -> None:
    """
    Send multicast from C{sock} with C{config}'s TTL through its interface
    (or from its C{local=} address), looped back to this host or not.

    @raise OSError: from the system (ENODEV: no such interface).
    """
    ifindex = interfaceIndex(config)
    if config.version == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, int(loop))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, config.ttl)
        if ifindex:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        return
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loop))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, config.ttl)
    if ifindex or config.local:
        local = socket.inet_aton(config.local or "0.0.0.0")
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                        struct.pack("@4s4si", bytes(4), local, ifindex))


def leaveGroup(sock: socket.socket, config: VxlanConfig) -> None:
    """
    Leave C{config}'s group (errors ignored: the interface may be gone).
    """
    try:
        level, _, request = _membership(config)
        option = socket.IPV6_LEAVE_GROUP if config.version == 6 else socket.IP_DROP_MEMBERSHIP
        sock.setsockopt(level, option, request)
    except OSError:
        pass


def joinHint(e: OSError, config: VxlanConfig) -> str:
    """
    Why the group could not be joined, with the errno and the likely cause.
    """
    where = f" on {config.interface}" if config.interface else ""
    what = f"cannot join {config.group}{where}: {e.strerror} " \
           f"({errno.errorcode.get(e.errno or 0, e.errno)})"
    if e.errno == errno.ENODEV and config.interface:
        return what + f"; is there an interface {config.interface!r} in this namespace?"
    if e.errno == errno.ENODEV:
        return what + ("; no route leads to the group: give if=IFACE, or a route "
                       f"(ip route add {config.group} dev IFACE)")
    if e.errno == errno.EADDRNOTAVAIL:
        return what + "; does the interface have an address?"
    return what


def bindHint(e: OSError, config: VxlanConfig, holders: Sequence[str] = ()) -> str:
    """
    Why the socket could not be opened, with the errno and the likely cause.

    @param holders: the specs of this switch's ports on the same UDP port.
    """
    what = f"cannot open UDP port {config.dstport} for VXLAN: {e.strerror} " \
           f"({errno.errorcode.get(e.errno or 0, e.errno)})"
    if e.errno == errno.EADDRINUSE and holders:
        return what + (f"; this switch's {', '.join(holders)} already uses it, bound "
                       "otherwise: vxlan: ports share a UDP port only if all bind every "
                       "address (a group, or remote= without local=) or all the same "
                       "local=, and vxvde: ports only with each other; give one of them "
                       "another dstport=")
    if e.errno == errno.EADDRINUSE:
        return what + ("; no vxlan: or vxvde: port of this switch has it: is a Linux "
                       "vxlan device (ip -d link show type vxlan), another port of this "
                       "switch (dgram:, mcast:) or another program using it here?")
    if e.errno == errno.ENODEV:
        return what + f"; is there an interface {config.interface!r} with an address?"
    if e.errno == errno.EPERM and socketDevice(config):
        return what + f"; binding to {config.interface} (if=) needs CAP_NET_RAW here"
    if e.errno == errno.EADDRNOTAVAIL:
        return what + f"; is {config.local} an address of this host?"
    return what


def _hostText(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _address(spec: PortSpec, text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise spec.error(f"{what} {text!r} is not an IP address") from None


def _endpoint(spec: PortSpec, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """
    A C{remote=} endpoint: a unicast address (as C{ip link ... remote}
    requires).
    """
    address = _address(spec, text, "remote")
    if address.is_multicast:
        raise spec.error(f"remote {text} is a multicast group, not an endpoint "
                         f"(give it as vxlan:{text})")
    if address.is_unspecified or text == "255.255.255.255":
        raise spec.error(f"remote {text} is not an endpoint's address")
    return address


def configFromSpec(spec: PortSpec, defaultPort: int = vxlan.DEFAULT_PORT,
                   unicast: bool = True) -> VxlanConfig:
    """
    Read C{vxlan:[GROUP|v4|v6][:vni=N][:dstport=N][:remote=A,B][:local=ADDR]
    [:if=NAME][:ttl=N][:expire=S]}; without C{unicast}, C{remote=} and
    C{local=} are not options (a multicast group is the only way).
    """
    (first,) = spec.positional(["group"], 0)
    remote = spec.string("remote") if unicast else None
    remotes = [r for r in (remote or "").split(",") if r]
    if remote is not None and not remotes:
        raise spec.error("remote= needs the addresses of the endpoints, remote=A,B")
    if first and remotes:
        raise spec.error("give a multicast group or remote= endpoints, not both")
    addresses = [_endpoint(spec, r) for r in remotes]
    version = 6 if first == "v6" else 4
    group = None
    if not remotes:
        if first in (None, "", "v4", "v6"):
            first = DEFAULT_GROUP[version]
        address = _address(spec, first, "group")
        if not address.is_multicast:
            hint = " (for one endpoint, use remote=)" if unicast else ""
            raise spec.error(f"{address} is not a multicast group{hint}")
        version, group = address.version, str(address)
    elif len({a.version for a in addresses}) > 1:
        raise spec.error("remote endpoints must be all IPv4 or all IPv6")
    else:
        version = addresses[0].version
    local = spec.string("local") if unicast else None
    if local is not None and _address(spec, local, "local").version != version:
        raise spec.error(f"local={local} is not an IPv{version} address")
    dstport = udpPort(spec, spec.string("dstport", str(defaultPort)))
    vni = spec.integer("vni", 1, 0, vxlan.MAX_VNI)
    ttl = spec.integer("ttl", 1, 0, 255)
    expire = spec.integer("expire", 128, 1, 86400)
    assert vni is not None and ttl is not None and expire is not None
    return VxlanConfig(version, vni, dstport, group, [str(a) for a in addresses], local,
                       spec.string("if"), ttl, expire, spec.boolean("coalesce", True))
