"""
Declaring port types as plugins, cheaply.

A declaration names the module that does the work as a string, like
L{twisted.application.service.ServiceMaker}; the module is imported only
when a spec with this prefix is used, so scanning the plugins for
C{twistd vswitch --help} stays fast and a broken optional dependency of one
port type cannot stop the others: a spec of that type fails with a
L{SpecError} naming the spec, the module and the import error.

The module must provide C{makeService(switch, spec, reactor)}.

Declarations are found in L{vtwisted.plugins} (a C{vtwisted/plugins/}
directory of any entry of C{sys.path}) and in L{twisted.plugins}, Twisted's
own plugin package.  The scan is remembered while the modules in those
directories are unchanged: a start with many specs reads Twisted's
C{dropin.cache} once (and, where it cannot be written, warns once; a
declaration that fails to import is logged once), yet a plugin installed
while the switch runs is found by the next C{port/add}.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from vtwisted.interfaces import IPortType

log = Logger()


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

        @raise vtwisted.spec.SpecError: the implementation cannot be
            imported (a dependency missing, say), or the spec is wrong.
        """
        try:
            implementation = importlib.import_module(self.module)
        except Exception as e:
            raise spec.error(f"port type {self.prefix!r} cannot be loaded: module "
                             f"{self.module}: {type(e).__name__}: {e}") from None
        return implementation.makeService(switch, spec, reactor)


def portTypes() -> dict[str, IPortType]:
    """
    Every installed port type by prefix.  Where two declare one prefix,
    vtwisted's own wins, else the one whose implementation module sorts
    first, and the clash is logged.
    """
    import twisted.plugins
    import vtwisted.plugins

    packages = (vtwisted.plugins, twisted.plugins)
    key = tuple(_directoryStamp(path) for package in packages for path in package.__path__)
    if _scanned and _scanned[0] == key:
        return dict(_scanned[1])
    candidates = [portType for package in packages
                  for portType in getPlugins(IPortType, package)]
    candidates.sort(key=_precedence)
    found: dict[str, IPortType] = {}
    for portType in candidates:
        first = found.setdefault(portType.prefix, portType)
        if first is not portType and _precedence(first) != _precedence(portType):
            log.warn("port type {prefix!r} is declared twice: {used} is used, not {other}",
                     prefix=portType.prefix, used=first, other=portType)
    _scanned[:] = [key, found]
    return dict(found)


#: The last scan: the plugin directories' stamps and what it found.
_scanned: list[Any] = []


def _directoryStamp(path: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """
    A plugin directory and the names and modification times of its modules
    (a module added, removed or replaced changes it; Twisted rewriting its
    C{dropin.cache} there does not).
    """
    try:
        with os.scandir(path) as entries:
            return path, tuple(sorted((entry.name, entry.stat().st_mtime_ns)
                                      for entry in entries if entry.name.endswith(".py")))
    except OSError:
        return path, ()


def _precedence(portType: IPortType) -> tuple[bool, str]:
    """
    The sort key of a declaration: vtwisted's own first, then by the
    implementation module's name (its C{repr} for other providers).
    """
    module = getattr(portType, "module", None)
    name = module if isinstance(module, str) else repr(portType)
    return (not name.startswith("vtwisted."), name)
