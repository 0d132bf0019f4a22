"""
C{twistd vswitch}: command-line options and the service they describe.

Theory of operation
-------------------
L{Options} collects repeated C{--port SPEC} options (C{--sock DIR} is
shorthand for C{--port vde:DIR}) and the switch settings, and checks every
spec in C{postOptions} by building the service once without a reactor: port
types only validate and remember in C{makeService} and touch the world in
C{startService}, so a typo fails before anything is created.
L{buildService} is the same construction for C{.tac} files and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.python import usage

from vtwisted.errors import SwitchError
from vtwisted.fdb import DEFAULT_CAPACITY, DEFAULT_EXPIRY, MacTable
from vtwisted.porttype import portTypes
from vtwisted.service import SwitchService
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import DEFAULT_NUMPORTS, Switch


def _defaultSockSpec() -> str:
    from vtwisted.ports.vde import defaultDirectory

    return "vde:" + defaultDirectory().replace(":", "\\:")


def buildService(
    reactor: Any,
    ports: Sequence[str] = (),
    numPorts: int = DEFAULT_NUMPORTS,
    hub: bool = False,
    macTtl: int = DEFAULT_EXPIRY,
    macTableSize: int = DEFAULT_CAPACITY,
    defaultSock: bool = True,
) -> SwitchService:
    """
    A switch service with the given port specs.

    @param ports: port specs such as C{"vde:/tmp/vde.ctl"} or C{"tap:tap0"}.
    @param defaultSock: add vde_switch's default directory when no C{vde:}
        spec is given.
    @raise SpecError: a spec is wrong.
    @raise SwitchError: a switch setting is out of range.
    """
    switch = Switch(numPorts, hub, MacTable(macTableSize, macTtl))
    service = SwitchService(switch, reactor)
    specs = list(ports)
    if defaultSock and not any(PortSpec(text).prefix == "vde" for text in specs):
        specs.insert(0, _defaultSockSpec())
    for text in specs:
        service.addPort(text)
    return service


def _positive(name: str) -> Any:
    def convert(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} needs a whole number, not {value!r}") from None
        if number < 1:
            raise usage.UsageError(f"--{name} must be at least 1")
        return number

    return convert


class Options(usage.Options):
    """
    Options of C{twistd vswitch}.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a Virtual Distributed Ethernet switch. With no options it listens "
        "where vde_switch would (/var/run/vde.ctl as root, else /tmp/vde.ctl), "
        "so vde_plug and qemu -netdev vde find it with no arguments."
    )
    optFlags = [
        ["hub", "x", "Hub mode: flood every frame to every port."],
    ]
    optParameters = [
        ["sock", "s", None, "VDE switch directory (shorthand for --port vde:DIR)."],
        ["numports", "n", DEFAULT_NUMPORTS, "Number of ports.", _positive("numports")],
        ["macaddr-ttl", None, DEFAULT_EXPIRY, "Seconds a learned MAC address lives.",
         _positive("macaddr-ttl")],
        ["mac-table-size", None, DEFAULT_CAPACITY,
         "Most MAC addresses remembered; the oldest are evicted beyond.",
         _positive("mac-table-size")],
        ["mode", "m", None, "Octal mode of the default or --sock control socket (0600)."],
        ["dirmode", None, None, "Octal mode of the --sock directory (02700)."],
        ["group", "g", None, "Group of the --sock directory and sockets."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []

    def opt_port(self, spec: str) -> None:
        """
        Add a port, e.g. vde:/tmp/sw1 or tap:tap0 (may repeat; types below).
        """
        self["ports"].append(spec)

    def opt_tap(self, name: str) -> None:
        """
        Add a TAP device (shorthand for --port tap:NAME).
        """
        self["ports"].append("tap:" + name)

    opt_t = opt_tap

    def getUsage(self, width: int | None = None) -> str:
        text = super().getUsage(width)
        lines = ["", "Port types (--port PREFIX:ARGS):"]
        for prefix, portType in sorted(portTypes().items()):
            lines.append(f"  {prefix:<8} {portType.description}")
        return text + "\n".join(lines) + "\n"

    def sockSpec(self) -> str | None:
        """
        The C{vde:} spec that C{--sock}, C{--mode}, C{--dirmode} and
        C{--group} describe, if any.
        """
        extras = [
            f"{key}={self[key]}" for key in ("mode", "dirmode", "group") if self[key] is not None
        ]
        if self["sock"] is None and not extras:
            return None
        if self["sock"] is None:
            base = _defaultSockSpec()
        else:
            base = "vde:" + self["sock"].replace("\\", "\\\\").replace(":", "\\:")
        return ":".join([base, *extras])

    def allPorts(self) -> list[str]:
        """
        Every port spec, C{--sock} first.
        """
        sock = self.sockSpec()
        return ([sock] if sock else []) + list(self["ports"])

    def postOptions(self) -> None:
        try:
            self.build(reactor=None)
        except (SpecError, SwitchError) as e:
            raise usage.UsageError(str(e)) from None

    def build(self, reactor: Any) -> SwitchService:
        """
        The service these options describe.
        """
        return buildService(
            reactor,
            self.allPorts(),
            numPorts=self["numports"],
            hub=bool(self["hub"]),
            macTtl=self["macaddr-ttl"],
            macTableSize=self["mac-table-size"],
        )


def makeService(options: Options) -> SwitchService:
    """
    The C{twistd vswitch} service.
    """
    from twisted.internet import reactor

    return options.build(reactor)
