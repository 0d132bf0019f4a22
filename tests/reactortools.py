"""
Waiting inside tests that run in the real reactor (pytest-twisted).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.task import deferLater


async def sleep(seconds: float) -> None:
    """
    Let the reactor run for C{seconds}.
    """
    await deferLater(reactor, seconds, lambda: None)


async def until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "it") -> None:
    """
    Let the reactor run until C{predicate()} is true, or fail after C{timeout}.
    """
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
