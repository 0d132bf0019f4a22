"""
Operations on port specs at run time: add one, remove one, delete a port
with whatever brought it.

Theory of operation
-------------------
A port spec (C{--port} or C{port/add}) becomes a service of the
L{vtwisted.service.SwitchService}; the ports it uses are found through the
links of that service (L{vtwisted.interfaces.IPortService}), which are
plugged into switch ports.  A service that listens (a VDE directory) takes any
number of clients and outlives any one of its ports; one that does not (a TAP
device, a cable) brought its ports itself, and goes when they are deleted.
L{PortSpecOperations} is mixed into L{vtwisted.operations.SwitchOperations}.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from vtwisted import errors, porttype
from vtwisted.errors import SwitchError
from vtwisted.interfaces import IPortService, IRevivablePortService
from vtwisted.spec import SpecError
from vtwisted.status import SpecStatus

if TYPE_CHECKING:
    from vtwisted.service import SwitchService
    from vtwisted.switchport import SwitchPort

log = Logger()


def _serviceLinks(service: Any) -> tuple[list[Any], bool]:
    """
    The links of a port service and whether it listens for more.
    """
    provider = IPortService(service, None)
    if provider is None:
        return [], False
    return list(provider.currentLinks()), bool(provider.listening)


class PortSpecOperations:
    """
    The port spec operations of L{vtwisted.operations.SwitchOperations}.
    """

    service: SwitchService
    _runtimeSpecs: set[str]

    @property
    def switch(self) -> Any:
        return self.service.switch

    def _existingPort(self, number: int) -> SwitchPort:
        port: SwitchPort = self.switch.port(number)
        return port

    def _owners(self) -> dict[int, str]:
        """
        id(port) to the spec whose links are plugged into it.
        """
        owners: dict[int, str] = {}
        for text, svc in self.service.specs.items():
            for link in _serviceLinks(svc)[0]:
                port = getattr(link, "port", None)
                if port is not None and link in port.links:
                    owners.setdefault(id(port), text)
        return owners

    def _downSpecs(self) -> dict[int, tuple[str, str]]:
        """
        id(port) to the spec that had it and dials to plug a link in again
        (a cable whose far switch is gone), with what it is doing.
        """
        down: dict[int, tuple[str, str]] = {}
        for text, svc in self.service.specs.items():
            port, state = getattr(svc, "lastPort", None), getattr(svc, "downState", None)
            if port is None or state is None or port.links or _serviceLinks(svc)[0]:
                continue
            down[id(port)] = (text, state())
        return down

    def _upStates(self) -> dict[int, str]:
        """
        id(port) to what the spec whose link is on it says of that link (a
        command run again: how often, how the run before ended), if it
        says something.
        """
        states: dict[int, str] = {}
        for svc in self.service.specs.values():
            upState = getattr(svc, "upState", None)
            if upState is None:
                continue
            for link in _serviceLinks(svc)[0]:
                port = getattr(link, "port", None)
                if port is not None and link in port.links and (state := upState()):
                    states[id(port)] = state
        return states

    def portTypes(self) -> list[tuple[str, str]]:
        """
        Every port type installed, vtwisted's and other distributions',
        as C{--port} and C{port/add} would find it now: each prefix and its
        description, by prefix.
        """
        return sorted((prefix, portType.description)
                      for prefix, portType in porttype.portTypes().items())

    def specs(self) -> list[SpecStatus]:
        """
        Every port spec, from the command line or added at run time, with
        where it listens if it says (C{listeningAddress()}: a C{qemu:tcp:0}
        told the port the system chose).
        """
        result = []
        for text, svc in self.service.specs.items():
            links, listening = _serviceLinks(svc)
            ports = sorted(
                {link.port.number for link in links if getattr(link, "port", None) is not None}
            )
            downState = getattr(svc, "downState", None)
            state = downState() if downState is not None and not ports else ""
            where = getattr(svc, "listeningAddress", None)
            result.append(SpecStatus(text, tuple(ports), listening, text in self._runtimeSpecs,
                                     state, None if ports else self._reservedFor(text),
                                     where() if where is not None else ""))
        return result

    def _reservedFor(self, text: str) -> int | None:
        """
        The port reserved for spec C{text} while its link is down, if any.
        """
        for number, port in self.switch.ports.items():
            reservation = port.reservation
            if reservation is not None and reservation.spec == text and not port.links:
                return int(number)
        return None

    def addPort(self, text: str) -> list[int]:
        """
        Add and start the service of a port spec (C{vde:DIR}, C{tap:NAME}...).

        @return: the ports its links were plugged into while it started (a
            TAP device's port; none for a VDE directory, whose clients come
            later).
        A spec whose device went away (see L{IRevivablePortService}) is
        opened again.

        @raise SwitchError: C{EEXIST} for a spec already in use, C{EINVAL} for
            a wrong spec, the OS error's number if starting failed.
        """
        existing = self.service.specs.get(text)
        if existing is not None and not (
            IRevivablePortService.providedBy(existing) and existing.gone()
        ):
            raise errors.exists(f"port spec {text!r} is already in use")
        before = {id(link) for port in self.switch.ports.values() for link in port.links}
        try:
            self.service.addPort(text)
        except SpecError as e:
            raise errors.invalid(str(e)) from None
        except SwitchError:
            raise
        except OSError as e:
            raise SwitchError(e.errno or errno.EIO, errors.startFailure(e, text)) from None
        except Exception as e:
            log.failure("port spec {spec}: starting failed", spec=text)
            raise SwitchError(errno.EIO, f"port spec {text!r}: {e}") from None
        if existing is None:
            self._runtimeSpecs.add(text)
            log.info("port spec {spec} added at run time", spec=text)
        else:
            log.info("port spec {spec}: its link had gone; opened again", spec=text)
        return sorted(
            n
            for n, port in self.switch.ports.items()
            if any(id(link) not in before for link in port.links)
        )

    def removeSpec(self, text: str) -> None:
        """
        Stop and remove a port spec's service; its clients are disconnected.
        """
        if text not in self.service.specs:
            raise SwitchError(errno.ENOENT, f"no port spec {text!r}")
        self._runtimeSpecs.discard(text)
        result = self.service.removePort(text)
        if isinstance(result, Deferred):
            result.addErrback(
                lambda f: log.failure("port spec {spec}: stopping failed", f, spec=text)
            )
        log.info("port spec {spec} removed", spec=text)

    def deletePort(self, number: int) -> str | None:
        """
        Remove port C{number} whatever it carries: a spec that brought this
        port alone (a TAP device, a cable), or holds it while its link is
        down (a command between runs), is removed with it; every other
        endpoint (clients of a VDE directory, which keeps listening) is
        disconnected; then the port and its configuration go.

        @return: the spec removed with the port, if any.
        """
        port = self._existingPort(number)
        removed = None
        reserved = port.reservation.spec if port.reservation is not None else None
        for spec in self.specs():
            if not spec.listening and (set(spec.ports) == {number} or spec.text == reserved):
                self.removeSpec(spec.text)
                removed = spec.text
        for link in list(port.links):
            link.close()
        if port.links:
            raise errors.busy(f"port {number}: an endpoint did not close")
        self.switch.removePort(number)
        log.info("port {number} deleted", number=number)
        return removed
