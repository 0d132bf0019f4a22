"""
A slirp port's full UDP table against a real Linux guest (a namespace
behind a TAP of the switch, as in L{test_slirp}): a burst of one-shot
flows from more source ports than the table holds leaves room for the
next DNS query and UDP flow, and does not break a busy stream.  Only
servers this test starts on the host's loopback are reached: the DNS
proxy leads to the stub resolver of L{test_slirp}.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading

import pytest
from helpers import execIn, run
from taphelpers import console, readLine
from test_slirp import DNS, _needs, guestBehindSlirp  # noqa: F401

pytestmark = pytest.mark.integration

PYTHON = sys.executable

#: The guest: a stream to the echo server kept busy all along, a burst of
#: one-shot flows (a socket each, one datagram, closed), then a DNS query
#: and a UDP exchange from fresh sockets, each given one second.
BURST = r"""
import socket, struct, sys, time
echo = ("10.0.2.2", int(sys.argv[1]))
count = int(sys.argv[2])

def exchange(s, data):
    s.sendto(data, echo)
    return s.recv(100) == data

stream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
stream.settimeout(2)
streamOk = exchange(stream, b"stream start")
for i in range(count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"once %d" % i, echo)
    if i % 50 == 0:
        streamOk = streamOk and exchange(stream, b"stream %d" % i)
print("stream", "ok" if streamOk and exchange(stream, b"stream end") else "broken", flush=True)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(1)
    query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    query += b"\x07example\x04test\x00\x00\x01\x00\x01"
    started = time.monotonic()
    s.sendto(query, ("10.0.2.3", 53))
    try:
        answer = s.recv(512)
        took = time.monotonic() - started
        print("dns", "ok" if answer[:2] == query[:2] else "wrong", "%.3f" % took, flush=True)
    except OSError as e:
        print("dns", "failed", e, flush=True)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(1)
    try:
        print("udp", "ok" if exchange(s, b"new flow") else "wrong", flush=True)
    except OSError as e:
        print("udp", "failed", e, flush=True)
"""


def test_burstOfOneShotFlowsLeavesRoomForDnsAndNewFlows(vswitch, processes, namespaces,
                                                        shortdir) -> None:
    """
    More one-shot flows than the port has UDP sockets, in a few seconds:
    the DNS query and the new flow after them are answered at once, the
    busy stream kept its host port throughout, and C{slirp/print} counts
    the evictions.
    """
    resolver = processes.start([PYTHON, "-c", DNS], stdout=subprocess.PIPE)
    dnsPort = int(readLine(resolver, 10))
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(1)
    streamPorts: set[int] = set()
    done = threading.Event()

    def echo() -> None:
        while not done.is_set():
            try:
                data, peer = server.recvfrom(100)
            except TimeoutError:
                continue
            except OSError:
                return
            if data.startswith(b"stream"):
                streamPorts.add(peer[1])
            server.sendto(data, peer)

    mgmt = shortdir / "mgmt"
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir,
                                 f":resolver=127.0.0.1:resolverport={dnsPort}",
                                 extra=("--mgmt", str(mgmt)))
    report = console(mgmt, "slirp/print")
    found = re.search(r"UDP: \d+ of (\d+) host sockets in use", report)
    assert found, report
    cap = int(found.group(1))
    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        result = run(*execIn(ns, PYTHON, "-c", BURST, str(server.getsockname()[1]),
                             str(cap + 500)), timeout=120)
    finally:
        done.set()
        thread.join(5)
        server.close()
    lines = result.stdout.split("\n")
    log = sw.logText()
    assert lines[0] == "stream ok", result.stdout + result.stderr + log[-2000:]
    assert lines[1].startswith("dns ok "), result.stdout + log[-2000:]
    assert float(lines[1].split()[2]) < 0.5, "answered at once"
    assert lines[2] == "udp ok", result.stdout + log[-2000:]
    assert len(streamPorts) == 1, f"the stream's host port changed: {streamPorts}"
    assert "(busy)" not in log, log[-2000:]
    assert log.count("host sockets are in use") == 1, log[-2000:]
    report = console(mgmt, "slirp/print")
    evicted = re.search(r"UDP: (\d+) of \d+ host sockets in use, (\d+) evicted", report)
    # The guest's kernel may give a closed socket's port to a later one
    # (the same mapping), so not quite 500 sources are new.
    assert evicted and int(evicted.group(1)) == cap and int(evicted.group(2)) > 250, report
