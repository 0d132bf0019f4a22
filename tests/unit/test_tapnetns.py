"""
C{tap:NAME:netns=NS} without a kernel: the spec, the errors, and what
happens to the device when the move fails (L{tapfakes}).  The kernel's side
is in tests/integration/test_tap_namespaces.py.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from tapfakes import Rig, rigged

from vtwisted.ports import tap, tapnetns
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from rigged()


def test_aNameIsOneOfIpNetns() -> None:
    """netns=NAME is ip netns' file for NAME; the device is brought up."""
    service = tap.makeService(Switch(), PortSpec("tap:t0:netns=lab2"), None)
    assert service.netns == tapnetns.Namespace("lab2", "/run/netns/lab2", True)


def test_aPathIsTakenAsItIs() -> None:
    """A netns= with a slash is a namespace file's path; up=off leaves the device down."""
    service = tap.makeService(Switch(), PortSpec("tap:t0:netns=/proc/42/ns/net:up=off"), None)
    assert service.netns == tapnetns.Namespace("/proc/42/ns/net", "/proc/42/ns/net", False)


def test_noNamespaceNoMove() -> None:
    """Without netns= the device stays where the switch is."""
    assert tap.makeService(Switch(), PortSpec("tap:t0"), None).netns is None


@pytest.mark.parametrize("spec, problem", [
    ("tap:t0:up=on", "up= goes with netns="),
    ("tap:t0:netns=", "neither a name of 'ip netns' nor a path"),
    ("tap:t0:netns=..", "neither a name of 'ip netns' nor a path"),
    ("tap:t0:netns=a:netns=b", "netns= is given 2 times"),
    ("tap:t0:netns=a:up=maybe", "up"),
])
def test_badNamespaceSpecs(spec: str, problem: str) -> None:
    """Specs that cannot mean a namespace are refused, saying why."""
    with pytest.raises(SpecError) as caught:
        tap.makeService(Switch(), PortSpec(spec), None)
    assert problem in str(caught.value)


def test_missingNamespaceSaysHowToMakeIt(tmp_path: Path) -> None:
    """A name with no file says how to create it; a path says the process may be gone."""
    with pytest.raises(OSError) as caught:
        tapnetns.openNamespace("tap:t0:netns=lab9", "lab9", str(tmp_path / "lab9"))
    text = str(caught.value)
    assert caught.value.errno == errno.ENOENT
    assert "tap:t0:netns=lab9: cannot open network namespace lab9" in text
    assert "(errno 2); create it with 'ip netns add lab9'" in text
    path = str(tmp_path / "ns")
    with pytest.raises(OSError) as caught:
        tapnetns.openNamespace("tap:t0", path, path)
    assert f"namespace {path}: No such file or directory (errno 2); is the process" in str(
        caught.value)


def _failingMover(code: int) -> object:
    def mover(name: str, namespace: int, up: bool) -> None:
        raise OSError(code, "refused")

    return mover


@pytest.mark.parametrize("code, advice", [
    (errno.EEXIST, "the namespace has an interface named t5 already"),
    (errno.EPERM, "moving a device needs CAP_NET_ADMIN in both namespaces"),
    (errno.EINVAL, "is it a network namespace file?"),
])
def test_failedMoveClosesTheDevice(rig: Rig, tmp_path: Path, code: int, advice: str) -> None:
    """A device that cannot be moved is closed again, and the error says what to do."""
    namespace = tmp_path / "ns"
    namespace.write_bytes(b"")
    service = tap.TapService(rig.switch, rig.reactor, "t5", spec="tap:t5:netns=x",
                             system=rig.system,
                             netns=tapnetns.Namespace("x", str(namespace)))
    service.mover = _failingMover(code)
    with pytest.raises(OSError) as caught:
        service.bind()
    assert caught.value.errno == code
    assert str(caught.value.strerror).startswith(
        f"tap:t5:netns=x: cannot move TAP device t5 into network namespace x ({namespace}): "
        f"refused (errno {code}); {advice}")
    assert service.link is None
    assert rig.system.tunnels() == [], "the device's descriptor is closed"


def test_movedDeviceSaysWhere(rig: Rig, tmp_path: Path) -> None:
    """A moved device is moved by its name, up, and port/print names its namespace."""
    namespace = tmp_path / "ns"
    namespace.write_bytes(b"")
    moves: list[tuple[str, bool]] = []
    service = tap.TapService(rig.switch, rig.reactor, "t6", spec="tap:t6:netns=lab3",
                             system=rig.system,
                             netns=tapnetns.Namespace("lab3", str(namespace)))
    service.mover = lambda name, fd, up: moves.append((name, up))
    service.bind()
    assert moves == [("t6", True)]
    assert service.link is not None
    assert service.link.description.startswith("t6 in netns lab3 offload=csum,")
    service.linkGone(service.link)
