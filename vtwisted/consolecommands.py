"""
The console's commands: a declarative table of (path, syntax, help, handler).

Theory of operation
-------------------
L{COMMANDS} lists every command in the order vde_switch 2.3.2 registers the
ones it also has (its C{help} order), with vtwisted's own commands at the end
of their menu.  A row without a handler is a menu header: C{help} shows it,
nothing runs it.  C{help} is generated from this table, so a command exists
exactly when it is documented.

A handler takes the L{CommandContext} and the text after the command path
(blanks skipped) and returns the lines of its DATA block (for rows with
C{data=True}) or nothing, or raises L{vtwisted.errors.SwitchError}.
Arguments are read the way vde_switch reads them: C{atoi} for its numeric
commands (C{port/create abc} means port 0) and C{sscanf("%i %i")} for its
two-number commands (so C{0x10} and C{010} are hexadecimal and octal), with
the same C{EINVAL} when a number is missing.  The handlers only parse and
format; every action is a call to L{vtwisted.operations.SwitchOperations}.
"""

from __future__ import annotations

import grp
import pwd
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vtwisted import consoleformat as fmt
from vtwisted import errors
from vtwisted.consoleargs import atoi, parseMac, scanIntegers

if TYPE_CHECKING:
    from vtwisted.operations import SwitchOperations



class EndSession(Exception):
    """
    Raised by C{logout} and C{shutdown} to end the session.

    @ivar shutdown: whether the switch should stop too.
    """

    def __init__(self, shutdown: bool) -> None:
        super().__init__("shutdown" if shutdown else "logout")
        self.shutdown = shutdown


class CommandContext:
    """
    What a handler may use: the operations and the command interpreter (for
    C{help} and C{load}).

    @ivar depth: how many C{load} scripts deep this command runs.
    @ivar session: the console session that typed it (C{debug/add} writes
        events there), if any.
    @ivar script: the output of the C{load} script it is in, if any
        (L{vtwisted.console.ScriptOutput}).
    """

    def __init__(self, ops: SwitchOperations, interpreter: Any, depth: int = 0,
                 session: Any = None, script: Any = None) -> None:
        self.ops = ops
        self.interpreter = interpreter
        self.depth = depth
        self.session = session
        self.script = script


Handler = Callable[[CommandContext, str], "list[str] | None"]


@dataclass(frozen=True)
class Command:
    """
    One row of the command table.

    @ivar handler: L{None} for a menu header.
    @ivar data: the reply is a DATA block (C{0000 DATA END WITH '.'}).
    @ivar vde: vde_switch has this command; if not, a failure also prints
        its reason inside the DATA block.
    """

    path: str
    syntax: str
    help: str
    handler: Handler | None = None
    data: bool = False
    vde: bool = True


def _optionalNumber(arg: str) -> int | None:
    return atoi(arg) if arg else None


def _idOf(name: str, lookup: Callable[[str], int]) -> int | None:
    """
    A user or group for C{port/setuser}/C{setgroup}: a name, a number, or
    C{NONE}/C{ANY} for no restriction.
    """
    try:
        return lookup(name)
    except KeyError:
        pass
    if name[:1].isascii() and name[:1].isdigit():  # C's isdigit: not "²" (atoi: 0, root)
        return atoi(name)
    if name in ("NONE", "ANY"):
        return None
    raise errors.invalid(f"no such user or group {name!r}")


def _numberAndName(arg: str) -> tuple[int, str]:
    """
    C{N name}: a number, then whatever follows the first word.
    """
    (number,) = scanIntegers(arg, 1)
    _, _, name = arg.lstrip(" ").partition(" ")
    name = name.lstrip(" ")
    if not name:
        raise errors.invalid(f"expected a port and a name in {arg!r}")
    return number, name


# Handlers: general


def _help(ctx: CommandContext, arg: str) -> list[str]:
    return fmt.helpLines(ctx.interpreter.commands, arg)


def _logout(ctx: CommandContext, arg: str) -> None:
    raise EndSession(shutdown=False)


def _shutdown(ctx: CommandContext, arg: str) -> None:
    raise EndSession(shutdown=True)


def _showInfo(ctx: CommandContext, arg: str) -> list[str]:
    return fmt.showInfo(ctx.ops.info())


def _load(ctx: CommandContext, arg: str) -> list[str]:
    errors.requireTrusted(ctx.session, "load")
    return ctx.interpreter.runScript(arg, ctx.depth + 1, echo=True, session=ctx.session,
                                     within=ctx.script)


def _dsShowInfo(ctx: CommandContext, arg: str) -> list[str]:
    return fmt.dataSocketInfo(ctx.ops.dataSockets())


