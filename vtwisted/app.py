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

Management (C{--mgmt}, C{--rcfile}, C{--manhole}) is added after the port
specs, so the rc file runs once every port service has started.

A port that cannot start ends C{twistd} (daemonising or not) with one line
and status 1, the ports started before it stopped
(L{SwitchService.exitOnFailure}).  A C{.tac} file's switch does the same:
L{buildService} run while C{twistd} loads the file finds C{twistd}'s
options (L{twistdOptions}: the pid file, and a daemon's pipe to its waiting
parent) and sets the switch up as C{twistd vswitch} does.

C{SIGHUP} is ignored (logged once), as by Debian's C{vde_switch}: left to
its default it killed the switch on the spot, without removing its socket
files or closing its clients.  C{SIGTERM} and C{SIGINT} stop it cleanly.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from vtwisted.compatoptions import VdeSwitchCompatibility, longOnly
from vtwisted.consoleservice import DEFAULT_MODE, addManagement, defaultRcFile, groupId
from vtwisted.errors import SwitchError
from vtwisted.fdb import DEFAULT_CAPACITY, DEFAULT_EXPIRY, MacTable
from vtwisted.porttype import portTypes
from vtwisted.service import SwitchService
from vtwisted.spec import PortSpec, SpecError, escape
from vtwisted.switch import DEFAULT_NUMPORTS, Switch

log = Logger()


def _defaultSockSpec() -> str:
    from vtwisted.ports.vdefiles import defaultDirectory

    return "vde:" + escape(defaultDirectory())


def buildService(
    reactor: Any,
    ports: Sequence[str] = (),
    numPorts: int = DEFAULT_NUMPORTS,
    hub: bool = False,
    macTtl: int = DEFAULT_EXPIRY,
    macTableSize: int = DEFAULT_CAPACITY,
    defaultSock: bool = True,
    mgmt: str | None = None,
    mgmtMode: int = DEFAULT_MODE,
    mgmtGroup: int | None = None,
    rcfile: str | None = None,
    stdin: bool = False,
    manhole: str | None = None,
    manholeKeys: str | None = None,
    manholePasswords: str | None = None,
    manholeHostKey: str | None = None,
    fstp: bool = False,
    priority: int | None = None,
    mac: bytes | None = None,
    hashSize: int | None = None,
) -> SwitchService:
    """
    A switch service with the given port specs.

    @param ports: port specs such as C{"vde:/tmp/vde.ctl"} or C{"tap:tap0"}.
    @param defaultSock: add vde_switch's default directory when no C{vde:}
        spec is given.
    @param mgmt: the management console's socket path (vde_switch's C{-M}).
    @param rcfile: console commands to run at start (vde_switch's C{-f}).
    @param stdin: read console commands from standard input too.
    @param fstp: run FSTP (vde_switch's C{-F}), with this C{priority}.
    @param mac: the switch's address (vde_switch's C{--macaddr}).
    @param hashSize: vde_switch's C{--hashsize}, the buckets C{hash/print}
        shows (rounded up to a power of two).
    @param manhole: the SSH manhole's endpoint; C{manholeKeys} (an
        C{authorized_keys} file) or C{manholePasswords} must be given too.
    @raise SpecError: a spec is wrong.
    @raise SwitchError: a switch setting is out of range.
    @raise ValueError: a management setting is wrong.
    """
    switch = Switch(numPorts, hub, MacTable(macTableSize, macTtl), mac=mac)
    if priority is not None:
        switch.spanningTree.setPriority(priority)
    if fstp:
        if hub:
            raise ValueError("--fstp cannot run in hub mode (--hub)")
        switch.spanningTree.setEnabled(True)
    service = SwitchService(switch, reactor)
    if hashSize is not None:
        service.operations.setMacBuckets(hashSize)
    runner = twistdOptions()
    if runner is not None:
        exitOnFailure(service, runner)
    specs = list(ports)
    if defaultSock and not any(PortSpec(text).prefix == "vde" for text in specs):
        specs.insert(0, _defaultSockSpec())
    for text in specs:
        service.addPort(text)
    addManagement(service, mgmt, mgmtMode, mgmtGroup, rcfile, stdin)
    if manhole is not None:
        from vtwisted.manhole import addManhole

        addManhole(service, manhole, manholeKeys, manholePasswords, manholeHostKey)
    elif manholeKeys or manholePasswords or manholeHostKey:
        raise ValueError("--manhole-keys, --manhole-passwords and --manhole-host-key "
                         "need --manhole ENDPOINT")
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


