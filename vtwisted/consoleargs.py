"""
Console arguments read the way vde_switch's C library calls read them:
C{atoi} for its numeric commands (C{port/create abc} means port 0),
C{sscanf("%i %i")} for its two-number commands (so C{0x10} and C{010} are
hexadecimal and octal, and a missing number is C{EINVAL}), and its MAC
address parser for C{hash/find}.
"""

from __future__ import annotations

import re

from vtwisted import errors

_LONG_MIN = -(1 << 63)
_LONG_MAX = (1 << 63) - 1


def _cInt(value: int) -> int:
    """
    C{(int) strtol(...)}: clamp to C{long}, then keep the low 32 bits.
    """
    value = max(_LONG_MIN, min(_LONG_MAX, value))
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


_DECIMAL = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")
_AUTO = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_HEX = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[xX])?([0-9a-fA-F]+)")


def _scan(pattern: re.Pattern[str], text: str, pos: int, base: int) -> tuple[int, int] | None:
    match = pattern.match(text, pos)
    if match is None:
        return None
    sign, digits = match.groups()
    if base == 0:
        base = 16 if digits[1:2] in ("x", "X") else 8 if digits.startswith("0") else 10
    value = int(digits, base)
    return _cInt(-value if sign == "-" else value), match.end()


def atoi(text: str) -> int:
    """
    C{atoi}: leading blanks, a sign, decimal digits; 0 if there are none.
    """
    scanned = _scan(_DECIMAL, text, 0, 10)
    return 0 if scanned is None else scanned[0]


def scanIntegers(text: str, count: int) -> list[int]:
    """
    C{sscanf(text, "%i %i ...")}: C{count} integers in C's notation
    (C{0x1f} hexadecimal, C{017} octal), extra text ignored.

    @raise SwitchError: C{EINVAL} if fewer than C{count} are there.
    """
    values = []
    pos = 0
    for _ in range(count):
        scanned = _scan(_AUTO, text, pos, 0)
        if scanned is None:
            raise errors.invalid(f"expected {count} numbers in {text!r}")
        value, pos = scanned
        values.append(value)
    return values


def parseMac(text: str) -> tuple[bytes, int]:
    """
    C{hash/find}'s C{MAC [VLAN]}: six hex numbers separated by C{:} (or by
    C{.} if there is no colon), then an optional decimal VLAN.

    @raise SwitchError: C{EINVAL} if fewer than six numbers are there.
    """
    separator = ":" if ":" in text else "."
    octets = []
    pos = 0
    for i in range(6):
        scanned = _scan(_HEX, text, pos, 16)
        if scanned is None:
            break
        octets.append(scanned[0] & 0xFF)
        pos = scanned[1]
        if i < 5:
            if not text.startswith(separator, pos):
                break
            pos += 1
    if len(octets) < 6:
        raise errors.invalid(f"{text!r} is not a MAC address")
    vlan = _scan(_DECIMAL, text, pos, 10)
    return bytes(octets), 0 if vlan is None else vlan[0]
