"""
Super-frames the kernel hands an offload TAP, cut by the running switch for
a real VDE client: IPv6 TCP (TSO6) and UDP (USO, C{UDP_SEGMENT}) over IPv4
and IPv6, from a namespace behind the switch's TAP to one behind
C{vde_plug vde://SOCK tap://NAME}, checked end to end.  The kernel behind
C{vde_plug} has no offloads: it sees every segment the switch cut, checks
its checksums and counts the bad ones.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers import execIn, need, needRoot, run
from taphelpers import (
    PYTHON,
    assertNoChecksumErrors,
    checkedTransfer,
    console,
    ethtoolFeatures,
    readLine,
    tapAndVdePlug,
    waitForPing,
)

pytestmark = pytest.mark.integration

V4 = "10.214.0.{}"
V6 = "fd00:214::{}"


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("ping", "ethtool", "vde_plug")


def counters(mgmt: Path) -> tuple[int, int, int]:
    """
    From C{port/print}: packets and bytes the TAP (port 1) read, and frames
    sent to the VDE client (port 2).
    """
    text = console(mgmt, "port/print 1", "port/print 2")
    found = re.findall(r"IN: +pkts +(\d+) +bytes +(\d+)\s+OUT: +pkts +(\d+)", text)
    assert len(found) == 2, text
    return int(found[0][0]), int(found[0][1]), int(found[1][2])


def assertSuperFramesWereCut(mgmt: Path, before: tuple[int, int, int]) -> None:
    """
    Since C{before} (L{counters}), the TAP handed the switch packets far
    larger than an Ethernet frame, and the switch sent the VDE client at
    least a frame per 1514 bytes of them: it cut super-frames.
    """
    packets, size, frames = (now - then for now, then in zip(counters(mgmt), before))
    assert packets and size / packets > 4000, (packets, size)
    assert frames >= size // 1514 > 3 * packets, (frames, packets, size)


def test_ipv6TcpSuperFramesReachVdePlugIntactBothWays(
    vswitch, processes, namespaces, shortdir
) -> None:
    """
    8 MB over IPv6 TCP from the offload TAP's side (TSO6 super-frames, cut
    by the switch) and 8 MB back from the C{vde_plug} side arrive bit-exact,
    and neither kernel counts a bad header or checksum.
    """
    mgmt = shortdir / "mgmt"
    sw, nsA, tap, nsB, _ = tapAndVdePlug(vswitch, processes, namespaces, f"{V6}/64",
                                         extra=("--mgmt", str(mgmt)))
    waitForPing(nsA, V6.format(2))
    assert ethtoolFeatures(nsA, tap)["tx-tcp6-segmentation"] == "on"
    before = counters(mgmt)
    sent, got = checkedTransfer(processes, nsA, nsB, V6.format(2), 8_000_000, seed=61)
    assert got == sent
    assertSuperFramesWereCut(mgmt, before)
    sent, got = checkedTransfer(processes, nsB, nsA, V6.format(1), 8_000_000, seed=62)
    assert got == sent
    assertNoChecksumErrors(nsA, nsB)
    assert "Traceback" not in sw.logText()


#: Receive datagrams until C{argv[3]} came or none for 2 s; check each one's
#: own length and digest; report how many arrived (and how many of them
#: shorter than the segment size C{argv[4]}), and the traffic classes (or IPv4 TOS) and
#: IPv6 flow labels they came with.
_DATAGRAM_RECEIVER = r"""
import hashlib, json, socket, sys
v6 = ":" in sys.argv[1]
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
    s.setsockopt(socket.IPPROTO_IPV6, 11, 1)  # IPV6_FLOWINFO: the label as ancillary data
else:
    s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(2)
print("ready", flush=True)
seen, bad, duplicates, short = set(), [], 0, 0
classes, labels, sizes = set(), set(), set()
try:
    while len(seen) < int(sys.argv[3]):
        data, ancillary, _, _ = s.recvmsg(65536, 256)
        for level, kind, value in ancillary:
            if kind in (socket.IPV6_TCLASS, socket.IP_TOS) and level != socket.SOL_SOCKET:
                classes.add(value[0] if len(value) == 1 else int.from_bytes(value, "little"))
            elif level == socket.IPPROTO_IPV6 and kind == 11:
                labels.add(int.from_bytes(value[:4], "big") & 0xFFFFF)
        sizes.add(len(data))
        seq, length = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:6], "big")
        if length != len(data) or hashlib.sha256(data[38:]).digest() != data[6:38]:
            bad.append(seq)
        elif seq in seen:
            duplicates += 1
        else:
            seen.add(seq)
            short += len(data) < int(sys.argv[4])
except TimeoutError:
    pass