# Handlers: MAC table


def _hashShowInfo(ctx: CommandContext, arg: str) -> list[str]:
    return fmt.hashInfo(ctx.ops.macTableInfo())


def _hashStats(ctx: CommandContext, arg: str) -> list[str]:
    return fmt.hashStats(ctx.ops.macTableInfo())


def _hashSetSize(ctx: CommandContext, arg: str) -> None:
    ctx.ops.setMacBuckets(atoi(arg))


def _hashSetExpire(ctx: CommandContext, arg: str) -> None:
    ctx.ops.setMacExpiry(atoi(arg))


def _hashSetGcInterval(ctx: CommandContext, arg: str) -> None:
    ctx.ops.setGcInterval(atoi(arg))


def _hashSetMinPersistence(ctx: CommandContext, arg: str) -> None:
    ctx.ops.setMinPersistence(atoi(arg))


def _hashPrint(ctx: CommandContext, arg: str) -> list[str]:
    return [fmt.macLine(entry) for entry in ctx.ops.macEntries()]


def _hashFind(ctx: CommandContext, arg: str) -> list[str]:
    mac, vlan = parseMac(arg)
    return [fmt.macLine(ctx.ops.findMac(mac, vlan))]


# Handlers: ports


def _portShowInfo(ctx: CommandContext, arg: str) -> list[str]:
    return fmt.portShowInfo(ctx.ops.info())


def _setNumPorts(ctx: CommandContext, arg: str) -> None:
    ctx.ops.setNumPorts(atoi(arg))


def _setHub(ctx: CommandContext, arg: str) -> None:
    ctx.ops.setHub(atoi(arg) != 0)


def _setVlan(ctx: CommandContext, arg: str) -> None:
    port, vlan = scanIntegers(arg, 2)
    ctx.ops.setVlan(port, vlan)


def _impair(ctx: CommandContext, arg: str) -> None:
    number, rest = [*arg.split(None, 1), "", ""][:2]
    ctx.ops.setImpairment(atoi(number), rest)


def _createAuto(ctx: CommandContext, arg: str) -> list[str]:
    return [f"Port {ctx.ops.createAnyPort():04d}"]


def _create(ctx: CommandContext, arg: str) -> None:
    ctx.ops.createPort(atoi(arg))


def _remove(ctx: CommandContext, arg: str) -> None:
    ctx.ops.removePort(atoi(arg))


def _allocatable(ctx: CommandContext, arg: str) -> None:
    port, value = scanIntegers(arg, 2)
    ctx.ops.setAllocatable(port, value != 0)


def _setUser(ctx: CommandContext, arg: str) -> None:
    port, name = _numberAndName(arg)
    ctx.ops.setPortUser(port, _idOf(name, lambda n: pwd.getpwnam(n).pw_uid))


def _setGroup(ctx: CommandContext, arg: str) -> None:
    port, name = _numberAndName(arg)
    ctx.ops.setPortGroup(port, _idOf(name, lambda n: grp.getgrnam(n).gr_gid))


def _epClose(ctx: CommandContext, arg: str) -> None:
    port, linkId = scanIntegers(arg, 2)
    ctx.ops.closeEndpoint(port, linkId)


def _resetCounter(ctx: CommandContext, arg: str) -> None:
    ctx.ops.resetCounters(_optionalNumber(arg))


def _printPorts(inactive: bool) -> Handler:
    def handler(ctx: CommandContext, arg: str) -> list[str]:
        lines: list[str] = []
        for status in ctx.ops.ports(_optionalNumber(arg), inactive):
            lines.extend(fmt.portLines(status))
        return lines

    return handler


def _portStats(ctx: CommandContext, arg: str) -> list[str]:
    lines: list[str] = []
    for status in ctx.ops.ports(_optionalNumber(arg), inactive=True):
        lines.extend(fmt.portStats(status))
    return lines


def _portSpecs(ctx: CommandContext, arg: str) -> list[str]:
    return [fmt.specLine(spec) for spec in ctx.ops.specs()]


def _portTypes(ctx: CommandContext, arg: str) -> list[str]:
    return fmt.portTypeLines(ctx.ops.portTypes())


def _portAdd(ctx: CommandContext, arg: str) -> list[str]:
    if not arg:
        raise errors.invalid("port/add needs a port spec, e.g. tap:tap0")
    errors.requireTrusted(ctx.session, "port/add")
    return fmt.addedLines(arg, ctx.ops.addPort(arg))


_NUMBER = re.compile(r"[+-]?[0-9]+")


