"""
The MAC address table (forwarding database).

Theory of operation
-------------------
Each VLAN has its own dictionary from a 6-byte MAC address to a L{MacEntry}
(the port it was last seen on and when), so the forwarding path looks up a
plain C{bytes} key and never builds a tuple per frame.  The switch refreshes
an entry in place on frames from a known address (at least on the first of
each second: later ones may take a remembered route, see L{vtwisted.switch});
L{MacTable.learn} is only called when an address is new or has moved.

The table is bounded in total across VLANs: a flood of random source
addresses evicts the oldest learned entries of the same VLAN (insertion
order, which dictionaries keep) and counts the evictions, so memory stays
flat.  Entries older than C{expiry} seconds go at each L{MacTable.expire}
sweep.  An address seen on another port moves only if its entry is older than
C{minPersistence} seconds, as in vde_switch, so a looped frame cannot steal
an active station's address; or if the frame is an announcement (a RARP,
which is what QEMU sends for a guest that migrated, and what C{vhostuser:}
ports send when QEMU asks): the guest's traffic follows it at once.

Every change to where an address leads (a new entry, a move, an eviction,
expiry, a flush) calls L{MacTable.onChange}: the switch forgets its cached
routes then (see L{vtwisted.switch}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

DEFAULT_CAPACITY = 16384
DEFAULT_EXPIRY = 100
DEFAULT_MIN_PERSISTENCE = 3


class MacEntry:
    """
    Where one MAC address was last seen.

    @ivar port: the switch port (a L{vtwisted.switch.SwitchPort}).
    @ivar seen: the switch's coarse time, in seconds, of the last frame.
    """

    __slots__ = ("port", "seen")

    def __init__(self, port: Any, seen: int) -> None:
        self.port = port
        self.seen = seen


class MacTable:
    """
    Per-VLAN MAC tables with a shared capacity.

    @ivar tables: VLAN id to that VLAN's C{{mac: MacEntry}} dictionary.
    @ivar size: entries in all tables.
    @ivar evictions: entries pushed out because the table was full.
    @ivar moves: addresses that moved from one port to another.
    @ivar movesRefused: moves refused because the entry was too fresh.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        expiry: int = DEFAULT_EXPIRY,
        minPersistence: int = DEFAULT_MIN_PERSISTENCE,
    ) -> None:
        if capacity < 1:
            raise ValueError("MAC table capacity must be at least 1")
        self.capacity = capacity
        self.expiry = expiry
        self.minPersistence = minPersistence
        self.tables: dict[int, dict[bytes, MacEntry]] = {}
        self.size = 0
        self.evictions = 0
        self.moves = 0
        self.movesRefused = 0
        #: Called after every change to where an address leads.
        self.onChange: Callable[[], None] = _nothing
        #: While set, told (VLAN id, MAC, port) of each address learned and
        #: of each one forgotten (debug events).
        self.onLearned: Callable[[int, bytes, Any], None] | None = None
        self.onForgotten: Callable[[int, bytes, Any], None] | None = None

    def forVlan(self, vid: int) -> dict[bytes, MacEntry]:
        """
        The table of one VLAN, created empty if needed.
        """
        table = self.tables.get(vid)
        if table is None:
            table = self.tables[vid] = {}
        return table

    def learn(self, table: dict[bytes, MacEntry], mac: bytes, port: Any, now: int,
              announced: bool = False) -> None:
        """
        Record that C{mac} was seen on C{port}: a new address or a move
        (C{announced}: by an announcement, which moves it at once).
        """
        entry = table.get(mac)
        if entry is not None:
            if entry.port is port:
                entry.seen = now
            elif announced or now - entry.seen > self.minPersistence:
                entry.port = port
                entry.seen = now
                self.moves += 1
                self.onChange()
            else:
                self.movesRefused += 1
            return
        if self.size >= self.capacity:
            self._evictFor(table)
        table[mac] = MacEntry(port, now)
        self.size += 1
        self.onChange()
        if self.onLearned is not None:
            self.onLearned(self._vidOf(table), mac, port)

    def _vidOf(self, table: dict[bytes, MacEntry]) -> int:
        return next(vid for vid, t in self.tables.items() if t is table)

    def _forgetting(self, table: dict[bytes, MacEntry], macs: Iterable[bytes]) -> None:
        """
        Report C{macs} of C{table} as forgotten, if anyone listens.
        """
        if self.onForgotten is not None:
            vid = self._vidOf(table)
            for mac in macs:
                self.onForgotten(vid, mac, table[mac].port)

    def _evictFor(self, table: dict[bytes, MacEntry]) -> None:
        """
        Make room for one entry in C{table}, preferring its own oldest entry.
        """
        victim = table if table else max(self.tables.values(), key=len)
        oldest = next(iter(victim))
        self._forgetting(victim, (oldest,))
        del victim[oldest]
        self.size -= 1
        self.evictions += 1

    def lookup(self, vid: int, mac: bytes) -> MacEntry | None:
        """
        The entry for C{mac} in VLAN C{vid}, if any.
        """
        table = self.tables.get(vid)
        return None if table is None else table.get(mac)

    def expire(self, now: int) -> int:
        """
        Remove entries not refreshed for more than C{expiry} seconds.

        @return: how many were removed.
        """
        limit = now - self.expiry
        removed = 0
        for table in self.tables.values():
            old = [mac for mac, entry in table.items() if entry.seen < limit]
            self._forgetting(table, old)
            for mac in old:
                del table[mac]
            removed += len(old)
        self.size -= removed
        if removed:
            self.onChange()
        return removed

    def flush(self, port: Any = None, vid: int | None = None) -> int:
        """
        Remove the entries of C{port} (all ports if L{None}) in VLAN C{vid}
        (all VLANs if L{None}).

        @return: how many were removed.
        """
        removed = 0
        tables = self.tables.values() if vid is None else [self.forVlan(vid)]
        for table in tables:
            if port is None:
                self._forgetting(table, list(table))
                removed += len(table)
                table.clear()
                continue
            gone = [mac for mac, entry in table.items() if entry.port is port]
            self._forgetting(table, gone)
            for mac in gone:
                del table[mac]
            removed += len(gone)
        self.size -= removed
        if removed:
            self.onChange()
        return removed

    def entries(self) -> Iterator[tuple[int, bytes, MacEntry]]:
        """
        Every entry as C{(vid, mac, entry)}.
        """
        for vid, table in sorted(self.tables.items()):
            for mac, entry in table.items():
                yield vid, mac, entry


def bucketOf(mac: bytes, vid: int, size: int) -> int:
    """
    The bucket vde_switch's hash table would put C{mac} in, which its
    C{hash/print} shows as C{Hash: NNNN}.  Only used for display.
    """
    x = int.from_bytes(mac[0:4], "little")
    x += (int.from_bytes(mac[4:6], "little") + (vid << 16)) << 32
    mask = (1 << 64) - 1
    x &= mask
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & mask
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & mask
    return x & (size - 1)


def _nothing() -> None:
    """
    The default L{MacTable.onChange}.
    """
