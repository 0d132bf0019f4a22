"""
The test suite's own guard against traffic off the machine (tests/netguard.py).
"""

from __future__ import annotations

import socket

import pytest
from netguard import _waysOut, networkGuard


def _outsideAddress() -> str:
    """
    An address the host routes out (its default route's gateway), never
    actually reached: the guard refuses before the send.
    """
    import json
    import subprocess

    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "default"],
                                       capture_output=True, text=True).stdout or "[]")
    gateways = [r["gateway"] for r in routes if "gateway" in r]
    if not gateways or not _waysOut():
        pytest.skip("this host has no IPv4 default route: nothing to guard")
    return str(gateways[0])


def test_aDatagramOffTheMachineIsRefusedAndRecorded() -> None:
    outside = _outsideAddress()
    with networkGuard() as guard, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(PermissionError):
            sock.sendto(b"x", (outside, 9))
        with pytest.raises(PermissionError):
            sock.sendmsg([b"x"], [], 0, (outside, 9))
        assert sock.connect_ex in (sock.connect_ex,)  # bound methods still work
    assert len(guard.refused) == 2 and outside in guard.refused[0]


def test_loopbackAndUnixSocketsPass(tmp_path) -> None:
    with networkGuard() as guard:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
            server.bind(("127.0.0.1", 0))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"hello", server.getsockname())
                assert server.recv(10) == b"hello"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
            unix.bind(str(tmp_path / "s"))
            unix.sendto(b"x", str(tmp_path / "s"))
    assert guard.refused == []


def test_theGuardIsGoneAfterwards() -> None:
    original = socket.socket.sendto
    with networkGuard():
        assert socket.socket.sendto is not original
    assert socket.socket.sendto is original