def _portDel(ctx: CommandContext, arg: str) -> list[str]:
    if not arg:
        raise errors.invalid("port/del needs a port number or a port spec")
    if _NUMBER.fullmatch(arg):
        number = atoi(arg)
        spec = ctx.ops.deletePort(number)
        return [f"Port {number:04d}"] + ([f"Spec {spec}"] if spec else [])
    ctx.ops.removeSpec(arg)
    return [f"Spec {arg}"]


# Handlers: VLANs


def _vlanCreate(ctx: CommandContext, arg: str) -> None:
    ctx.ops.createVlan(atoi(arg))


def _vlanRemove(ctx: CommandContext, arg: str) -> None:
    ctx.ops.removeVlan(atoi(arg))


def _vlanAddPort(ctx: CommandContext, arg: str) -> None:
    vlan, port = scanIntegers(arg, 2)
    ctx.ops.addTagged(vlan, port)


def _vlanDelPort(ctx: CommandContext, arg: str) -> None:
    vlan, port = scanIntegers(arg, 2)
    ctx.ops.removeTagged(vlan, port)


def _printVlans(inactive: bool) -> Handler:
    def handler(ctx: CommandContext, arg: str) -> list[str]:
        vid = _optionalNumber(arg)
        if inactive and vid == 0:
            # vde_switch's vlan/allprint takes 1 to 4093 only.
            raise errors.invalid("vlan/allprint takes a VLAN from 1")
        lines: list[str] = []
        for status in ctx.ops.vlans(vid, inactive):
            lines.extend(fmt.vlanLines(status, inactive))
        return lines

    return handler


def _slirp() -> Any:
    from vtwisted.slirp import commands

    return commands


def _vxlan() -> Any:
    from vtwisted.ports import vxlan

    return vxlan


def _debug() -> Any:
    from vtwisted import debugcommands

    return debugcommands


def _fstp() -> Any:
    from vtwisted import fstpcommands

    return fstpcommands


def _menu(path: str, title: str) -> Command:
    return Command(path, "============", title)


