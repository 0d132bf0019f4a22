"""
What the management operations return: plain, frozen snapshots.

Theory of operation
-------------------
L{vtwisted.operations.SwitchOperations} never hands out live switch objects
(a L{vtwisted.switchport.SwitchPort} changes under a caller's feet and must
not be changed behind the switch's back); it returns these records, which
the console formats and a manhole user can print, compare or keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LinkStatus:
    """
    One endpoint of a port, as C{port/print} shows it.
    """

    linkId: int
    module: str
    description: str


@dataclass(frozen=True)
class PortStatus:
    """
    A snapshot of one port: configuration, counters and endpoints (newest
    first).  C{untaggedVid} is L{NOVLAN} when the port has no untagged VLAN.
    """

    number: int
    untaggedVid: int
    active: bool
    allocatable: bool
    currentUser: int | None
    user: int | None
    group: int | None
    inFrames: int
    inBytes: int
    outFrames: int
    outBytes: int
    drops: dict[str, int]
    mtu: int
    taggedVids: tuple[int, ...]
    transparent: bool
    links: tuple[LinkStatus, ...]
    spec: str | None
    impairment: str = "none"
    #: While inactive: what the spec that had it does (a cable dialling).
    down: str = ""
    #: While inactive: who holds it (C{reserved for SPEC until it runs again}).
    reserved: str = ""
    #: While active: what its spec says of its link (a command run again).
    linkState: str = ""


@dataclass(frozen=True)
class VlanMember:
    """
    One member port of a VLAN.
    """

    port: int
    tagged: bool
    active: bool
    discarding: bool = False


@dataclass(frozen=True)
class VlanStatus:
    """
    A VLAN and its members in port order.
    """

    vid: int
    members: tuple[VlanMember, ...]
    implicit: bool = False


@dataclass(frozen=True)
class MacEntryStatus:
    """
    One learned address; C{bucket} is where vde_switch's hash would keep it.
    """

    bucket: int
    mac: bytes
    vid: int
    port: int
    age: int


@dataclass(frozen=True)
class MacTableInfo:
    """
    Settings and statistics of the MAC table.
    """

    buckets: int
    gcInterval: int
    expiry: int
    minPersistence: int
    capacity: int
    size: int
    evictions: int
    moves: int
    movesRefused: int


@dataclass(frozen=True)
class SwitchInfo:
    """
    What C{showinfo} and C{port/showinfo} report.
    """

    pid: int
    mac: bytes
    uptime: int
    numPorts: int
    hub: bool
    consoles: tuple[tuple[str, int], ...] = field(default=())


@dataclass(frozen=True)
class DataSocketInfo:
    """
    One VDE directory, as C{ds/showinfo} reports it.
    """

    directory: str
    mode: int


@dataclass(frozen=True)
class SpecStatus:
    """
    A port spec, the ports its links are on, whether it listens for any
    number of clients and whether it was added at run time; for a spec
    that connects and has no link now, what it is doing about it
    (C{dialling ENDPOINT, N failures, last: WHY}) and the port reserved
    for it meanwhile, if any; for one whose peers connect, where it
    listens (C{tcp 127.0.0.1:43211}: the port the system chose for
    C{tcp:0}).
    """

    text: str
    ports: tuple[int, ...]
    listening: bool
    runtime: bool
    state: str = ""
    reserved: int | None = None
    address: str = ""


@dataclass(frozen=True)
class FstpPortStatus:
    """
    One member of a VLAN's spanning tree, as C{fstp/print} shows it.
    """

    port: int
    tagged: bool
    cost: int
    role: str


@dataclass(frozen=True)
class FstpStatus:
    """
    The spanning tree of one VLAN: root, path to it, members.
    """

    vid: int
    enabled: bool
    isRoot: bool
    root: bytes
    designated: bytes
    rootPort: int
    cost: int
    age: int
    bonusPort: int
    bonusCost: int
    ports: tuple[FstpPortStatus, ...]
