"""
C{--realtime N}: the switch's thread under SCHED_FIFO (vtwisted.scheduling).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
from twisted.python import usage

from vtwisted.app import Options, buildService
from vtwisted.scheduling import RealtimeService


class Scheduler:
    """A stand-in for os.sched_setscheduler that records or refuses."""

    def __init__(self, refuse: int = 0) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.refuse = refuse

    def __call__(self, pid: int, policy: int, param: Any) -> None:
        if self.refuse:
            raise OSError(self.refuse, os.strerror(self.refuse))
        self.calls.append((pid, policy, param.sched_priority))


def test_theThreadGoesFifoAndItsChildrenDoNot() -> None:
    scheduler = Scheduler()
    service = RealtimeService(3, scheduler)
    service.privilegedStartService()
    service.startService()
    assert scheduler.calls == [(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, 3)]


def test_aRefusalSaysWhatGrantsIt() -> None:
    service = RealtimeService(1, Scheduler(refuse=errno.EPERM))
    with pytest.raises(OSError) as caught:
        service.privilegedStartService()
    assert caught.value.errno == errno.EPERM
    text = caught.value.strerror or ""
    assert text.startswith("--realtime 1: cannot use SCHED_FIFO: Operation not permitted "
                           "(errno 1); it needs root"), text
    assert "CAP_SYS_NICE" in text and "ulimit -r" in text, text


def test_theOptionAddsTheServiceAndNothingElseDoes() -> None:
    options = Options()
    options.parseOptions(["--realtime", "2", "--sock", "/tmp/vtw-realtime-unit"])
    service = buildService(None, ["vde:/tmp/vtw-realtime-unit"], realtime=options["realtime"])
    found = [child for child in service if isinstance(child, RealtimeService)]
    assert [child.priority for child in found] == [2]
    assert not any(isinstance(c, RealtimeService)
                   for c in buildService(None, ["vde:/tmp/vtw-realtime-unit"]))


@pytest.mark.parametrize("value", ["0", "100", "high", "-1"])
def test_aPriorityOutOfRangeIsRefused(value: str) -> None:
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--realtime", value])
    assert "--realtime needs a priority from 1 to 99" in str(caught.value)
