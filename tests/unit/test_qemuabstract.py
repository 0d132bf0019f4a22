"""
Linux abstract Unix socket names on stream ports (C{qemu:unix:NAME:abstract=on},
QEMU's C{addr.abstract=on}): what a spec builds, what it refuses, and how an
abstract name is shown.  Real sockets and real QEMU guests on abstract names
are in tests/integration/test_qemu_abstract.py.
"""

from __future__ import annotations

import os
import socket

import pytest
from twisted.internet.address import UNIXAddress
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.testing import MemoryReactorClock

from vtwisted.ports import cable, dgram, qemu, vhostuser
from vtwisted.sockettools import abstractAddress, describePeer, unixAddressText
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch

#: A name no other test run uses.
NAME = f"vtw-abstract-unit-{os.getpid()}"


def make(text: str) -> object:
    return qemu.makeService(Switch(), PortSpec(text), MemoryReactorClock())


def test_aListenerBindsTheAbstractNameWithNoFileOptions() -> None:
    """
    C{abstract=on} binds C{"\\0NAME"}, the name's own length (QEMU's
    default C{tight=on}); no mode (there is no file to chmod) and no lock
    file beside it; the switch's own keywords are still taken out.
    """
    service = make(f"qemu:unix:{NAME}:abstract=on:vlan=3")
    assert isinstance(service, qemu.QemuListener)
    endpoint = service.endpoint
    assert isinstance(endpoint, UNIXServerEndpoint)
    assert endpoint._address == f"\0{NAME}"
    assert service.unixPath == f"\0{NAME}"
    assert endpoint._wantPID is False
    assert service.options.vlan == 3
    keyword = make(f"qemu:listen:unix:address={NAME}:abstract=on")
    assert keyword.endpoint._address == f"\0{NAME}"  # type: ignore[attr-defined]


def test_aConnectorDialsTheNameTightOrPadded() -> None:
    """
    C{tight=off} pads the name with NULs to the whole 108-byte C{sun_path},
    as QEMU's C{tight=off} does (a different address from the tight one);
    C{port/allprint} shows what it dials as C{unix:@NAME}.
    """
    tight = make(f"qemu:connect:unix:{NAME}:abstract=on")
    assert isinstance(tight, qemu.QemuConnector)
    assert isinstance(tight.endpoint, UNIXClientEndpoint)
    assert tight.endpoint._path == f"\0{NAME}"
    assert tight.target == f"unix:@{NAME}"
    padded = make(f"qemu:connect:unix:path={NAME}:abstract=on:tight=off:timeout=5")
    assert isinstance(padded, qemu.QemuConnector)
    path = padded.endpoint._path
    assert len(path) == 108 and path == f"\0{NAME}".ljust(108, "\0")
    assert padded.endpoint._timeout == 5
    assert padded.target == f"unix:path=@{NAME} (tight=off):timeout=5"
    assert "(tight=off)" in padded.downState()


def test_withoutAbstractAnAtSignIsAFileAsBefore() -> None:
    """A path is a file unless C{abstract=on} says otherwise, C{@} or not."""
    service = make("qemu:unix:@vm0")
    assert service.endpoint._address == "@vm0"  # type: ignore[attr-defined]
    assert service.endpoint._mode == 0o600  # type: ignore[attr-defined]
    assert make("qemu:unix:vm0:abstract=off").unixPath == "vm0"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("qemu:tcp:5555:abstract=on", "abstract= is for Linux's abstract Unix socket names: "
                                      "only a unix: endpoint has one, not tcp:"),
        ("qemu:connect:tcp:host=127.0.0.1:port=5:tight=off", "not tcp:"),
        ("qemu:unix:vm0:tight=off", "tight= is for abstract names: give abstract=on too"),
        ("qemu:unix:vm0:abstract=on:mode=666", "mode= with abstract=on: an abstract name is "
                                               "no file and has no permissions; anyone in "
                                               "the switch's network namespace"),
        ("qemu:unix:vm0:abstract=on:lockfile=1", "lockfile= with abstract=on"),
        ("qemu:unix:abstract=on", "abstract=on needs a name, as in qemu:unix:NAME:abstract=on"),
        ("qemu:connect:unix:abstract=on",
         "abstract=on needs a name, as in qemu:connect:unix:NAME:abstract=on"),
        ("qemu:unix:" + "n" * 108 + ":abstract=on", "is 1 to 107 bytes long, not 108"),
        ("qemu:unix:vm0:abstract=sometimes", "abstract='sometimes' is not on or off"),
    ],
)
def test_abstractKeywordsWhereTheyMeanNothingAreRefused(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        make(text)
    assert text in str(info.value) and problem in str(info.value)


def test_theOtherStreamPortTypesTakeAbstractNamesToo() -> None:
    """C{vhostuser:connect:} and C{cable:} read their endpoints the same way."""
    host = vhostuser.makeService(Switch(), PortSpec(f"vhostuser:connect:unix:{NAME}:abstract=on"),
                                 MemoryReactorClock())
    assert host.endpoint._path == f"\0{NAME}"
    joined = cable.makeService(Switch(), PortSpec(f"cable:listen:unix:{NAME}:abstract=on:tls=off"),
                               MemoryReactorClock())
    assert joined.endpoint._address == f"\0{NAME}"  # type: ignore[attr-defined]


def test_aVhostUserListenerRefusesAnAbstractName() -> None:
    """
    Whoever connects to a vhost-user socket shares memory with the switch:
    only a file's permissions can say who may, and an abstract name has none.
    """
    text = f"vhostuser:unix:{NAME}:abstract=on"
    with pytest.raises(SpecError) as info:
        vhostuser.makeService(Switch(), PortSpec(text), MemoryReactorClock())
    assert "shares memory with the switch" in str(info.value)
    assert "anyone in the network namespace may connect" in str(info.value)


def test_datagramPortsRefuseAbstractNamesThatQemuWouldNotUse() -> None:
    """
    QEMU's C{-netdev dgram} binds a file even with C{local.abstract=on}:
    a C{dgram:unix:} port with an abstract name would never meet it.
    """
    text = f"dgram:unix:{NAME}:{NAME}-q:abstract=on"
    with pytest.raises(SpecError) as info:
        dgram.makeService(Switch(), PortSpec(text), MemoryReactorClock())
    assert "binds and sends to files even with local.abstract=on" in str(info.value)


def test_abstractNamesAreShownAsSsShowsThem() -> None:
    """C{@NAME}, as C{ss -x} does; a padded name says it is C{tight=off}."""
    assert unixAddressText(abstractAddress("vm0")) == "@vm0"
    assert unixAddressText(abstractAddress("vm0").encode()) == "@vm0"
    assert unixAddressText(abstractAddress("vm0", tight=False).encode()) == "@vm0 (tight=off)"
    assert unixAddressText("/run/vm.sock") == "/run/vm.sock"
    assert unixAddressText(abstractAddress("n" * 107, tight=False)) == "@" + "n" * 107


def test_aPeerOnAnAbstractNameIsShownWithIt() -> None:
    """
    C{port/print} names the peer's process and the abstract name it
    connected to (the kernel gives it as bytes with a leading NUL).
    """
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(abstractAddress(NAME))
        server.listen(1)
        client.connect(abstractAddress(NAME))
        accepted, _ = server.accept()
        with accepted:
            uid, text = describePeer(UNIXAddress(None), accepted)
    finally:
        client.close()
        server.close()
    assert uid == os.getuid()
    assert text.endswith(f"pid {os.getpid()} on @{NAME}"), text
