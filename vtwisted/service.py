"""
The switch as a Twisted service: the core, its port services and its clock.

Theory of operation
-------------------
L{SwitchService} is a L{MultiService} whose children are the services port
types make from specs; starting it starts them (TAP devices open in
C{privilegedStartService}, before C{twistd} drops privileges), stopping it
stops them, and each removes the files and devices it made.  A
L{TimerService} gives the switch its coarse clock once a second, so the
forwarding path never reads the time.  Ports can be added and removed while
the switch runs; a spec whose service fails to start is taken back out.

L{SwitchService.operations} is the one L{vtwisted.operations.SwitchOperations}
the management console and the SSH manhole share.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorTime

from vtwisted.errors import SwitchError, osErrorText
from vtwisted.interfaces import IRevivablePortService
from vtwisted.porttype import portTypes
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch

if TYPE_CHECKING:
    from vtwisted.operations import SwitchOperations


class SwitchService(MultiService):
    """
    One switch and the services of its port specs.

    @ivar switch: the L{Switch}.
    @ivar specs: spec text to the service made from it, in order.
    @ivar startedAt: the clock's time when the service started, if it has.
    """

    def __init__(self, switch: Switch, reactor: Any, clock: IReactorTime | None = None) -> None:
        super().__init__()
        self.switch = switch
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        switch.clock = self.clock
        self.specs: dict[str, IService] = {}
        self.startedAt: float | None = None
        self._operations: SwitchOperations | None = None
        self._timer = TimerService(1, self._tick)
        self._timer.clock = self.clock
        self._timer.setServiceParent(self)

    def _tick(self) -> None:
        self.switch.tick(int(self.clock.seconds()))

    #: Whether a service that cannot start ends the program with its
    #: message and no traceback (C{twistd -n vswitch}), instead of raising
    #: (which a daemonising twistd reports itself).
    exitOnFailure = False
    #: The pid file to remove then (twistd removes it only when it sees
    #: the error).
    pidFile: str | None = None

    def privilegedStartService(self) -> None:
        with self._starting():
            super().privilegedStartService()

    def startService(self) -> None:
        self.startedAt = self.clock.seconds()
        self._tick()
        with self._starting():
            super().startService()

    @contextmanager
    def _starting(self) -> Iterator[None]:
        """
        Turn an error that says what failed (a spec, a path and an errno)
        into the program's exit with that message, if L{exitOnFailure}.
        """
        try:
            yield
        except (OSError, SpecError, SwitchError) as e:
            if not self.exitOnFailure:
                raise
            message = e.message if isinstance(e, SwitchError) else \
                osErrorText(e) if isinstance(e, OSError) else str(e)
            _removePidFile(self.pidFile)
            raise SystemExit(f"vswitch: {message}") from None

    @property
    def operations(self) -> SwitchOperations:
        """
        The management operations on this switch (made on first use).
        """
        if self._operations is None:
            from vtwisted.operations import SwitchOperations

            self._operations = SwitchOperations(self)
        return self._operations

    def makePortService(self, text: str) -> IService:
        """
        Build (but do not add) the service for one port spec.

        @raise SpecError: unknown prefix or bad arguments.
        """
        spec = PortSpec(text)
        types = portTypes()
        portType = types.get(spec.prefix)
        if portType is None:
            known = ", ".join(sorted(types)) or "none installed"
            raise SpecError(text, f"unknown port type {spec.prefix!r} (known: {known})")
        return IService(portType.makeService(self.switch, spec, self.reactor))

    def addPort(self, text: str) -> IService:
        """
        Add a port spec; if the switch is running, start its service now.
        A spec whose link went away while it ran (a TAP device deleted) is
        opened anew instead.
        """
        existing = self.specs.get(text)
        if existing is not None:
            if not (IRevivablePortService.providedBy(existing) and existing.gone()):
                raise SpecError(text, "is already in use")
            existing.revive()
            return existing
        service = self.makePortService(text)
        self.specs[text] = service
        try:
            service.setServiceParent(self)
        except BaseException:
            del self.specs[text]
            if service.parent is self:
                service.disownServiceParent()
            raise
        return service

    def removePort(self, text: str) -> Any:
        """
        Stop and remove the service of a port spec.

        @return: a L{Deferred} firing when it has stopped.
        """
        service = self.specs.pop(text)
        return service.disownServiceParent()


def _removePidFile(path: str | None) -> None:
    """
    Remove the pid file at C{path} if it holds this process's pid.
    """
    if not path:
        return
    try:
        with open(path) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(path)
    except (OSError, ValueError):
        pass
