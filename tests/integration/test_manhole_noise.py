"""
A scanner hammering the SSH manhole (plain TCP connects that close at
once, or send an HTTP request, a bad SSH version, garbage after a good
one): the log gets a bounded number of lines per peer address, not a few
per connection.  A real C{twistd vswitch}; everything on 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from helpers import waitFor
from test_manhole_ssh import Manhole

pytestmark = pytest.mark.integration

#: Connections of each kind.
ROUNDS = 40


def knock(port: int, send: bytes) -> None:
    """
    Connect, send C{send} (if anything), read until the manhole closes (or
    a moment passes), close.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        if send:
            s.sendall(send)
            s.settimeout(0.5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass


def garbagePacket() -> bytes:
    """
    A binary packet after a good version line whose message is cut short
    (a KEXINIT of 3 bytes): malformed.
    """
    payload = b"\x14ab"
    padding = 8 - (len(payload) + 5) % 8 + 8
    return struct.pack(">IB", len(payload) + padding + 1, padding) + payload + bytes(padding)


def test_aScannerGetsABoundedNumberOfLogLines(vswitch, shortdir) -> None:
    manhole = Manhole(vswitch, shortdir)
    time.sleep(0.5)
    before = len(manhole.switch.logText().splitlines())
    kinds = [
        b"",  # connect and close at once
        b"GET / HTTP/1.0\r\n\r\n",
        b"SSH-1.5-scanner\r\n",
        b"SSH-2.0-scanner\r\n" + garbagePacket(),
        b"SSH-2.0-scanner\r\n" + b"\xff" * 64,
    ]
    for _ in range(ROUNDS):
        for send in kinds:
            knock(manhole.port, send)
    # the last connection's lines are in
    waitFor(lambda: len(manhole.switch.logText().splitlines()) > before, what="log lines")
    time.sleep(1)
    lines = manhole.switch.logText().splitlines()[before:]
    assert len(lines) <= 8, "\n".join(lines)
    # ...yet what happened is said: the first of each kind, and a count
    text = "\n".join(lines)
    assert "127.0.0.1" in text and "malformed" in text, text
