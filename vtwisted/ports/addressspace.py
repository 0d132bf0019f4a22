"""
How much of the switch's address space the memory that C{vhostuser:}
front-ends share with it takes, and how much it may.

Theory of operation
-------------------
A front-end's guest memory (and its dirty log) is mapped whole into the
switch: the pages each region is in (L{vtwisted.ports.sharedmemory}),
which is what is counted here.  A sparse memfd of terabytes costs the
front-end nothing (no page of it is ever touched), but mapped it takes as
many terabytes of the switch's own address space (128 TiB on x86-64), and a few such tables
would leave the switch none: every guest after them refused, every
allocation the switch makes failing.  So before anything is mapped
L{AddressSpace.reserve} counts it against two limits: all front-ends
together may take half of the 128 TiB (L{MAX_SHARED}), and those of one
user other than root and the switch's (who could stop the switch anyway)
a sixteenth (L{MAX_SHARED_PER_USER}), so that one stranger cannot keep
the others' guests out either.  The reservation is given back when the
memory is unmapped.
"""

from __future__ import annotations

from collections.abc import Callable

from vtwisted.ports.virtqueue import VirtqueueError

#: The most address space the memory of all front-ends takes (64 TiB).
MAX_SHARED = 1 << 46
#: The most the front-ends of one untrusted user take (8 TiB, more than the
#: memory of any machine QEMU runs on).
MAX_SHARED_PER_USER = 1 << 43


def _tib(size: int) -> str:
    return f"{size / (1 << 40):.4g} TiB"


class AddressSpace:
    """
    The switch's address space shared with front-ends: what is in use, in
    all and by each untrusted user.
    """

    def __init__(self, limit: int = MAX_SHARED, perUser: int = MAX_SHARED_PER_USER) -> None:
        self.limit = limit
        self.perUser = perUser
        self.used = 0
        self.byUser: dict[int, int] = {}

    def reserve(self, size: int, user: int | None, what: str) -> Callable[[], None]:
        """
        Count C{size} bytes about to be mapped for C{what}, from a front-end
        of untrusted C{user} (None: root or the switch's user, counted in
        the total only).

        @return: what gives them back (once; later calls do nothing).
        @raise VirtqueueError: a limit would be passed.
        """
        mine = self.byUser.get(user, 0) if user is not None else 0
        if user is not None and mine + size > self.perUser:
            raise VirtqueueError(f"{what} ({size} bytes) would take the front-ends of uid "
                                 f"{user} past {_tib(self.perUser)} of the switch's address "
                                 f"space ({_tib(mine)} in use)")
        if self.used + size > self.limit:
            raise VirtqueueError(f"{what} ({size} bytes) would take the front-ends past "
                                 f"{_tib(self.limit)} of the switch's address space "
                                 f"({_tib(self.used)} in use)")
        self.used += size
        if user is not None:
            self.byUser[user] = mine + size
        released: list[bool] = []

        def release() -> None:
            if released:
                return
            released.append(True)
            self.used -= size
            if user is not None:
                left = self.byUser.pop(user) - size
                if left:
                    self.byUser[user] = left

        return release


#: The switch's: address space is the process's, whatever port maps.
SHARED = AddressSpace()
