"""
The switch service: its clock drives MAC aging; ports come and go at run time.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from vtwisted.app import buildService
from vtwisted.testing import FakeLink, frame, mac, plug

BROADCAST = b"\xff" * 6


def test_serviceClockAgesTheMacTable() -> None:
    """With the service running, an address silent past --macaddr-ttl is forgotten."""
    clock = Clock()
    clock.advance(1000)
    service = buildService(clock, [], macTtl=30, defaultSock=False)
    service.startService()
    try:
        a, b = FakeLink(), FakeLink()
        plug(service.switch, a)
        plug(service.switch, b)
        b.receive(frame(BROADCAST, mac(2)))
        clock.pump([1] * 20)
        assert service.switch.fdb.lookup(0, mac(2)) is not None
        clock.pump([1] * 15)
        assert service.switch.fdb.lookup(0, mac(2)) is None
        a.receive(frame(mac(2), mac(1)))
        assert b.sent, "unknown again, so flooded"
    finally:
        service.stopService()


def test_stoppedServiceStopsItsClock() -> None:
    """After stopService no timer is left behind on the reactor."""
    clock = Clock()
    service = buildService(clock, [], defaultSock=False)
    service.startService()
    assert clock.getDelayedCalls()
    service.stopService()
    assert not clock.getDelayedCalls()


def test_aPortThatCannotStartEndsTwistdWithItsMessage(tmp_path) -> None:
    """
    Under twistd (exitOnFailure), a port that cannot start ends the program
    with one line naming the spec, the path and the errno; a service of
    one's own raises the error itself.
    """
    import errno

    import pytest
    from twisted.internet import reactor

    spec = f"qemu:unix:{tmp_path}/missing/vm.sock"
    service = buildService(reactor, [spec], defaultSock=False)
    with pytest.raises(OSError) as raised:
        service.privilegedStartService()
        service.startService()
    assert raised.value.errno == errno.ENOENT
    service = buildService(reactor, [spec], defaultSock=False)
    service.exitOnFailure = True
    with pytest.raises(SystemExit) as exited:
        service.privilegedStartService()
        service.startService()
    assert str(exited.value.code) == (f"vswitch: {spec}: cannot listen: No such file or "
                                      "directory (errno 2)")


def test_aDaemonsParentIsToldOnlyOnceTheLogHasTheLineAndTheFilesAreGone(tmp_path) -> None:
    """
    A daemon's start that fails tells its waiting parent (which then exits,
    and whoever ran twistd reads the log) only after the line is in the
    log and the directory and the pid file are gone: telling it first let
    a busy machine's test read the log before the line was there.
    """
    import os
    import select
    from typing import cast

    from twisted.logger import ILogObserver, globalLogPublisher

    read, write = os.pipe()
    pidFile = tmp_path / "sw.pid"
    pidFile.write_text(str(os.getpid()))
    directory = tmp_path / "sw"
    spec = f"vde:{directory}:group=0"
    service = buildService(MemoryReactorClock(), [spec], defaultSock=False)
    service.exitOnFailure = True
    service.pidFile = str(pidFile)
    service.runner = {"statusPipe": write, "pidfile": str(pidFile)}
    seen = []

    def observer(event: dict) -> None:
        if event.get("log_format") == "{line}" and event.get("line", "").startswith("vswitch:"):
            toldAlready = bool(select.select([read], [], [], 0)[0])
            seen.append((toldAlready, directory.exists(), pidFile.exists()))

    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    try:
        with pytest.MonkeyPatch.context() as patch:
            def chown(path, uid, gid) -> None:
                raise PermissionError(1, "Operation not permitted")

            patch.setattr(os, "chown", chown)
            with pytest.raises(SystemExit) as exited:
                service.privilegedStartService()
                service.startService()
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, observer))
    assert exited.value.code == 1
    assert seen == [(False, False, False)]
    told = os.read(read, 200)
    os.close(read)
    line = f"{spec}: cannot set group of {directory}: Operation not permitted (errno 1)"
    assert told == (b"1 " + line.encode())[:100]


def test_startFailuresWithoutAnErrnoInTheirTextGetOne(tmp_path) -> None:
    """
    A VDE directory that cannot be made ends twistd with the spec, the path,
    the reason and the errno.
    """
    spec = f"vde:{tmp_path}/missing/sw"
    service = buildService(MemoryReactorClock(), [spec], defaultSock=False)
    service.exitOnFailure = True
    with pytest.raises(SystemExit) as exited:
        service.privilegedStartService()
        service.startService()
    assert str(exited.value.code) == (f"vswitch: {spec}: cannot create {tmp_path}/missing/sw: "
                                      "No such file or directory (errno 2)")


def test_listenErrorsSayTheReasonAndErrnoOnce() -> None:
    """
    Twisted's CannotListenError and a plain OSError both become "WHAT:
    REASON (errno N)", never with Python's [Errno N] as well.
    """
    import errno

    from twisted.internet.error import CannotListenError

    from vtwisted.sockettools import listenError

    inUse = OSError(errno.EADDRINUSE, "Address already in use")
    for error in (CannotListenError("127.0.0.1", 7, inUse), inUse):
        made = listenError("qemu:tcp:7", error)
        assert (made.errno, str(made.strerror)) == (
            errno.EADDRINUSE, "qemu:tcp:7: Address already in use (errno 98)")


def test_aPrivilegedPortRefusedSaysWhyAndWhatAllowsIt(tmp_path, monkeypatch) -> None:
    """
    EACCES on a port below net.ipv4.ip_unprivileged_port_start (an
    unprivileged user's slirp forward or manhole on port 80) says that the
    port needs root and how to get it; a higher port, another errno or an
    error without a port (a Unix socket) keeps the plain message.
    """
    import errno

    from twisted.internet.error import CannotListenError

    from vtwisted import sockettools
    from vtwisted.sockettools import listenError, privilegedPortAdvice

    sysctl = tmp_path / "start"
    sysctl.write_text("1024\n")
    monkeypatch.setattr(sockettools, "UNPRIVILEGED_PORT_START", str(sysctl))
    denied = OSError(errno.EACCES, "Permission denied")
    made = listenError("slirp: cannot forward tcp:127.0.0.1:80-10.0.2.15:22",
                       CannotListenError("127.0.0.1", 80, denied))
    assert made.errno == errno.EACCES
    text = str(made.strerror)
    assert text.startswith("slirp: cannot forward tcp:127.0.0.1:80-10.0.2.15:22: "
                           "Permission denied (errno 13); ports below 1024 ")
    assert "need root or CAP_NET_BIND_SERVICE" in text and "twistd --uid" in text
    sysctl.write_text("80\n")
    assert privilegedPortAdvice(80, errno.EACCES, str(sysctl)) == ""
    assert "ports below 80 " in privilegedPortAdvice(79, errno.EACCES, str(sysctl))
    for port, number in ((80, errno.EADDRINUSE), (None, errno.EACCES), (0, errno.EACCES)):
        assert privilegedPortAdvice(port, number, str(sysctl)) == ""
    assert str(listenError("x", denied).strerror) == "x: Permission denied (errno 13)"


def test_onlyStaleDataSocketsAreRemoved(tmp_path) -> None:
    """
    Stale sockets named like data sockets go; a socket still held (a live
    switch's, connected to its client), other names and other files stay.
    """
    import re
    import socket

    from vtwisted.sockettools import removeStaleDatagramSockets

    held = []
    for name in ("001.7", "002.9", "003.11", "notes.3"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(tmp_path / name))
        held.append(sock)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(str(tmp_path / "client"))
    held[1].connect(str(tmp_path / "client"))
    held[0].close()
    held[2].close()
    held[3].close()
    (tmp_path / "004.5").write_text("not a socket")
    removed = removeStaleDatagramSockets(str(tmp_path), re.compile(r"\d{3,}\.\d+$"))
    assert removed == ["001.7", "003.11"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["002.9", "004.5", "client", "notes.3"]
    held[1].close()
    client.close()
