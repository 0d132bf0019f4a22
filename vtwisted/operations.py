"""
What an operator can do to a running switch: one set of operations shared by
the management console and the SSH manhole.

Theory of operation
-------------------
L{SwitchOperations} wraps a L{vtwisted.service.SwitchService} and offers every
management action as a method that either returns plain data (the frozen
records of L{vtwisted.status}, never live switch objects) or raises
L{vtwisted.errors.SwitchError} whose C{errno} is what vde_switch's console
answers for the same failure: C{EINVAL} for a number out of range, C{ENXIO}
for a port or VLAN that does not exist, C{EEXIST}, C{EADDRINUSE} for
something in use.  The checks follow vde_switch 2.3.2 (C{port.c},
C{hash.c}) so the console stays reply-compatible; where vde_switch has a bug
we do the sensible thing and say so in the method's docstring.

The console parses text into calls and formats the records; the manhole
hands this object to a Python prompt as C{ops}.  Neither knows about the
other.

The operations on port specs (C{port/add}, C{port/del}) live in
L{vtwisted.specops}, those on the MAC table (C{hash/*}) in
L{vtwisted.macops} and those on the spanning tree (C{fstp/*}) in
L{vtwisted.fstpops}.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from vtwisted import errors
from vtwisted.errors import SwitchError
from vtwisted.fstpops import FstpOperations
from vtwisted.impair import PortImpairment
from vtwisted.macops import DEFAULT_BUCKETS, MacTableOperations
from vtwisted.porttable import isFree
from vtwisted.specops import PortSpecOperations
from vtwisted.status import (
    DataSocketInfo,
    LinkStatus,
    PortStatus,
    SwitchInfo,
    VlanMember,
    VlanStatus,
)
from vtwisted.vlans import MAX_USER_VID, NOVLAN

if TYPE_CHECKING:
    from vtwisted.service import SwitchService
    from vtwisted.switchport import SwitchPort

log = Logger()


class SwitchOperations(PortSpecOperations, MacTableOperations, FstpOperations):
    """
    Management operations on one running switch service.

    @ivar service: the L{SwitchService}.
    """

    def __init__(
        self,
        service: SwitchService,
        stop: Callable[[], object] | None = None,
        mac: bytes | None = None,
    ) -> None:
        """
        @param stop: what L{shutdown} calls; the reactor's C{stop} by default.
        @param mac: set the switch's address (C{showinfo}, FSTP) to this.
        """
        self.service = service
        self._stop = stop
        if mac is not None:
            service.switch.mac = mac
        self.macBuckets = DEFAULT_BUCKETS
        self._consoles: dict[str, int] = {}
        self._runtimeSpecs: set[str] = set()
        self._stopping = False

    def __repr__(self) -> str:
        return f"<SwitchOperations on {len(self.switch.ports)} ports>"

    # Switch

    def uptime(self) -> int:
        """
        Whole seconds since the switch started (0 before it has).
        """
        started = self.service.startedAt
        uptime = 0 if started is None else int(self.service.clock.seconds() - started)
        return max(0, uptime)

    def info(self) -> SwitchInfo:
        """
        Process, address, uptime, size and mode of the switch.
        """
        return SwitchInfo(
            pid=os.getpid(),
            mac=self.switch.mac,
            uptime=self.uptime(),
            numPorts=self.switch.numPorts,
            hub=self.switch.hub,
            consoles=tuple(sorted(self._consoles.items())),
        )

    def registerConsole(self, path: str, mode: int) -> None:
        """
        Note a console socket, for C{showinfo}.
        """
        self._consoles[path] = mode

    def unregisterConsole(self, path: str) -> None:
        """
        Forget a console socket.
        """
        self._consoles.pop(path, None)

    def dataSockets(self) -> list[DataSocketInfo]:
        """
        Every VDE directory the switch listens in, in spec order.
        """
        from vtwisted.ports.vde import VdeSwitchDirectory

        return [
            DataSocketInfo(svc.directory, svc.mode)
            for svc in self.service.specs.values()
            if isinstance(svc, VdeSwitchDirectory)
        ]

    def setNumPorts(self, numPorts: int) -> None:
        """
        Change the number of ports (C{EADDRINUSE} if a higher one exists).
        """
        self.switch.setNumPorts(numPorts)

    def setHub(self, hub: bool) -> None:
        """
        Flood everything (hub) or learn and forward (switch).
        """
        self.switch.setHub(hub)

    def shutdown(self) -> None:
        """
        Stop the switch: every port service stops and removes its files.
        """
        if self._stopping:
            return
        self._stopping = True
        log.info("shutdown requested from the management interface")
        stop = self._stop if self._stop is not None else self.service.reactor.stop
        stop()

    # Ports

    def _portNumber(self, number: int) -> None:
        if not 0 <= number < self.switch.numPorts:
            raise errors.invalid(
                f"port {number} is out of range (0 to {self.switch.numPorts - 1})"
            )

    def ports(self, number: int | None = None, inactive: bool = False) -> list[PortStatus]:
        """
        The active ports (every existing one if C{inactive}), or port
        C{number} alone (C{ENXIO} if it is missing, or inactive and not
        asked for).
        """
        owners = self._owners()
        down = self._downSpecs() if inactive else {}
        ups = self._upStates()
        if number is not None:
            self._portNumber(number)
            port = self.switch.ports.get(number)
            if port is None or not (inactive or port.links):
                raise errors.missing(f"port {number} is not active")
            return [self._status(port, owners, down, ups)]
        return [
            self._status(port, owners, down, ups)
            for _, port in sorted(self.switch.ports.items())
            if inactive or port.links
        ]

    def _status(
        self, port: SwitchPort, owners: dict[int, str],
        down: dict[int, tuple[str, str]] | None = None, ups: dict[int, str] | None = None,
    ) -> PortStatus:
        spec, state = (down or {}).get(id(port), (owners.get(id(port)), ""))
        reservation = port.reservation
        c = port.counters
        vlan = port.untaggedVlan
        return PortStatus(
            number=port.number,
            untaggedVid=NOVLAN if vlan is None else vlan.vid,
            active=bool(port.links),
            allocatable=port.allocatable,
            currentUser=port.currentUser,
            user=port.user,
            group=port.group,
            inFrames=c.inFrames,
            inBytes=c.inBytes,
            outFrames=c.outFrames,
            outBytes=c.outBytes,
            drops=dict(c.drops),
            mtu=port.mtu,
            taggedVids=tuple(sorted(port.taggedVids)),
            transparent=port.transparent,
            links=tuple(
                LinkStatus(link.linkId, link.module, link.description) for link in port.links
            ),
            spec=spec,
            impairment=port.describeImpairment(),
            down=state,
            reserved="" if reservation is None or port.links else reservation.describe(),
            linkState=(ups or {}).get(id(port), ""),
        )

    def createPort(self, number: int) -> None:
        """
        Create an inactive port only explicit requests get.  (vde_switch
        takes C{port/create 0} to mean "any"; here it creates port 0.)
        """
        self.switch.createPort(number)

    def createAnyPort(self) -> int:
        """
        C{port/createauto}: the lowest port from 1 that is missing, or
        inactive, allocatable and not reserved, made not allocatable.

        @return: its number.
        """
        for number in range(1, self.switch.numPorts):
            port = self.switch.ports.get(number)
            if port is None:
                self.switch.createPort(number)
                return number
            if isFree(port):
                port.allocatable = False
                return number
        raise SwitchError(errno.ENOSPC, "no free port")

    def removePort(self, number: int) -> None:
        """
        Remove an inactive port and its configuration.
        """
        self.switch.removePort(number)

    def setAllocatable(self, number: int, allocatable: bool) -> None:
        """
        Whether anonymous clients may get port C{number}.
        """
        self._existingPort(number).allocatable = allocatable

    def setPortUser(self, number: int, uid: int | None) -> None:
        """
        Restrict port C{number} to user C{uid} (L{None}: anyone).
        """
        self._existingPort(number).user = uid

    def setPortGroup(self, number: int, gid: int | None) -> None:
        """
        Restrict port C{number} to members of group C{gid} (L{None}: anyone).
        """
        self._existingPort(number).group = gid

    def closeEndpoint(self, number: int, linkId: int) -> None:
        """
        Disconnect the endpoint C{linkId} of port C{number}.
        """
        port = self._existingPort(number)
        for link in port.links:
            if link.linkId == linkId:
                link.close()
                return
        raise errors.missing(f"port {number} has no endpoint {linkId}")

    def resetCounters(self, number: int | None = None) -> None:
        """
        Zero the counters of port C{number} (if it exists) or of every port.
        """
        if number is None:
            ports = list(self.switch.ports.values())
        else:
            self._portNumber(number)
            ports = [p for p in [self.switch.ports.get(number)] if p is not None]
        for port in ports:
            port.counters.reset()
            port.forgetWarnings()

    # Debug events

    def debugCategories(self, listener: Any, prefix: str = "") -> list[tuple[str, int, bool, str]]:
        """
        (path, tag, listened to by C{listener}, help) of each debug category
        starting with C{prefix}.
        """
        return self.switch.events.rows(listener, prefix)

    def addDebugListener(self, listener: Any, prefix: str = "") -> None:
        """
        Send C{listener.debugLine} the events of every category starting
        with C{prefix}.
        """
        self.switch.events.add(listener, prefix)

    def removeDebugListener(self, listener: Any, prefix: str = "") -> None:
        """
        Stop sending C{listener} the events of those categories.
        """
        self.switch.events.remove(listener, prefix)

    def forgetDebugListener(self, listener: Any) -> None:
        """
        C{listener} is gone: stop sending it anything.
        """
        self.switch.events.forget(listener)

    # VLANs

    def _checkVlanAndPort(self, vid: int, number: int, highest: int) -> tuple[Any, SwitchPort]:
        if not 0 <= vid <= highest:
            raise errors.invalid(f"VLAN {vid} is out of range (0 to {highest})")
        self._portNumber(number)
        vlan = self.switch.vlans.get(vid)
        if vid != NOVLAN and vlan is None:
            raise errors.missing(f"VLAN {vid} does not exist")
        port = self.switch.ports.get(number)
        if port is None:
            raise errors.missing(f"port {number} does not exist")
        return vlan, port

    def setVlan(self, number: int, vid: int) -> None:
        """
        Make C{vid} the untagged VLAN of port C{number} (L{NOVLAN}: none);
        the port's addresses are forgotten, as vde_switch does.  A link may
        refuse the move (C{refuseVlan}): a slirp router will not join a
        VLAN whose slirp router answers for the same addresses.
        """
        vlan, port = self._checkVlanAndPort(vid, number, NOVLAN)
        for link in port.links:
            refuse = getattr(link, "refuseVlan", None)
            why = refuse(vlan) if refuse is not None and vlan is not None else None
            if why:
                raise errors.busy(why)
        self.switch.vlans.join(port, vid)
        self.switch.fdb.flush(port)

    def setImpairment(self, number: int, text: str) -> None:
        """
        Impair the frames leaving port C{number} and arriving at it as
        C{text} says (C{delay=50 loss=1 indelay=50}, see
        L{vtwisted.impair}; what it does not name is not impaired), or stop
        (C{off}).
        """
        self._portNumber(number)
        port = self.switch.ports.get(number)
        if port is None:
            raise errors.missing(f"port {number} does not exist")
        try:
            impairment = PortImpairment.fromText(text)
        except ValueError as e:
            raise errors.invalid(str(e)) from None
        port.setImpairment(impairment, self.switch.clock)

    def createVlan(self, vid: int) -> None:
        """
        Create VLAN C{vid} (1 to 4093).
        """
        self.switch.vlans.create(vid)

    def removeVlan(self, vid: int) -> None:
        """
        Remove a VLAN no port is a member of.
        """
        if not 0 <= vid < NOVLAN:
            raise errors.invalid(f"VLAN {vid} is out of range (0 to {NOVLAN - 1})")
        vlan = self.switch.vlans.get(vid)
        if vlan is None:
            raise errors.missing(f"VLAN {vid} does not exist")
        if vid == 0 and (vlan.untagged or vlan.tagged):
            raise errors.busy("VLAN 0 has member ports")
        self.switch.vlans.remove(vid)

    def addTagged(self, vid: int, number: int) -> None:
        """
        Make port C{number} a tagged member of C{vid}; nothing happens if it
        is already a member.
        """
        vlan, port = self._checkVlanAndPort(vid, number, MAX_USER_VID)
        if port.untaggedVlan is vlan or vid in port.taggedVids:
            return
        self.switch.vlans.addTagged(port, vid)

    def removeTagged(self, vid: int, number: int) -> None:
        """
        End port C{number}'s tagged membership of C{vid} (C{EADDRINUSE} if it
        is the port's untagged VLAN) and forget the port's addresses.
        """
        vlan, port = self._checkVlanAndPort(vid, number, MAX_USER_VID)
        if port.untaggedVlan is vlan:
            raise errors.busy(f"VLAN {vid} is the untagged VLAN of port {number}")
        if vid in port.taggedVids:
            self.switch.vlans.removeTagged(port, vid)
        self.switch.fdb.flush(port)

    def vlans(self, vid: int | None = None, inactive: bool = False) -> list[VlanStatus]:
        """
        Every VLAN (or VLAN C{vid}) with its active members, or all members
        if C{inactive}.
        """
        registry = self.switch.vlans
        if vid is None:
            chosen = [registry[v] for v in sorted(registry.vlans)]
        else:
            if not 0 <= vid <= MAX_USER_VID and vid not in registry:
                raise errors.invalid(f"VLAN {vid} is out of range (0 to {MAX_USER_VID})")
            if vid not in registry:
                raise errors.missing(f"VLAN {vid} does not exist")
            chosen = [registry[vid]]
        return [
            VlanStatus(
                vlan.vid,
                tuple(
                    VlanMember(port.number, tagged, bool(port.links),
                               port in vlan.discarding)
                    for port, tagged in vlan.members()
                    if inactive or port.links
                ),
                vlan.implicit,
            )
            for vlan in chosen
        ]

