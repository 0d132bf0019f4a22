"""
The text of vde_switch's management console, line by line.

Theory of operation
-------------------
Every function here turns records from L{vtwisted.operations} into the lines
vde_switch 2.3.2 prints for the same command, byte for byte (C{printf}
templates copied from C{port.c}, C{hash.c} and C{consmgmt.c}), without the
trailing newline; L{vtwisted.console} frames them.  Scripts and the stock
clients (C{vdeterm}, C{unixcmd}, libvdemgmt) parse these lines, so the
templates of commands vde_switch has never change; what vtwisted knows
beyond them (drops by reason, MTU, VLAN transparency, port specs, MAC table
statistics, the port types installed) is printed by commands of its own
(C{port/stats}, C{port/specs}, C{port/types}, C{hash/stats}).
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable, Sequence
from typing import Any

import twisted
import vtwisted
from vtwisted.fstptree import formatId
from vtwisted.status import (
    DataSocketInfo,
    FstpStatus,
    MacEntryStatus,
    MacTableInfo,
    PortStatus,
    SpecStatus,
    SwitchInfo,
    VlanStatus,
)
from vtwisted.switchport import DROP_REASONS
from vtwisted.wire.ethernet import formatMac

#: The version vde_switch's clients see: the protocol level we implement.
VDE_VERSION = "2.3.2"
BANNER_LINES = (
    f"VDE switch V.{VDE_VERSION}",
    f"vtwisted {vtwisted.__version__} (Twisted {twisted.__version__}) - MIT",
)
PROMPT = "\nvde$ "
DATA_HEADER = "0000 DATA END WITH '.'"
DATA_END = "."
END_OF_SESSION = "9999 END OF SESSION"


def banner() -> str:
    """
    What a new session reads before its first prompt.
    """
    return "\n".join(BANNER_LINES) + "\n"


def resultLine(code: int) -> str:
    """
    C{1000 Success} or C{1NNN <strerror>} with the Linux errno.
    """
    if code == 0:
        return "1000 Success"
    return f"1{code:03d} {os.strerror(code)}"


def userName(uid: int | None) -> str:
    """
    A user name as C{port/print} shows it (C{NONE} when unset).
    """
    if uid is None:
        return "NONE"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def groupName(gid: int | None) -> str:
    """
    A group name as C{port/print} shows it (C{NONE} when unset).
    """
    if gid is None:
        return "NONE"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# Switch


def showInfo(info: SwitchInfo) -> list[str]:
    """
    C{showinfo}: the banner, an empty line, pid/MAC/uptime, console sockets.
    """
    lines = [*BANNER_LINES, ""]
    lines.append(f"pid {info.pid} MAC {formatMac(info.mac)} uptime {info.uptime}")
    lines.extend(f"mgmt {path} perm 0{mode:03o}" for path, mode in info.consoles)
    return lines


def portShowInfo(info: SwitchInfo) -> list[str]:
    """
    C{port/showinfo}.
    """
    return [
        f"Numports={info.numPorts}",
        f"HUB={'true' if info.hub else 'false'}",
        "counters=true",
    ]


def dataSocketInfo(sockets: Iterable[DataSocketInfo]) -> list[str]:
    """
    C{ds/showinfo}: one pair of lines per VDE directory.
    """
    lines = []
    for ds in sockets:
        lines.append(f"ctl dir {ds.directory}")
        lines.append(f"std mode 0{ds.mode:03o}")
    return lines


# Ports


def portLines(status: PortStatus) -> list[str]:
    """
    C{port/print}: one port and its endpoints, newest first.
    """
    lines = [
        f"Port {status.number:04d} untagged_vlan={status.untaggedVid:04d} "
        f"{'' if status.active else 'IN'}ACTIVE - "
        f"{'' if status.allocatable else 'NOT '}Unnamed Allocatable",
        f" Current User: {userName(status.currentUser)} Access Control: "
        f"(User: {userName(status.user)} - Group: {groupName(status.group)})",
        f" IN:  pkts {status.inFrames:10d}          bytes {status.inBytes:20d}",
        f" OUT: pkts {status.outFrames:10d}          bytes {status.outBytes:20d}",
    ]
    for link in status.links:
        description = _oneLine(link.description) or "no endpoint description"
        lines.append(
            f"  -- endpoint ID {link.linkId:04d} module {link.module:<12s}: {description}"
        )
    if status.links and status.linkState:
        lines.append(f"  -- {_oneLine(status.linkState)}")
    if not status.links and status.reserved:
        lines.append(f"  -- {_oneLine(status.reserved)}")
    if not status.links and status.down:
        lines.append(f"  -- down: {_oneLine(status.down)}")
    return lines


def _oneLine(text: str, limit: int = 512) -> str:
    """
    C{text} without line breaks, cut to C{limit} characters: a description
    comes from a client, and a stray newline or a C{.} line would end a DATA
    block early.
    """
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned[:limit]


def portStats(status: PortStatus) -> list[str]:
    """
    C{port/stats}: what vtwisted counts beyond vde_switch, for one port.
    """
    tagged = ",".join(f"{v:04d}" for v in status.taggedVids) or "none"
    drops = " ".join(f"{reason}={status.drops.get(reason, 0)}" for reason in DROP_REASONS)
    lines = [
        f"Port {status.number:04d} mtu={status.mtu} untagged_vlan={status.untaggedVid:04d} "
        f"tagged_vlans={tagged} all_vlans={int(status.transparent)}",
        f" drops: {drops} total={sum(status.drops.values())}",
        f" spec: {_oneLine(status.spec) if status.spec else 'none'}",
    ]
    if status.impairment != "none":
        lines.append(f" impairment: {status.impairment}")
    return lines


def specLine(spec: SpecStatus) -> str:
    """
    C{port/specs}: one port spec and the ports its links are on; one that
    connects and has none says what it does and which port is reserved
    for it meanwhile (C{-- port 0003 reserved; dialling ...}); one whose
    peers connect says where it listens (C{-- listening on tcp
    127.0.0.1:43211}).
    """
    ports = ",".join(f"{n:04d}" for n in spec.ports) or "none"
    kind = "listening" if spec.listening else "single"
    origin = "runtime" if spec.runtime else "startup"
    notes = [f"port {spec.reserved:04d} reserved"] if spec.reserved is not None else []
    if spec.address:
        notes.append(f"listening on {_oneLine(spec.address)}")
    if spec.state:
        notes.append(_oneLine(spec.state))
    state = f" -- {'; '.join(notes)}" if notes else ""
    return f"Spec {_oneLine(spec.text)} ports={ports} {kind} {origin}{state}"


#: Where C{port/types} starts a description, as C{plugin/list} and
#: C{debug/list} start theirs.
PORT_TYPE_COLUMN = 23


def portTypeLines(types: Sequence[tuple[str, str]]) -> list[str]:
    """
    C{port/types}: a header as C{plugin/list}'s, then each port type's
    prefix and description (one line each), the descriptions' column moved
    past a prefix too long for it.
    """
    width = max([PORT_TYPE_COLUMN, *(len(prefix) + 1 for prefix, _ in types)])
    return [f"{left:<{width}}{right}" for left, right in [
        ("PREFIX", "DESCRIPTION"), ("------------", "-----------"),
        *((_oneLine(prefix), _oneLine(description)) for prefix, description in types)]]


def addedLines(text: str, ports: Sequence[int]) -> list[str]:
    """
    C{port/add}: the spec, then each port it plugged a link into.
    """
    return [f"Spec {_oneLine(text)}", *(f"Port {n:04d}" for n in ports)]


# VLANs


def vlanLines(status: VlanStatus, inactive: bool) -> list[str]:
    """
    C{vlan/print} (active members) or C{vlan/allprint} (all members).
    """
    lines = [f"VLAN {status.vid:04d}"]
    for m in status.members:
        state = "Discarding" if m.discarding else "Forwarding" if m.active else "Learning"
        active = f"active={int(m.active)}" if inactive else "active=1"
        lines.append(f" -- Port {m.port:04d} tagged={int(m.tagged)} {active} status={state}")
    return lines


# MAC table


def macLine(entry: MacEntryStatus) -> str:
    """
    C{hash/print} and C{hash/find}: one learned address.
    """
    return (
        f"Hash: {entry.bucket:04d} Addr: {formatMac(entry.mac)} VLAN {entry.vid:04d} "
        f"to port: {entry.port:03d}  age {entry.age} secs"
    )


def hashInfo(info: MacTableInfo) -> list[str]:
    """
    C{hash/showinfo}.
    """
    return [
        f"Hash size {info.buckets}",
        f"GC interval {info.gcInterval} secs",
        f"GC expire {info.expiry} secs",
        f"Min persistence {info.minPersistence} secs",
    ]


def hashStats(info: MacTableInfo) -> list[str]:
    """
    C{hash/stats}: the bounded table's figures.
    """
    return [
        f"Capacity {info.capacity}",
        f"Entries {info.size}",
        f"Evictions {info.evictions}",
        f"Moves {info.moves}",
        f"Moves refused {info.movesRefused}",
    ]


# Help


def helpLines(commands: Iterable[Any], prefix: str) -> list[str]:
    """
    C{help [prefix]}: the header, then every command whose path starts
    with C{prefix}, in table order.
    """
    row = "{:<18s} {:<15s} {}"
    lines = [
        row.format("COMMAND PATH", "SYNTAX", "HELP"),
        row.format("------------", "--------------", "------------"),
    ]
    lines.extend(
        row.format(c.path, c.syntax, c.help) for c in commands if c.path.startswith(prefix)
    )
    return lines


# Spanning tree


def fstpInfoLines(mac: bytes, priority: int, enabled: bool) -> list[str]:
    """
    C{fstp/showinfo}.
    """
    return [
        f"MAC {formatMac(mac)} Priority {priority} (0x{priority:x})",
        f"FSTP={'true' if enabled else 'false'}",
    ]


def fstpTreeLines(tree: FstpStatus) -> list[str]:
    """
    C{fstp/print}: one VLAN's tree, as vde_switch prints it.
    """
    root = "ROOTSWITCH" if tree.isRoot else ""
    disabled = "" if tree.enabled else "FSTP IS DISABLED"
    lines = [
        f"FST DATA VLAN {tree.vid:04d} {root} {disabled}",
        f" ++ root {formatId(tree.root)}",
        f" ++ designated {formatId(tree.designated)}",
        f" ++ rootport {tree.rootPort:04d} cost {tree.cost} age {tree.age} "
        f"bonusport {tree.bonusPort:04d} bonuscost {tree.bonusCost}",
    ]
    lines.extend(
        f" -- Port {p.port:04d} tagged={int(p.tagged)} portcost={p.cost} role={p.role}"
        for p in tree.ports
    )
    return lines