print(json.dumps({"received": len(seen), "short": short, "bad": bad, "duplicates": duplicates,
                  "classes": sorted(classes), "labels": sorted(labels),
                  "sizes": [min(sizes, default=0), max(sizes, default=0)]}), flush=True)
"""

#: Send C{argv[3]} buffers with C{UDP_SEGMENT} of C{argv[6]} bytes: each
#: holds C{argv[4]} datagrams of that size and a last shorter one, each
#: datagram its sequence number, length and SHA-256 of the rest, then
#: pseudo-random bytes; with traffic class (TOS) 0xb8 and, over IPv6, flow
#: label 0x7abcd.  A short pause between buffers keeps the VDE client's
#: socket from overflowing.
_USO_SENDER = r"""
import hashlib, random, socket, sys, time
UDP_SEGMENT, GSO_SIZE = 103, int(sys.argv[6])
v6 = ":" in sys.argv[1]
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, GSO_SIZE)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xb8)
    # lease flow label 0x7abcd (IPV6_FLOWLABEL_MGR: get, any share, create)
    # and send with it (IPV6_FLOWINFO_SEND): the label given to connect
    request = socket.inet_pton(socket.AF_INET6, sys.argv[1]) + (0x7ABCD).to_bytes(4, "big")
    s.setsockopt(socket.IPPROTO_IPV6, 32, request + bytes([0, 255, 1, 0]) + bytes(8))
    s.setsockopt(socket.IPPROTO_IPV6, 33, 1)
    s.connect((sys.argv[1], int(sys.argv[2]), 0x7ABCD, 0))
else:
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xb8)
    s.connect((sys.argv[1], int(sys.argv[2])))
r = random.Random(int(sys.argv[5]))
seq = 0
def datagram(size):
    global seq
    body = r.randbytes(size - 38)
    seq += 1
    return seq.to_bytes(4, "big") + size.to_bytes(2, "big") + hashlib.sha256(body).digest() + body
for _ in range(int(sys.argv[3])):
    full = [datagram(GSO_SIZE) for _ in range(int(sys.argv[4]))]
    s.send(b"".join(full + [datagram(r.randrange(39, GSO_SIZE))]))
    time.sleep(0.02)
print(seq, flush=True)
"""


@pytest.mark.parametrize(("address", "size"), [(V4, 1400), (V6, 1400), (V6, 1399)],
                         ids=["ipv4", "ipv6", "ipv6-odd-size"])
def test_usoSuperFramesReachVdePlugAsIntactDatagrams(
    vswitch, processes, namespaces, shortdir, address, size
) -> None:
    """
    60 KB UDP sends with C{UDP_SEGMENT} (USO super-frames of 43 datagrams,
    of an even or odd size, whose checksums are summed differently)
    from the offload TAP's side reach a socket behind C{vde_plug} as
    datagrams each of the right length and content, the last short one of
    each buffer included, with the sender's traffic class (and for IPv6 its
    flow label); nearly all arrive and no kernel counts a bad checksum.
    """
    mgmt = shortdir / "mgmt"
    sw, nsA, tap, nsB, _ = tapAndVdePlug(vswitch, processes, namespaces, f"{V4}/24",
                                         f"{V6}/64", extra=("--mgmt", str(mgmt)))
    waitForPing(nsA, address.format(2))
    assert ethtoolFeatures(nsA, tap)["tx-udp-segmentation"] == "on"
    assert re.search(rf"{tap} offload=\S*uso4,uso6", console(mgmt, "port/print 1"))
    buffers, perBuffer = 60, 42
    expected = buffers * (perBuffer + 1)
    receiver = processes.start(
        execIn(nsB, PYTHON, "-c", _DATAGRAM_RECEIVER, address.format(2), "7400", str(expected),
               str(size)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert readLine(receiver, 10).strip() == "ready"
    before = counters(mgmt)
    sender = run(*execIn(nsA, PYTHON, "-c", _USO_SENDER, address.format(2), "7400",
                         str(buffers), str(perBuffer), "63", str(size)), timeout=30)
    assert int(sender.stdout) == expected
    report = json.loads(readLine(receiver, 15))
    assert report["bad"] == [] and report["duplicates"] == 0, report
    assert report["received"] >= 0.98 * expected, (report, console(mgmt, "port/stats 2"))
    assert report["short"] >= 0.95 * buffers and report["sizes"][1] == size, report
    assert report["classes"] == [0xb8], report
    assert report["labels"] == ([0x7ABCD] if ":" in address else []), report
    assertSuperFramesWereCut(mgmt, before)
    assertNoChecksumErrors(nsA, nsB)
    assert "Traceback" not in sw.logText()
