"""
The numbered ports of a switch: finding one for a new link, creating and
removing them, as vde_switch numbers and allocates them.

Theory of operation
-------------------
A request for any port gets the lowest port from 1 that is missing, or
inactive, allocatable and not reserved; a request for port N gets it,
joining its links if it has some (vde_switch's rules, see
C{../shared/spec/vde-wire.md} 1.5).  A port reserved for a spec whose
link is down (L{vtwisted.switchport.Reservation}: a C{cmd:} command
between runs, a cable dialling again) is refused to an explicit request
as a busy port is (C{EADDRINUSE}), since, its link up, the same request
would be refused too (a VDE client may not join another port type's
port); the spec takes it back itself, clearing the reservation first.  L{PortTable.checkRequest}
refuses a request as L{PortTable.allocatePort} would but creates nothing,
so that a spec asks before it opens its files and sockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtwisted import errors
from vtwisted.switchport import SwitchPort

if TYPE_CHECKING:
    from vtwisted.vlans import VlanRegistry


class PortTable:
    """
    The port half of L{vtwisted.switch.Switch}.

    @ivar ports: port number to L{SwitchPort}, for ports that exist.
    @ivar numPorts: how many port numbers there are (0 to C{numPorts - 1}).
    """

    ports: dict[int, SwitchPort]
    numPorts: int
    vlans: VlanRegistry

    def forgetRoutes(self) -> None:
        """
        Drop every remembered route (the switch does it).
        """
        raise NotImplementedError

    def portChanged(self) -> None:
        """
        A port's MTU or links changed (the switch forgets its routes).
        """
        raise NotImplementedError

    def forwardFrame(self, port: SwitchPort, frame: bytes) -> None:
        """
        Switch a plain frame that arrived at C{port} (the switch does it).
        """
        raise NotImplementedError

    def forwardVnetPacket(self, port: SwitchPort, packet: bytes) -> None:
        """
        Switch a virtio-net packet that arrived at C{port} (the switch does
        it).
        """
        raise NotImplementedError

    def allocatePort(self, number: int | None = None, uid: int | None = None) -> SwitchPort:
        """
        Find or create the port a new link should join; see L{ISwitch}.
        """
        if number is None:
            return self._anonymousPort(uid)
        port = self.checkRequest(number, uid)
        return port if port is not None else self._createPort(number, allocatable=True)

    def checkRequest(self, number: int, uid: int | None = None) -> SwitchPort | None:
        """
        Whether a request of user C{uid} for port C{number} would get it,
        creating nothing: see L{ISwitch.checkRequest}.
        """
        if not 0 <= number < self.numPorts:
            raise errors.invalid(f"port {number} is out of range (0 to {self.numPorts - 1})")
        port = self.ports.get(number)
        if port is None:
            return None
        if port.reservation is not None and not port.links:
            raise errors.busy(f"port {number} is {port.reservation.describe()}")
        if port.links and uid is not None and port.currentUser not in (None, uid):
            raise errors.busy(f"port {number} is in use by another user")
        port.checkAccess(uid)
        return port

    def _anonymousPort(self, uid: int | None) -> SwitchPort:
        for number in range(1, self.numPorts):
            port = self.ports.get(number)
            if port is None:
                return self._createPort(number, allocatable=True)
            if isFree(port) and _mayTake(port, uid):
                return port
        raise errors.SwitchError(28, f"all {self.numPorts - 1} ports are in use")

    def _createPort(self, number: int, allocatable: bool) -> SwitchPort:
        port = self.ports[number] = SwitchPort(number, allocatable)
        port.onChange = self.portChanged
        port.forwarders = (self.forwardFrame, self.forwardVnetPacket)
        self.vlans.join(port, 0)
        return port

    def createPort(self, number: int) -> SwitchPort:
        """
        Create an inactive port only explicit requests may use
        (C{port/create}).
        """
        if not 0 <= number < self.numPorts:
            raise errors.invalid(f"port {number} is out of range (0 to {self.numPorts - 1})")
        if number in self.ports:
            raise errors.exists(f"port {number} exists")
        return self._createPort(number, allocatable=False)

    def removePort(self, number: int) -> None:
        """
        Remove an inactive port and its configuration (C{port/remove}).  A
        port reserved for a spec whose link is down is refused as an
        active one is: its link comes back to it, with what the console
        set on it.
        """
        port = self.port(number)
        if port.links:
            raise errors.busy(f"port {number} is active")
        if port.reservation is not None:
            raise errors.busy(f"port {number} is {port.reservation.describe()}: "
                              f"port/del {number} removes it with its spec")
        self.vlans.leaveAll(port)
        del self.ports[number]
        self.forgetRoutes()

    def port(self, number: int) -> SwitchPort:
        """
        An existing port.

        @raise vtwisted.errors.SwitchError: out of range or missing.
        """
        if not 0 <= number < self.numPorts:
            raise errors.invalid(f"port {number} is out of range (0 to {self.numPorts - 1})")
        port = self.ports.get(number)
        if port is None:
            raise errors.missing(f"port {number} does not exist")
        return port

    def setNumPorts(self, numPorts: int) -> None:
        """
        Change the number of ports (C{port/setnumports}).
        """
        if numPorts <= 0:
            raise errors.invalid("the number of ports must be positive")
        if any(number >= numPorts for number in self.ports):
            raise errors.busy(f"a port numbered {numPorts} or more exists")
        self.numPorts = numPorts


def isFree(port: SwitchPort) -> bool:
    """
    Whether a request for any port may get C{port} (with access control
    still to pass): inactive, allocatable and not reserved for a spec
    whose link comes back.
    """
    return not port.links and port.allocatable and port.reservation is None


def _mayTake(port: SwitchPort, uid: int | None) -> bool:
    """
    Whether an anonymous request from user C{uid} may get the inactive
    C{port}: any user if the port has no access control; else, as with
    vde_switch, a user it lets in (its C{port/setuser} user, a member of its
    group, root), so that a user's client gets the port set up for that
    user.  A port that would refuse the user is passed over (vde_switch
    refuses the request instead), and so is every restricted port for the
    switch's own links (C{uid} None).
    """
    if port.user is None and port.group is None:
        return True
    if uid is None:
        return False
    try:
        port.checkAccess(uid)
    except errors.SwitchError:
        return False
    return True
