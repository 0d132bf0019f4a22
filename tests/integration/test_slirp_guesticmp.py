"""
A guest's ICMP errors about what a slirp port's host forwards sent it,
against real peers: a namespace's kernel as the guest behind a TAP port of
a C{twistd vswitch}, host clients over the loopback.

  - A guest answering a TCP forward's SYN with ICMP or ICMPv6 time
    exceeded or parameter problem resets the host client at once, as
    Linux's own C{connect} fails on them.  A guest's kernel sends those
    only when it routes or cannot parse a packet, so the namespace's own
    program sends them, crafted on a raw socket: it reads the SYN at the
    TAP (an nftables rule keeps the kernel from answering it) and quotes
    it, as a router beyond the guest would.
  - A guest with nothing on a UDP forward's port answers its datagrams with
    ICMP or ICMPv6 port unreachable, sent by its kernel: C{slirp/print}
    counts them on the forward, the log names the forward, the guest port,
    the client and the error, once.

Every address is the loopback's or a namespace's made here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from helpers import execIn, need, needRoot, run, waitFor
from taphelpers import console, readLine
from test_slirp_fwdends import freePort, guestOnTap, readsReset

pytestmark = pytest.mark.integration

PYTHON = sys.executable


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("ip")


#: Run in the guest's namespace: wait for a SYN to port 8080 at the TAP and
#: answer it with an ICMP (or ICMPv6) error of the given type and code
#: quoting it, from a raw socket.
ANSWER = r"""
import socket, struct, sys
v6, kind, code = sys.argv[1] == "ipv6", int(sys.argv[2]), int(sys.argv[3])
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM,
                      socket.htons(0x86DD if v6 else 0x0800))
print("ready", flush=True)
while True:
    packet = sniff.recv(65535)
    start = 40 if v6 else (packet[0] & 15) * 4
    if packet[6 if v6 else 9] != 6:
        continue
    port, flags = struct.unpack_from("!H", packet, start + 2)[0], packet[start + 13]
    if port == 8080 and flags & 0x12 == 0x02:
        break
if v6:
    sender = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    message = struct.pack("!BBHI", kind, code, 0, 0) + packet[:1232]
    sender.sendto(message, (socket.inet_ntop(socket.AF_INET6, packet[8:24]), 0))
else:
    sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    message = struct.pack("!BBHI", kind, code, 0, 0) + packet[:start + 8]
    total = sum(struct.unpack("!%dH" % (len(message) // 2), message))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    message = message[:2] + struct.pack("!H", ~total & 0xFFFF) + message[4:]
    sender.sendto(message, (socket.inet_ntoa(packet[12:16]), 0))
print("sent", flush=True)
"""

#: (family, error): the ICMP type and code, and what the log calls it.
ERRORS = {
    ("ipv4", "time-exceeded"): (11, 0, "ICMP time exceeded (TTL exceeded in transit)"),
    ("ipv4", "parameter-problem"): (12, 0, "ICMP parameter problem (pointer indicates the "
                                           "error)"),
    ("ipv6", "time-exceeded"): (3, 0, "ICMPv6 time exceeded (hop limit exceeded in "
                                      "transit)"),
    ("ipv6", "parameter-problem"): (4, 0, "ICMPv6 parameter problem (erroneous header "
                                          "field)"),
}


@pytest.mark.parametrize("family, error", sorted(ERRORS))
def test_timeExceededOrParameterProblemResetsTheForwardsHostClient(
        vswitch, namespaces, processes, shortdir, family: str, error: str) -> None:
    """
    A guest answering a TCP forward's SYN with a time exceeded or parameter
    problem resets the host client within seconds, not after the SYN's 31 s;
    C{slirp/print} counts it as failed on an ICMP error and the log names it.
    """
    need("nft")
    kind, code, name = ERRORS[family, error]
    if family == "ipv4":
        af, host, guest, side = socket.AF_INET, "127.0.0.1", "10.0.2.15", "127.0.0.1"
    else:
        af, host, guest, side = socket.AF_INET6, "::1", "[fec0::15]", "[::1]"
    port = freePort(af, host)
    rule = f"tcp:{side}:{port}-{guest}:8080"
    mgmt = shortdir / "mgmt"
    sw, ns = guestOnTap(vswitch, namespaces, ":hostfwd=" + rule.replace(":", "\\:"), mgmt)
    rules = shortdir / "drop.nft"
    rules.write_text("table inet vtg {\n chain input {\n  type filter hook input priority 0;\n"
                     "  tcp dport 8080 drop\n }\n}\n")
    run(*execIn(ns, "nft", "-f", str(rules)))
    answerer = processes.start(execIn(ns, PYTHON, "-c", ANSWER, family, str(kind), str(code)),
                               stdout=subprocess.PIPE)
    assert readLine(answerer, 10) == "ready\n"
    started = time.monotonic()
    assert readsReset(af, host, port) == "reset", sw.logText()
    # The difference is between at once and the SYN's 31 s: 10 s is no race.
    assert time.monotonic() - started < 10, "reset only after the SYN timed out"
    assert readLine(answerer, 10) == "sent\n"
    report = console(mgmt, "slirp/print")
    assert "forwards 0 refused by guests, 0 unanswered, 1 failed on their ICMP errors; " \
           "0 ICMP errors from guests ignored" in report, report
    log = sw.logText()
    assert f"forward to {guest}:8080: the guest answered it with {name}" in log, log


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_portUnreachableAnsweringAUdpForwardIsCountedAndLogged(
        vswitch, namespaces, shortdir, family: str) -> None:
    """
    Datagrams through a UDP forward to a guest port nothing listens on:
    the guest's kernel answers with port unreachable, which C{slirp/print}
    counts on the forward, and the log says once which forward, guest
    port, client and error.
    """
    if family == "ipv4":
        af, host, guest, side = socket.AF_INET, "127.0.0.1", "10.0.2.15", "127.0.0.1"
        name = "ICMP port unreachable"
    else:
        af, host, guest, side = socket.AF_INET6, "::1", "[fec0::15]", "[::1]"
        name = "ICMPv6 port unreachable"
    port = freePort(af, host)
    rule = f"udp:{side}:{port}-{guest}:9090"
    mgmt = shortdir / "mgmt"
    sw, _ = guestOnTap(vswitch, namespaces, ":hostfwd=" + rule.replace(":", "\\:"), mgmt)
    with socket.socket(af, socket.SOCK_DGRAM) as client:
        client.bind((host, 0))
        clientPort = client.getsockname()[1]

        def counted() -> bool:
            client.sendto(b"anyone?", (host, port))
            time.sleep(0.2)
            return "ICMP errors from the guest" in console(mgmt, "slirp/print")

        waitFor(counted, 20, "the guest's port unreachable, counted")
        for _ in range(3):
            client.sendto(b"still?", (host, port))
        time.sleep(1.5)  # the kernel's ICMP rate limit lets another through
        client.sendto(b"last", (host, port))
        time.sleep(0.5)
    report = console(mgmt, "slirp/print")
    line = [line for line in report.splitlines() if f"forward {rule}" in line
            or "ICMP errors from the guest" in line]
    assert len(line) == 1 and f", last {name} from {guest}:9090" in line[0], report
    log = [line for line in sw.logText().splitlines() if "UDP forward" in line]
    assert len(log) == 1, log
    assert f"UDP forward from {side}:{port} to {guest}:9090: the guest answered a datagram " \
           f"from {side}:{clientPort} with {name}" in log[0], log
