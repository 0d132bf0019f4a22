"""
The files of a VDE directory (L{vtwisted.ports.vdefiles}): the switch
removes the ones it made, never the ones it did not, and says why a
directory stays.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from vtwisted.ports.vde import VdeControlProtocol, VdeSwitchDirectory
from vtwisted.ports.vdefiles import DATA_SOCKET_NAME, DirectoryFiles
from vtwisted.switch import Switch
from vtwisted.wire import vdecontrol


def warned(events: Sequence[dict[str, Any]], text: str) -> list[str]:
    """The warnings among C{events} whose format holds C{text}, formatted."""
    from twisted.logger import LogLevel, formatEvent

    return [formatEvent(e) for e in events
            if e.get("log_level") == LogLevel.warn and text in e.get("log_format", "")]


def test_aDataSocketTheSwitchCouldNotSetUpIsRemoved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A client refused because its data socket, once bound, could not be
    given its mode leaves no socket file of the switch's in the directory,
    which can then go at the stop.
    """
    directory = VdeSwitchDirectory(Switch(numPorts=4), Clock(), str(tmp_path / "sw"))
    directory.files.prepare()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(str(tmp_path / "client"))
    realChmod = os.chmod

    def chmod(path: Any, mode: int, **kwargs: Any) -> None:
        if DATA_SOCKET_NAME.match(os.path.basename(str(path))):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        realChmod(path, mode, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    control = VdeControlProtocol(directory)
    transport = StringTransport()
    control.makeConnection(transport)
    with capturedLogs() as events:
        control.dataReceived(vdecontrol.packRequest(str(tmp_path / "client").encode()))
    client.close()
    assert transport.disconnecting and transport.value() == b""
    assert "cannot bind a data socket: Operation not permitted" in directory.rejections
    assert os.listdir(directory.directory) == []
    directory.files.remove()
    assert not os.path.exists(directory.directory)
    assert warned(events, "stays") == []


def test_aDirectoryHoldingAClientsSocketStaysAndTheLogSaysWhy(tmp_path: Path) -> None:
    """
    A client's own socket (libvdeplug's C{.PID-SEQ}, left by a client killed
    in its handshake) is not the switch's to remove: it stays, so does the
    directory, as with vde_switch, and the log names what is left.
    """
    path = tmp_path / "sw"
    files = DirectoryFiles(str(path), 0o600, 0o2700, None, "vde:sw")
    files.prepare()
    left = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.bind(str(path / ".01994-00000"))
    left.close()
    with capturedLogs() as events:
        files.remove()
    assert stat.S_ISSOCK(os.lstat(path / ".01994-00000").st_mode)
    assert warned(events, "stays") == [
        f"vde:sw: {path} stays: it holds files the switch did not make (.01994-00000)"]


def test_theLogNamesAFewOfManyFilesLeft(tmp_path: Path) -> None:
    """A directory holding many files is named with the first five and a count."""
    path = tmp_path / "sw"
    files = DirectoryFiles(str(path), 0o600, 0o2700, None, "vde:sw")
    files.prepare()
    for n in range(8):
        (path / f"f{n}").write_text("")
    with capturedLogs() as events:
        files.remove()
    assert warned(events, "stays") == [
        f"vde:sw: {path} stays: it holds files the switch did not make "
        "(f0 f1 f2 f3 f4 and 3 more)"]


def test_aDirectoryAlreadyGoneIsNoWarning(tmp_path: Path) -> None:
    """Stopping after someone removed the directory says nothing."""
    files = DirectoryFiles(str(tmp_path / "sw"), 0o600, 0o2700, None, "vde:sw")
    with capturedLogs() as events:
        files.remove()
    assert warned(events, "") == []


def test_vdeStillOffersTheNamesItDid() -> None:
    """
    Code that imported the directory's names from vtwisted.ports.vde before
    they moved to vdefiles still finds them there.
    """
    import vtwisted.ports.vde as vde
    import vtwisted.ports.vdefiles as vdefiles

    for name in ("DATA_SOCKET_NAME", "DEFAULT_DIRMODE", "DEFAULT_MODE", "defaultDirectory",
                 "deriveModes"):
        assert getattr(vde, name) is getattr(vdefiles, name), name
    assert set(vde.__all__) <= set(vars(vde))
