"""
The C{packet:} port's pieces that need no interface: putting back a tag the
interface stripped (with and without the virtio-net header), its spec, and
the errors that say what to do.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

import pytest
from helpers import needRoot
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from vtwisted.ports import packet, tap
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug, tcpSuperFrame
from vtwisted.wire import vnet
from vtwisted.wire.ethernet import BROADCAST


def _aux(status: int, tci: int = 0, tpid: int = 0) -> bytes:
    return struct.pack("@IIIHHHH", status, 0, 0, 0, 0, tci, tpid)


def test_aStrippedTagIsPutBack() -> None:
    """A frame gets its 802.1Q tag back after the source MAC, behind its header."""
    plain = vnet.PLAIN_HEADER + frame(b"\xff" * 6, mac(1), payload=b"x" * 50)
    tagged = packet.withTag(plain, _aux(packet.TP_STATUS_VLAN_VALID, 0x2064))
    assert tagged == plain[:22] + b"\x81\x00\x20\x64" + plain[22:]


def test_aQinQTagKeepsItsTpid() -> None:
    """With the TPID valid flag, an 802.1ad tag comes back as 0x88a8."""
    plain = vnet.PLAIN_HEADER + frame(b"\xff" * 6, mac(1))
    status = packet.TP_STATUS_VLAN_VALID | packet.TP_STATUS_VLAN_TPID_VALID
    assert packet.withTag(plain, _aux(status, 7, 0x88A8))[22:26] == b"\x88\xa8\x00\x07"


def test_aTagBehindTheVirtioHeaderMovesTheChecksumStart() -> None:
    """A super-frame's tag goes after the MACs and its csum_start moves by 4: it still cuts."""
    packetIn = tcpSuperFrame(mac(2), mac(1), os.urandom(5000))
    tagged = packet.withTag(packetIn, _aux(packet.TP_STATUS_VLAN_VALID, 10))
    assert tagged[22:26] == b"\x81\x00\x00\x0a"
    assert [f[:12] + f[16:] for f in vnet.toFrames(tagged)] == vnet.toFrames(packetIn)


def test_noTagNoChange() -> None:
    """Without the VLAN flag (or auxdata too short), the frame is handed on as it came."""
    plain = vnet.PLAIN_HEADER + frame(b"\xff" * 6, mac(1))
    assert packet.withTag(plain, _aux(0, 10)) is plain
    assert packet.withTag(plain, b"\0" * 4) is plain


@pytest.mark.parametrize(("text", "message"), [
    ("packet", "missing interface name"),
    ("packet:a/b", r"interface 'a/b' is not a valid interface name"),
    ("packet:eth0:offload=off", "unknown option offload"),
])
def test_badSpecsAreRefused(text: str, message: str) -> None:
    """Each mistake is a SpecError naming the spec and what is wrong."""
    with pytest.raises(SpecError, match=message):
        packet.makeService(Switch(), PortSpec(text), None)


def test_errorsSayWhatToDo() -> None:
    """EPERM asks for CAP_NET_RAW; a missing interface is named as such."""
    denied = packet.openError("packet:eth9", "eth9", OSError(errno.EPERM, "Not permitted"))
    assert denied.errno == errno.EPERM and "CAP_NET_RAW" in str(denied)
    missing = packet.openError("packet:eth9", "eth9", OSError(errno.ENODEV, "No such device"))
    assert "packet:eth9" in str(missing) and "no interface eth9" in str(missing)


def test_aMissingInterfaceFailsAtBind() -> None:
    """Binding names the spec, the interface and the errno."""
    needRoot()
    service = packet.makeService(Switch(), PortSpec("packet:vtwnosuch0"), None)
    with pytest.raises(OSError, match=r"packet:vtwnosuch0.*vtwnosuch0") as caught:
        service.bind()
    assert caught.value.errno in (errno.ENODEV, errno.ENXIO)


