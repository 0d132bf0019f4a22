"""
C{qemu:} ports on Linux abstract Unix socket names (C{unix:NAME:abstract=on},
QEMU's C{addr.abstract=on}): real sockets in this process's reactor, a
cable between two switches, then two real QEMU guests (tests/guest.py:
Debian kernel + busybox, TCG), one connecting to the switch's abstract
name and one listening on its own, padded (C{tight=off}), that the switch
dials.

Abstract names live in the network namespace, not the file system, which
processes of other PID namespaces may share: each name carries random
bytes, so no two runs share one.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
from pathlib import Path

import pytest
import pytest_twisted
from guest import startGuest
from helpers import need, uniqueName
from reactortools import until
from test_qemu_sockets import Guest, portService
from test_qemu_stream import pairPinged
from test_qemu_vde import guestScript
from twisted.internet import reactor

from vtwisted.app import buildService
from vtwisted.testing import FakeLink, frame, mac, plug

pytestmark = pytest.mark.integration

BROADCAST = b"\xff" * 6


def abstractName() -> str:
    """A name of the abstract namespace no other test or run uses."""
    return f"vtw-{uniqueName('abs')}-{secrets.token_hex(6)}"


def connectTo(name: str) -> Guest:
    """A client of QEMU's framing on the abstract name C{name} (tight)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(f"\0{name}")
    return Guest(sock)


@pytest_twisted.ensureDeferred
async def test_anAbstractListenerServesGuestsAndLeavesNoFile(
        switch, shortdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Guests connecting to the abstract name get ports and exchange frames;
    C{port/print} names them C{on @NAME}; no file appears (not even in
    the working directory, where C{unix:NAME} would bind one); a second
    switch on the same name is told another process holds it; once the
    switch stops, the name is free again.
    """
    monkeypatch.chdir(shortdir)
    name = abstractName()
    service = switch(f"qemu:unix:{name}:abstract=on")
    guests = [connectTo(name) for _ in range(2)]
    ports = portService(service)
    await until(lambda: len(ports.links) == 2, what="two guests")
    assert list(shortdir.iterdir()) == []
    await guests[0].send(frame(BROADCAST, mac(1), b"hello" * 10))
    assert await guests[1].receive(1) == [frame(BROADCAST, mac(1), b"hello" * 10)]
    assert all(link.description.endswith(f"pid {os.getpid()} on @{name}")
               for link in ports.links), [link.description for link in ports.links]
    second = buildService(reactor, [f"qemu:unix:{name}:abstract=on"], defaultSock=False)
    with pytest.raises(OSError) as info:
        second.startService()
    assert info.value.errno == errno.EADDRINUSE
    assert (f"qemu:unix:{name}:abstract=on: cannot listen on the abstract name @{name}: "
            "another process holds it (Address already in use)") in str(info.value)
    for guest in guests:
        guest.sock.close()
    await service.stopService()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.bind(f"\0{name}")  # free: the switch let it go
    finally:
        probe.close()
    assert list(shortdir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_aCableJoinsTwoSwitchesOnAnAbstractName(switch) -> None:
    """
    C{cable:} reads its endpoint as C{qemu:} does: one switch listens on an
    abstract name, the other dials it, and frames cross both ways.
    """
    name = abstractName()
    a = switch(f"cable:listen:unix:{name}:abstract=on:tls=off")
    b = switch(f"cable:unix:{name}:abstract=on:tls=off")
    await until(lambda: portService(a).links and portService(b).links, what="the cable up")
    here, there = FakeLink(), FakeLink()
    plug(a.switch, here)
    plug(b.switch, there)
    here.receive(frame(BROADCAST, mac(1), b"abstract" * 10))
    await until(lambda: there.sent, what="a frame across")
    assert there.takeSent() == [frame(BROADCAST, mac(1), b"abstract" * 10)]
    there.receive(frame(mac(1), mac(2), b"back"))
    await until(lambda: here.sent, what="the answer")
    assert here.sent == [frame(mac(1), mac(2), b"back")]


def test_guestsOnAbstractNamesPingEachOther(vswitch, processes, shortdir) -> None:
    """
    One guest connects to the switch's abstract name (C{-netdev
    stream,server=off,addr.abstract=on}, the switch listening with
    C{qemu:unix:NAME:abstract=on}); the other listens on a padded one
    (C{server=on,addr.abstract=on,addr.tight=off}) that the switch dials
    (C{qemu:connect:unix:NAME:abstract=on:tight=off}).  They ping each
    other, and C{port/allprint} shows both QEMU processes on their names.
    """
    need("qemu-system-x86_64")
    mgmt = shortdir / "mgmt"
    listening, guestSide = abstractName(), abstractName()
    vswitch("--mgmt", str(mgmt), "--port", f"qemu:unix:{listening}:abstract=on",
            "--port", f"qemu:connect:unix:{guestSide}:abstract=on:tight=off")
    left = startGuest(
        processes,
        ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={listening},"
                    "addr.abstract=on"],
        guestScript("10.211.9.1", "10.211.9.2", 4), "52:54:00:76:74:31",
        directory=shortdir, name="left",
    )
    right = startGuest(
        processes,
        ["-netdev", f"stream,id=n0,server=on,addr.type=unix,addr.path={guestSide},"
                    "addr.abstract=on,addr.tight=off"],
        guestScript("10.211.9.2", "10.211.9.1", 4), "52:54:00:76:74:32",
        directory=shortdir, name="right",
    )
    ports = pairPinged(mgmt, left, right)
    assert f"pid {left.process.pid} on @{listening}\n" in ports, ports
    assert f"pid {right.process.pid} on @{guestSide} (tight=off)" in ports, ports
    assert not (shortdir / listening).exists() and not (shortdir / guestSide).exists()
