"""
vde_switch's debug events: ports, endpoints, MAC addresses and spanning
tree changes, pushed to the console sessions that asked for them.

Theory of operation
-------------------
Each event belongs to one of vde_switch's categories (C{port/+},
C{hash/-}, C{fstp/status}...), each with an octal tag.  A console session
subscribes with C{debug/add PREFIX} and from then on reads, between its
replies, lines such as C{3021 port/+ 01}: C{3}, the tag in three octal
digits, the category and the event's text, as vde_switch writes them (so
C{vdeterm} shows them as C{** DBG MSG}).  The switch reports events
through L{DebugEvents.emit}, and only after asking L{DebugEvents.wants}:
nobody listening costs one dictionary lookup at each event, and nothing at
all in the forwarding path (MAC table events are wired in only while
someone listens to them).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Protocol

from vtwisted import errors
from vtwisted.wire.ethernet import formatMac

#: Every category: path, tag and help, in vde_switch's order.
CATEGORIES: tuple[tuple[str, int, str], ...] = (
    ("hash/+", 0o11, "hash: new element"),
    ("hash/-", 0o12, "hash: discarded element"),
    ("fstp/status", 0o44, "fstp: status change"),
    ("fstp/root", 0o45, "fstp: rootswitch/port change"),
    ("fstp/+", 0o41, "fstp: port becomes active"),
    ("fstp/-", 0o42, "fstp: port becomes inactive"),
    ("port/+", 0o21, "new port"),
    ("port/-", 0o22, "closed port"),
    ("port/descr", 0o23, "set port description"),
    ("port/ep/+", 0o31, "new endpoint"),
    ("port/ep/-", 0o32, "closed endpoint"),
)
_TAGS = {path: tag for path, tag, _ in CATEGORIES}


class DebugListener(Protocol):
    """
    What a subscriber is: a console session, say.
    """

    def debugLine(self, line: str) -> None:
        """
        Write one event line (with its newline).
        """


class DebugEvents:
    """
    The subscriptions of one switch.

    @ivar onChange: called whenever subscriptions change, so the switch
        wires MAC table events in or out.
    """

    def __init__(self) -> None:
        self.listeners: dict[str, set[DebugListener]] = {path: set() for path in _TAGS}
        self.onChange: Callable[[], None] = _nothing

    def wants(self, category: str) -> bool:
        """
        Whether anyone listens to C{category}.
        """
        return bool(self.listeners[category])

    def emit(self, category: str, text: str) -> None:
        """
        Send one event to everyone listening to its category.
        """
        listeners = self.listeners[category]
        if not listeners:
            return
        line = f"3{_TAGS[category]:03o} {category} {text}\n"
        for listener in list(listeners):
            listener.debugLine(line)

    def linkAdded(self, number: int, link: Any, first: bool) -> None:
        """
        Report a link plugged into port C{number} (C{first}: it was inactive).
        """
        if first:
            self.emit("port/+", f"{number:02d}")
        if self.wants("port/ep/+") or self.wants("port/descr"):
            endpoint = f"Port {number:02d} FD {link.linkId:2d}"
            self.emit("port/ep/+", endpoint)
            self.emit("port/descr", f'{endpoint} -> "{link.description}"')

    def linkRemoved(self, number: int, link: Any, last: bool) -> None:
        """
        Report a link unplugged from port C{number} (C{last}: now inactive).
        """
        self.emit("port/ep/-", f"Port {number:02d} FD {link.linkId:2d}")
        if last:
            self.emit("port/-", f"{number:02d}")

    def wire(self, fdb: Any) -> None:
        """
        Have the MAC table C{fdb} report addresses learned and forgotten
        while someone listens to them, and not otherwise.
        """
        fdb.onLearned = self._learned if self.wants("hash/+") else None
        fdb.onForgotten = self._forgotten if self.wants("hash/-") else None

    def _learned(self, vid: int, mac: bytes, port: Any) -> None:
        self.emit("hash/+", f"{formatMac(mac)} VLAN {vid >> 8:02x}:{vid & 0xFF:02x} "
                            f"Port {port.number}")

    def _forgotten(self, vid: int, mac: bytes, port: Any) -> None:
        self.emit("hash/-", f"{formatMac(mac)} VLAN {vid >> 8:02x}:{vid & 0xFF:02x} "
                            f"Port {port.number}")

    def matching(self, prefix: str) -> list[str]:
        """
        The categories whose path starts with C{prefix}, in vde_switch's order.
        """
        return [path for path, _, _ in CATEGORIES if path.startswith(prefix)]

    def add(self, listener: DebugListener, prefix: str) -> None:
        """
        C{debug/add}: subscribe to every category starting with C{prefix}.

        @raise SwitchError: C{EINVAL} if none does, C{EEXIST} if all of them
            are subscribed already.
        """
        paths = self._paths(prefix)
        if all(listener in self.listeners[p] for p in paths):
            raise errors.exists(f"already listening to {prefix or 'everything'}")
        for path in paths:
            self.listeners[path].add(listener)
        self.onChange()

    def remove(self, listener: DebugListener, prefix: str) -> None:
        """
        C{debug/del}: unsubscribe from the categories starting with C{prefix}.

        @raise SwitchError: C{EINVAL} if no category starts so, C{ENOENT} if
            the listener has none of them.
        """
        paths = self._paths(prefix)
        if not any(listener in self.listeners[p] for p in paths):
            raise errors.SwitchError(errno.ENOENT, f"not listening to {prefix or 'anything'}")
        for path in paths:
            self.listeners[path].discard(listener)
        self.onChange()

    def forget(self, listener: Any) -> None:
        """
        The listener went away: drop all its subscriptions.
        """
        if any(listener in listeners for listeners in self.listeners.values()):
            for listeners in self.listeners.values():
                listeners.discard(listener)
            self.onChange()

    def rows(self, listener: Any, prefix: str) -> list[tuple[str, int, bool, str]]:
        """
        C{debug/list}: (path, tag, subscribed, help) of each category
        starting with C{prefix}.
        """
        return [(path, tag, listener in self.listeners[path], text)
                for path, tag, text in CATEGORIES if path.startswith(prefix)]

    def _paths(self, prefix: str) -> list[str]:
        paths = self.matching(prefix)
        if not paths:
            raise errors.invalid(f"no debug category starts with {prefix!r}")
        return paths


def _nothing() -> None:
    """
    The default L{DebugEvents.onChange}.
    """
