"""
RFC 7440 windows in the slirp port's TFTP server: a client asking for
C{windowsize} gets that many blocks per acknowledgement, and gets the file
whole whatever the network loses.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_slirptftp import Guest

from vtwisted.slirp.tftp import MAX_WINDOW, RETRIES
from vtwisted.wire import tftp


class WindowedClient:
    """
    A client following RFC 7440 over a network that loses the server's
    packets as C{lost} says (one flag per packet, then nothing lost).  It
    acknowledges its last good block on the first block out of order, or,
    if C{eager}, on every one.
    """

    def __init__(self, guest: Guest, window: int, lost: list[bool],
                 eager: bool = False) -> None:
        self.guest = guest
        self.eager = eager
        self.window = window
        self.lost = list(lost)
        self.data = 0
        self.acks = 0

    def delivered(self) -> list[bytes]:
        packets = self.guest.replies()
        self.data += sum(tftp.opcodeOf(p) == tftp.DATA for p in packets)
        return [p for p in packets if not (self.lost and self.lost.pop(0))]

    def ack(self, block: int) -> None:
        self.acks += 1
        self.guest.send(tftp.ack(block))

    def fetch(self, name: str, blockSize: int = 8) -> bytes:
        self.guest.send(tftp.request(tftp.RRQ, name, options={
            "blksize": str(blockSize), "windowsize": str(self.window)}))
        received, expected, sinceAck = b"", 1, 0
        for _ in range(100_000):
            packets = self.delivered()
            if not packets:
                self.guest.clock.advance(1.0)
                continue
            for packet in packets:
                if tftp.opcodeOf(packet) == tftp.OACK:
                    self.ack(0)
                    break
                if tftp.parseBlock(packet) != expected & 0xFFFF:
                    self.ack((expected - 1) & 0xFFFF)
                    sinceAck = 0
                    if self.eager:
                        continue
                    break
                received += packet[4:]
                expected, sinceAck = expected + 1, sinceAck + 1
                if len(packet) - 4 < blockSize:
                    self.ack(expected - 1)
                    return received
                if sinceAck == self.window:
                    self.ack(expected - 1)
                    sinceAck = 0
        raise AssertionError("the transfer never ended")


def firstWindow(root: Path, window: int) -> tuple[Guest, list[bytes]]:
    """A guest that asked for a 320-byte file in windows: the first window."""
    (root / "f").write_bytes(bytes(8 * 40))
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f", options={"blksize": "8",
                                                     "windowsize": str(window)}))
    guest.replies()
    guest.send(tftp.ack(0))
    return guest, guest.replies()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


def test_windowIsAcknowledgedAndSentWhole(root: Path) -> None:
    """An OACK grants the window; then a window of blocks goes out per ACK."""
    content = os.urandom(100)
    (root / "f").write_bytes(content)
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f", options={"blksize": "8", "windowsize": "4"}))
    assert guest.replies() == [tftp.oack({"blksize": "8", "windowsize": "4"})]
    guest.send(tftp.ack(0))
    assert guest.replies() == [tftp.data(n, content[8 * n - 8:8 * n]) for n in (1, 2, 3, 4)]
    guest.send(tftp.ack(4))
    assert [tftp.parseBlock(p) for p in guest.replies()] == [5, 6, 7, 8]


def test_noLossMeansNoResends(root: Path) -> None:
    """Over a clean network every block goes out once, one ACK per window."""
    content = os.urandom(8 * 200 + 5)
    (root / "f").write_bytes(content)
    client = WindowedClient(Guest(root), window=16, lost=[])
    assert client.fetch("f") == content
    assert client.data == 201
    assert client.acks == 1 + 13  # the OACK's, then one per window of 16
    assert client.guest.server.served == 1 and client.guest.server.transfers == {}


def test_earlierAckRestartsTheWindowThere(root: Path) -> None:
    """An ACK of a block inside the window sends the window again from the next."""
    (root / "f").write_bytes(bytes(8 * 40))
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f", options={"blksize": "8", "windowsize": "8"}))
    guest.send(tftp.ack(0))
    guest.replies()
    guest.send(tftp.ack(3))
    assert [tftp.parseBlock(p) for p in guest.replies()] == list(range(4, 12))


def test_duplicateAcksWaitForTheTimer(root: Path) -> None:
    """
    Duplicate ACKs (the window's first block was lost) send nothing; the
    window goes out again when the timer expires.
    """
    guest, window = firstWindow(root, 4)
    for _ in range(3):
        guest.send(tftp.ack(0))
        assert guest.replies() == []
    guest.clock.advance(1.0)
    assert guest.replies() == window


@pytest.mark.parametrize("eager", [False, True])
def test_oneLossCostsAtMostAWindow(root: Path, eager: bool) -> None:
    """
    One block lost costs at most a window more DATA, even from a guest that
    acknowledges every block that comes out of order (C{eager}).
    """
    content = os.urandom(8 * 200 + 5)
    (root / "f").write_bytes(content)
    client = WindowedClient(Guest(root), window=8, lost=[False] * 50 + [True], eager=eager)
    assert client.fetch("f") == content
    assert client.data <= 201 + 8


def test_silentGuestGetsTheWindowRetriesTimes(root: Path) -> None:
    """Without ACKs the whole window is resent RETRIES times, then dropped."""
    guest, window = firstWindow(root, 5)
    assert len(window) == 5
    for _ in range(RETRIES):
        guest.clock.advance(1.0)
        assert guest.replies() == window
    guest.clock.advance(1.0)
    assert guest.replies() == [] and guest.server.transfers == {}


@pytest.mark.parametrize(("asked", "granted"), [
    ("1", "1"), ("64", "64"), (str(MAX_WINDOW + 1), str(MAX_WINDOW)), ("65535", str(MAX_WINDOW)),
    ("0", None), ("65536", None), ("x", None),
])
def test_windowSizeIsBounded(root: Path, asked: str, granted: str | None) -> None:
    """Windows above the server's limit are lowered; ones outside RFC 7440's range ignored."""
    (root / "f").write_bytes(b"z")
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f", options={"windowsize": asked, "tsize": "0"}))
    [reply] = guest.replies()
    expected = ({"windowsize": granted} if granted else {}) | {"tsize": "1"}
    assert reply == tftp.oack(expected)


def test_windowsRollOverBlockNumbers(root: Path) -> None:
    """Windows straddling block 65535 carry on from block 0."""
    content = os.urandom(8 * 65600)
    (root / "big").write_bytes(content)
    client = WindowedClient(Guest(root), window=48, lost=[])
    assert client.fetch("big") == content


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 12), blocks=st.integers(0, 60),
       lost=st.lists(st.booleans(), max_size=120))
def test_fileArrivesWholeWhateverIsLost(tmp_path_factory: pytest.TempPathFactory, window: int,
                                        blocks: int, lost: list[bool]) -> None:
    """
    Whatever blocks and OACKs the network loses, the file arrives whole, if
    it loses no more packets than the server resends a window.  (Fewer in a
    row is not enough with windows: losing a window's first block in every
    resend, the rest arriving, stalls it as surely as losing them all, and
    the server gives up after L{RETRIES} resends.)
    """
    root = tmp_path_factory.mktemp("tftp")
    gone = 0
    for i, isLost in enumerate(lost):
        gone += isLost
        if gone > RETRIES:
            lost[i] = False
    content = os.urandom(8 * blocks + blocks % 5)
    (root / "f").write_bytes(content)
    client = WindowedClient(Guest(root), window, lost)
    assert client.fetch("f") == content
    assert client.guest.server.transfers == {}


_OPTION_VALUES = st.text(st.sampled_from("0123456789\xb2x-"), max_size=6)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("rrq"), st.sampled_from(["f", "missing", "../f"]),
              st.dictionaries(st.sampled_from(["blksize", "timeout", "windowsize", "tsize"]),
                              _OPTION_VALUES)),
    st.tuples(st.just("ack"), st.integers(0, 0xFFFF)),
    st.tuples(st.just("error"), st.just(0)),
    st.tuples(st.just("garbage"), st.binary(max_size=12)),
    st.tuples(st.just("wait"), st.floats(0, 3)),
), max_size=40), st.integers(4000, 4002))
def test_anySequenceLeavesTheServerSound(tmp_path_factory: pytest.TempPathFactory,
                                         steps: list[tuple], port: int) -> None:
    """
    Whatever guests send, in any order, the server raises nothing, keeps at
    most a transfer per guest port, and closes every file it opened.
    """
    root = tmp_path_factory.mktemp("tftp")
    (root / "f").write_bytes(os.urandom(3000))
    guest = Guest(root)
    for step in steps:
        guest.port = port + len(guest.network.ip) % 3
        if step[0] == "rrq":
            guest.send(tftp.request(tftp.RRQ, step[1], options=step[2]))
        elif step[0] == "ack":
            guest.send(tftp.ack(step[1]))
        elif step[0] == "error":
            guest.send(tftp.error(0, "stop"))
        elif step[0] == "garbage":
            guest.send(step[1])
        else:
            guest.clock.advance(step[1])
    transfers = list(guest.server.transfers.values())
    assert len(transfers) <= 3
    guest.server.close()
    assert all(t.handle.closed for t in transfers) and not guest.clock.getDelayedCalls()
