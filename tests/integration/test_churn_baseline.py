"""
What a switch running for weeks depends on: peers that come and go leave
nothing behind.  Real C{vde_plug} clients are killed (SIGKILL and SIGTERM)
and a second switch's plain cable connects and drops, over and over, against
a switch in this process's reactor; afterwards the process holds the same
descriptors, the reactor the same timers, and the MAC table the same
entries as after the first round.  (A 16-minute soak of every port type
with the same invariant, sampled every 30 s, found them flat.)
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest_twisted
from helpers import Processes, StreamPlug, need
from reactortools import until
from twisted.internet import reactor

from vtwisted.ports import streamlinks, streamlistener
from vtwisted.service import SwitchService
from vtwisted.testing import frame, mac

ROUNDS = 6


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def timers() -> collections.Counter[str]:
    """The reactor's pending calls, by what they would call."""
    return collections.Counter(
        getattr(func, "__qualname__", type(func).__name__)
        for func in (getattr(call, "func", None) for call in reactor.getDelayedCalls()))


def streamPorts(service: SwitchService) -> streamlinks.StreamPorts:
    (found,) = [s for s in service if isinstance(s, streamlinks.StreamPorts)]
    return found


def linked(service: SwitchService) -> int:
    """How many of the switch's ports have a link now."""
    return sum(1 for port in service.switch.ports.values() if port.links)


async def aRound(processes: Processes, lab: SwitchService, directory: Path, number: int,
                 switch: Callable[..., SwitchService], index: int) -> None:
    """
    Two vde_plug clients and a far switch's cable join, send a frame each,
    and go: the clients killed, the far switch stopped.
    """
    plugs = [StreamPlug(processes, f"vde://{directory}") for _ in range(2)]
    far = switch(f"cable:tcp:host=127.0.0.1:port={number}:tls=off")
    await until(lambda: linked(lab) == 3 and streamPorts(far).links, timeout=10,
                what="two clients and the cable on the switch")
    for n, plug in enumerate(plugs):
        plug.send(frame(b"\xff" * 6, mac(0x100 * index + n)))
    await until(lambda: lab.switch.fdb.size >= 2, what="the clients' addresses learned")
    for n, plug in enumerate(plugs):
        processes.stop(plug.process, signal.SIGKILL if n else signal.SIGTERM)
        for pipe in (plug.process.stdin, plug.process.stdout, plug.process.stderr):
            if pipe is not None:
                pipe.close()
    await far.stopService()
    await until(lambda: linked(lab) == 0, timeout=10, what="the clients and the cable gone")


@pytest_twisted.ensureDeferred
async def test_clientsAndCablesThatComeAndGoLeaveNothingBehind(
        shortdir: Path, switch, processes: Processes) -> None:
    """
    After rounds of vde_plug clients killed and a cable dropped, the switch
    holds no more descriptors, timers or MAC entries than after the first.
    """
    need("vde_plug")
    directory = shortdir / "lab"
    lab = switch(f"vde:{directory}", "cable:listen:tcp:0:interface=127.0.0.1:tls=off")
    listener = streamPorts(lab)
    assert isinstance(listener, streamlistener.StreamListener)
    number = listener.listeningPort.getHost().port
    # One round first: what is made once, on first use, is not a leak.
    await aRound(processes, lab, directory, number, switch, 0)
    await until(lambda: lab.switch.fdb.size == 0, what="the first round's addresses forgotten")
    baseline = descriptors(), timers()
    for index in range(1, ROUNDS):
        await aRound(processes, lab, directory, number, switch, index)
    await until(lambda: (descriptors(), timers()) == baseline, timeout=10,
                what=f"descriptors and timers back to {baseline}")
    assert lab.switch.fdb.size == 0
