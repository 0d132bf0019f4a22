"""
The slirp port's TCP under load against real Linux guests (namespaces behind
a TAP of the switch, as in L{test_slirp}): lossy links both ways, and many
connections to a host service that does not keep up.  Servers are the
test's own, on the host's loopback.
"""

from __future__ import annotations

import hashlib
import random
import select
import socket
import sys
import threading
import time
from typing import Any

import pytest
from helpers import execIn, procStatus, run
from test_slirp import _needs, guestBehindSlirp  # noqa: F401

pytestmark = pytest.mark.integration

PYTHON = sys.executable

#: A guest sending and receiving N megabytes at once on one connection;
#: prints how many bytes it read.
BOTH_WAYS = r"""
import socket, sys, threading
size = int(sys.argv[3]) << 20
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
sending = threading.Thread(target=lambda: c.sendall(b"u" * size))
sending.start()
got = 0
while got < size:
    data = c.recv(1 << 20)
    if not data:
        break
    got += len(data)
sending.join()
print(got, flush=True)
"""


def nstat(ns: str, counter: str) -> int:
    """
    A TCP counter of the namespace's kernel (C{nstat -az}).
    """
    for line in run(*execIn(ns, "nstat", "-saz", counter)).stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == counter:
            return int(fields[1])
    raise AssertionError(f"no {counter} in {ns}")


def bothWaysServer(size: int) -> tuple[socket.socket, threading.Thread, list[int]]:
    """
    A loopback server sending C{size} MB to its one client while reading
    what it sends; the list gets how many bytes it read when the thread ends.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(60)
    received: list[int] = []

    def serve() -> None:
        with server, server.accept()[0] as connection:
            connection.settimeout(60)
            sending = threading.Thread(target=lambda: connection.sendall(b"d" * (size << 20)),
                                       daemon=True)
            sending.start()
            got = 0
            while got < size << 20:
                data = connection.recv(1 << 20)
                if not data:
                    break
                got += len(data)
            received.append(got)
            sending.join(60)

    serving = threading.Thread(target=serve, daemon=True)
    serving.start()
    return server, serving, received


def test_dataCrossesBothWaysOnALossyLink(vswitch, namespaces, shortdir) -> None:
    """
    10 MB each way at once on a link losing 2% of the frames toward the
    guest: every byte arrives (fast retransmissions of super-segments once
    stalled the download for good), and the guest's kernel never finds our
    ACKs out of its window (TCPACKSkippedSeq counts those it rate-limits its
    answers to).
    """
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, tapOptions=":loss=2")
    server, serving, received = bothWaysServer(10)
    before = nstat(ns, "TcpExtTCPACKSkippedSeq")
    result = run(*execIn(ns, PYTHON, "-c", BOTH_WAYS, "10.0.2.2",
                         str(server.getsockname()[1]), "10"), check=False, timeout=120)
    assert result.stdout.strip() == str(10 << 20), result.stdout + result.stderr
    serving.join(60)
    assert received == [10 << 20]
    assert nstat(ns, "TcpExtTCPACKSkippedSeq") == before


#: A guest opening N connections and writing to all of them for S seconds,
#: never reading; prints how many it opened.
FLOOD = r"""
import select, socket, sys, time
connections = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
               for _ in range(int(sys.argv[3]))]
print(len(connections), flush=True)
chunk = b"f" * 65536
end = time.time() + float(sys.argv[4])
while time.time() < end:
    _, writable, _ = select.select([], connections, [], 0.2)
    for c in writable:
        c.send(chunk)
"""


def floodingServer(count: int, seconds: float) -> socket.socket:
    """
    A loopback server that accepts C{count} clients, never reads, and
    sends to each as much as it takes for C{seconds}.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(count)
    server.settimeout(30)

    def serve() -> None:
        clients = []
        with server:
            for _ in range(count):
                client = server.accept()[0]
                client.setblocking(False)
                clients.append(client)
            chunk = b"s" * 65536
            end = time.time() + seconds
            while time.time() < end:
                _, writable, _ = select.select([], clients, [], 0.2)
                for client in writable:
                    try:
                        client.send(chunk)
                    except BlockingIOError:
                        pass
                    except OSError:  # reset: the guest's side went when the test ended
                        clients.remove(client)
                        client.close()
            time.sleep(seconds)
            for client in clients:
                client.close()

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_manyStuckConnectionsStayInsideThePortsBudget(vswitch, namespaces, shortdir) -> None:
    """
    A guest writes on 120 connections to a host service that never reads
    and sends to them all, while the guest never reads either: the
    switch's memory stays within the port's TCP budget (C{tcpbuffers=32}
    MB), where each connection used to hold megabytes each way.
    """
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, ":tcpbuffers=32")
    process: Any = sw.process
    pid = process.pid
    count = 120
    server = floodingServer(count, 12)
    before = procStatus(pid, "VmRSS")
    result = run(*execIn(ns, PYTHON, "-c", FLOOD, "10.0.2.2", str(server.getsockname()[1]),
                         str(count), "10"), timeout=60)
    assert result.stdout.strip() == str(count), result.stdout + result.stderr
    grown = procStatus(pid, "VmHWM") - before
    assert grown < 80 << 20, f"{grown >> 20} MB more"
    assert "Traceback" not in sw.logText()


#: A guest reading everything from a server; prints the bytes, their
#: SHA-256 and the seconds it took.
DOWNLOAD = r"""
import hashlib, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
digest, got, start = hashlib.sha256(), 0, time.monotonic()
while data := c.recv(1 << 20):
    digest.update(data)
    got += len(data)
print(got, digest.hexdigest(), round(time.monotonic() - start, 2), flush=True)
"""


def sendingServer(data: bytes) -> socket.socket:
    """
    A loopback server sending C{data} to its one client, then closing.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(60)

    def serve() -> None:
        with server, server.accept()[0] as connection:
            connection.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_downloadOverALossyLinkRepairsEveryLossWithSack(vswitch, namespaces, shortdir) -> None:
    """
    8 MB to a guest (which SACKs, as Linux does) over a link losing 5% of
    the frames toward it arrive intact and soon: every gap its SACK blocks
    reveal is resent at once, and what it SACKed is not resent (its kernel
    sends a D-SACK for each duplicate it gets).  Without the guest's SACK
    blocks, losses waited for timeouts, data it had was sent again, and
    such a download took from half a second to over a minute, and the
    guest got 4000 to 24000 duplicates.
    """
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, tapOptions=":loss=5")
    data = random.Random(5).randbytes(8 << 20)
    server = sendingServer(data)
    before = sum(nstat(ns, c) for c in ("TcpExtTCPDSACKOldSent", "TcpExtTCPDSACKOfoSent"))
    result = run(*execIn(ns, PYTHON, "-c", DOWNLOAD, "10.0.2.2",
                         str(server.getsockname()[1])), check=False, timeout=120)
    got, digest, seconds = result.stdout.split() or ["", "", ""]
    assert [got, digest] == [str(len(data)), hashlib.sha256(data).hexdigest()], result
    duplicates = sum(nstat(ns, c) for c in ("TcpExtTCPDSACKOldSent", "TcpExtTCPDSACKOfoSent"))
    print(f"8 MB at loss=5 in {seconds} s, {duplicates - before} duplicates")
    assert float(seconds) < 10
    assert duplicates - before < 100
    assert "Traceback" not in sw.logText()
