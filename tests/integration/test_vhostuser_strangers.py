"""
A hostile vhost-user front-end run as another user (a throwaway one, see
L{unprivileged}) against a real C{twistd vswitch} run as root: what the
switch takes from a stranger, who could not stop it otherwise.  The
stranger is a standalone script (L{STRANGER}) speaking the protocol.
"""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import socketListening, waitFor
from unprivileged import ThrowawayUser

from vtwisted.wire import vhostuser as vu

pytestmark = pytest.mark.integration

#: The stranger: C{fill} maps as much sparse memfd as the switch takes
#: (tables of 8 regions, each the largest that still maps, largest first),
#: holds it and says how much; C{seals} offers memory that cannot be
#: sealed, then memory that can, and tries to shrink it once mapped.
STRANGER = r"""
import array, os, socket, struct, sys
path, action = sys.argv[1:]
USER = 0x7F0000000000

def send(sock, request, payload, fds=()):
    data = struct.pack("=III", request, 1, len(payload)) + payload
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    sock.sendmsg([data], rights if fds else [])

def offer(fd, sizes):
    # a memory table, then GET_FEATURES: the connection if answered, else None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    table = struct.pack("=II", len(sizes), 0) + b"".join(
        struct.pack("=QQQQ", i << 47, size, USER + (i << 47), 0) for i, size in enumerate(sizes))
    sock.settimeout(10)
    try:
        send(sock, 5, table, (fd,) * len(sizes))
        send(sock, 1, b"")
        if sock.recv(64):
            return sock
    except (BrokenPipeError, ConnectionResetError, TimeoutError):  # refused
        pass
    sock.close()
    return None

if action == "fill":
    big = os.memfd_create("stranger", os.MFD_ALLOW_SEALING)
    os.ftruncate(big, 1 << 46)
    held, total, shift = [], 0, 46
    while shift >= 20 and len(held) < 20:
        sizes = []
        while len(sizes) < 8 and shift >= 20:
            probe = offer(big, sizes + [1 << shift])
            if probe is None:
                shift -= 1
            else:
                probe.close()
                sizes.append(1 << shift)
        if sizes:
            sock = offer(big, sizes)
            if sock is not None:
                held.append(sock)
                total += sum(sizes)
    print(total, flush=True)
    sys.stdin.read()
else:
    unsealable = os.memfd_create("stranger")
    os.ftruncate(unsealable, 1 << 20)
    print("unsealable", "taken" if offer(unsealable, [1 << 20]) else "refused")
    sealable = os.memfd_create("stranger", os.MFD_ALLOW_SEALING)
    os.ftruncate(sealable, 1 << 20)
    sock = offer(sealable, [1 << 20])
    print("sealable", "taken" if sock else "refused")
    try:
        os.ftruncate(sealable, 0)
        print("shrunk")
    except PermissionError:
        print("not shrunk")
"""


@pytest.fixture
def socketPath(vswitch, shortdir: Path) -> Iterator[tuple[object, Path]]:
    """A switch run as root with a vhost-user socket anyone may connect to."""
    path = shortdir / "vh.sock"
    running = vswitch("--port", f"vhostuser:unix:{path}:mode=666")
    waitFor(lambda: socketListening(path), what="the vhost-user socket")
    yield running, path


def stranger(user: ThrowawayUser, path: Path, action: str) -> subprocess.Popen[str]:
    return subprocess.Popen(user.argv(sys.executable, "-c", STRANGER, str(path), action),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=user.env(dict(os.environ)))


def rootFrontEndIsServed(path: Path) -> bool:
    """Whether the switch maps 1 MB of sealed memory for a front-end of root's."""
    memfd = os.memfd_create("root-guest", os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, 1 << 20)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        table = vu.packTable([vu.Region(0, 1 << 20, 0x7F0000000000, 0)])
        sock.sendmsg([vu.message(vu.SET_MEM_TABLE, table)],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [memfd]))])
        os.close(memfd)
        sock.sendall(vu.message(vu.GET_FEATURES))
        sock.settimeout(10)
        try:
            reply = sock.recv(64)
        except ConnectionResetError:
            return False
    return bool(reply) and vu.Header.parse(reply).request == vu.GET_FEATURES


def test_aStrangerCannotTakeTheSwitchsAddressSpace(user, socketPath) -> None:
    """
    Sparse memfds of terabytes cost a front-end nothing, but mapped they
    take the switch's address space (128 TiB): a stranger holding enough
    of them left the switch none, and every guest after it was refused.
    The stranger's front-ends get 8 TiB at most; the switch then still
    serves a guest of root's.
    """
    running, path = socketPath
    process = stranger(user, path, "fill")
    try:
        assert process.stdout is not None
        taken = int(process.stdout.readline())
        assert rootFrontEndIsServed(path), running.logText()
        assert 0 < taken <= 8 << 40, taken
        assert f"of uid {user.uid} past 8 TiB" in running.logText()
    finally:
        process.communicate("", timeout=30)
    assert running.process.poll() is None


def test_aStrangersMemoryMustBeSealedAgainstShrinking(user, socketPath) -> None:
    """
    As the README says: memory that cannot be sealed is refused from a
    front-end of another user, memory that can be is taken and sealed (the
    stranger can no longer shrink it under the switch).
    """
    running, path = socketPath
    process = stranger(user, path, "seals")
    out, _ = process.communicate("", timeout=60)
    assert out.split("\n")[:3] == ["unsealable refused", "sealable taken", "not shrunk"], \
        (out, running.logText())
    assert "not in a memfd sealed against shrinking" in running.logText()
    assert running.process.poll() is None
