"""
The MAC table operations of L{vtwisted.operations.SwitchOperations}: what the
console's C{hash/*} menu and the manhole's C{ops} call.

Theory of operation
-------------------
The switch's table (L{vtwisted.fdb}) is a dictionary with a capacity, not
vde_switch's hash of buckets; L{MacTableOperations} only computes the bucket
each address would have in a table of C{macBuckets} (C{hash/setsize}), so
C{hash/print} lists addresses in vde_switch's order.  Settings are checked
as vde_switch checks them, except that negative times are refused.
"""

from __future__ import annotations

import errno
from typing import Any

from vtwisted import errors
from vtwisted.errors import SwitchError
from vtwisted.fdb import bucketOf
from vtwisted.status import MacEntryStatus, MacTableInfo
from vtwisted.wire.ethernet import formatMac

#: vde_switch's default hash size; only used to show C{Hash: NNNN} buckets.
DEFAULT_BUCKETS = 128


class MacTableOperations:
    """
    MAC table settings, statistics and entries.

    @ivar macBuckets: the hash size C{hash/print} buckets are computed for.
    """

    switch: Any
    macBuckets: int

    def macTableInfo(self) -> MacTableInfo:
        """
        The MAC table's settings and statistics.
        """
        fdb = self.switch.fdb
        return MacTableInfo(
            buckets=self.macBuckets,
            gcInterval=self.switch.gcInterval,
            expiry=fdb.expiry,
            minPersistence=fdb.minPersistence,
            capacity=fdb.capacity,
            size=fdb.size,
            evictions=fdb.evictions,
            moves=fdb.moves,
            movesRefused=fdb.movesRefused,
        )

    def setMacBuckets(self, size: int) -> None:
        """
        vde_switch's C{hash/setsize}: rounds up to a power of two and empties
        the table.  Here it only changes the buckets C{hash/print} shows; the
        table's capacity is C{--mac-table-size}.
        """
        if size <= 0:
            raise errors.invalid(f"hash size {size} must be positive")
        self.macBuckets = 1 << (size - 1).bit_length()
        self.switch.fdb.flush()

    def setMacExpiry(self, seconds: int) -> None:
        """
        Seconds an address lives without traffic.  Negative values, which
        vde_switch takes, are refused.
        """
        if seconds < 0:
            raise errors.invalid(f"expiry {seconds} must not be negative")
        self.switch.fdb.expiry = seconds

    def setGcInterval(self, seconds: int) -> None:
        """
        Sweep the MAC table for expired entries every C{seconds} (at least
        every second: vde_switch takes any number here).
        """
        self.switch.gcInterval = seconds

    def setMinPersistence(self, seconds: int) -> None:
        """
        Seconds before a known address may move to another port.
        """
        if seconds < 0:
            raise errors.invalid(f"minimum persistence {seconds} must not be negative")
        self.switch.fdb.minPersistence = seconds

    def macEntries(self) -> list[MacEntryStatus]:
        """
        Every learned address, in bucket order, newest first in a bucket.
        """
        rows = [self._entry(vid, mac, entry) for vid, mac, entry in self.switch.fdb.entries()]
        ordered = sorted(enumerate(rows), key=lambda pair: (pair[1].bucket, -pair[0]))
        return [row for _, row in ordered]

    def findMac(self, mac: bytes, vid: int = 0) -> MacEntryStatus:
        """
        Where C{mac} was learned in VLAN C{vid} (C{ENODEV} if nowhere).
        """
        entry = self.switch.fdb.lookup(vid, mac)
        if entry is None:
            raise SwitchError(errno.ENODEV, f"{formatMac(mac)} is not known in VLAN {vid}")
        return self._entry(vid, mac, entry)

    def _entry(self, vid: int, mac: bytes, entry: Any) -> MacEntryStatus:
        return MacEntryStatus(
            bucket=bucketOf(mac, vid, self.macBuckets),
            mac=mac,
            vid=vid,
            port=entry.port.number,
            age=max(0, self.switch.now - entry.seen),
        )
