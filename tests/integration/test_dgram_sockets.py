"""
QEMU datagram ports (C{dgram:}) on real sockets in this process's reactor:
a guest written from QEMU's framing (one datagram, one frame), strangers,
a guest that is not there, and spec errors.  Real QEMU guests are in
test_qemu_stream.py.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
import pytest_twisted
from helpers import FailingReads, freeUdpPorts, pendingDatagrams
from reactortools import sleep, until
from twisted.internet import reactor
from twisted.logger import capturedLogs, formatEvent

from vtwisted.app import buildService
from vtwisted.ports import dgram
from vtwisted.service import SwitchService
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug

BROADCAST = b"\xff" * 6



def dgramService(service: SwitchService) -> dgram.DgramService:
    (found,) = [s for s in service if isinstance(s, dgram.DgramService)]
    return found


def link(service: SwitchService) -> dgram.DgramLink:
    found = dgramService(service).link
    assert found is not None
    return found


async def exchange(service: SwitchService, guest: socket.socket,
                   switchAddress: tuple[str, int] | str, stranger: socket.socket) -> None:
    """
    Frames of every size from the guest reach the switch, the switch's
    frames reach the guest, and a stranger's datagrams are counted and
    dropped.
    """
    port = link(service).port
    other = FakeLink()
    plug(service.switch, other)
    sizes = (14, 60, 1514, 9000)
    for size in sizes:
        guest.sendto(frame(BROADCAST, mac(1), b"g" * (size - 14)), switchAddress)
    await until(lambda: len(other.sent) == len(sizes), what="the guest's frames")
    assert [len(f) for f in other.takeSent()] == list(sizes)
    other.receive(frame(mac(1), mac(2), b"reply" * 300))
    await until(lambda: pendingDatagrams(guest) == [frame(mac(1), mac(2), b"reply" * 300)] or None,
                what="the reply")
    stranger.sendto(frame(BROADCAST, mac(66)), switchAddress)
    await until(lambda: port.counters.drops["peer"] == 1, what="the stranger counted")
    assert other.sent == [] and port.counters.inFrames == len(sizes)


@pytest_twisted.ensureDeferred
async def test_udpGuestExchangesFramesAndStrangersAreDropped(switch) -> None:
    mine, theirs = freeUdpPorts(2)
    service = switch(f"dgram:udp:127.0.0.1:{mine}:127.0.0.1:{theirs}")
    guest = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    guest.bind(("127.0.0.1", theirs))
    guest.setblocking(False)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await exchange(service, guest, ("127.0.0.1", mine), stranger)
    finally:
        guest.close()
        stranger.close()


@pytest_twisted.ensureDeferred
async def test_unixGuestExchangesFramesAndStrangersAreDropped(switch, shortdir: Path) -> None:
    mine, theirs = shortdir / "sw.dgram", shortdir / "vm.dgram"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(mine))  # left by a crash: replaced
    stale.close()
    service = switch(f"dgram:unix:{mine}:{theirs}")
    assert oct(mine.stat().st_mode & 0o777) == "0o600"
    guest = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    guest.bind(str(theirs))
    guest.setblocking(False)
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stranger.bind(str(shortdir / "stranger.dgram"))
    try:
        await exchange(service, guest, str(mine), stranger)
    finally:
        guest.close()
        stranger.close()


@pytest_twisted.ensureDeferred
async def test_absentGuestLosesFramesAndNothingElseStops(switch, shortdir: Path) -> None:
    """
    Frames to a guest that is not there (yet) are counted as peer drops;
    the switch keeps serving its other ports.
    """
    service = switch(f"dgram:unix:{shortdir}/sw.dgram:{shortdir}/nobody.dgram")
    port = link(service).port
    left, right = FakeLink(), FakeLink()
    plug(service.switch, left)
    plug(service.switch, right)
    for _ in range(3):
        left.receive(frame(BROADCAST, mac(5)))
    assert port.counters.drops["peer"] == 3
    assert len(right.sent) == 3


def test_liveSocketAtTheLocalPathIsRefused(shortdir: Path) -> None:
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(str(shortdir / "sw.dgram"))
    try:
        service = buildService(
            reactor, [f"dgram:unix:{shortdir}/sw.dgram:{shortdir}/vm.dgram"], defaultSock=False
        )
        with pytest.raises(OSError) as info:
            service.startService()
        assert info.value.errno == errno.EADDRINUSE
    finally:
        live.close()


def test_bindFailureNamesSpecAddressAndErrno() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        number = taken.getsockname()[1]
        spec = f"dgram:udp:127.0.0.1:{number}:127.0.0.1:9"
        service = buildService(reactor, [spec], defaultSock=False)
        with pytest.raises(OSError) as info:
            service.startService()
    assert info.value.errno == errno.EADDRINUSE
    assert spec in str(info.value) and f"127.0.0.1:{number}" in str(info.value)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("dgram", "expected dgram:udp"),
        ("dgram:tcp:1:2", "expected dgram:udp"),
        ("dgram:unix:/tmp/a", "missing remote path"),
        ("dgram:udp:127.0.0.1:5555:127.0.0.1", "missing remote port"),
        ("dgram:udp:127.0.0.1:5555:localhost:5556", "remote host 'localhost' is not"),
        ("dgram:udp:127.0.0.1:0:127.0.0.1:5556", "out of range"),
        ("dgram:udp:127.0.0.1:x:127.0.0.1:5556", "'x' is not a UDP port"),
        ("dgram:unix:/tmp/a:/tmp/b:colour=red", "unknown option colour"),
    ],
)
def test_badSpecsFailWithTheSpecNamed(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        dgram.makeService(Switch(), PortSpec(text), reactor)
    assert text in str(info.value) and problem in str(info.value)


def test_ipv6HostsAreComparedInTheKernelsForm() -> None:
    service = dgram.makeService(
        Switch(), PortSpec("dgram:udp:\\:\\:1:5555:0\\:0\\:\\:1:5556:vlan=4"), reactor
    )
    assert service.local == ("::1", 5555) and service.remote == ("::1", 5556)
    assert service.remoteText == "[::1]:5556" and service.options.vlan == 4


@pytest_twisted.ensureDeferred
async def test_unexpectedReadErrorsAreCountedAndReadingGoesOn(switch) -> None:
    """
    A read that fails with an errno the port does not expect does not
    silence the port: it is counted in port/print, logged once with the
    spec and the errno, and the guest's frames keep arriving.
    """
    mine, theirs = freeUdpPorts(2)
    spec = f"dgram:udp:127.0.0.1:{mine}:127.0.0.1:{theirs}"
    service = switch(spec)
    listening = dgramService(service).listeningPort
    listening.socket = FailingReads(listening.socket, errno.EHOSTUNREACH, 2)
    other = FakeLink()
    plug(service.switch, other)
    guest = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    guest.bind(("127.0.0.1", theirs))
    try:
        with capturedLogs() as events:
            guest.sendto(frame(BROADCAST, mac(1), b"first"), ("127.0.0.1", mine))
            await until(lambda: len(other.sent) == 1, what="the first frame")
            guest.sendto(frame(BROADCAST, mac(1), b"second"), ("127.0.0.1", mine))
            await until(lambda: len(other.sent) == 2, what="the frame after the errors")
    finally:
        guest.close()
    assert "2 read errors" in link(service).description
    lines = [formatEvent(e) for e in events if "EHOSTUNREACH" in formatEvent(e)]
    assert len(lines) == 1 and spec in lines[0], lines


@pytest_twisted.ensureDeferred
async def test_anIcmpErrorOnAConnectedSocketDoesNotCloseIt(switch) -> None:
    """
    An ICMP error the kernel reports on a connected UDP socket (here port
    unreachable: the guest was not there yet) wakes the reactor with an
    error condition and nothing to read; the port goes on reading, and the
    guest's frames arrive once it is there.
    """
    mine, theirs = freeUdpPorts(2)
    service = switch(f"dgram:udp:127.0.0.1:{mine}:127.0.0.1:{theirs}")
    listening = dgramService(service).listeningPort
    listening.socket.connect(("127.0.0.1", theirs))
    other = FakeLink()
    plug(service.switch, other)
    other.receive(frame(BROADCAST, mac(2)))  # to nobody: port unreachable
    await sleep(0.2)
    guest = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    guest.bind(("127.0.0.1", theirs))
    try:
        guest.sendto(frame(BROADCAST, mac(1)), ("127.0.0.1", mine))
        await until(lambda: len(other.sent) == 1, what="the guest's frame")
    finally:
        guest.close()
    assert listening.connected
