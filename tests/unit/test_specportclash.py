"""
A spec asking for a port by number (C{port=N}) that another spec's link
has is refused, as a VDE client asking for it is: a capture port put there
would take the other link out of its VLAN and hand it a copy of every
frame, and two capture ports on one port would turn each other's monitor
off.
"""

from __future__ import annotations

import errno

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from vtwisted.errors import SwitchError
from vtwisted.ports import pcap as pcapport
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch
from vtwisted.switchport import Reservation
from vtwisted.testing import FakeLink, frame, mac, plug


def startCapture(switch: Switch, text: str) -> object:
    service = pcapport.makeService(switch, PortSpec(text), MemoryReactorClock())
    service.privilegedStartService()
    service.startService()
    return service


def test_captureRefusesAnotherSpecsPort() -> None:
    """
    A capture server asking for the port of a link in VLAN 0 is refused,
    naming itself, the port and what is there; the link stays in its VLAN
    and still gets a frame for it once, not a monitor's copies.
    """
    switch = Switch()
    tap = FakeLink("r2ta in netns a")
    other = FakeLink("other")
    port = plug(switch, tap, 2)
    plug(switch, other, 3)
    with pytest.raises(SwitchError) as caught:
        startCapture(switch, "pcap:listen:tcp:5557:port=2")
    assert caught.value.errno == errno.EADDRINUSE
    assert caught.value.message == (
        "pcap:listen:tcp:5557:port=2: port 2 is in use by fake r2ta in netns a: "
        "give another port= or none")
    assert port.untaggedVlan is switch.vlans[0]
    assert port.links == [tap]
    switch.frameReceived(switch.port(3), frame(b"\xff" * 6, mac(3)))
    assert len(tap.takeSent()) == 1


def test_twoCapturesOnOnePort() -> None:
    """
    A second capture spec asking for the first one's port is refused.
    """
    switch = Switch()
    startCapture(switch, "pcap:listen:tcp:5557:port=1")
    with pytest.raises(SwitchError) as caught:
        startCapture(switch, "pcap:listen:tcp:5558:port=1")
    assert "port 1 is in use by pcap live capture server" in caught.value.message
    assert len(switch.port(1).links) == 1


def test_aRefusedCaptureServerLogsNoSummary() -> None:
    """
    A capture server refused its port never told of itself: stopping it
    logs no 'frames sent to 0 readers' after the refusal.
    """
    switch = Switch()
    plug(switch, FakeLink("tap"), 2)
    service = pcapport.makeService(switch, PortSpec("pcap:listen:tcp:5557:port=2"),
                                   MemoryReactorClock())
    with pytest.raises(SwitchError):
        service.privilegedStartService()
        service.startService()
    with capturedLogs() as events:
        service.stopService()
    assert [formatEvent(e) for e in events] == []


def test_aReservedPortIsRefusedNamingTheSpec() -> None:
    """
    A spec asking for a port kept for another spec's link (a command
    between runs) is refused, naming itself as well as the holder.
    """
    switch = Switch()
    port = switch.allocatePort(3)
    port.reservation = Reservation("cmd:vde_plug /tmp/lab2", "until it runs again")
    with pytest.raises(SwitchError) as caught:
        startCapture(switch, "pcap:listen:tcp:5557:port=3")
    assert caught.value.errno == errno.EADDRINUSE
    assert caught.value.message == (
        "pcap:listen:tcp:5557:port=3: port 3 is reserved for cmd:vde_plug /tmp/lab2 "
        "until it runs again")


def test_aCaptureFileRefusedItsPortLeavesNoFile(tmp_path) -> None:
    """
    A capture file refused its port (another spec's link there, or out of
    range) is never made: no 24-byte pcap file is left behind.
    """
    switch = Switch()
    plug(switch, FakeLink("tap"), 2)
    for number in (2, 999):
        path = tmp_path / f"port{number}.pcap"
        with pytest.raises(SwitchError):
            startCapture(switch, f"pcap:{path}:port={number}")
        assert not path.exists()
    assert sorted(switch.ports) == [2]


def test_aCaptureFileRefusedItsPortLeavesAnExistingFileAlone(tmp_path) -> None:
    """
    A capture refused its port does not empty the file it names, which
    holds what it held.
    """
    switch = Switch()
    port = switch.allocatePort(3)
    port.reservation = Reservation("cmd:vde_plug /tmp/lab2", "until it runs again")
    path = tmp_path / "kept.pcap"
    path.write_bytes(b"an earlier capture")
    with pytest.raises(SwitchError):
        startCapture(switch, f"pcap:{path}:port=3")
    assert path.read_bytes() == b"an earlier capture"


def test_aDatagramSocketRefusedItsPortIsNeverBound(tmp_path) -> None:
    """
    A C{dgram:unix:} spec refused its port binds no socket, so a stale
    socket file of its path is neither replaced nor removed (as the
    socket it would have bound is when the refused service stops).
    """
    import socket

    from twisted.internet import reactor

    from vtwisted.ports import dgram

    switch = Switch()
    plug(switch, FakeLink("tap"), 2)
    path = tmp_path / "guest.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stale:
        stale.bind(str(path))
    service = dgram.makeService(switch, PortSpec(f"dgram:unix:{path}:{tmp_path}/r:port=2"),
                                reactor)
    with pytest.raises(SwitchError):
        service.privilegedStartService()
        service.startService()
    if service.running:
        service.stopService()
    assert path.is_socket()


def test_twoStartupSpecsAskingOnePortAreRefusedBeforeAnyFile(tmp_path) -> None:
    """
    Two specs on the command line asking for one port number: the second
    is refused as it is read, naming both, before the switch starts, so
    neither capture file is made (each spec opens its file before any
    takes its port, and a start that failed then left both, the first
    one's contents gone).  Once the switch runs, the port's state decides.
    """
    from vtwisted.app import buildService
    from vtwisted.spec import SpecError

    first, second = tmp_path / "a.pcap", tmp_path / "b.pcap"
    second.write_bytes(b"kept")
    with pytest.raises(SpecError) as refused:
        buildService(MemoryReactorClock(), [f"pcap:{first}:port=3", f"pcap:{second}:port=3"],
                     defaultSock=False)
    assert f"pcap:{second}:port=3" in str(refused.value)
    assert f"as pcap:{first}:port=3 does" in str(refused.value)
    assert not first.exists()
    assert second.read_bytes() == b"kept"
    service = buildService(MemoryReactorClock(), [f"pcap:{first}:port=3",
                                                  f"pcap:{second}:port=4"], defaultSock=False)
    assert len(service.specs) == 2