def _priority(value: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFFFF:
        raise usage.UsageError(f"--priority needs a number from 0 to 65535, not {value!r}")
    return number


def _macAddress(value: str) -> bytes:
    parts = value.split(":")
    try:
        mac = bytes(int(part, 16) for part in parts)
    except ValueError:
        mac = b""
    if len(parts) != 6 or len(mac) != 6 or mac[0] & 1:
        raise usage.UsageError(f"--macaddr needs a unicast address like 02:00:00:00:00:01, "
                               f"not {value!r}")
    return mac


def _octalMode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise usage.UsageError(f"--mgmt-mode needs an octal mode, not {value!r}") from None
    if not 0 <= mode <= 0o777:
        raise usage.UsageError(f"--mgmt-mode {value} is not a permission mode (0 to 0777)")
    return mode


#: The narrowest column a port type's description is wrapped to, however
#: long the longest prefix is.
MIN_DESCRIPTION_WIDTH = 30


def listPortTypes(descriptions: dict[str, str], width: int) -> list[str]:
    """
    The lines that list port types for C{--help}, as Twisted lists options
    (L{twisted.python.usage.docMakeChunks}): each prefix, then its
    description in a column that starts past the longest prefix, wrapped
    to C{width} (at word boundaries only: a spec's syntax is not cut).

    @param descriptions: each prefix's one-line description.
    """
    column = 2 + max(map(len, descriptions), default=0) + 2
    filler = " " * column
    lines = []
    for prefix, description in sorted(descriptions.items()):
        wrapped = textwrap.wrap(description, max(width - column, MIN_DESCRIPTION_WIDTH),
                                break_long_words=False, break_on_hyphens=False) or [""]
        lines.append(f"  {prefix:<{column - 4}}  {wrapped[0]}".rstrip())
        lines += [filler + line for line in wrapped[1:]]
    return lines


class Options(VdeSwitchCompatibility, usage.Options):
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
        ["fstp", "F", "Run vde_switch's fast spanning tree (FSTP), which breaks loops."],
        ["stdin", None, "Also read console commands from standard input, as vde_switch "
         "does when not a daemon; the end of standard input stops the switch."],
    ]
    optParameters = [
        ["sock", "s", None, "VDE switch directory (shorthand for --port vde:DIR)."],
        ["numports", "n", DEFAULT_NUMPORTS, "Number of ports.", _positive("numports")],
        ["macaddr-ttl", None, DEFAULT_EXPIRY, "Seconds a learned MAC address lives.",
         _positive("macaddr-ttl")],
        ["mac-table-size", None, DEFAULT_CAPACITY,
         "Most MAC addresses remembered; the oldest are evicted beyond.",
         _positive("mac-table-size")],
        ["priority", None, None, "FSTP priority of this switch, 0 to 65535 (32768).",
         _priority],
        ["macaddr", None, None, "The switch's MAC address (BPDUs, showinfo).", _macAddress],
        ["hashsize", None, None, "vde_switch's hash size: the buckets hash/print shows, "
         "rounded up to a power of two (128); the capacity is --mac-table-size.",
         _positive("hashsize")],
        ["mode", "m", None, "Octal mode of the default or --sock control socket (0600)."],
        ["dirmode", None, None, "Octal mode of the --sock directory (02700)."],
        ["group", "g", None, "Group of the --sock directory and sockets."],
        ["mgmt", "M", None,
         "Management console socket (vde_switch -M): unixterm, vdeterm, unixcmd connect here."],
        ["mgmt-mode", None, None, "Octal mode of the --mgmt socket (0600).", _octalMode],
        ["mgmt-group", None, None, "Group of the --mgmt socket."],
        ["rcfile", "f", None,
         "Console commands run at start, output discarded (vde_switch -f; by default "
         "~/.vde2/vde_switch.rc or /etc/vde2/vde_switch.rc if there is one)."],
        ["manhole", None, None,
         "SSH manhole endpoint: a port (loopback only) or e.g. tcp:2222:interface=127.0.0.1."],
        ["manhole-keys", None, None, "OpenSSH authorized_keys file for the manhole."],
        ["manhole-passwords", None, None,
         "Also accept passwords from this user:password file (mode 0600)."],
        ["manhole-host-key", None, None,
         "Manhole host key, generated if missing "
         "(default $XDG_STATE_HOME/vtwisted/manhole_host_key)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []

    opt_h = usage.Options.opt_help
    opt_v = usage.Options.opt_version

    def parseOptions(self, options: Any = None) -> None:
        """
        Read single-dash long options too, as vde_switch does (C{-sock DIR}).
        """
        if options is not None:
            options = longOnly(options, self.shortOpt, self.longOpt)
        try:
            super().parseOptions(options)
        except usage.UsageError:
            self.wrongSetting = True
            raise

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

    def opt_mgmtmode(self, mode: str) -> None:
        """
        vde_switch's spelling of --mgmt-mode.
        """
        self["mgmt-mode"] = _octalMode(mode)

    def opt_mgmtgroup(self, group: str) -> None:
        """
        vde_switch's spelling of --mgmt-group.
        """
        self["mgmt-group"] = group

    def getUsage(self, width: int | None = None) -> str:
        """
        The usage text with the port types, or only where to find it once an
        option or setting was wrong (a port spec, say): C{twistd} prints the
        usage before the error, which would end 60 lines of options.
        """
        if getattr(self, "wrongSetting", False):
            return "twistd vswitch --help lists the options.\n"
        if not width:
            width = int(os.environ.get("COLUMNS", "80"))
        text = super().getUsage(width)
        descriptions = {prefix: portType.description for prefix, portType in portTypes().items()}
        lines = ["", "Port types (--port PREFIX:ARGS):", *listPortTypes(descriptions, width)]
        lines += ["", "Every spec but pcap: also takes vlan=N|all, trunk=10,20 and mtu=N, and the",
                  "impairments delay=MS, jitter=MS, loss=%, burst=N, dup=%, noise=BITS/MB,",
                  "rate=KBIT, queue=MS for frames leaving the port, and the same with in in",
                  "front (indelay=MS, inloss=%, ...) for frames arriving at it."]
        return text + "\n".join(lines) + "\n"

    def sockSpec(self) -> str | None:
        """
        The C{vde:} spec that C{--sock}, C{--mode}, C{--dirmode} and
        C{--group} describe, if any.
        """
        extras = [
            f"{key}={escape(self[key])}" for key in ("mode", "dirmode", "group")
            if self[key] is not None
        ]
        if self["sock"] is None and not extras:
            return None
        if self["sock"] is None:
            base = _defaultSockSpec()
        else:
            base = "vde:" + escape(self["sock"])
        return ":".join([base, *extras])

    def allPorts(self) -> list[str]:
        """
        Every port spec, C{--sock} first.
        """
        sock = self.sockSpec()
        return ([sock] if sock else []) + list(self["ports"])

    def postOptions(self) -> None:
        parent = getattr(self, "parent", None)
        if self["stdin"] and parent is not None and not parent.get("nodaemon"):
            raise usage.UsageError("--stdin needs twistd -n: a daemon has no standard input, "
                                   "and its end would stop the switch at once")
        try:
            self.build(reactor=None)
        except (SpecError, SwitchError, ValueError) as e:
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
            fstp=bool(self["fstp"]),
            priority=self["priority"],
            mac=self["macaddr"],
            hashSize=self["hashsize"],
            macTtl=self["macaddr-ttl"],
            macTableSize=self["mac-table-size"],
            mgmt=self["mgmt"],
            mgmtMode=DEFAULT_MODE if self["mgmt-mode"] is None else self["mgmt-mode"],
            mgmtGroup=None if self["mgmt-group"] is None else groupId(self["mgmt-group"]),
            rcfile=self["rcfile"] if self["rcfile"] is not None else defaultRcFile(),
            stdin=bool(self["stdin"]),
            manhole=self["manhole"],
            manholeKeys=self["manhole-keys"],
            manholePasswords=self["manhole-passwords"],
            manholeHostKey=self["manhole-host-key"],
        )


def makeService(options: Options) -> SwitchService:
    """
    The C{twistd vswitch} service.
    """
    from twisted.internet import reactor

    service = options.build(reactor)
    exitOnFailure(service, getattr(options, "parent", None) or {})
    ignoreHangups(reactor)
    return service


def exitOnFailure(service: SwitchService, runner: Any) -> None:
    """
    Make a port that cannot start end the program with one line, not
    C{twistd}'s traceback; a daemonising C{twistd}'s waiting parent gets it
    too, and the pid file goes.

    @param runner: C{twistd}'s options (a mapping with C{pidfile} and, in a
        daemon, C{statusPipe}).
    """
    service.exitOnFailure = True
    service.pidFile = runner.get("pidfile")
    service.runner = runner
    if service.reactor is not None:
        stopOnEarlyTerm(service.reactor)


def stopOnEarlyTerm(reactor: Any) -> None:
    """
    Make a C{SIGTERM} that comes before the event loop runs stop the switch
    cleanly once it does, as one after would (unless something already
    handles C{SIGTERM}).  A daemonising C{twistd}'s parent returns, and the
    sockets listen, a few milliseconds before the loop installs its own
    handler, which then replaces this one: a script that stopped the switch
    as soon as it had started killed it as C{SIGKILL} would, leaving its pid
    file and sockets behind.
    """
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def early(number: int, frame: Any) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, early)


def twistdOptions() -> Any:
    """
    The options of the C{twistd} loading the caller (a C{.tac} file), found
    on the stack as its application runner's C{config}; None when not run
    by C{twistd} (a test, a script).
    """
    from twisted.application.app import ApplicationRunner

    frame = sys._getframe(1)
    while frame is not None:
        runner = frame.f_locals.get("self")
        if isinstance(runner, ApplicationRunner):
            return runner.config
        frame = frame.f_back  # type: ignore[assignment]
    return None


def ignoreHangups(reactor: Any) -> None:
    """
    Ignore C{SIGHUP} as Debian's C{vde_switch} does, logging the first one,
    unless something already handles or ignores it (C{nohup}).
    """
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL:
        return
    told: list[bool] = []

    def hangup(number: int, frame: Any) -> None:
        if not told:
            told.append(True)
            reactor.callFromThread(
                log.info, "SIGHUP ignored, as by vde_switch; SIGTERM stops the switch"
            )

    signal.signal(signal.SIGHUP, hangup)
