"""
Live migration through the C{vhostuser:} port, against the fake QEMU and
guest driver of L{vhostfakes}: the dirty log QEMU shares (every page the
switch writes is marked, and only while QEMU asks), and the RARP that
announces a guest where it arrived.  A real migration between two QEMUs is
in C{tests/integration/test_vhostuser.py}.
"""

from __future__ import annotations

import os

import pytest
from helpers import unavailable
from vhostfakes import (
    LAYOUTS,
    MEMORY,
    RINGS,
    RX_BUFFERS,
    SLOT,
    SPLIT,
    USER_BASE,
    FakeDriver,
    makeDriver,
)

from vtwisted.ports.vhostuserlink import SUPER_FRAMES
from vtwisted.ports.virtqueue import DirtyLog
from vtwisted.testing import FakeLink, frame, mac, plug, tcpSuperFrame
from vtwisted.wire import vhostuser as vu
from vtwisted.wire.vhostuser import F_LOG_ALL, P_LOG_SHMFD, P_RARP

#: The log's size for the fake's memory: one bit per 4 KB page.
LOG_SIZE = MEMORY // 4096 // 8


@pytest.fixture
def driver():
    fake = FakeDriver()
    yield fake
    fake.close()


class SharedLog:
    """
    The dirty log as QEMU holds it: a memfd it maps and hands the switch.
    """

    def __init__(self, offset: int = 0) -> None:
        self.fd = os.memfd_create("fake-log", os.MFD_ALLOW_SEALING)
        self.offset = offset
        os.ftruncate(self.fd, offset + LOG_SIZE)

    def pages(self) -> set[int]:
        """The pages marked dirty, then cleared, as QEMU's sync does."""
        data = os.pread(self.fd, LOG_SIZE, self.offset)
        os.pwrite(self.fd, bytes(LOG_SIZE), self.offset)
        return {8 * at + bit for at, byte in enumerate(data) for bit in range(8)
                if byte >> bit & 1}

    def close(self) -> None:
        os.close(self.fd)


def _startLogging(driver: FakeDriver, log: SharedLog, rings: tuple[int, ...] = (0, 1),
                  features: int = SPLIT) -> bytes:
    """What QEMU sends when a migration starts; returns the SET_LOG_BASE reply."""
    reply = driver.send(vu.SET_LOG_BASE, vu.packLog(LOG_SIZE, log.offset), (log.fd,))
    driver.send(vu.SET_FEATURES, vu.packNumber(features))
    for index in rings:
        desc, avail, used = driver.ringAddresses(RINGS[index])
        driver.send(vu.SET_VRING_ADDR, vu.packAddresses(vu.RingAddresses(
            index, 1, USER_BASE + desc, USER_BASE + used, USER_BASE + avail, used)))
    return reply


def test_theDeviceOffersLoggingAndTheRarp(driver) -> None:
    """Features and protocol features say that the guest can migrate."""
    assert vu.number(1, driver.send(vu.GET_FEATURES)[12:]) & 1 << F_LOG_ALL
    protocol = vu.number(15, driver.send(vu.GET_PROTOCOL_FEATURES)[12:])
    assert protocol & 1 << P_LOG_SHMFD and protocol & 1 << P_RARP


