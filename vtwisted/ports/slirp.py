"""
The slirp port type (C{slirp[:net=10.0.2.0/24][:hostfwd=...]}): user-mode NAT
on the LAN, the way C{qemu -netdev user} gives one guest, for every guest on
the switch, with no root and no C code.

Theory of operation
-------------------
The port's one link is a router (L{vtwisted.slirp.router}) with three
engines behind it: TCP (L{vtwisted.slirp.tcp}), UDP (L{vtwisted.slirp.udp})
and DHCP (L{vtwisted.slirp.dhcp}).  Guests reach the outside through
ordinary sockets of the switch's process; the outside reaches guests through
port forwards, which are listening sockets of that process too.

The link speaks the virtio-net header, so an offload TAP's TCP super-frames
reach the TCP engine whole (one parse per 64 KB, checksums vouched for by
the kernel), and the TCP engine's own super-frames go to such a TAP whole
too; the switch cuts them for ports that cannot take them.  Forwards given
in the spec are opened in C{privilegedStartService}, so a forward from a
port below 1024 works under C{twistd --uid}; more can be added and removed
while the switch runs (L{SlirpService.addForward}, the console's C{slirp/}
menu).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.interfaces import ILink, IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.singlelink import SingleLinkService
from vtwisted.processes import CommandEndpoint, CommandError, parseCommand
from vtwisted.slirp.arpcache import macFor
from vtwisted.slirp.config import Forward, GuestForward, SlirpConfig, readConfig
from vtwisted.slirp.dhcp import DhcpServer
from vtwisted.slirp.icmp import IPV6, MAX_SESSIONS, IcmpNat
from vtwisted.slirp.router import SlirpRouter
from vtwisted.slirp.tcp import MAX_CONNECTIONS, GuestForwardTarget, TcpNat
from vtwisted.slirp.udp import MAX_MAPPINGS, UdpNat
from vtwisted.sockettools import descriptorLimit, listenError, stopListeningNow
from vtwisted.spec import PortSpec, SpecError
from vtwisted.vlans import NOVLAN

log = Logger()


@implementer(ILink)
class SlirpLink:
    """
    The router's place on its switch port.
    """

    module = "slirp"
    vnetHeader = True
    uid = None
    linkId = 0

    def __init__(self, service: SlirpService) -> None:
        self.service = service
        self.port: Any = None
        self.router: SlirpRouter | None = None
        self._switch: Any = None

    @property
    def description(self) -> str:
        """
        The address plan and what is open, for C{port/print}.
        """
        service = self.service
        text = service.config.describe()
        if service.tcp is not None and service.udp is not None:
            text += (f", {service.tcp.connectionCount} TCP connections, "
                     f"{len(service.udp.mappings)} UDP mappings")
        if service.forwards:
            text += ", forwards " + " ".join(str(f) for f in service.forwards)
        return text

    def plug(self, switch: Any, port: Any) -> None:
        """
        Attach to C{port}.
        """
        self.port = port
        self._switch = switch
        switch.attach(port, self)

    def refuseVlan(self, vlan: Any) -> str | None:
        """
        Why this router must not move to untagged C{vlan}, if it must not
        (another slirp router there would answer for the same addresses).
        """
        return self.service._clash(vlan) if self.port is not None else None

    def emitFrame(self, frame: bytes) -> None:
        """
        Hand a frame of the router's to the switch.
        """
        if self.port is not None:
            self._switch.frameReceived(self.port, frame)

    def emitPacket(self, packet: bytes) -> None:
        """
        Hand a virtio-net packet of the router's to the switch.
        """
        if self.port is not None:
            self._switch.vnetPacketReceived(self.port, packet)

    def usoPays(self, mac: bytes) -> bool:
        """
        Whether the guest at C{mac} sits behind a port with the virtio-net
        header, which takes UDP super-frames whole.
        """
        if self.port is None:
            return False
        return bool(self._switch.vnetBehind(self.port, mac))

    def dropped(self, reason: str, message: str) -> None:
        """
        Count a drop on the port (while plugged in).
        """
        if self.port is not None:
            self.port.dropped(reason, f"{self.service.spec}: {message}")

    # ILink

    def sendFrame(self, frame: bytes) -> None:
        """
        A frame for the router.
        """
        if self.router is not None:
            self.router.frameReceived(frame)

    def sendVnetPacket(self, packet: bytes) -> None:
        """
        A virtio-net packet for the router.
        """
        if self.router is not None:
            self.router.vnetPacketReceived(packet)

    def close(self) -> None:
        """
        Unplug from the switch (the NAT keeps running until the service stops).
        """
        self.service.unplug()


@implementer(IPortService)
class SlirpService(SingleLinkService):
    """
    The service of one C{slirp:} spec.

    @ivar forwards: the open port forwards, with their listening ports.
    """

    def __init__(self, switch: Any, reactor: Any, config: SlirpConfig, options: PortOptions,
                 spec: str) -> None:
        super().__init__(switch, reactor, options, spec)
        self.config = config
        self.link: SlirpLink | None = None
        self.router: SlirpRouter | None = None
        self.tcp: TcpNat | None = None
        self.udp: UdpNat | None = None
        self.icmp: IcmpNat | None = None
        self.icmp6: IcmpNat | None = None
        self.forwards: dict[Forward, Any] = {}
        #: Guest forwards to the targets made from their endpoint descriptions.
        self.guestTargets: dict[GuestForward, GuestForwardTarget] = {}
        #: The directory shared over SMB (C{smb=}), if any.
        self.smb: Any = None

    def bound(self) -> bool:
        return self.link is not None

    def bind(self) -> None:
        """
        Build the router and its engines, and open the forwards.
        """
        link = SlirpLink(self)
        config = self.config
        router = SlirpRouter(config, self.reactor, link.emitFrame, link.emitPacket, link.dropped,
                             usoPays=link.usoPays)
        router.dhcp = DhcpServer(
            gateway=config.gateway, nameserver=config.nameserver, netmask=config.netmask,
            poolStart=config.poolStart, restricted=config.restricted,
            hostname=config.hostname, domain=config.domain,
            searchDomains=config.searchDomains, bootfile=config.bootfile,
            tftpServerName=config.tftpServerName, holder=router.neighbours.get,
            now=self.reactor.seconds, probe=router.probeAddress, answer=router.sendDhcp,
            callLater=self.reactor.callLater, spec=self.spec,
        )
        if config.tftpRoot is not None:
            from vtwisted.slirp.tftp import TftpServer

            router.tftp = TftpServer(router, config.tftpRoot, self.reactor)
        self.tcp = router.tcp = TcpNat(router, self.reactor, config.tcpBuffers << 20,
                                      config.tcpKeepalive)
        self.udp = router.udp = UdpNat(router, self.reactor)
        self.icmp = router.icmp = IcmpNat(router, self.reactor)
        room = hostSocketRoom(descriptorLimit(self.reactor))
        self.tcp.maxConnections, self.udp.maxMappings, self.icmp.maxSessions = room
        gateway6, nameserver6 = config.gateway6, config.nameserver6
        if config.network6 is not None and gateway6 is not None and nameserver6 is not None:
            from vtwisted.slirp.router6 import Ipv6Router

            router.gateway6, router.nameserver6 = gateway6, nameserver6
            router.v6 = Ipv6Router(router, config.network6, gateway6, nameserver6)
            self.icmp6 = router.icmp6 = IcmpNat(router, self.reactor, IPV6)
            self.icmp6.maxSessions = room[2]
        for guestForward, target in self.guestTargets.items():
            router.guestForwards[(guestForward.address, guestForward.port)] = target
            router.arpAddresses.add(guestForward.address)
            router.ownMacs.add(macFor(guestForward.address))
        link.router = router
        self.link, self.router = link, router
        try:
            for forward in config.forwards:
                self.addForward(forward)
        except Exception:
            self._teardown()
            raise

    def startService(self) -> None:
        super().startService()
        clash = self._clash()
        if clash is not None:
            self.unplug()
            raise SpecError(self.spec, clash)

    def _clash(self, vlan: Any = None) -> str | None:
        """
        Why this router cannot share its VLAN (or C{vlan}) with another
        slirp port's, if it cannot: two gateways at one address, or two
        IPv6 routers (their router MAC is fixed), would answer for each
        other.
        """
        assert self.link is not None and self.link.port is not None
        if vlan is None:
            vlan = self.link.port.untaggedVlan
        for port in self.switch.ports.values():
            for other in port.links:
                if not isinstance(other, SlirpLink) or other is self.link \
                        or port.untaggedVlan is not vlan or vlan is None:
                    continue
                theirs = other.service.config
                if theirs.gateway == self.config.gateway:
                    why = f"has the same gateway, {ipaddress.IPv4Address(theirs.gateway)}"
                elif theirs.network6 is not None and self.config.network6 is not None:
                    why = "runs IPv6 too"
                else:
                    continue
                return (f"{other.service.spec} on port {port.number} {why} in VLAN {vlan.vid}: "
                        f"give {self.spec} its own net= and ipv6=off, or its own vlan=")
        return None

    def addForward(self, forward: Forward) -> None:
        """
        Open a host port forward.

        @raise OSError: the host port cannot be had; the message names the
            spec and the forward, and carries the errno.
        """
        assert self.tcp is not None and self.udp is not None and self.router is not None
        if len(forward.guestAddress) == 16:
            prefix, delegated = self.config.network6, self.config.delegated
            guest = ipaddress.IPv6Address(forward.guestAddress)
            if prefix is None or not (guest in prefix or (delegated and guest in delegated)):
                raise OSError(22, f"{self.spec}: forward {forward}: the guest must be in "
                                  f"{prefix or 'the IPv6 prefix, and IPv6 is off'}"
                                  f"{f' or {delegated}' if prefix and delegated else ''}")
            if forward.guestAddress in (self.config.gateway6, self.config.nameserver6,
                                        prefix.network_address.packed):
                raise OSError(22, f"{self.spec}: forward {forward}: the guest must be a "
                                  f"guest's address in {prefix} (not the gateway, DNS or "
                                  "the prefix's own)")
        elif not self.config.ipv4:
            raise OSError(22, f"{self.spec}: forward {forward}: guests have no IPv4 "
                              "(ipv4=off)")
        else:
            network, address = self.config.network, ipaddress.IPv4Address(forward.guestAddress)
            if address not in network or address in (network.network_address,
                                                     network.broadcast_address) \
                    or forward.guestAddress in self.router.arpAddresses:
                raise OSError(22, f"{self.spec}: forward {forward}: the guest must be a "
                                  f"guest's address in {network} (not the gateway, DNS or a "
                                  "guest forward's)")
        if forward in self.forwards:
            raise OSError(17, f"{self.spec}: forward {forward} exists already")
        try:
            if forward.protocol == "tcp":
                factory = self.tcp.forwardFactory(forward.guestAddress, forward.guestPort)
                port = self.reactor.listenTCP(forward.hostPort, factory,
                                              interface=forward.hostAddress)
            else:
                protocol = self.udp.forwardSocket(forward.guestAddress, forward.guestPort)
                port = self.reactor.listenUDP(forward.hostPort, protocol,
                                              interface=forward.hostAddress)
        except Exception as e:
            raise listenError(f"{self.spec}: cannot forward {forward}", e) from e
        self.forwards[forward] = port
        log.info("{spec}: forwarding {forward}", spec=self.spec, forward=str(forward))

    def removeForward(self, forward: Forward) -> Any:
        """
        Close a host port forward (connections it made stay up).

        @raise KeyError: there is no such forward.
        """
        port = self.forwards.pop(forward)
        # Closed now, not on the reactor's next turn: the host port is free
        # to forward again at once (a console script's hostfwd_remove then
        # hostfwd_add of the same port, or port/del then port/add).
        return stopListeningNow(port)

    def _teardown(self) -> list[Any]:
        results = [stopListeningNow(port) for port in self.forwards.values()]
        self.forwards.clear()
        if self.smb is not None:
            results.append(self.smb.close())
        for target in self.guestTargets.values():
            if isinstance(target.endpoint, CommandEndpoint):
                results.append(target.endpoint.stopAll())
        if self.tcp is not None:
            self.tcp.close()
        if self.udp is not None:
            self.udp.close()
        for engine in (self.icmp, self.icmp6):
            if engine is not None:
                engine.close()
        if self.router is not None:
            self.router.arp.close()
            self.router.dhcp.close()
            self.router.fragments.close()
            if self.router.tftp is not None:
                self.router.tftp.close()
            if self.router.v6 is not None:
                self.router.v6.close()
        self.link = self.router = self.tcp = self.udp = self.icmp = self.icmp6 = None
        return results

    def stopService(self) -> Any:
        super().stopService()
        self.unplug()
        waits = [d for d in self._teardown() if isinstance(d, Deferred)]
        return gatherResults(waits) if waits else None


def hostSocketRoom(limit: int) -> tuple[int, int, int]:
    """
    How many TCP connections, UDP mappings and ping sessions (each of both
    families) a slirp port may open under a limit of C{limit} descriptors:
    QEMU's generous numbers where there is room, else a share that leaves
    the switch's own ports (and another slirp port) descriptors to work with.
    """
    return (min(MAX_CONNECTIONS, limit // 4), min(MAX_MAPPINGS, limit // 16),
            min(MAX_SESSIONS, limit // 32))


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> SlirpService:
    """
    Build the service for C{slirp[:OPTIONS]}.
    """
    spec.positional([], 0)
    config = readConfig(spec)
    options = PortOptions.fromSpec(spec)
    if options.trunk or options.transparent or options.vlan == NOVLAN:
        raise spec.error(f"a slirp router takes untagged frames only: give it vlan=N, not "
                         f"trunk=, vlan=all or vlan={NOVLAN} (another slirp port, with its "
                         f"own net=, serves another VLAN)")
    # mtu= is the router's: it answers larger packets itself (Packet Too
    # Big), which a port MTU would drop unanswered, a path-MTU black hole.
    options.mtu = None
    spec.checkKeywords()
    service = SlirpService(switch, reactor, config, options, spec.text)
    for forward in config.guestForwards:
        service.guestTargets[forward] = GuestForwardTarget(
            _guestEndpoint(spec, reactor, forward), forward.endpoint)
    if config.smbRoot is not None:
        from vtwisted.slirp.smb import SMB_PORTS, SmbShare, findSmbd

        smbd = findSmbd()
        if smbd is None:
            raise spec.error("smb= needs Samba's smbd, which is not installed (apt install samba)")
        share = service.smb = SmbShare(reactor, config.smbRoot, smbd, spec.text)
        for port in SMB_PORTS:
            forward = GuestForward(config.smbServer, port, repr(share))
            service.guestTargets[forward] = GuestForwardTarget(share, repr(share))
    return service


def _guestEndpoint(spec: PortSpec, reactor: Any, forward: Any) -> Any:
    """
    Where a guest forward connects: for C{cmd:COMMAND} (QEMU's form), a run
    of the command per connection with a socket for its standard input and
    output, as QEMU gives it; else a Twisted client endpoint.
    """
    description = forward.endpoint
    if description.startswith("cmd:"):
        try:
            return CommandEndpoint(reactor, parseCommand(description[4:]), spec.text,
                                   socket=True)
        except CommandError as e:
            raise spec.error(f"guestfwd {forward}: {e}") from None
    try:
        return clientFromString(reactor, description)
    except Exception as e:
        raise spec.error(f"guestfwd {forward}: {description!r} is not a client "
                         f"endpoint ({e})") from None
