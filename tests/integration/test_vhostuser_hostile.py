"""
A hostile vhost-user front-end, written from the protocol, on a real Unix
socket to a switch running in this process: its messages carry real file
descriptors (C{SCM_RIGHTS}) and its guest memory is a real memfd.  Whatever
it sends is refused with one error naming the spec, counted, and the
connection closed; the switch keeps its descriptors and keeps serving.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from helpers import socketListening, waitFor
from reactortools import sleep, until
from twisted.logger import ILogObserver, globalLogPublisher

from vtwisted.ports import vhostuser, vhostuserlink
from vtwisted.ports.vhostuser import OFFERED, VhostUserListener
from vtwisted.wire import vhostuser as vu

MEMORY = 1 << 20
USER_BASE = 0x7F0000000000
QUEUE = 16
#: Where the transmit ring's parts are, guest-physically.
DESCRIPTORS, AVAILABLE, USED, DATA = 0x0, 0x1000, 0x2000, 0x10000


def openDescriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class FrontEnd:
    """
    A vhost-user front-end that does what it is told, right or wrong.
    """

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.memfd = os.memfd_create("hostile-guest", os.MFD_ALLOW_SEALING)
        os.ftruncate(self.memfd, MEMORY)
        self.kick = os.eventfd(0, os.EFD_NONBLOCK)
        self.call = os.eventfd(0, os.EFD_NONBLOCK)

    def close(self) -> None:
        for fd in (self.memfd, self.kick, self.call):
            os.close(fd)
        self.sock.close()

    def send(self, request: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> None:
        data = vu.message(request, payload)
        if fds:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            self.sock.sendmsg([data], rights)
        else:
            self.sock.sendall(data)

    async def closedBySwitch(self, timeout: float = 5.0) -> bool:
        """
        Whether the switch closes the connection within C{timeout} seconds
        (replies read meanwhile are thrown away).
        """
        for _ in range(int(timeout / 0.02)):
            try:
                if not self.sock.recv(65536):
                    return True
            except BlockingIOError:
                await sleep(0.02)
            except ConnectionResetError:
                return True
        return False

    def start(self, kick: int | None = None) -> None:
        """
        What QEMU sends to start the transmit ring (queue 1), with C{kick}
        as its kick descriptor.
        """
        self.send(vu.SET_FEATURES, vu.packNumber(OFFERED & ~(1 << vu.F_PROTOCOL_FEATURES)))
        self.send(vu.SET_MEM_TABLE, vu.packTable([vu.Region(0, MEMORY, USER_BASE, 0)]),
                  (self.memfd,))
        self.send(vu.SET_VRING_NUM, vu.packState(1, QUEUE))
        self.send(vu.SET_VRING_BASE, vu.packState(1, 0))
        self.send(vu.SET_VRING_ADDR, vu.packAddresses(vu.RingAddresses(
            1, 0, USER_BASE + DESCRIPTORS, USER_BASE + USED, USER_BASE + AVAILABLE, 0)))
        self.send(vu.SET_VRING_CALL, vu.packNumber(1), (self.call,))
        self.send(vu.SET_VRING_KICK, vu.packNumber(1), (self.kick if kick is None else kick,))


@pytest.fixture
def errors() -> Iterator[list[dict[str, Any]]]:
    """The error events logged during the test."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level.name in ("error", "critical"):
            events.append(event)

    globalLogPublisher.addObserver(cast(ILogObserver, observe))
    yield events
    globalLogPublisher.removeObserver(cast(ILogObserver, observe))


@pytest_twisted.async_yield_fixture
async def listener(shortdir: Path, switch) -> AsyncIterator[tuple[VhostUserListener, Path]]:
    path = shortdir / "vh.sock"
    service: Any = switch(f"vhostuser:unix:{path}")
    (vhost,) = [s for s in service if isinstance(s, VhostUserListener)]
    yield vhost, path


@pytest.fixture
def frontEnds(listener) -> Iterator[Any]:
    made: list[FrontEnd] = []

    def make() -> FrontEnd:
        made.append(FrontEnd(listener[1]))
        return made[-1]

    yield make
    for front in made:
        front.close()


async def stillServes(listener: Any, frontEnds: Any) -> None:
    """A new front-end is answered."""
    front = frontEnds()
    front.send(vu.GET_FEATURES)
    for _ in range(250):
        try:
            reply = front.sock.recv(64)
            break
        except BlockingIOError:
            await sleep(0.02)
    assert vu.Header.parse(reply).request == vu.GET_FEATURES


def refusedOnce(errors: list[dict[str, Any]], problem: str) -> None:
    assert len(errors) == 1, errors
    assert problem in errors[0].get("problem", ""), errors[0]
    assert errors[0]["spec"].startswith("vhostuser:unix:")