#: Every command, in vde_switch's registration (help) order.
COMMANDS: Sequence[Command] = (
    _menu("ds", "DATA SOCKET MENU"),
    Command("ds/showinfo", "", "show ds info", _dsShowInfo, data=True),
    Command("help", "[arg]", "Help (limited to arg when specified)", _help, data=True),
    Command("logout", "", "logout from this mgmt terminal", _logout),
    Command("shutdown", "", "shutdown of the switch", _shutdown),
    Command("showinfo", "", "show switch version and info", _showInfo, data=True),
    Command("load", "path", "load a configuration script", _load),
    _menu("debug", "DEBUG MENU"),
    Command("debug/list", "", "list debug categories", lambda c, a: _debug().debugList(c, a),
            data=True),
    Command("debug/add", "dbgpath", "enable debug info for a given category",
            lambda c, a: _debug().debugAdd(c, a)),
    Command("debug/del", "dbgpath", "disable debug info for a given category",
            lambda c, a: _debug().debugDel(c, a)),
    _menu("plugin", "PLUGINS MENU"),
    Command("plugin/list", "", "list plugins", lambda c, a: _debug().pluginList(c, a),
            data=True),
    Command("plugin/add", "library", "load a plugin", lambda c, a: _debug().pluginAdd(c, a)),
    Command("plugin/del", "name", "unload a plugin", lambda c, a: _debug().pluginDel(c, a)),
    _menu("hash", "HASH TABLE MENU"),
    Command("hash/showinfo", "", "show hash info", _hashShowInfo, data=True),
    Command("hash/setsize", "N", "change hash size", _hashSetSize),
    Command("hash/setgcint", "N", "change garbage collector interval", _hashSetGcInterval),
    Command("hash/setexpire", "N", "change hash entries expire time", _hashSetExpire),
    Command("hash/setminper", "N", "minimum persistence time", _hashSetMinPersistence),
    Command("hash/print", "", "print the hash table", _hashPrint, data=True),
    Command("hash/find", "MAC [VLAN]", "MAC lookup", _hashFind, data=True),
    Command("hash/stats", "", "MAC table capacity, entries, evictions and moves",
            _hashStats, data=True, vde=False),
    _menu("fstp", "FAST SPANNING TREE MENU"),
    Command("fstp/showinfo", "", "show fstp info", lambda c, a: _fstp().showInfo(c, a), data=True),
    Command("fstp/setfstp", "0/1", "Fast spanning tree protocol 1=ON 0=OFF",
            lambda c, a: _fstp().setFstp(c, a), data=True),
    Command("fstp/setedge", "VLAN PORT 1/0", "Define an edge port for a vlan 1=Y 0=N",
            lambda c, a: _fstp().setEdge(c, a)),
    Command("fstp/bonus", "VLAN PORT COST", "set the port bonus for a vlan",
            lambda c, a: _fstp().setBonus(c, a)),
    Command("fstp/print", "[N]", "print fst data for the defined vlan",
            lambda c, a: _fstp().printTrees(c, a), data=True),
    _menu("port", "PORT STATUS MENU"),
    Command("port/showinfo", "", "show port info", _portShowInfo, data=True),
    Command("port/setnumports", "N", "set the number of ports", _setNumPorts),
    Command("port/sethub", "0/1", "1=HUB 0=switch", _setHub),
    Command("port/setvlan", "N VLAN", "set port VLAN (untagged)", _setVlan),
    Command("port/createauto", "",
            "create a port with an automatically allocated id (inactive|notallocatable)",
            _createAuto, data=True),
    Command("port/create", "N", "create the port N (inactive|notallocatable)", _create),
    Command("port/remove", "N", "remove the port N", _remove),
    Command("port/allocatable", "N 0/1", "Is the port allocatable as unnamed? 1=Y 0=N",
            _allocatable),
    Command("port/setuser", "N user", "access control: set user", _setUser),
    Command("port/setgroup", "N user", "access control: set group", _setGroup),
    Command("port/epclose", "N ID", "remove the endpoint port N/id ID", _epClose),
    Command("port/resetcounter", "[N]", "reset the port (N) counters", _resetCounter),
    Command("port/print", "[N]", "print the port/endpoint table", _printPorts(False),
            data=True),
    Command("port/allprint", "[N]",
            "print the port/endpoint table (including inactive port)", _printPorts(True),
            data=True),
    Command("port/stats", "[N]", "print MTU, VLANs, drops by reason and spec of ports",
            _portStats, data=True, vde=False),
    Command("port/impair", "N OPTS|off",
            "impair frames leaving port N (delay=MS loss=% ...), arriving (indelay=MS ...)",
            _impair, vde=False),
    Command("port/specs", "", "list the port specs (--port and port/add) and their ports",
            _portSpecs, data=True, vde=False),
    Command("port/types", "", "list the port types --port and port/add take (PREFIX:ARGS)",
            _portTypes, data=True, vde=False),
    Command("port/add", "SPEC", "add and start a port spec as --port does (tap:NAME, vde:DIR)",
            _portAdd, data=True, vde=False),
    Command("port/del", "N|SPEC",
            "remove port N, closing its endpoints (a spec that brought only N, like a TAP, "
            "goes too); or remove SPEC",
            _portDel, data=True, vde=False),
    _menu("vlan", "VLAN MANAGEMENT MENU"),
    Command("vlan/create", "N", "create the VLAN with tag N", _vlanCreate),
    Command("vlan/remove", "N", "remove the VLAN with tag N", _vlanRemove),
    Command("vlan/addport", "N PORT", "add port to the vlan N (tagged)", _vlanAddPort),
    Command("vlan/delport", "N PORT", "delete port from the vlan N (tagged)", _vlanDelPort),
    Command("vlan/print", "[N]", "print the list of defined vlan", _printVlans(False),
            data=True),
    Command("vlan/allprint", "[N]", "print the list of defined vlan (including inactive port)",
            _printVlans(True), data=True),
    Command("slirp", "============", "SLIRP (USER-MODE NAT) MENU", vde=False),
    Command("slirp/print", "", "print each slirp port's addresses, leases, forwards and flows",
            lambda ctx, arg: _slirp().printSlirp(ctx, arg), data=True, vde=False),
    Command("slirp/hostfwd_add", "[PORT] RULE",
            "forward a host port into the LAN (QEMU syntax: tcp:127.0.0.1:2222-10.0.2.15:22)",
            lambda ctx, arg: _slirp().hostfwdAdd(ctx, arg), data=True, vde=False),
    Command("slirp/hostfwd_remove", "[PORT] RULE", "remove a host port forward",
            lambda ctx, arg: _slirp().hostfwdRemove(ctx, arg), data=True, vde=False),
    Command("vxlan", "============", "VXLAN MENU", vde=False),
    Command("vxlan/print", "", "print each VXLAN port's network and the endpoint of each MAC",
            lambda ctx, arg: _vxlan().printVxlan(ctx, arg), data=True, vde=False),
)


def findCommand(commands: Sequence[Command], line: str) -> Command | None:
    """
    The first command whose path is a prefix of C{line}, as vde_switch
    dispatches (C{hash/showinfoXYZ} runs C{hash/showinfo}).
    """
    for command in commands:
        if command.handler is not None and line.startswith(command.path):
            return command
    return None
