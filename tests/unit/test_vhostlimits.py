"""
What a C{vhostuser:} guest may put in its transmit ring, and what the
switch does with more: chains of more buffers than Linux's vhost takes are
refused (the connection closed), packets longer than 64 KB are dropped
unread.  Both ring layouts, against the fakes of L{vhostfakes}.
"""

from __future__ import annotations

import tracemalloc
from typing import cast

import pytest
from twisted.logger import ILogObserver, globalLogPublisher
from vhostfakes import LAYOUTS, makeDriver

from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import vnet


@pytest.fixture(params=LAYOUTS)
def anyDriver(request):
    fake = makeDriver(request.param)
    yield fake
    fake.close()


def errorsDuring(action) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    return [e for e in events if e.get("log_level") and e["log_level"].name == "error"]


def test_aChainOfMoreThan1024BuffersIsRefused(anyDriver) -> None:
    """
    A chain of 1025 buffers (here in an indirect table) is refused before
    it is read, as Linux's vhost refuses one: a guest could otherwise have
    the switch walk tens of millions of descriptors for one frame.
    """
    anyDriver.negotiate()
    data = frame(mac(2), mac(1), payload=bytes(1025 - 12 - 14))
    errors = errorsDuring(lambda: anyDriver.transmit(vnet.PLAIN_HEADER + b"\0\0", data,
                                                     pieces=1025, indirect=True))
    assert len(errors) == 1 and "more than 1024 buffers" in errors[0]["problem"], errors
    assert anyDriver.transport.disconnecting
    assert anyDriver.port.counters.drops["malformed"] == 1


def test_aChainOf1024BuffersIsTaken(anyDriver) -> None:
    anyDriver.negotiate()
    other = FakeLink()
    plug(anyDriver.switch, other)
    data = frame(mac(2), mac(1), payload=bytes(1024 - 12 - 14))
    anyDriver.transmit(vnet.PLAIN_HEADER + b"\0\0", data, pieces=1024, indirect=True)
    assert other.takeSent() == [data]


def test_aPacketLongerThan64KbIsDroppedUnread(anyDriver) -> None:
    """
    A chain of 1.5 MB is given back, counted as oversize, and not copied:
    from a guest with gigabytes of memory, one frame could be gigabytes.
    """
    anyDriver.negotiate()
    other = FakeLink()
    plug(anyDriver.switch, other)
    data = frame(mac(2), mac(1), payload=bytes(1536 * 1024))
    anyDriver.kick = lambda ring=1: None  # only made available
    anyDriver.transmit(vnet.PLAIN_HEADER + b"\0\0", data)
    del anyDriver.kick
    tracemalloc.start()
    try:
        anyDriver.kick()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert anyDriver.port.counters.drops["oversize"] == 1
    assert len(anyDriver.used(1)) == 1 and other.takeSent() == []
    assert not anyDriver.transport.disconnecting


def test_aTurnWalksABoundedNumberOfBuffers(anyDriver, monkeypatch) -> None:
    """
    Long chains are taken a bounded number of buffers per reactor turn, not
    a bounded number of chains: a guest making every chain long cannot hold
    the switch for long; the rest are taken in the next turns, in order.
    """
    from vtwisted.ports import vhostrings

    monkeypatch.setattr(vhostrings, "TX_BUFFERS", 8)
    anyDriver.negotiate()
    other = FakeLink()
    plug(anyDriver.switch, other)
    frames = [frame(mac(2), mac(1), payload=bytes([n]) * 200) for n in range(6)]
    anyDriver.kick = lambda ring=1: None  # only made available
    for data in frames:
        anyDriver.transmit(vnet.PLAIN_HEADER + b"\0\0", data, pieces=4)
    del anyDriver.kick
    anyDriver.kick()
    assert other.takeSent() == frames[:2]
    assert anyDriver.reactor.getDelayedCalls(), "the rest left to a later turn"
    anyDriver.reactor.advance(0)  # runs the next turns too (each due at once)
    assert other.takeSent() == frames[2:]
