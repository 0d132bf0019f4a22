"""
Bad input at TAP ports: names Linux cannot take as given, errors opening
the device (each saying what to do), virtio-net headers the kernel would
refuse, and frames still queued for a device that is gone.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import struct
import subprocess
from collections.abc import Iterator

import pytest
from tapfakes import BROADCAST, Rig, rigged, tunnelOf
from tapnamespaces import _inNamespace, needKernel
from twisted.internet.task import Clock
from vnetpackets import ARP

from vtwisted.ports import tap
from vtwisted.ports.tapdevice import _permissionAdvice, openError
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import frame, mac
from vtwisted.wire import vnet, vnetcheck


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from rigged()


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "audéééééééé",   # 11 characters, 19 bytes: the kernel would make "audéééééé"
    "ééééééééé",     # 9 characters, 18 bytes: cut inside a character
    "aud\x00x",      # the kernel reads "aud": another device
])
def test_namesLinuxCannotTakeAsGivenAreRefused(name: str) -> None:
    """IFNAMSIZ counts bytes, and a NUL ends the name: such names must be refused."""
    with pytest.raises(SpecError):
        tap.makeService(Switch(), PortSpec(f"tap:{name}"), None)


#: Names at the edges of what Linux's dev_valid_name() takes: its isspace()
#: counts the byte 0xA0, found in the UTF-8 of "à" (C3 A0) and of U+00A0.
EDGE_NAMES = ["vtà", "vt\u00a0x", "vtéx", "vt\x85x", "vt\u2003x", "vt%x", "vt.x", "vt-_+x"]


@pytest.mark.integration
def test_everyNameTheSpecTakesTheKernelTakesToo() -> None:
    """
    Each edge name is refused by the spec or created by the kernel, never
    left for TUNSETIFF to refuse with EINVAL (whose advice is about another
    kind of device).  The devices live in a namespace of the test's own.
    """
    needKernel()
    namespace = f"vtnames-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        refusedByKernel = _inNamespace(namespace, lambda: [
            name for name in EDGE_NAMES if _specTakes(name) and not _kernelTakes(name)
        ])
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    assert refusedByKernel == []
    assert not _specTakes("vtà") and _specTakes("vté")


def _specTakes(name: str) -> bool:
    try:
        tap.makeService(Switch(), PortSpec(f"tap:{name}"), None)
    except SpecError:
        return False
    return True


def _kernelTakes(name: str) -> bool:
    """
    Whether TUNSETIFF makes a TAP called C{name} (closed at once: it goes).
    """
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, tap.TUNSETIFF, struct.pack("16sH", name.encode(), 0x1002))
    except OSError as e:
        assert e.errno == errno.EINVAL, e
        return False
    finally:
        os.close(fd)
    return True


# -- errors ------------------------------------------------------------------------------------


def test_permissionDeniedOnTheTunDeviceNamesItAndSaysWhatToDo() -> None:
    """
    An unprivileged user gets EACCES (not EPERM) when /dev/net/tun is 0600, as it
    is on this machine: the message must name /dev/net/tun and give advice.
    """
    error = openError("tap:t0", "t0", PermissionError(errno.EACCES, "Permission denied"))
    assert "/dev/net/tun" in str(error)


# -- never write what the kernel refuses -------------------------------------------------------


def _header(flags: int, hdrLen: int, csumStart: int, csumOffset: int) -> bytes:
    return struct.pack("<BBHHHH", flags, 0, hdrLen, 0, csumStart, csumOffset)


@pytest.mark.parametrize("hdrLen", [1, 13])
def test_hdrLenShorterThanAnEthernetHeaderIsUnsafe(hdrLen: int) -> None:
    """tun_get_user: hdr_len && hdr_len < ETH_HLEN -> EINVAL (checked on Linux 6.18)."""
    packet = _header(0, hdrLen, 0, 0) + ARP[vnet.HEADER_LENGTH:]
    assert vnetcheck.validate(packet) is not None


@pytest.mark.parametrize("csumStart", [0, 14, 19])
def test_partialChecksumStartingBeforeAnIpHeaderIsUnsafe(csumStart: int) -> None:
    """
    virtio_net_hdr_to_skb: NEEDS_CSUM with a transport offset below sizeof(struct iphdr)
    -> EINVAL, GSO or not (checked on Linux 6.18: 19 refused, 20 accepted).
    """
    packet = _header(vnet.NEEDS_CSUM, 0, csumStart, 16) + ARP[vnet.HEADER_LENGTH:]
    assert vnetcheck.validate(packet) is not None


# -- a device gone with frames still delayed ---------------------------------------------------


def test_framesDelayedForAVanishedTapAreNeverWrittenToItsOldDescriptor(rig: Rig) -> None:
    """
    tap:NAME:delay=MS: frames queued by the impairment hold the TAP's sender, a closure
    over the raw descriptor number.  Once the device is gone and its descriptor closed,
    they must not be written: the number is reused by the next descriptor the switch
    opens (seen for real: a console connection received the frames).
    """
    clock = Clock()
    rig.switch.clock = clock
    gone = rig.tap("tapgone", options="delay=100")
    assert gone.link is not None
    oldFd = gone.link.fileno()
    other = rig.link()
    writes: list[int] = []
    realWritev, realWrite = rig.system.writev, rig.system.write

    def spyWritev(fd: int, buffers: list[bytes]) -> int:
        writes.append(fd)
        return realWritev(fd, buffers)

    def spyWrite(fd: int, data: bytes) -> int:
        writes.append(fd)
        return realWrite(fd, data)

    rig.system.writev = spyWritev  # type: ignore[method-assign]
    rig.system.write = spyWrite  # type: ignore[method-assign]
    gone.link._makeSenders()
    gone.link.port.rewire()
    other.receive(frame(BROADCAST, mac(1)))
    tunnel = tunnelOf(gone)
    tunnel.readError = errno.EBADFD
    gone.link.doRead()  # the device is gone: the port goes down, the descriptor closes
    assert gone.link is None
    writes.clear()
    clock.advance(1)
    assert oldFd not in writes, "a delayed frame was written to the closed descriptor"


def _nameOf(owner: str, group: str) -> str:
    """" (NAME)" of the device's user, else of its group, where it has one."""
    try:
        if int(owner) != -1:
            return f" ({pwd.getpwuid(int(owner)).pw_name})"
        if int(group) != -1:
            return f" ({grp.getgrgid(int(group)).gr_name})"
    except KeyError:
        pass
    return ""


