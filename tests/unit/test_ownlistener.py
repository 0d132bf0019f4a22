"""
Claiming a Unix socket path this very switch listens on (a second spec on
the same path: C{pcap:listen:unix:P}, then C{pcap:listen:unix:P:snaplen=96})
says so, and does not connect to find out: the probe would be one of its
own clients (a capture reader, a failed guest) in its log.  Another
process's socket is still told as another program's, and a stale one is
still replaced.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vtwisted.sockettools import claimSocketPath, listenedHere


def test_ownListenerIsToldAndNotConnectedTo(tmp_path: Path) -> None:
    path = str(tmp_path / "lab.capture")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen()
        listener.setblocking(False)
        with pytest.raises(OSError) as caught:
            claimSocketPath(path, "pcap:listen:unix:" + path + ":snaplen=96", "another program")
        assert caught.value.errno == errno.EADDRINUSE
        assert caught.value.strerror == (
            f"pcap:listen:unix:{path}:snaplen=96 {path}: this switch is listening there "
            "already (another of its port specs, or its console) (Address already in use)")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected to find out
    finally:
        listener.close()


def test_ownDatagramSocket(tmp_path: Path) -> None:
    path = str(tmp_path / "vm.dgram")
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        bound.bind(path)
        assert listenedHere(path, socket.SOCK_DGRAM)
        assert not listenedHere(path, socket.SOCK_STREAM)
        with pytest.raises(OSError, match="this switch is listening there already"):
            claimSocketPath(path, "dgram:unix:" + path + ":/tmp/x", "another program",
                            socket.SOCK_DGRAM)
    finally:
        bound.close()


def test_anotherProcessAndAStaleSocket(tmp_path: Path) -> None:
    path = str(tmp_path / "vm.sock")
    other = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); "
         "s.listen(); print('ready', flush=True); sys.stdin.read()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline() == "ready\n"
        assert not listenedHere(path)
        with pytest.raises(OSError, match="another program is listening there"):
            claimSocketPath(path, "qemu:unix:" + path, "another program")
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(30)
    claimSocketPath(path, "qemu:unix:" + path, "another program")  # stale now: removed
    assert not Path(path).exists()
