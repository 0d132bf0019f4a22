"""
The slirp TCP engine's zero-window probing once the host is gone (an
orphan, L{vtwisted.slirp.tcpsend.ORPHAN_PROBES}): the guest that never
reads is reset after 8 probes without progress, not probed for ever; while
the host is there, or while the guest makes progress, probing goes on.
"""

from __future__ import annotations

import pytest
from slirptcpharness import Harness, HostTransport
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from vtwisted.wire.tcp import RST


@pytest.fixture
def h() -> Harness:
    return Harness()


def stalledGuest(h: Harness) -> HostTransport:
    """
    A connection whose guest advertises a zero window, with 100 bytes from
    the host held back.
    """
    transport = h.open(window=0)
    h.host(transport).dataReceived(b"o" * 100)
    assert h.take() == []
    return transport


def probeAndAnswer(h: Harness, acked: int = 0) -> bool:
    """
    Let the clock run until the engine sends the guest something; the
    guest answers a probe with a zero window, acknowledging C{acked} more
    bytes.

    @return: whether the engine reset the connection instead.
    """
    for _ in range(240):
        h.clock.advance(0.5)
        segments = h.takeAll()
        if segments:
            break
    else:
        raise AssertionError("no probe in 120 s")
    if any(header.flags & RST for header, _ in segments):
        return True
    assert [len(payload) for _, payload in segments] == [1]
    h.ours += acked
    h.ack(h.ours, window=0)
    return False


def hostGone(h: Harness, transport: HostTransport) -> None:
    h.host(transport).connectionLost(Failure(ConnectionDone()))
    assert h.take() == []


def test_orphanNeverReadingIsResetAfterEightProbes(h: Harness) -> None:
    """
    Once the host has closed, a guest answering probes with a zero window
    for ever is reset after 8 of them; the host socket is gone already,
    the connection forgotten and counted as timed out.
    """
    transport = stalledGuest(h)
    hostGone(h, transport)
    outcomes = [probeAndAnswer(h) for _ in range(9)]
    assert outcomes == [False] * 8 + [True]
    assert h.nat.connectionCount == 0
    assert h.nat.timeouts == 1 and h.nat.resets == 1


def test_orphanMakingProgressIsNotReset(h: Harness) -> None:
    """
    A guest that takes a byte now and then, its window zero again each
    time, starts the count again: only 8 probes in a row without progress
    reset it.
    """
    transport = stalledGuest(h)
    hostGone(h, transport)
    for _ in range(5):
        assert not any(probeAndAnswer(h) for _ in range(7))
        assert not probeAndAnswer(h, acked=1)
    assert h.nat.connectionCount == 1 and h.nat.timeouts == 0
    outcomes = [probeAndAnswer(h) for _ in range(9)]
    assert outcomes == [False] * 8 + [True]
    assert h.nat.timeouts == 1


def test_zeroWindowProbedForEverWhileHostIsThere(h: Harness) -> None:
    """
    A host that only half-closed is still there (it may read what the
    guest sends): its guest's zero window is probed for as long as it
    answers; the count starts once the host socket is lost.
    """
    transport = stalledGuest(h)
    h.host(transport).readConnectionLost()
    assert not any(probeAndAnswer(h) for _ in range(30))
    assert h.nat.connectionCount == 1 and h.nat.timeouts == 0
    assert not transport.aborted
    hostGone(h, transport)
    outcomes = [probeAndAnswer(h) for _ in range(9)]
    assert outcomes == [False] * 8 + [True]
    assert h.nat.connectionCount == 0 and h.nat.timeouts == 1
