"""
The slirp port's flow tables against a real Linux guest: a namespace behind
a TAP of the switch, as in L{test_slirp}, talking only to servers the test
starts on the host's loopback.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import execIn, run
from taphelpers import readLine
from test_slirp import DNS, _needs, guestBehindSlirp  # noqa: F401

pytestmark = pytest.mark.integration

PYTHON = sys.executable

#: A stub resolver as glibc's: each query from a fresh socket (source
#: port), closed once answered; prints how many were answered.
QUERIES = r"""
import socket, struct, sys
answered = 0
for i in range(int(sys.argv[1])):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        header = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0)
        s.sendto(header + b"\x07example\x04test\x00\x00\x01\x00\x01", ("10.0.2.3", 53))
        try:
            s.recv(512)
            answered += 1
        except OSError:
            pass
print(answered, flush=True)
"""


def test_dnsQueriesFromFreshPortsNeverFillTheTable(vswitch, processes, namespaces,
                                                   shortdir) -> None:
    """
    2000 queries in a row, each from its own source port, are all answered:
    the sockets of answered queries make room for new ones instead of
    filling the port's 1024 UDP mappings for 10 s.
    """
    resolver = processes.start([PYTHON, "-c", DNS], stdout=subprocess.PIPE)
    port = int(readLine(resolver, 10))
    sw, ns, _ = guestBehindSlirp(
        vswitch, namespaces, shortdir, f":resolver=127.0.0.1:resolverport={port}")
    result = run(*execIn(ns, PYTHON, "-c", QUERIES, "2000"), timeout=120)
    assert result.stdout.strip() == "2000", sw.logText()[-2000:]
    assert "(busy)" not in sw.logText(), sw.logText()[-2000:]