@pytest_twisted.ensureDeferred
async def test_descriptorsSentWithRequestsThatTakeNoneAreRefused(listener, frontEnds,
                                                                  errors) -> None:
    """
    Descriptors riding along with requests that take none would pile up in
    the switch until it could open no more: the first such message closes
    the connection, saying so, and every descriptor is closed.
    """
    before = openDescriptors()
    front = frontEnds()
    extra = openDescriptors() - before
    for _ in range(20):
        front.send(vu.GET_FEATURES, fds=(front.kick,) * 200)
    assert await front.closedBySwitch()
    await until(lambda: not listener[0].links, what="the link to go")
    assert openDescriptors() - before == extra
    refusedOnce(errors, "file descriptors")
    await stillServes(listener, frontEnds)


@pytest_twisted.ensureDeferred
async def test_descriptorsPiledUpOnAnUnfinishedMessageAreRefused(listener, frontEnds,
                                                                 errors) -> None:
    """
    A message sent a byte at a time, each byte with 200 descriptors, never
    reaches its end, where descriptors too many are noticed: more than a
    memory table's closes the connection at once, and every one is closed
    (else the switch would run out of descriptors, and every port with it).
    """
    before = openDescriptors()
    front = frontEnds()
    extra = openDescriptors() - before
    for byte in vu.HEADER.pack(vu.GET_FEATURES, vu.VERSION, 4000) + bytes(40):
        try:
            front.sock.sendmsg([bytes([byte])], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                  array.array("i", (front.kick,) * 200))])
        except (BrokenPipeError, ConnectionResetError):
            break
        await sleep(0.01)  # each byte read on its own
    assert await front.closedBySwitch()
    await until(lambda: not listener[0].links, what="the link to go")
    assert openDescriptors() - before == extra
    refusedOnce(errors, "more than 16 file descriptors came before the messages")
    await stillServes(listener, frontEnds)


@pytest_twisted.ensureDeferred
async def test_aMemoryTableShortOfDescriptorsLeaksNone(listener, frontEnds, errors) -> None:
    """A table of 3 regions with 2 descriptors is refused; the 2 are closed."""
    before = openDescriptors()
    front = frontEnds()
    extra = openDescriptors() - before
    regions = [vu.Region(i << 20, MEMORY, USER_BASE + (i << 20), 0) for i in range(3)]
    front.send(vu.SET_MEM_TABLE, vu.packTable(regions), (front.memfd, front.memfd))
    assert await front.closedBySwitch()
    await until(lambda: not listener[0].links, what="the link to go")
    assert openDescriptors() - before == extra
    refusedOnce(errors, "without its file descriptor")


def notAnEventfd(kind: str, directory: Path) -> int:
    """A descriptor of C{kind} that is no eventfd."""
    if kind == "regular file":
        (directory / "file").write_bytes(b"x" * 100)
        return os.open(directory / "file", os.O_RDWR)
    if kind == "path only":
        return os.open(directory, os.O_PATH)
    reader, writer = os.pipe()
    os.close(writer)  # readable at once, and for ever: the end of the pipe
    return reader


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", ["regular file", "path only", "pipe at its end"])
@pytest.mark.parametrize("which", [vu.SET_VRING_KICK, vu.SET_VRING_CALL])
async def test_ringDescriptorsMustBeEventfds(listener, frontEnds, errors, shortdir: Path,
                                             kind: str, which: int) -> None:
    """
    A kick or call descriptor that is not an eventfd is refused, saying
    what it is, before the switch polls it (a regular file cannot be, a
    pipe at its end would be readable for ever) or writes to it.
    """
    before = openDescriptors()
    front = frontEnds()
    bad = notAnEventfd(kind, shortdir)
    extra = openDescriptors() - before
    if which == vu.SET_VRING_KICK:
        front.start(kick=bad)
    else:
        front.send(vu.SET_VRING_CALL, vu.packNumber(1), (bad,))
    assert await front.closedBySwitch()
    await until(lambda: not listener[0].links, what="the link to go")
    assert openDescriptors() - before == extra
    name = "kick" if which == vu.SET_VRING_KICK else "call"
    refusedOnce(errors, f"the {name} descriptor of queue 1 is not an eventfd")
    await stillServes(listener, frontEnds)
    os.close(bad)


@pytest_twisted.ensureDeferred
async def test_aKickEventfdInSemaphoreModeIsRefused(listener, frontEnds, errors) -> None:
    """
    An eventfd in semaphore mode gives 1 of its count a read: kicked once
    with 2**62, it stayed readable for ever and kept the switch at full
    CPU.  It is refused, saying so, and closed; QEMU's eventfds are not in
    that mode.
    """
    before = openDescriptors()
    front = frontEnds()
    kick = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
    os.eventfd_write(kick, 1 << 62)
    extra = openDescriptors() - before
    front.start(kick=kick)
    assert await front.closedBySwitch()
    await until(lambda: not listener[0].links, what="the link to go")
    assert openDescriptors() - before == extra
    refusedOnce(errors, "the kick descriptor of queue 1 is an eventfd in semaphore mode")
    await stillServes(listener, frontEnds)
    os.close(kick)


