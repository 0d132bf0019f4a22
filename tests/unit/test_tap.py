"""
The TAP port type without a kernel (L{tapfakes}): specs, opening and
offload negotiation.  Reads and writes, and what happens when the device
fails, are in test_tapframes.py.
"""

from __future__ import annotations

import errno
import os
import pwd
from collections.abc import Iterator

import pytest
from tapfakes import (
    ALL_OFFLOADS,
    BROADCAST,
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    TSO_OFFLOADS,
    Rig,
    rigged,
    tunnelOf,
)
from twisted.logger import capturedLogs, formatEvent

from vtwisted.ports import tap
from vtwisted.spec import PortSpec, SpecError, quoted
from vtwisted.switch import Switch
from vtwisted.testing import frame, mac
from vtwisted.wire import vnet


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from rigged()


# -- specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    "tap:" + "x" * 16,
    "tap:a/b",
    "tap:a\\:b",
    "tap:a b",
    "tap:a\tb",
    "tap:.",
    "tap:..",
    "tap:",
])
def test_badInterfaceNamesAreRefusedNamingTheSpec(spec: str) -> None:
    """A name Linux would refuse fails at start-up with a message naming the spec."""
    with pytest.raises(SpecError) as e:
        tap.makeService(Switch(), PortSpec(spec), None)
    assert str(e.value).startswith(f"port spec {quoted(spec)}: ")


def test_fifteenCharacterNameIsAccepted() -> None:
    """IFNAMSIZ allows 15 bytes; that many are fine."""
    service = tap.makeService(Switch(), PortSpec("tap:" + "x" * 15), None)
    assert service.deviceName == "x" * 15 and service.offload


def test_specOptionsAreParsed() -> None:
    """offload=off, vlan= and trunk= and port= reach the service; typos are refused."""
    service = tap.makeService(Switch(), PortSpec("tap:t0:offload=off:vlan=10:trunk=20,30:port=4"),
                              None)
    assert not service.offload
    assert (service.options.vlan, service.options.trunk, service.options.number) == \
        (10, [20, 30], 4)
    with pytest.raises(SpecError, match="offload=maybe"):
        tap.makeService(Switch(), PortSpec("tap:t0:offload=maybe"), None)
    with pytest.raises(SpecError, match="unknown option offlaod"):
        tap.makeService(Switch(), PortSpec("tap:t0:offlaod=off"), None)
    with pytest.raises(SpecError, match="unexpected argument"):
        tap.makeService(Switch(), PortSpec("tap:t0:t1"), None)


# -- opening -----------------------------------------------------------------------------------


@pytest.mark.parametrize("refused", ["ioctl", "open"])
def test_withoutCapNetAdminTheErrorSaysWhatToDo(rig: Rig, refused: str) -> None:
    """EPERM names the spec, the device and errno 1 and gives root's ip tuntap command."""
    rig.system.permissions.discard(refused)
    with pytest.raises(OSError) as e:
        rig.tap("tapx1")
    message = str(e.value)
    assert e.value.errno == errno.EPERM
    assert "tap:tapx1" in message and "cannot open TAP device tapx1" in message
    assert "errno 1" in message and "CAP_NET_ADMIN" in message
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert f"as root, ip tuntap add tapx1 mode tap user {me}" in message


def test_busyDeviceSaysAnotherProgramHoldsIt(rig: Rig) -> None:
    """EBUSY (a TAP already open elsewhere) is reported as such."""
    rig.system.setiffError = errno.EBUSY
    with pytest.raises(OSError, match="another program holds it") as e:
        rig.tap("tapx2")
    assert e.value.errno == errno.EBUSY and "tap:tapx2" in str(e.value)


def test_refusedOpenLeavesNoDescriptorBehind(rig: Rig) -> None:
    """A TAP that could not be opened does not keep /dev/net/tun open."""
    rig.system.permissions.discard("ioctl")
    with pytest.raises(OSError):
        rig.tap("tapx3")
    assert rig.system.tunnels() == []


def test_offloadsAreNegotiatedWithTheVnetHeader(rig: Rig) -> None:
    """By default the TAP opens with IFF_VNET_HDR and every offload, USO included."""
    service = rig.tap()
    assert service.link is not None
    tunnel = tunnelOf(service)
    assert tunnel.tunnelMode == IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    assert rig.system.offloadCalls == [ALL_OFFLOADS] and tunnel.offloads == ALL_OFFLOADS
    assert service.link.vnetHeader and service.link.port.vnet
    assert service.link.description == (
        "tap7 offload=csum,tso4,tso6,ecn,uso4,uso6 coalesced 0 datagrams into 0"
    )


def test_kernelWithoutUsoFallsBackToTso(rig: Rig) -> None:
    """EINVAL for the USO bits (older kernels) falls back to checksum and TSO."""
    rig.system.refusedOffloads = 0x20 | 0x40
    service = rig.tap()
    assert service.link is not None
    assert rig.system.offloadCalls == [ALL_OFFLOADS, TSO_OFFLOADS]
    assert tunnelOf(service).offloads == TSO_OFFLOADS
    assert service.link.offloads == TSO_OFFLOADS
    assert service.link.description == "tap7 offload=csum,tso4,tso6,ecn"


def test_usoOffAsksForChecksumAndTsoOnly(rig: Rig) -> None:
    """uso=off leaves USO out of TUNSETOFFLOAD; the spec option is parsed."""
    service = rig.tap(uso=False)
    assert service.link is not None
    assert rig.system.offloadCalls == [TSO_OFFLOADS]
    assert service.link.description == "tap7 offload=csum,tso4,tso6,ecn"
    assert tap.makeService(Switch(), PortSpec("tap:t1:uso=off"), None).uso is False
    assert tap.makeService(Switch(), PortSpec("tap:t1"), None).uso is True


def test_kernelRefusingEveryOffloadStillWorksWithSmallFrames(rig: Rig) -> None:
    """If TUNSETOFFLOAD refuses everything the port still opens (header, no offloads)."""
    rig.system.refusedOffloads = 0x01
    with capturedLogs() as events:
        service = rig.tap()
        assert service.link is not None
    assert service.link.offloads == 0
    assert any("refused every offload" in formatEvent(e) for e in events)
    assert service.link.description == "tap7 offload=none (refused by the kernel)"
    other = rig.link()
    tunnelOf(service).inject(vnet.PLAIN_HEADER + frame(BROADCAST, mac(1)))
    service.link.doRead()
    assert other.sent == [frame(BROADCAST, mac(1))]


def test_offloadOffOpensWithoutTheHeader(rig: Rig) -> None:
    """offload=off opens a plain TAP: no IFF_VNET_HDR, no TUNSETOFFLOAD, plain frames both ways."""
    service = rig.tap(offload=False)
    assert service.link is not None
    tunnel = tunnelOf(service)
    assert tunnel.tunnelMode == IFF_TAP | IFF_NO_PI
    assert rig.system.offloadCalls == []
    assert not service.link.vnetHeader and not service.link.port.vnet
    assert service.link.description == "tap7 offload=off"
    other = rig.link()
    f = frame(BROADCAST, mac(1))
    tunnel.inject(f)
    service.link.doRead()
    assert other.sent == [f]
    g = frame(BROADCAST, mac(2))
    other.receive(g)
    assert tunnel.written() == [g]
