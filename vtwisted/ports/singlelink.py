"""
The service of a port type with one link at most (a TAP device, a datagram
socket, a slirp router, a capture file): bound when the service starts
(before twistd drops privileges), plugged into one port while it runs.  A
spec that asks for a port by number (C{port=N}) is refused it, if it must
be, before anything is bound, so it leaves no file behind.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service

from vtwisted.interfaces import ILink
from vtwisted.portoptions import PortOptions


class SingleLinkService(Service):
    """
    A port service whose sockets are bound in C{privilegedStartService} (or
    at start) and whose one link is plugged in while it runs.

    Subclasses call this constructor and implement L{bind} (which sets
    L{link}) and L{bound}.
    """

    listening = False
    link: Any = None

    def __init__(self, switch: Any, reactor: Any, options: PortOptions | None,
                 spec: str) -> None:
        """
        @param options: the common port options (none: the defaults).
        @param spec: the spec, for the port's description and messages.
        """
        self.switch = switch
        self.reactor = reactor
        self.options = options or PortOptions()
        self.spec = spec

    def bound(self) -> bool:
        """
        Whether the link's resources (socket, device, file) are open.
        """
        raise NotImplementedError

    def bind(self) -> None:
        """
        Open them and make L{link}.
        """
        raise NotImplementedError

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if not self.bound():
            self.checkedBind()

    def checkedBind(self) -> None:
        """
        L{bind}, once the port asked for (C{port=N}) may be had: a spec
        refused it opens nothing (makes or empties no capture file, binds
        no socket).

        @raise vtwisted.errors.SwitchError: the port cannot be had.
        """
        self.options.checkPort(self.switch, self.spec)
        self.bind()

    def startService(self) -> None:
        if not self.bound():
            self.checkedBind()
        super().startService()
        assert self.link is not None
        self.options.plugIn(self.switch, self.link, self.spec)

    def gone(self) -> bool:
        """
        Whether the service runs but its link went away (a TAP device
        deleted, say), so that adding its spec again should open it anew.
        """
        return bool(self.running) and not self.bound()

    def revive(self) -> None:
        """
        Open a link that went away again and plug it in (see L{gone}).

        @raise OSError: it cannot be opened (the message says why).
        """
        self.checkedBind()
        assert self.link is not None
        self.options.plugIn(self.switch, self.link, self.spec)

    def currentLinks(self) -> list[ILink]:
        """
        The link, while plugged in.
        """
        link = self.link
        return [link] if link is not None and link.port is not None else []

    def unplug(self) -> None:
        """
        Take the link out of its port.
        """
        link = self.link
        if link is not None and link.port is not None:
            self.switch.detach(link.port, link)
            link.port = None
