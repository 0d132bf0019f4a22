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
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from vtwisted.errors import SwitchError, startFailure
from vtwisted.interfaces import IRevivablePortService
from vtwisted.porttype import portTypes
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch

if TYPE_CHECKING:
    from vtwisted.operations import SwitchOperations

log = Logger()


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
        #: The children that started (privileged or not), while starting.
        self._started: list[IService] = []

    def _tick(self) -> None:
        self.switch.tick(int(self.clock.seconds()))

    #: Whether a service that cannot start ends the program with its
    #: message and no traceback (C{twistd vswitch}), instead of raising.
    exitOnFailure = False
    #: The pid file to remove then (twistd removes it only when it sees
    #: the error).
    pidFile: str | None = None
    #: C{twistd}'s options, whose C{statusPipe} (a daemonising twistd's)
    #: then takes the message to the waiting parent, which prints it.
    runner: Any = None
    #: The management console's mode and group (C{--mgmt-mode},
    #: C{--mgmt-group}), which the data sockets of port 0 take too, as
    #: vde_switch gives them (even with no console).
    consoleMode = 0o600
    consoleGroup: int | None = None
    #: The pid file's device and inode, if it held this process's pid when
    #: privileged start began.
    _pidFileIdentity: tuple[int, int] | None = None

    def privilegedStartService(self) -> None:
        # twistd wrote the pid file (0600) before this; after --uid the
        # switch may no longer read it, so note now whether it is ours.
        self._pidFileIdentity = _pidFileIdentity(self.pidFile)
        Service.privilegedStartService(self)
        with self._starting() as done:
            for service in self:
                service.privilegedStartService()
                done.append(service)

    def startService(self) -> None:
        self.startedAt = self.clock.seconds()
        self._tick()
        Service.startService(self)
        with self._starting() as done:
            for service in self:
                service.startService()
                done.append(service)
        self._started = []

    @contextmanager
    def _starting(self) -> Iterator[list[IService]]:
        """
        Start services, noting each one that starts in the list yielded.
        If one fails, stop those (and any started before), so that a switch
        that cannot start leaves none of their files behind, and turn an
        error that says what failed (a spec, a path and an errno) into the
        program's exit with that message, if L{exitOnFailure}.
        """
        done: list[IService] = []
        try:
            yield done
        except BaseException as e:
            failing = next((s for s in self if s not in done), None)
            spec = next((text for text, s in self.specs.items() if s is failing), None)
            self._stopStarted(done)
            ported = spec is not None and isinstance(e, Exception)
            if not self.exitOnFailure or not (
                    ported or isinstance(e, (OSError, SpecError, SwitchError))):
                raise
            if ported and not isinstance(e, (OSError, SpecError, SwitchError)):
                log.failure("port spec {spec}: starting failed", spec=spec)
            message = startFailure(e, spec)
            _removePidFile(self.pidFile, self._pidFileIdentity)
            line = f"vswitch: {message}"
            if _waitingParent(self.runner) is not None:
                # The parent exits as soon as it is told, and whoever ran
                # twistd may read the log then: write it there first.
                log.error("{line}", line=line)
                _tellParent(self.runner, line)
                raise SystemExit(1) from None
            _tellTerminal(self.runner, line)
            raise SystemExit(line) from None  # printed to the log by twistd
        self._started.extend(s for s in done if s not in self._started)

    def _stopStarted(self, justStarted: list[IService]) -> None:
        """
        Stop the children that started, last first, but the one that just
        failed (which cleans up after itself), and run at once what their
        stopping left for the reactor (a Unix socket file is removed on its
        next turn, which a switch that cannot start never has).
        """
        failing = next((s for s in self if s not in justStarted), None)
        started = [s for s in self if s is not failing
                   and (s in self._started or s in justStarted)]
        self._started = []
        self.running = 0
        for service in reversed(started):
            if service is self._timer and not service.running:
                continue  # it has nothing to stop before its startService
            try:
                service.stopService()
            except Exception:
                log.failure("{service} failed to stop", service=service)
        runDue = getattr(self.reactor, "runUntilCurrent", None)
        if runDue is not None and not getattr(self.reactor, "running", True):
            for _ in range(5):  # what a stop scheduled may schedule again
                runDue()

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
        if not self.running:
            self._refuseSharedNumber(text, service)
        self.specs[text] = service
        try:
            service.setServiceParent(self)
        except BaseException:
            del self.specs[text]
            if service.parent is self:
                service.disownServiceParent()
            raise
        return service

    def _refuseSharedNumber(self, text: str, service: Any) -> None:
        """
        Refuse a spec, before the switch starts, that asks for the port
        number (C{port=N}) another spec asks for: each would be refused it
        only once every spec had opened its files and devices, which the
        failed start would leave behind (a capture file made or emptied).
        Once the switch runs, the port's state says (L{PortOptions.checkPort}).

        @raise SpecError: it does.
        """
        number = _askedNumber(service)
        if number is None:
            return
        for other, each in self.specs.items():
            if _askedNumber(each) == number:
                raise SpecError(text, f"asks for port {number}, as {other} does: "
                                      "give each spec a port of its own")

    def removePort(self, text: str) -> Any:
        """
        Stop and remove the service of a port spec.

        @return: a L{Deferred} firing when it has stopped.
        """
        service = self.specs.pop(text)
        return service.disownServiceParent()


