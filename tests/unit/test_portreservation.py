"""
The port of a connecting spec whose link is down (a C{cmd:} command
between runs, a C{qemu:connect:} or cable dialling again) is reserved for
it: no other link gets it meanwhile, so it comes back to it with what the
console set on it; giving up for good frees it.  Fake processes and
endpoints on a fake clock; the real thing is in
C{tests/integration/test_command_portkept.py}.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from consolefakes import FakeSwitchService
from test_cablereconnect import Endpoint
from test_commandport import Spawner
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from vtwisted.consoleformat import portLines, specLine
from vtwisted.errors import SwitchError
from vtwisted.operations import SwitchOperations
from vtwisted.portoptions import PortOptions
from vtwisted.ports import qemu
from vtwisted.switch import Switch
from vtwisted.switchport import Reservation
from vtwisted.testing import FakeLink, frame, mac, plug

SPEC = "cmd:vde_plug /tmp/sw"
KILLED = Failure(ProcessTerminated(signal=9))


def _switch(spawner: Spawner) -> SwitchOperations:
    """A started switch service whose cmd: specs run fake processes."""
    spawner.advance(1000)
    service = FakeSwitchService(Switch(32), reactor=spawner, clock=spawner)
    service.startService()
    ops = SwitchOperations(service, stop=lambda: None, mac=bytes.fromhex("00ff01020304"))
    service._operations = ops
    return ops


def _runAgain(spawner: Spawner) -> None:
    """Let the command's backoff pass until it is run again."""
    before = len(spawner.runs)
    for _ in range(100):
        spawner.advance(0.1)
        if len(spawner.runs) > before:
            return
    raise AssertionError("the command was not run again")


def _allprint(ops: SwitchOperations, number: int) -> list[str]:
    return portLines(ops.ports(number, inactive=True)[0])


def test_aReservedPortIsGivenToNoOneElse() -> None:
    """
    A port reserved for a spec is no free port: a request for any port
    gets the next one, and so does port/createauto; a request for it by
    number is refused as a busy port is (EADDRINUSE), naming the spec.
    Freed, it is the lowest free port again.
    """
    spawner = Spawner()
    ops = _switch(spawner)
    switch = ops.switch
    link = FakeLink("gone")
    port = plug(switch, link)
    link.close()
    port.reservation = Reservation(SPEC, "until it runs again")
    assert switch.allocatePort(None, 1000).number == 2
    with pytest.raises(SwitchError) as refused:
        switch.allocatePort(1, 1000)
    assert refused.value.errno == errno.EADDRINUSE
    assert refused.value.message == f"port 1 is reserved for {SPEC} until it runs again"
    assert ops.createAnyPort() == 2
    port.reservation = None
    assert switch.allocatePort(None, 1000).number == 1


def test_aCommandBetweenRunsKeepsItsPortAndItsVlan() -> None:
    """
    A command killed: while it waits to run again, a client asking for any
    port gets another one, port/allprint says whom the port is kept for;
    run again, the command is on its port, in the VLAN the console gave
    it, and port/print says it was run again and how the run before ended.
    """
    spawner = Spawner()
    ops = _switch(spawner)
    assert ops.addPort(SPEC) == [1]
    ops.createVlan(7)
    ops.setVlan(1, 7)
    spawner.runs[-1].protocol.dataReceived(b"\x00\x3c" + frame(b"\xff" * 6, mac(1)))
    spawner.advance(10)  # it has worked
    assert portLines(ops.ports(1)[0])[4:] == [
        "  -- endpoint ID 1000 module command     : vde_plug /tmp/sw (pid 1000)"]
    spawner.runs[-1].processEnded(KILLED)
    assert ops.addPort("listen:b") == []
    client = ops.service.specs["listen:b"].connect()  # type: ignore[attr-defined]
    assert client.port.number == 2
    assert _allprint(ops, 1)[4:] == [
        f"  -- reserved for {SPEC} until it runs again",
        "  -- down: starting the command again: its last run was killed by signal 9 "
        "(SIGKILL)"]
    assert _specLine(ops, SPEC) == (
        f"Spec {SPEC} ports=none single runtime -- port 0001 reserved; starting the "
        "command again: its last run was killed by signal 9 (SIGKILL)")
    _runAgain(spawner)
    [status] = ops.ports(1)
    assert status.untaggedVid == 7 and status.active
    assert portLines(status)[4:] == [
        "  -- endpoint ID 1001 module command     : vde_plug /tmp/sw (pid 1001)",
        "  -- run again 1 time; the run before was killed by signal 9 (SIGKILL)"]
    assert ops.switch.port(1).reservation is None
    assert _specLine(ops, SPEC) == f"Spec {SPEC} ports=0001 single runtime"


