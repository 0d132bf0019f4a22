"""
The slirp port's TFTP server (L{vtwisted.slirp.tftp}) against a fake guest
network and a fake clock: whole transfers, options, resends, wrap-around,
refusals; and the TFTP codec, fuzzed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from vtwisted.slirp.tftp import RETRIES, TftpServer
from vtwisted.testing import FakeGuestNetwork
from vtwisted.wire import tftp

GUEST = bytes([10, 0, 2, 15])


class Guest:
    """A TFTP client speaking to the server through a fake network."""

    def __init__(self, root: Path, mtu: int = 1500) -> None:
        self.network = FakeGuestNetwork(mtu=mtu)
        self.clock = Clock()
        self.server = TftpServer(self.network, str(root), self.clock)
        self.port = 4000

    def send(self, packet: bytes) -> None:
        self.server.datagramReceived(GUEST, self.port, packet)

    def replies(self) -> list[bytes]:
        """UDP payloads sent to the guest since the last call."""
        sent = [payload[8:] for src, dst, protocol, payload, _ in self.network.ip
                if protocol == 17 and dst == GUEST]
        self.network.ip.clear()
        return sent

    def fetch(self, name: str, options: dict[str, str] | None = None) -> bytes:
        """Read a whole file, acknowledging each block."""
        self.send(tftp.request(tftp.RRQ, name, options=options))
        received = b""
        blockSize = int((options or {}).get("blksize", 512))
        while True:
            [reply] = self.replies()
            opcode = tftp.opcodeOf(reply)
            if opcode == tftp.OACK:
                self.send(tftp.ack(0))
                continue
            assert opcode == tftp.DATA, reply
            block = tftp.parseBlock(reply)
            received += reply[4:]
            self.send(tftp.ack(block))
            if len(reply) - 4 < blockSize:
                assert self.replies() == []
                return received


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "boot").mkdir()
    return tmp_path / "boot"


def test_fileArrivesWholeInBlocks(root: Path) -> None:
    """A 1300-byte file comes as blocks of 512, 512 and 276 bytes."""
    content = os.urandom(1300)
    (root / "pxelinux.0").write_bytes(content)
    guest = Guest(root)
    assert guest.fetch("pxelinux.0") == content
    assert guest.server.served == 1 and guest.server.transfers == {}


def test_exactMultipleEndsWithAnEmptyBlock(root: Path) -> None:
    """A file of exactly two blocks needs a third, empty one to end."""
    (root / "f").write_bytes(b"x" * 1024)
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f"))
    sizes = []
    for block in (1, 2, 3):
        [reply] = guest.replies()
        assert tftp.parseBlock(reply) == block
        sizes.append(len(reply) - 4)
        guest.send(tftp.ack(block))
    assert sizes == [512, 512, 0]


def test_optionsAreAcknowledged(root: Path) -> None:
    """blksize and tsize come back in an OACK; blocks then have the asked size."""
    content = os.urandom(5000)
    (root / "k").write_bytes(content)
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "k", options={"blksize": "1024", "tsize": "0"}))
    [oack] = guest.replies()
    assert oack == tftp.oack({"blksize": "1024", "tsize": "5000"})
    guest.send(tftp.ack(0))
    [first] = guest.replies()
    assert first == tftp.data(1, content[:1024])


def test_blockSizeIsCappedToTheMtu(root: Path) -> None:
    """A block size that would fragment is lowered to what fits the MTU."""
    (root / "k").write_bytes(bytes(3000))
    guest = Guest(root, mtu=1500)
    guest.send(tftp.request(tftp.RRQ, "k", options={"blksize": "8192"}))
    assert guest.replies() == [tftp.oack({"blksize": "1468"})]
    assert guest.fetch("k", {"blksize": "1468"}) == bytes(3000)


def test_lostBlocksAreResentThenGivenUp(root: Path) -> None:
    """Without an ACK the block is resent every second, RETRIES times, then dropped."""
    (root / "f").write_bytes(b"data")
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f"))
    first = guest.replies()
    for _ in range(RETRIES):
        guest.clock.advance(1.0)
        assert guest.replies() == first
    guest.clock.advance(1.0)
    assert guest.replies() == [] and guest.server.transfers == {}


def test_duplicateAcksDoNotSkipBlocks(root: Path) -> None:
    """An ACK of an older block (a duplicate) sends nothing new."""
    (root / "f").write_bytes(b"y" * 2000)
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f"))
    guest.replies()
    guest.send(tftp.ack(1))
    [second] = guest.replies()
    guest.send(tftp.ack(1))
    assert guest.replies() == []
    assert tftp.parseBlock(second) == 2


def test_blockNumbersWrapPastTheLimit(root: Path) -> None:
    """A file of more than 65535 blocks arrives whole, block numbers rolling over."""
    content = os.urandom(8 * 65540 + 3)
    (root / "big").write_bytes(content)
    guest = Guest(root)
    assert guest.fetch("big", {"blksize": "8"}) == content


def test_fileThatShrinksEndsWithAnError(root: Path) -> None:
    """A file cut short mid-transfer ends it with an ERROR, not a short block."""
    (root / "f").write_bytes(b"a" * 1300)
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f"))
    guest.replies()
    (root / "f").write_bytes(b"a" * 600)
    guest.send(tftp.ack(1))
    [reply] = guest.replies()
    assert tftp.opcodeOf(reply) == tftp.ERROR
    assert guest.server.transfers == {} and guest.server.served == 0


def test_fileThatGrowsIsSentAsItWas(root: Path) -> None:
    """
    Blocks resent after the file grew are the ones sent before: the last
    block stays short, so the guest and the server agree where it ends.
    """
    (root / "f").write_bytes(b"a" * 520)
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f", options={"tsize": "0"}))
    assert guest.replies() == [tftp.oack({"tsize": "520"})]
    guest.send(tftp.ack(0))
    guest.send(tftp.ack(1))
    [last] = guest.replies()[1:]
    with open(root / "f", "ab") as grow:
        grow.write(b"b" * 1000)
    guest.clock.advance(1.0)
    assert guest.replies() == [last] == [tftp.data(2, b"a" * 8)]


@pytest.mark.parametrize("value", ["\xb2", "1\xb9", "-1", "", "4\xbd"])
def test_optionValuesMustBeAsciiNumbers(root: Path, value: str) -> None:
    """Values Python takes for digits but RFC 2347 does not are ignored, not fatal."""
    (root / "f").write_bytes(b"z" * 100)
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, "f", options={
        "blksize": value, "timeout": value, "windowsize": value, "tsize": "0"}))
    assert guest.replies() == [tftp.oack({"tsize": "100"})]


@pytest.mark.parametrize(
    ("name", "code"),
    [("../secret", tftp.ACCESS_VIOLATION), ("a/../../secret", tftp.ACCESS_VIOLATION),
     ("outside-link", tftp.ACCESS_VIOLATION), ("missing", tftp.FILE_NOT_FOUND),
     ("sub", tftp.FILE_NOT_FOUND)],
)
def test_namesOutsideTheRootAreRefused(root: Path, name: str, code: int) -> None:
    """Nothing outside the root is read, even through a symbolic link."""
    (root.parent / "secret").write_text("no")
    (root / "outside-link").symlink_to(root.parent / "secret")
    (root / "sub").mkdir()
    guest = Guest(root)
    guest.send(tftp.request(tftp.RRQ, name))
    [reply] = guest.replies()
    assert tftp.opcodeOf(reply) == tftp.ERROR and tftp.parseError(reply)[0] == code


def test_leadingSlashIsTheRoot(root: Path) -> None:
    """/images/k means images/k under the root, as PXE loaders ask."""
    (root / "images").mkdir()
    (root / "images" / "k").write_bytes(b"kernel")
    assert Guest(root).fetch("/images/k") == b"kernel"


def test_writesAndNetasciiAreRefused(root: Path) -> None:
    """The server is read-only and octet-only, and says so."""
    (root / "f").write_bytes(b"z")
    guest = Guest(root)
    guest.send(tftp.request(tftp.WRQ, "f"))
    guest.send(tftp.request(tftp.RRQ, "f", mode="netascii"))
    codes = [tftp.parseError(r)[0] for r in guest.replies()]
    assert codes == [tftp.ACCESS_VIOLATION, tftp.ILLEGAL_OPERATION]


def test_malformedPacketsAreCounted(root: Path) -> None:
    """A truncated request is counted as malformed and answered with nothing."""
    guest = Guest(root)
    guest.send(b"\x00\x01pxelinux.0")
    guest.send(b"\x00")
    assert [reason for reason, _ in guest.network.drops] == ["malformed", "malformed"]
    assert guest.replies() == []


@given(st.binary(max_size=80))
def test_codecRefusesGarbageCleanly(packet: bytes) -> None:
    """Any bytes either decode or raise TftpError."""
    try:
        tftp.parseRequest(packet)
    except tftp.TftpError:
        pass


@given(st.text(st.characters(min_codepoint=1, max_codepoint=255), min_size=1, max_size=40),
       st.dictionaries(st.sampled_from(["blksize", "tsize", "timeout"]),
                       st.text("0123456789", min_size=1, max_size=5)))
def test_requestsRoundTrip(name: str, options: dict[str, str]) -> None:
    """A request packs and parses back to the same name and options."""
    parsed = tftp.parseRequest(tftp.request(tftp.RRQ, name, options=options))
    assert (parsed.filename, parsed.mode, parsed.options) == (name, "octet", options)
