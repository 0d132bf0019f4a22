"""
A SIGTERM before twistd's event loop runs stops the switch once it does
(vtwisted.app.stopOnEarlyTerm), instead of killing it with its files left.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vtwisted.app import stopOnEarlyTerm


class Reactor:
    """Records what is handed to callFromThread."""

    def __init__(self) -> None:
        self.queued: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.queued.append(f)

    def stop(self) -> None:
        raise AssertionError("stop runs in the event loop, not in the handler")


@contextmanager
def sigterm(handler: Any) -> Iterator[None]:
    """
    SIGTERM handled by C{handler} for the block (the test's reactor has its
    own, installed when it started), then as before.
    """
    saved = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved)


def test_anEarlySigtermQueuesAStop() -> None:
    reactor = Reactor()
    with sigterm(signal.SIG_DFL):
        stopOnEarlyTerm(reactor)
        handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    handler(signal.SIGTERM, None)  # what the signal would run
    assert reactor.queued == [reactor.stop]


def test_aHandlerAlreadyThereIsKept() -> None:
    def mine(number: int, frame: Any) -> None:
        pass

    with sigterm(mine):
        stopOnEarlyTerm(Reactor())
        assert signal.getsignal(signal.SIGTERM) is mine
