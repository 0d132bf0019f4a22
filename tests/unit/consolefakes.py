"""
Fakes for the management tests: a switch service whose port specs are
in-memory services, built without a reactor.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import Clock
from zope.interface import implementer

from vtwisted.interfaces import IPortService
from vtwisted.operations import SwitchOperations
from vtwisted.service import SwitchService
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, plug

#: What the console writes after each reply.
PROMPT = b"\nvde$ "


@implementer(IPortService)
class SingleLinkService(Service):
    """
    A spec that brings one port of its own, as a TAP device does.
    """

    listening = False
    spec = "single"

    def currentLinks(self) -> list[Any]:
        return [] if self.link is None else [self.link]

    def __init__(self, switch: Switch, description: str) -> None:
        self.switch = switch
        self.description = description
        self.link: FakeLink | None = None

    def startService(self) -> None:
        super().startService()
        self.link = FakeLink(self.description, linkId=0)
        plug(self.switch, self.link)

    def stopService(self) -> None:
        super().stopService()
        if self.link is not None:
            self.link.close()
            self.link = None


@implementer(IPortService)
class ListeningService(Service):
    """
    A spec that serves any number of clients, as a VDE directory does.
    """

    listening = True
    spec = "listen"

    def currentLinks(self) -> list[Any]:
        return list(self.links)

    def __init__(self, switch: Switch) -> None:
        self.switch = switch
        self.links: list[FakeLink] = []

    def connect(self, description: str = "client", linkId: int = 7) -> FakeLink:
        link = FakeLink(description, linkId=linkId, uid=0)
        plug(self.switch, link)
        self.links.append(link)
        return link

    def stopService(self) -> None:
        super().stopService()
        for link in self.links:
            link.close()
        self.links = []


class BrokenService(Service):
    """
    A spec whose start fails, as a busy TAP device's does.
    """

    def startService(self) -> None:
        raise OSError(errno.EBUSY, "broken:x: cannot open: Device or resource busy")


class FakeSwitchService(SwitchService):
    """
    A switch service whose C{single:}, C{listen:} and C{broken:} specs are
    the fakes above; other prefixes are real port types.
    """

    def makePortService(self, text: str) -> Any:
        prefix = text.partition(":")[0]
        if prefix == "single":
            return SingleLinkService(self.switch, text)
        if prefix == "listen":
            return ListeningService(self.switch)
        if prefix == "broken":
            return BrokenService()
        return super().makePortService(text)


def makeOperations(numPorts: int = 32) -> tuple[SwitchOperations, FakeSwitchService, list[int]]:
    """
    A started fake switch service and its operations; the list records
    calls to stop the switch.
    """
    clock = Clock()
    clock.advance(1000)
    service = FakeSwitchService(Switch(numPorts), reactor=clock, clock=clock)
    service.startService()
    stopped: list[int] = []
    mac = bytes.fromhex("00ff01020304")
    ops = SwitchOperations(service, stop=lambda: stopped.append(1), mac=mac)
    service._operations = ops
    return ops, service, stopped