def test_pagesWrittenForTheGuestAreLoggedWhileItMigrates(driver) -> None:
    """
    With the log on, a frame for the guest marks the page of the receive
    buffer it filled and the page of the used ring, nothing else; SET_LOG_BASE
    is answered with an empty payload (QEMU waits for it).
    """
    log = SharedLog(offset=4096)
    driver.negotiate(SPLIT & ~(1 << F_LOG_ALL))
    reply = _startLogging(driver, log)
    assert vu.Header.parse(reply) == vu.Header(vu.SET_LOG_BASE, vu.VERSION | vu.FLAG_REPLY, 0)
    driver.postReceiveBuffers(4)
    other = FakeLink()
    plug(driver.switch, other)
    other.receive(frame(b"\xff" * 6, mac(1), payload=bytes(100)))
    used = driver.ringAddresses(RINGS[0])[2]
    assert log.pages() == {RX_BUFFERS // 4096, used // 4096}
    assert len(driver.received()) == 1
    log.close()


def test_aFrameAcrossBuffersMarksEveryPageItTouched(driver) -> None:
    """A super-frame spread over 4 KB buffers marks each of their pages."""
    log = SharedLog()
    driver.negotiate()
    _startLogging(driver, log)
    driver.postReceiveBuffers(20, size=SLOT)
    tap = FakeLink(vnetHeader=True)
    plug(driver.switch, tap)
    tap.receivePacket(tcpSuperFrame(b"\xff" * 6, mac(1), os.urandom(30000)))
    (header, _), = driver.received()
    count = int.from_bytes(header[10:12], "little")
    buffers = {RX_BUFFERS // 4096 + n for n in range(count)}
    assert count == 8 and buffers <= log.pages()
    log.close()


def test_theUsedRingOfTransmitsIsLoggedToo(driver) -> None:
    """Chains the guest sent, given back, mark the transmit ring's used ring only."""
    log = SharedLog()
    driver.negotiate()
    _startLogging(driver, log)
    plug(driver.switch, FakeLink())
    driver.transmit(bytes(12), frame(b"\xff" * 6, mac(1)))
    assert log.pages() == {driver.ringAddresses(RINGS[1])[2] // 4096}
    log.close()


def test_nothingIsLoggedOnceQemuStopsAsking(driver) -> None:
    """Without F_LOG_ALL, a frame for the guest marks no page."""
    log = SharedLog()
    driver.negotiate()
    _startLogging(driver, log)
    driver.send(vu.SET_FEATURES, vu.packNumber(SPLIT & ~(1 << F_LOG_ALL)))
    driver.postReceiveBuffers(2)
    other = FakeLink()
    plug(driver.switch, other)
    other.receive(frame(b"\xff" * 6, mac(1)))
    assert len(driver.received()) == 1 and log.pages() == set()
    log.close()


def test_pagesPastTheLogAreNotLogged() -> None:
    """A write beyond the memory the log covers marks nothing, and breaks nothing."""
    log = DirtyLog(bytearray(2), 0, 2)
    log.mark(0x10000 - 1, 2)  # pages 15 and 16: the second is past the log
    log.mark(0, 0)
    assert bytes(log.view) == b"\x00\x80"


@pytest.mark.parametrize("when", ["started", "before the features", "plain frames"])
def test_sendRarpAnnouncesTheGuestFromItsPort(driver, when: str) -> None:
    """
    SEND_RARP (the guest arrived here) floods a RARP from the guest's
    address out of its port, and the switch learns the address there:
    once the device started, before it has features (QEMU announces the
    guest at the destination before it starts the device: a RARP read
    there as a super-frame was dropped, and frames for the guest went to
    its old port until it spoke), and for a guest without super-frames.
    """
    if when == "started":
        driver.negotiate()
    elif when == "plain frames":
        driver.negotiate(SPLIT & ~SUPER_FRAMES)
    other = FakeLink()
    plug(driver.switch, other)
    guest = bytes.fromhex("525400123456")
    if when == "before the features":
        driver.send(vu.GET_FEATURES)
        driver.send(vu.SET_OWNER)
    driver.send(vu.SEND_RARP, guest + bytes(2))
    assert not any(driver.port.counters.drops.values()), driver.port.counters.drops
    if when == "before the features":
        driver.negotiate()
    (announced,) = other.takeSent()
    assert announced[:14] == b"\xff" * 6 + guest + b"\x80\x35" and len(announced) == 60
    assert announced[14:22] == bytes.fromhex("0001080006040003")
    driver.postReceiveBuffers(2)
    third = FakeLink()
    plug(driver.switch, third)
    other.receive(frame(guest, mac(2)))
    assert [f for _, f in driver.received()] == [frame(guest, mac(2))]
    assert third.sent == [], "learned: a frame for the guest goes to its port only"


def test_sendRarpTakesTheGuestFromItsOldPortAtOnce(driver) -> None:
    """
    The guest spoke from its old port (the QEMU it left) a moment ago:
    SEND_RARP moves its address here at once, not after the 3 s an address
    otherwise stays where it was last seen (the guest may stay silent, and
    the stream into it would go to the old port for good).
    """
    driver.negotiate()
    driver.postReceiveBuffers(2)
    old, third = FakeLink(), FakeLink()
    plug(driver.switch, old)
    plug(driver.switch, third)
    guest = bytes.fromhex("525400123456")
    old.receive(frame(b"\xff" * 6, guest))
    assert len(driver.received()) == 1  # the flood
    driver.send(vu.SEND_RARP, guest + bytes(2))
    old.takeSent()
    third.receive(frame(guest, mac(2)))
    assert [f for _, f in driver.received()] == [frame(guest, mac(2))]
    assert old.takeSent() == []


@pytest.mark.parametrize("atomic", [True, False])
def test_bitsAreSetAtomicallyWhereLibatomicIs(monkeypatch, atomic: bool) -> None:
    """
    With libatomic each bit is an atomic OR into the shared memory (other
    back-ends set bits in the same log); without it, a plain one: either
    way the bits already there stay.
    """
    from vtwisted.ports import virtqueue

    if not atomic:
        monkeypatch.setattr(virtqueue, "_atomic", [None])
    elif virtqueue._atomicOr() is None:
        unavailable("no libatomic.so.1 here (Debian's libatomic1)")
    shared = bytearray(b"\x01\x80")
    log = DirtyLog(shared, 0, 2)
    assert (log._anchor is not None) == atomic
    log.mark(4096 * 3, 4096 * 2)  # pages 3 and 4
    log.mark(4096 * 9, 1)  # page 9
    assert shared == bytearray([0x01 | 0x08 | 0x10, 0x80 | 0x02])
    log.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_framesDeliveredAsTheRingStopsAreSignalledAtOnce(layout: str) -> None:
    """
    QEMU stops a ring (GET_VRING_BASE, as a migration ends) in the reactor
    turn that delivered a frame: the guest is interrupted before the answer,
    not at the end of the turn, when the ring is no longer the switch's
    (a guest whose interrupt was lost never looked at its receive ring again).
    """
    driver = makeDriver(layout)
    try:
        driver.negotiate()
        driver.postReceiveBuffers(4)
        other = FakeLink()
        plug(driver.switch, other)
        other.receive(frame(b"\xff" * 6, mac(1)))
        assert not driver.interrupted(0)
        driver.send(vu.GET_VRING_BASE, vu.packState(0, 0))
        assert driver.interrupted(0)
        driver.reactor.advance(0)
        assert not driver.interrupted(0)
        assert len(driver.received()) == 1
    finally:
        driver.close()


def test_onlyTheBytesWrittenToABigBufferAreLogged(driver) -> None:
    """
    A frame of 100 bytes into a receive buffer of 2 MB marks one page, not
    512: a guest posting buffers of gigabytes would have the switch mark
    (and QEMU send again) all their pages for each frame.
    """
    log = SharedLog()
    driver.negotiate()
    _startLogging(driver, log)
    head = driver._descriptor(0, RX_BUFFERS, 2 << 20, 2)  # WRITE
    driver._makeAvailable(0, head)
    other = FakeLink()
    plug(driver.switch, other)
    other.receive(frame(b"\xff" * 6, mac(1), payload=bytes(100)))
    assert len(driver.received()) == 1
    used = driver.ringAddresses(RINGS[0])[2]
    assert log.pages() == {RX_BUFFERS // 4096, used // 4096}
    log.close()