def _specLine(ops: SwitchOperations, text: str) -> str:
    """C{port/specs}' line for spec C{text}."""
    [line] = [specLine(spec) for spec in ops.specs() if spec.text == text]
    return line


def test_aConnectorDiallingAgainKeepsItsPort() -> None:
    """
    qemu:connect: whose guest went: its port is kept for it while it
    dials (port/allprint says so), and its next connection is on it.
    """
    spawner = Spawner()
    switch, endpoint = Switch(), Endpoint()
    connector = qemu.QemuConnector(switch, spawner, endpoint, PortOptions(), "qemu:connect:x")
    connector.startService()
    assert connector.links[0].port.number == 1
    protocol, _ = endpoint.connections[-1]
    protocol.connectionLost(Failure(ConnectionDone()))
    assert switch.port(1).reservation == Reservation("qemu:connect:x",
                                                     "until it connects again")
    assert plug(switch, FakeLink("client")).number == 2
    while len(endpoint.connections) == 1:
        spawner.advance(0.1)
    assert connector.links[0].port.number == 1
    connector.stopService()
    assert switch.port(1).reservation is None


def _restartOff(ops: SwitchOperations, spawner: Spawner) -> None:
    ops.addPort(f"{SPEC}:restart=off")
    spawner.runs[-1].processEnded(KILLED)


def _onFailureDone(ops: SwitchOperations, spawner: Spawner) -> None:
    ops.addPort(f"{SPEC}:restart=on-failure")
    spawner.runs[-1].processEnded(Failure(ProcessDone(0)))


def _specRemoved(ops: SwitchOperations, spawner: Spawner) -> None:
    ops.addPort(SPEC)
    spawner.runs[-1].processEnded(KILLED)
    ops.removeSpec(SPEC)


def _switchStopped(ops: SwitchOperations, spawner: Spawner) -> None:
    ops.addPort(SPEC)
    spawner.runs[-1].processEnded(KILLED)
    ops.service.stopService()


@pytest.mark.parametrize("givesUp", [_restartOff, _onFailureDone, _specRemoved,
                                     _switchStopped])
def test_aSpecThatGivesUpFreesItsPort(givesUp: Any) -> None:
    """
    A command not run again (restart=off, or on-failure after status 0),
    a spec removed (port/del SPEC) or the switch stopping: the port it had
    is free again, for the next client that asks for any port.
    """
    spawner = Spawner()
    ops = _switch(spawner)
    givesUp(ops, spawner)
    port = ops.switch.port(1)
    assert port.reservation is None and not port.links
    assert "reserved" not in "\n".join(_allprint(ops, 1))
    assert all("reserved" not in specLine(spec) for spec in ops.specs())
    assert plug(ops.switch, FakeLink("client")).number == 1


def test_deletingAReservedPortRemovesItsSpec() -> None:
    """
    port/del N on the port a command holds between runs removes the
    command's spec with it, as it does while the command runs: it does
    not come back on another port.
    """
    spawner = Spawner()
    ops = _switch(spawner)
    ops.addPort(SPEC)
    spawner.runs[-1].processEnded(KILLED)
    assert ops.deletePort(1) == SPEC
    assert SPEC not in ops.service.specs and 1 not in ops.switch.ports
    spawner.advance(30)
    assert len(spawner.runs) == 1


def test_removingAReservedPortIsRefused() -> None:
    """
    port/remove N on the port a command holds between runs is refused as
    for an active port (EADDRINUSE), naming the spec and port/del: the
    port stays, in the VLAN the console gave it, and the command comes
    back to it.
    """
    spawner = Spawner()
    ops = _switch(spawner)
    ops.addPort(SPEC)
    ops.createVlan(7)
    ops.setVlan(1, 7)
    spawner.runs[-1].processEnded(KILLED)
    with pytest.raises(SwitchError) as refused:
        ops.removePort(1)
    assert refused.value.errno == errno.EADDRINUSE
    assert refused.value.message == (
        f"port 1 is reserved for {SPEC} until it runs again: port/del 1 removes it with "
        "its spec")
    _runAgain(spawner)
    [status] = ops.ports(1)
    assert status.active and status.untaggedVid == 7