@pytest.mark.parametrize("owner, group, whose", [
    ("65534\n", "-1\n", "belongs to user 65534{name},"),
    ("-1\n", "100\n", "belongs to group 100{name},"),
    ("-1\n", "-1\n", "belongs to no user,"),
])
def test_anExistingDeviceNotOursIsNamedWithItsOwner(tmp_path, owner, group, whose) -> None:
    """
    EPERM on a device that exists: the advice says whose it is and how to
    make it ours (adding it again would fail: it exists).
    """
    device = tmp_path / "t0"
    device.mkdir()
    (device / "owner").write_text(owner)
    (device / "group").write_text(group)
    advice = _permissionAdvice("t0", str(tmp_path))
    assert whose.format(name=_nameOf(owner, group)) in advice
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert f"not to you (uid {os.geteuid()}, {me})" in advice
    assert ("as root make it yours: ip tuntap del t0 mode tap; "
            f"ip tuntap add t0 mode tap user {me}") in advice


def test_aMissingDeviceIsToBeMadeOurs(tmp_path) -> None:
    """
    EPERM with no such device: root is to make one that is ours, named by
    our user name: C{$USER} in the command would be root's in root's shell.
    """
    advice = _permissionAdvice("t0", str(tmp_path))
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert advice.endswith(
        f"must exist and belong to you: as root, ip tuntap add t0 mode tap user {me}")
    assert "$USER" not in advice