def test_theFrontEndCannotShrinkGuestMemoryUnderTheSwitch(vswitch, shortdir: Path) -> None:
    """
    A front-end that shrinks its memfd once the switch maps it and then
    kicks would kill the switch (SIGBUS on reading the ring): the memfd is
    sealed against shrinking first, and the switch carries on.
    """
    path = shortdir / "vh.sock"
    sw: Any = vswitch("--port", f"vhostuser:unix:{path}")
    waitFor(lambda: socketListening(path), what="the vhost-user socket")
    front = FrontEnd(path)
    try:
        front.start()
        waitFor(lambda: "on port" in sw.logText(), what="the front-end on a port")
        try:
            os.ftruncate(front.memfd, 0)
        except PermissionError:  # sealed
            pass
        os.eventfd_write(front.kick, 1)
        time.sleep(1)
        assert sw.process.poll() is None, sw.logText()
    finally:
        front.close()


def test_onlyRootAndTheSwitchsUserAreTrusted() -> None:
    """Front-ends of other users must share sealed memory."""
    assert vhostuser.trustedPeer(0) and vhostuser.trustedPeer(os.geteuid())
    assert not vhostuser.trustedPeer(None) and not vhostuser.trustedPeer(65534 + 7)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", ["memfd without sealing", "regular file"])
async def test_memoryAStrangerCouldShrinkIsRefused(listener, frontEnds, errors, monkeypatch,
                                                   shortdir: Path, kind: str) -> None:
    """
    Guest memory that cannot be sealed against shrinking is refused, saying
    why, from a front-end of another user (not root, not the switch's).
    """
    monkeypatch.setattr(vhostuserlink, "trustedPeer", lambda uid: False)
    before = openDescriptors()
    front = frontEnds()
    if kind == "regular file":
        fd = os.open(shortdir / "ram", os.O_RDWR | os.O_CREAT)
    else:
        fd = os.memfd_create("unsealable")
    os.ftruncate(fd, MEMORY)
    extra = openDescriptors() - before
    front.send(vu.SET_MEM_TABLE, vu.packTable([vu.Region(0, MEMORY, USER_BASE, 0)]), (fd,))
    assert await front.closedBySwitch()
    await until(lambda: not listener[0].links, what="the link to go")
    assert openDescriptors() - before == extra
    refusedOnce(errors, "not in a memfd sealed against shrinking")
    os.close(fd)


@pytest_twisted.ensureDeferred
async def test_aTrustedFrontEndMayShareAFile(listener, frontEnds, errors,
                                             shortdir: Path) -> None:
    """
    QEMU's memory-backend-file (a file that cannot be sealed) is taken from
    a front-end running as the switch's user or root: it gets its port and
    stays connected, with no error.
    """
    front = frontEnds()
    os.close(front.memfd)
    front.memfd = os.open(shortdir / "ram", os.O_RDWR | os.O_CREAT)
    os.ftruncate(front.memfd, MEMORY)
    front.start()
    await until(lambda: listener[0].links and listener[0].links[0].port is not None,
                what="the front-end on a port")
    assert not await front.closedBySwitch(timeout=0.5)
    assert errors == []


def guestMappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum("hostile-guest" in line for line in maps)


@pytest_twisted.ensureDeferred
async def test_frontEndsThatComeAndGoLeaveNothingBehind(listener, frontEnds, errors) -> None:
    """
    Front-ends that start a ring and transmit, then hang up or are refused
    (an avail index past the ring), leave no descriptor and no mapping of
    their memory behind; each is a failure of one series (none lasted a
    second), so the refusal is logged once, the others counted.
    """
    before = openDescriptors()
    for i in range(10):
        front = FrontEnd(listener[1])
        with mmap.mmap(front.memfd, MEMORY) as memory:
            struct.pack_into("<QIHH", memory, DESCRIPTORS, DATA, 60, 0, 0)
            struct.pack_into("<HHH", memory, AVAILABLE, 0, QUEUE + 1 if i % 2 else 1, 0)
        front.start()
        os.eventfd_write(front.kick, 1)
        await sleep(0.1)
        front.close()
        await until(lambda: not listener[0].links, what="the link to go")
    assert openDescriptors() == before and guestMappings() == 0
    assert len(errors) == 1, errors
    assert all("17 chains available" in e["problem"] for e in errors), errors
    assert listener[0].failures.total == 10
