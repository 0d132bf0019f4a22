"""
Keep-alive of the slirp TCP engine (L{vtwisted.slirp.tcpkeepalive}): a
connection whose guest vanished without a word is given up after
C{keepalive=} seconds, one whose guest answers the probes stays.
"""

from __future__ import annotations

from slirptcpharness import Harness

from vtwisted.wire.tcp import ACK, RST

#: A tenth of the default keepalive= (two hours): the sweeps' period.
TENTH = 720.0


def test_aGuestThatVanishedIsGivenUpAfterTwoHours() -> None:
    """
    An idle connection whose guest is gone (nothing answers): three
    probes, bare ACKs one byte back, in the last 30 minutes of two hours of
    silence, then a RST to the guest and the host socket aborted; the
    connection is forgotten, counted as timed out, and no timer is left.
    """
    h = Harness()
    transport = h.open()
    h.data(b"hello")
    h.turn()
    h.take()
    h.clock.pump([TENTH] * 7)
    assert h.take() == [], "no probe before 90 minutes of silence"
    h.clock.pump([TENTH] * 3)
    probes = h.take()
    assert [(p.flags, p.seq) for p in probes] == [(ACK, h.ours - 1)] * 3
    assert not transport.aborted and len(h.nat.connections) == 1
    h.clock.advance(TENTH)
    (reset,) = h.take()
    assert reset.flags & RST
    assert transport.aborted and h.nat.connections == {}
    assert h.nat.timeouts == 1
    h.clock.advance(TENTH)
    assert h.clock.getDelayedCalls() == [], "the sweep stops with the last connection"


def test_aGuestThatAnswersTheProbesKeepsItsConnectionForAsLongAsItLikes() -> None:
    """
    A guest that is there, idle for ten hours, answers each probe: its
    connection and host socket stay.
    """
    h = Harness()
    transport = h.open()
    for _ in range(50):
        h.clock.advance(TENTH)
        for probe in h.take():
            assert probe.seq == h.ours - 1
            h.ack(h.ours)
    assert not transport.aborted and len(h.nat.connections) == 1
    assert h.nat.timeouts == 0


def test_keepaliveZeroNeverGivesUp() -> None:
    """
    C{keepalive=0}: no sweep, no probe; an idle connection stays.
    """
    from vtwisted.slirp.tcpkeepalive import KeepAlive

    h = Harness()
    h.nat.keepAlive = KeepAlive(h.nat, h.clock, 0)
    transport = h.open()
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(365 * 86400)
    assert h.take() == [] and not transport.aborted and len(h.nat.connections) == 1


def test_keepaliveIsAnOptionOfTheSpec() -> None:
    """
    C{slirp:keepalive=600} gives up after 600 s; the default is two hours.
    """
    from vtwisted.slirp.config import readConfig
    from vtwisted.spec import PortSpec

    assert readConfig(PortSpec("slirp")).tcpKeepalive == 7200
    assert readConfig(PortSpec("slirp:keepalive=600")).tcpKeepalive == 600