class DownInterface:
    """
    A packet port on a pretend interface (index 7) whose flags a test
    sets: C{None} once it is deleted.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.flags: int | None = packet.IFF_UP
        self.checks = 0
        self.clock = MemoryReactorClock()
        self.ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

        def interfaceFlags(fd: int, index: int) -> int | None:
            assert index == 7
            self.checks += 1
            return self.flags

        monkeypatch.setattr(packet, "interfaceFlags", interfaceFlags)
        monkeypatch.setattr(packet, "openSocket", lambda name: self.ends[0])
        monkeypatch.setattr(packet.socket, "if_nametoindex", lambda name: 7)
        self.switch = Switch()
        self.service = packet.makeService(self.switch, PortSpec("packet:vtw0"), self.clock)
        self.service.startService()

    def goDown(self) -> None:
        """The kernel reports the interface down on the socket (ENETDOWN)."""
        self.flags = 0
        link = self.service.link
        assert link is not None
        link.connectionLost(OSError(errno.ENETDOWN, "Network is down"))

    def close(self) -> None:
        self.service.stopService()
        self.ends[1].close()


@pytest.fixture
def interface(monkeypatch: pytest.MonkeyPatch) -> Any:
    rig = DownInterface(monkeypatch)
    yield rig
    rig.close()


def test_anInterfaceDeletedWhileDownTakesItsPortDownWithinASecond(interface: Any) -> None:
    """
    Deleted while down (the kernel says nothing more on the socket), the
    interface's port goes down at the next check, a second later at most,
    with the spec in the log; the checks then stop.
    """
    interface.goDown()
    interface.clock.advance(1.0)
    assert interface.service.link is not None
    interface.flags = None
    with capturedLogs() as events:
        interface.clock.advance(1.0)
    assert interface.service.link is None and not interface.switch.ports[1].links
    text = "\n".join(formatEvent(e) for e in events)
    assert "packet:vtw0" in text and "the port goes down" in text, text
    checks = interface.checks
    interface.clock.pump([1.0] * 10)
    assert interface.checks == checks and not interface.clock.getDelayedCalls()


def test_theChecksRunOnlyWhileTheInterfaceIsDown(interface: Any) -> None:
    """
    Up, the interface is never checked; down, once a second; up again,
    the checks stop and the port stays.
    """
    interface.clock.pump([1.0] * 10)
    assert interface.checks == 0
    interface.goDown()
    checks = interface.checks
    interface.clock.pump([1.0] * 3)
    assert interface.checks == checks + 3
    interface.flags = packet.IFF_UP
    interface.clock.pump([1.0] * 10)
    assert interface.checks == checks + 4 and not interface.clock.getDelayedCalls()
    assert interface.service.link is not None and interface.switch.ports[1].links


def test_aPacketTooLongToReadWholeIsAnOversizeDropNotCutShort(interface: Any) -> None:
    """
    A super-frame longer than a read (BIG TCP: a peer's gso_max_size over
    65536) is counted as C{oversize} and logged once with what to do; its
    first 64 KB are not handed on as a shorter super-frame, and the packets
    after it are read.
    """
    other = FakeLink(vnetHeader=True)
    plug(interface.switch, other)
    huge = tcpSuperFrame(BROADCAST, mac(1), bytes(60000), gsoSize=8948) + bytes(10000)
    assert len(huge) > tap.MAX_READ
    normal = tcpSuperFrame(BROADCAST, mac(1), bytes(20000), gsoSize=8948)
    interface.ends[0].setblocking(False)
    interface.ends[1].send(huge)
    interface.ends[1].send(normal)
    link = interface.service.link
    with capturedLogs() as events:
        link.doRead()
        link.doRead()
    assert other.sentPackets == [normal]
    own = interface.switch.ports[1]
    assert own.counters.drops["oversize"] == 1
    text = "\n".join(formatEvent(e) for e in events)
    assert text.count("dropped a frame (oversize)") == 1 and "BIG TCP" in text, text
