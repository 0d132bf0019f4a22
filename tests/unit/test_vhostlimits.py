"""
What a C{vhostuser:} guest may put in its transmit ring, and what the
switch does with more: chains of more buffers than Linux's vhost takes are
refused (the connection closed), packets longer than 64 KB are dropped
unread; receive buffers so small that a frame needs more than 1024 of
them are refused too.  Both ring layouts, against the fakes of
L{vhostfakes}.
"""

from __future__ import annotations

import tracemalloc
from typing import cast

import pytest
from twisted.logger import ILogObserver, globalLogPublisher
from vhostfakes import DESC, INDIRECT, LAYOUTS, NEXT, WRITE, makeDriver

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


def postIndirectReceiveBuffers(driver, count: int, entries: int) -> None:
    """
    Make C{count} receive chains available, each an indirect table of
    C{entries} one-byte buffers (all on the same bytes).
    """
    table, data = driver.txAt, driver.txAt + 16 * entries
    driver.txAt = data + entries
    packed = hasattr(driver, "makeAvailable")
    for i in range(entries):
        last = i == entries - 1
        # a packed descriptor is (address, length, id, flags), a split one
        # (address, length, flags, next)
        DESC.pack_into(driver.memory, table + 16 * i, data + i, 1,
                       *((0, WRITE) if packed else (WRITE | (0 if last else NEXT), i + 1)))
    for _ in range(count):
        if packed:
            driver.makeAvailable(0, [(table, 16 * entries, INDIRECT)])
        else:
            driver._makeAvailable(0, driver._descriptor(0, table, 16 * entries, INDIRECT))


def test_aFrameNeedingMoreThan1024ReceiveBuffersIsRefused(anyDriver) -> None:
    """
    Receive chains of a thousand one-byte buffers each, which a frame of
    1.5 KB needs two of, are refused, as Linux's vhost refuses them: the
    switch would otherwise walk every buffer of every chain available for
    each frame to the guest (with chains of a thousand empty buffers in a
    ring of 32768, a minute a frame, the switch stopped meanwhile).  The
    switch keeps forwarding between its other ports.
    """
    anyDriver.negotiate()
    postIndirectReceiveBuffers(anyDriver, 4, 1000)
    other = FakeLink()
    plug(anyDriver.switch, other)
    data = frame(b"\xff" * 6, mac(2), payload=bytes(1500))
    errors = errorsDuring(lambda: other.receive(data))
    assert len(errors) == 1, errors
    assert "needs more than 1024 receive buffers" in errors[0]["problem"], errors
    assert anyDriver.transport.disconnecting
    assert anyDriver.port.counters.drops["malformed"] == 1
    assert anyDriver.received() == []


def test_aFrameIn1024ReceiveBuffersIsDelivered(anyDriver) -> None:
    """Two chains of 512 one-byte buffers take a frame of 1012 bytes."""
    anyDriver.negotiate()
    postIndirectReceiveBuffers(anyDriver, 2, 512)
    other = FakeLink()
    plug(anyDriver.switch, other)
    data = frame(b"\xff" * 6, mac(2), payload=bytes(1024 - 12 - 14))
    errors = errorsDuring(lambda: other.receive(data))
    assert errors == [] and not anyDriver.transport.disconnecting
    assert [length for _, length in anyDriver.used(0)] == [512, 512]
