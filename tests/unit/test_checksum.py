"""
Tests for L{vtwisted.wire.checksum}, against a word-by-word reference.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtwisted.wire.checksum import (
    checksumValid,
    completePartial,
    internetChecksum,
    onesSum,
    pseudoHeaderSumV4,
    pseudoHeaderSumV6,
)


def referenceSum(data: bytes) -> int:
    """
    RFC 1071 done the textbook way: add 16-bit words, fold the carries.
    """
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def foldedSum(total: int) -> int:
    """
    Fold carries into 16 bits, end-around.
    """
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def referenceChecksum(data: bytes) -> int:
    """
    The complement of L{referenceSum}, a 0 result written as 0xFFFF.
    """
    return (~referenceSum(data) & 0xFFFF) or 0xFFFF


def sameOnesComplement(a: int, b: int) -> bool:
    """
    Whether two 16-bit values are the same one's-complement number.
    """
    return a % 0xFFFF == b % 0xFFFF


def test_rfc1071Example() -> None:
    """
    The worked example of RFC 1071 section 3 sums to 0xDDF2.
    """
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert onesSum(data) == 0xDDF2
    assert internetChecksum(data) == 0x220D


@settings(max_examples=200)
@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_sumMatchesWordByWordReference(data: bytes, initial: int) -> None:
    """
    The big-integer sum equals the textbook word-by-word sum, odd lengths included.
    """
    result = onesSum(data, initial)
    assert 0 <= result < 0xFFFF
    assert result == (referenceSum(data) + initial) % 0xFFFF


@given(st.binary(max_size=2000))
def test_checksumIsNeverZero(data: bytes) -> None:
    """
    A computed checksum is never 0, so UDP never sends "no checksum" by accident.
    """
    assert 1 <= internetChecksum(data) <= 0xFFFF


@given(st.binary(min_size=2, max_size=2000).filter(lambda d: len(d) % 2 == 0))
def test_storedChecksumVerifies(data: bytes) -> None:
    """
    Data with its checksum appended sums to zero, as a receiver checks it.
    """
    stored = data + internetChecksum(data).to_bytes(2, "big")
    assert checksumValid(stored)
    assert referenceSum(stored) == 0xFFFF
    assert sameOnesComplement(internetChecksum(data), referenceChecksum(data))


def test_allZeroDataChecksumsToAllOnes() -> None:
    """
    Zero-filled data gets checksum 0xFFFF (both zeros are the same number).
    """
    assert internetChecksum(bytes(40)) == 0xFFFF
    assert checksumValid(bytes(40) + b"\xff\xff")


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
       st.integers(0, 255), st.integers(0, 0xFFFF))
def test_pseudoHeaderV4MatchesLayout(src: bytes, dst: bytes, proto: int, length: int) -> None:
    """
    The IPv4 pseudo-header sum is that of src, dst, zero, protocol, length.
    """
    layout = src + dst + bytes([0, proto]) + length.to_bytes(2, "big")
    assert sameOnesComplement(pseudoHeaderSumV4(src, dst, proto, length), referenceSum(layout))


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
       st.integers(0, 255), st.integers(0, 0xFFFFFFFF))
def test_pseudoHeaderV6MatchesLayout(src: bytes, dst: bytes, nh: int, length: int) -> None:
    """
    The IPv6 pseudo-header sum is that of src, dst, 32-bit length, zeros, next header.
    """
    layout = src + dst + length.to_bytes(4, "big") + bytes(3) + bytes([nh])
    assert sameOnesComplement(pseudoHeaderSumV6(src, dst, nh, length), referenceSum(layout))


@given(st.binary(min_size=20, max_size=1600), st.data())
def test_completingAPartialChecksumEqualsComputingItFromScratch(
    segment: bytes, data: st.DataObject
) -> None:
    """
    Filling the field with the pseudo sum and completing gives the full checksum.
    """
    prefix = data.draw(st.binary(min_size=0, max_size=40))
    offset = data.draw(st.integers(0, (len(segment) - 2) // 2)) * 2
    pseudo = data.draw(st.integers(0, 0xFFFE))
    zeroed = segment[:offset] + b"\x00\x00" + segment[offset + 2 :]
    expected = internetChecksum(zeroed, pseudo)
    partial = prefix + segment[:offset] + pseudo.to_bytes(2, "big") + segment[offset + 2 :]
    done = completePartial(partial, len(prefix), offset)
    assert done[: len(prefix)] == prefix
    field = done[len(prefix) + offset : len(prefix) + offset + 2]
    assert sameOnesComplement(int.from_bytes(field, "big"), expected)
    assert foldedSum(referenceSum(done[len(prefix) :]) + pseudo) == 0xFFFF


def test_completePartialRefusesAFieldOutsideTheFrame() -> None:
    """
    A checksum field past the end of the frame is a ValueError, not a crash.
    """
    for start, offset in ((10, 9), (20, 0), (0, 19)):
        with pytest.raises(ValueError, match="does not fit"):
            completePartial(bytes(20), start, offset)
    assert len(completePartial(bytes(20), 10, 8)) == 20
