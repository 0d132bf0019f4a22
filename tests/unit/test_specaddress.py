"""
C{port/specs} says where a listening spec listens: for one given TCP port
0 (C{qemu:tcp:0}, C{pcap:listen:tcp:0}) the port the system chose, which
its peers must be told.  A fake reactor chooses; the real switch and peers
are in C{tests/integration/test_listen_portzero.py}.
"""

from __future__ import annotations

from typing import Any

import pytest
from consolefakes import FakeSwitchService
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, _FakePort

from vtwisted.consoleformat import specLine
from vtwisted.operations import SwitchOperations
from vtwisted.switch import Switch

#: The port the fake system chooses for TCP port 0.
CHOSEN = 43211


class ChoosingReactor(MemoryReactorClock):
    """
    A fake reactor whose TCP listeners on port 0 get L{CHOSEN}, on the
    address asked for.
    """

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        super().listenTCP(port, factory, backlog, interface)
        return _FakePort(IPv4Address("TCP", interface or "0.0.0.0", port or CHOSEN))


def _operations() -> SwitchOperations:
    reactor = ChoosingReactor()
    service = FakeSwitchService(Switch(32), reactor=reactor, clock=reactor)
    service.startService()
    ops = SwitchOperations(service, stop=lambda: None, mac=bytes.fromhex("00ff01020304"))
    service._operations = ops
    return ops


def _specLine(ops: SwitchOperations, text: str) -> str | None:
    lines = [specLine(spec) for spec in ops.specs() if spec.text == text]
    return lines[0] if lines else None


@pytest.mark.parametrize(("spec", "ports", "kind"), [
    ("qemu:tcp:0", "none", "listening"),
    ("qemu:listen:tcp:0", "none", "listening"),
    ("cable:listen:tcp:0:tls=off", "none", "listening"),
    ("pcap:listen:tcp:0", "0001", "single"),
])
def test_aListenerOnPortZeroShowsThePortItGot(spec: str, ports: str, kind: str) -> None:
    """
    A spec listening on TCP port 0 shows in port/specs the port the system
    chose, on the loopback address it listens on; removed, it is gone.
    """
    ops = _operations()
    ops.addPort(spec)
    assert _specLine(ops, spec) == (
        f"Spec {spec} ports={ports} {kind} runtime -- listening on tcp 127.0.0.1:{CHOSEN}")
    ops.removeSpec(spec)
    assert _specLine(ops, spec) is None

