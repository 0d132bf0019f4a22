"""
Refused VDE clients (C{vde:}): each kind of refusal is logged once and
counted, however the clients vary their requests.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from vtwisted.ports.vde import VdeControlProtocol, VdeSwitchDirectory
from vtwisted.switch import Switch
from vtwisted.wire import vdecontrol


def refuse(directory: VdeSwitchDirectory, request: bytes) -> StringTransport:
    control = VdeControlProtocol(directory)
    transport = StringTransport()
    control.makeConnection(transport)
    control.dataReceived(request)
    assert transport.disconnecting and transport.value() == b""
    return transport


def warnings(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if "refused a client" in e.get("log_format", "")]


def test_refusalsNamingEachClientAreLoggedOnceAndCountedAsOneKind(tmp_path: Path) -> None:
    """
    Refusals whose messages name the client's socket, the port it asked
    for or other values it chose are still one kind each: the first is
    logged, the others counted, and the table of kinds does not grow with
    every client.
    """
    directory = VdeSwitchDirectory(Switch(numPorts=4), Clock(), str(tmp_path / "sw"))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(str(tmp_path / "client"))
    with capturedLogs() as events:
        for n in range(20):
            missing = str(tmp_path / f"gone-{n}").encode()
            refuse(directory, vdecontrol.packRequest(missing))
            refuse(directory, vdecontrol.packRequest(str(tmp_path / "client").encode(), 5 + n))
            refuse(directory, struct.pack("<III", 0x1000 + n, 3, 0) + bytes(120))
            refuse(directory, struct.pack("<III", vdecontrol.MAGIC, 4 + n, 0) + bytes(120))
            refuse(directory, vdecontrol.packRequest(b"relative-" + str(n).encode()))
    client.close()
    assert len(directory.rejections) == 5, directory.rejections
    assert sorted(directory.rejections.values()) == [20] * 5
    logged = warnings(events)
    assert len(logged) == 5, [e["reason"] for e in logged]
    reasons = " | ".join(e["reason"] for e in logged)
    for text in ("gone-0: No such file", "port 5 is out of range", "bad magic 0x00001000",
                 "version 4", "relative-0"):
        assert text in reasons, reasons


def test_aClientCannotJoinAPortServedByAnotherPortType(tmp_path: Path) -> None:
    """
    A VDE client asking for the port of a TAP (or a cable, a guest...) is
    refused, as one asking for another user's port is: joining it would
    give the client a copy of that port's traffic, and its spec's VLAN and
    MTU would be reset to the VDE spec's (for good: the TAP stayed in VLAN
    0 after the client left).
    """
    from vtwisted.portoptions import PortOptions
    from vtwisted.spec import PortSpec
    from vtwisted.testing import FakeLink, plug

    switch = Switch(numPorts=4)
    tap = FakeLink("lka0")
    port = plug(switch, tap, 1)
    PortOptions.fromSpec(PortSpec("tap:lka0:vlan=10:mtu=1500")).apply(
        switch, port, "tap:lka0:vlan=10:mtu=1500")
    directory = VdeSwitchDirectory(switch, Clock(), str(tmp_path / "sw"))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(str(tmp_path / "client"))
    with capturedLogs() as events:
        refuse(directory, vdecontrol.packRequest(str(tmp_path / "client").encode(), 1))
    client.close()
    assert port.links == [tap]
    assert port.untaggedVlan is switch.vlans[10] and port.mtu == 1500
    (logged,) = warnings(events)
    assert "port 1 is in use by" in logged["reason"], logged["reason"]
