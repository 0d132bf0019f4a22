"""
The console socket service and the management options of C{twistd vswitch}.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest
from consolefakes import makeOperations
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from vtwisted.app import Options, buildService
from vtwisted.consoleservice import ConsoleService, RcFileService
from vtwisted.manhole import ManholeService


def test_consoleListensWithModeAndRegisters(tmp_path) -> None:
    """The service listens on the path with the mode asked, and showinfo knows it."""
    ops = makeOperations()[0]
    reactor = MemoryReactor()
    path = str(tmp_path / "mgmt")
    service = ConsoleService(ops, reactor, path, mode=0o660)
    service.startService()
    (listened,) = reactor.unixServers
    assert (listened[0], listened[3]) == (path, 0o660)
    assert ops.info().consoles == ((path, 0o660),)
    service.stopService()
    assert ops.info().consoles == ()


def test_staleSocketIsReplaced(tmp_path) -> None:
    """A socket file nobody listens on is removed before listening."""
    path = str(tmp_path / "mgmt")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    ConsoleService(makeOperations()[0], MemoryReactor(), path).startService()
    assert not os.path.exists(path)  # MemoryReactor does not bind


def test_liveSocketStopsStartUp(tmp_path) -> None:
    """A console already answering at the path is an EADDRINUSE naming it."""
    path = str(tmp_path / "mgmt")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    try:
        service = ConsoleService(makeOperations()[0], MemoryReactor(), path)
        with pytest.raises(OSError) as info:
            service.startService()
    finally:
        live.close()
    assert info.value.errno == errno.EADDRINUSE
    assert path in str(info.value) and os.path.exists(path)


def test_regularFileIsNeverRemoved(tmp_path) -> None:
    """--mgmt naming an ordinary file fails and leaves the file alone."""
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    service = ConsoleService(makeOperations()[0], MemoryReactor(), str(path))
    with pytest.raises(OSError, match="not a socket"):
        service.startService()
    assert path.read_text() == "keep me"


def test_pathTooLongIsRefused(tmp_path) -> None:
    """A socket path over 107 bytes is refused when the service is built."""
    with pytest.raises(ValueError, match="longer than 107"):
        ConsoleService(makeOperations()[0], MemoryReactor(), "/tmp/" + "x" * 120)


def test_missingRcFileIsLoggedNotFatal(tmp_path) -> None:
    """An rc file that vanished before start is one logged failure."""
    ops = makeOperations()[0]
    from vtwisted.console import CommandInterpreter

    clock = Clock()
    service = RcFileService(CommandInterpreter(ops), str(tmp_path / "gone.rc"), clock)
    service.startService()
    clock.advance(0)
    assert service.failures == 1


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(["--sock", "/tmp/vtw-unit-opts", *argv])
    return options


def test_managementOptions(tmp_path) -> None:
    """--mgmt, --mgmt-mode (and vde's --mgmtmode) and --rcfile reach the service."""
    rc = tmp_path / "vde.rc"
    rc.write_text("vlan/create 10\n")
    options = parse("--mgmt", str(tmp_path / "m"), "--mgmtmode", "0660", "--rcfile", str(rc))
    assert options["mgmt-mode"] == 0o660
    service = options.build(MemoryReactor())
    kinds = [type(child).__name__ for child in service]
    assert kinds[-2:] == ["ConsoleService", "RcFileService"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mgmt-mode", "99"], "octal"),
        (["--mgmt-mode", "1777"], "permission mode"),
        (["--rcfile", "/no/such/file.rc"], "no such file"),
        (["--mgmt", "/tmp/m", "--mgmt-group", "nosuchgroup-vtw"], "no such group"),
        (["--manhole", "2222"], "--manhole-keys"),
        (["--manhole-keys", "/etc/hostname"], "need --manhole"),
        (["--manhole", "2222", "--manhole-keys", "/no/such/keys"], "--manhole-keys"),
    ],
)
def test_badManagementOptionsAreUsageErrors(argv, message) -> None:
    """Each wrong management option stops start-up with a message naming it."""
    with pytest.raises((usage.UsageError, ValueError), match=message):
        parse(*argv)


def test_manholeOptionBuildsALoopbackService(tmp_path) -> None:
    """--manhole PORT with keys adds a manhole bound to 127.0.0.1."""
    keys = tmp_path / "authorized_keys"
    keys.write_text("")
    service = buildService(
        MemoryReactor(), ["vde:/tmp/vtw-unit-mh"], manhole="2222", manholeKeys=str(keys),
        manholeHostKey=str(tmp_path / "hostkey"),
    )
    (manhole,) = [c for c in service if isinstance(c, ManholeService)]
    assert manhole.endpointText == "tcp:2222:interface=127.0.0.1"
    assert not (tmp_path / "hostkey").exists()


def test_defaultRcFileIsTheFirstThatExists(tmp_path) -> None:
    """Without --rcfile, vde_switch's ~/.vde2/vde_switch.rc, then /etc's, is used."""
    from vtwisted.consoleservice import defaultRcFile

    home, system = tmp_path / "home.rc", tmp_path / "etc.rc"
    assert defaultRcFile((str(home), str(system))) is None
    system.write_text("vlan/create 3\n")
    assert defaultRcFile((str(home), str(system))) == str(system)
    home.write_text("vlan/create 4\n")
    assert defaultRcFile((str(home), str(system))) == str(home)


def test_stdinNeedsTwistdNodaemon() -> None:
    """twistd without -n has no standard input: --stdin is refused, saying why."""
    from twisted.scripts.twistd import ServerOptions

    config = ServerOptions()
    with pytest.raises(usage.UsageError, match="--stdin needs twistd -n"):
        config.parseOptions(["vswitch", "--sock", "/tmp/vtw-unit-stdin", "--stdin"])
    config = ServerOptions()
    config.parseOptions(["-n", "vswitch", "--sock", "/tmp/vtw-unit-stdin", "--stdin"])
    assert config.subOptions["stdin"]
