"""
The C{packet:} port's pieces that need no interface: putting back a tag the
interface stripped (with and without the virtio-net header), its spec, and
the errors that say what to do.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest
from helpers import needRoot

from vtwisted.ports import packet
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import frame, mac, tcpSuperFrame
from vtwisted.wire import vnet


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