def _waitingParent(runner: Any) -> int | None:
    """
    The pipe to the parent a daemonising C{twistd} left waiting for the
    start's outcome, if there is one.
    """
    return runner.get("statusPipe") if runner is not None else None


def _tellParent(runner: Any, line: str) -> bool:
    """
    Hand C{line} (without its C{vswitch:}) to the parent a daemonising
    C{twistd} left waiting for the start's outcome, which prints it (its
    first 98 bytes) on its standard error and exits with status 1 at once:
    what the parent's caller should find (the log's line, no files left)
    must be done before.

    @return: whether there is such a parent.
    """
    pipe = _waitingParent(runner)
    if pipe is None:
        return False
    runner["statusPipe"] = None
    message = line.removeprefix("vswitch: ").encode("ascii", "backslashreplace")
    try:
        os.write(pipe, b"1 " + message[:98])
        os.close(pipe)
    except OSError:
        pass
    return True


def _tellTerminal(runner: Any, line: str) -> None:
    """
    Write C{line} to C{twistd -n}'s own standard error as well when its log
    goes to a file (twistd sends what the program writes there to the log).
    """
    logFile = runner.get("logfile") if runner is not None else None
    if logFile and logFile != "-" and sys.__stderr__ is not None:
        with suppress(OSError, ValueError):
            sys.__stderr__.write(line + "\n")
            sys.__stderr__.flush()


def _pidFileIdentity(path: str | None) -> tuple[int, int] | None:
    """
    The device and inode of the pid file at C{path} if it holds this
    process's pid, else C{None}.
    """
    if not path:
        return None
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return None
            status = os.fstat(f.fileno())
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def _removePidFile(path: str | None, identity: tuple[int, int] | None = None) -> None:
    """
    Remove the pid file at C{path} if it holds this process's pid, or is
    the file C{identity} names (noted while the switch could read it: twistd
    writes it 0600 as root, and C{--uid} may have taken that away since).
    """
    if not path:
        return
    try:
        status = os.stat(path)
        mine = identity is not None and (status.st_dev, status.st_ino) == identity
        if not mine:
            mine = _pidFileIdentity(path) is not None
        if mine:
            os.unlink(path)
    except OSError:
        pass


def _askedNumber(service: Any) -> int | None:
    """
    The port number C{service}'s spec asks for (C{port=N}), if any.
    """
    number = getattr(getattr(service, "options", None), "number", None)
    return number if isinstance(number, int) else None
