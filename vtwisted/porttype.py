"""
Declaring port types as plugins, cheaply.

A declaration names the module that does the work as a string, like
L{twisted.application.service.ServiceMaker}; the module is imported only
when a spec with this prefix is used, so scanning the plugins for
C{twistd vswitch --help} stays fast and a broken optional dependency of one
port type cannot stop the others.

The module must provide C{makeService(switch, spec, reactor)}.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin, getPlugins
from twisted.python.reflect import namedAny
from zope.interface import implementer

from vtwisted.interfaces import IPortType


@implementer(IPlugin, IPortType)
class PortType:
    """
    A port type whose implementation lives in another module.

    @ivar prefix: the spec prefix.
    @ivar module: the dotted name of the module with C{makeService}.
    @ivar description: one line for C{--help}.
    """

    def __init__(self, prefix: str, module: str, description: str) -> None:
        self.prefix = prefix
        self.module = module
        self.description = description

    def __repr__(self) -> str:
        return f"PortType({self.prefix!r}, {self.module!r})"

    def makeService(self, switch: Any, spec: Any, reactor: Any) -> Any:
        """
        Import the implementation and build the service for C{spec}.
        """
        return namedAny(self.module).makeService(switch, spec, reactor)


def portTypes() -> dict[str, IPortType]:
    """
    Every installed port type by prefix (the first found wins).
    """
    import vtwisted.plugins

    found: dict[str, IPortType] = {}
    for portType in getPlugins(IPortType, vtwisted.plugins):
        found.setdefault(portType.prefix, portType)
    return found
