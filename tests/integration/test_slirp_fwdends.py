"""
How a slirp port's forwards end when their far side does not take part,
against real peers: a namespace's kernel as the guest behind a TAP port of
a C{twistd vswitch}, host clients over the loopback.

  - A host forward to a guest port nothing listens on (the guest's kernel
    answers the SYN with a RST), or to an address no guest has (no answer
    to ARP or neighbour solicitation), resets the host client, which reads
    C{ECONNRESET} as from a closed port, where libslirp closes it cleanly
    (the client reads an empty reply, as if the service said nothing).
  - A forward to a guest port its firewall rejects (an nftables C{reject}
    rule in the namespace: ICMP or ICMPv6 port unreachable or
    administratively prohibited) resets the host client at once, as a RST
    does, not after the SYN's 31 s of retransmissions.
  - A guest forward's C{cmd:} command that ignores the end of its input is
    ended with its connection: its input ends, then after a grace its
    process group gets C{TERM}, then C{KILL}, so it does not run on for
    ever once the guest's connection is over; the switch stopping ends it
    too.

Every address is the loopback's or a namespace's made here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import console, ipv6Namespace, moveTap, readLine

pytestmark = pytest.mark.integration

PYTHON = sys.executable


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("ip")


def freePort(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def guestOnTap(vswitch, namespaces, slirpOptions: str, mgmt: Path):
    """
    A switch with a slirp port and a TAP moved into a new namespace whose
    kernel is guest 10.0.2.15 and fec0::15.
    """
    tap = uniqueName("vtf")
    sw = vswitch("--port", f"tap:{tap}", "--port", f"slirp{slirpOptions}",
                 "--mgmt", str(mgmt))
    ns = ipv6Namespace(namespaces, "vtf")
    moveTap(tap, ns, "10.0.2.15/24")
    run("ip", "-n", ns, "addr", "add", "fec0::15/64", "dev", tap, "nodad")
    return sw, ns


def readsReset(family: socket.AddressFamily, host: str, port: int) -> str:
    """
    Connect to a forward and read: what the client sees, C{reset} for
    C{ECONNRESET}, else what it read (C{b''} is a clean close).
    """
    with socket.socket(family) as client:
        client.settimeout(20)
        try:
            # A reset so soon that it comes before connect() read the
            # socket's error (a busy machine) raises there.
            client.connect((host, port))
            data = client.recv(100)
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "no answer in 20 s"
        return repr(data)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_forwardToAClosedPortOrAMissingGuestResetsTheHostClient(vswitch, namespaces,
                                                               shortdir, family: str) -> None:
    """
    A forward to a guest port nothing listens on, and one to an address no
    guest has, each reset their host client (C{ECONNRESET}, not an empty
    reply); C{slirp/print} counts one refused and one unanswered, and the
    log names each guest port once.
    """
    if family == "ipv4":
        kind, host, guest, absent = socket.AF_INET, "127.0.0.1", "10.0.2.15", "10.0.2.77"
        side = lambda address: address  # noqa: E731
    else:
        kind, host, guest, absent = socket.AF_INET6, "::1", "fec0::15", "fec0::77"
        side = lambda address: f"[{address}]"  # noqa: E731
    closedPort, absentPort = freePort(kind, host), freePort(kind, host)
    rules = ",".join(f"tcp:{side(host)}:{port}-{side(address)}:8080"
                     for port, address in ((closedPort, guest), (absentPort, absent)))
    mgmt = shortdir / "mgmt"
    sw, _ = guestOnTap(vswitch, namespaces,
                       ":hostfwd=" + rules.replace(":", "\\:"), mgmt)
    assert readsReset(kind, host, closedPort) == "reset", sw.logText()
    assert readsReset(kind, host, closedPort) == "reset", sw.logText()
    assert readsReset(kind, host, absentPort) == "reset", sw.logText()
    report = console(mgmt, "slirp/print")
    assert "forwards 2 refused by guests, 1 unanswered" in report, report
    log = sw.logText()
    refused = [line for line in log.splitlines() if f"forward to {side(guest)}:8080" in line]
    assert len(refused) == 1 and "refused it" in refused[0], log
    assert f"forward to {side(absent)}:8080: the guest is not there" in log, log


#: nftables' reject rules for the guest's port 8080, by family and kind
#: (what C{iptables -j REJECT --reject-with icmp-port-unreachable} or
#: C{icmp-admin-prohibited} sends, and C{ip6tables}' counterparts).
REJECTS = {
    ("ipv4", "port"): "reject with icmp type port-unreachable",
    ("ipv4", "prohibited"): "reject with icmp type admin-prohibited",
    ("ipv6", "port"): "reject with icmpv6 type port-unreachable",
    ("ipv6", "prohibited"): "reject with icmpv6 type admin-prohibited",
}


@pytest.mark.parametrize("family, reject", sorted(REJECTS))
def test_forwardToAPortTheGuestsFirewallRejectsResetsTheHostClientAtOnce(
        vswitch, namespaces, shortdir, family: str, reject: str) -> None:
    """
    A forward to a guest port that the guest's firewall rejects with an
    ICMP error (nftables' C{reject}, as C{iptables -j REJECT}) resets the
    host client within seconds, where it took the SYN's 31 s of
    retransmissions before (and libslirp, which ignores guests' ICMP
    errors, closes it cleanly after 75 s); C{slirp/print} counts it as
    refused and the log names the error.
    """
    need("nft")
    if family == "ipv4":
        af, host, guest = socket.AF_INET, "127.0.0.1", "10.0.2.15"
        name = {"port": "ICMP port unreachable", "prohibited": "ICMP administratively prohibited"}
    else:
        af, host, guest = socket.AF_INET6, "::1", "[fec0::15]"
        name = {"port": "ICMPv6 port unreachable",
                "prohibited": "ICMPv6 administratively prohibited"}
    port = freePort(af, host)
    side = f"[{host}]" if family == "ipv6" else host
    rule = f"tcp:{side}:{port}-{guest}:8080"
    mgmt = shortdir / "mgmt"
    sw, ns = guestOnTap(vswitch, namespaces, ":hostfwd=" + rule.replace(":", "\\:"), mgmt)
    rules = shortdir / "reject.nft"
    rules.write_text("table inet vtf {\n chain input {\n  type filter hook input priority 0;\n"
                     f"  tcp dport 8080 {REJECTS[family, reject]}\n }}\n}}\n")
    run(*execIn(ns, "nft", "-f", str(rules)))
    started = time.monotonic()
    assert readsReset(af, host, port) == "reset", sw.logText()
    # The difference is between at once and the SYN's 31 s: 10 s is no race.
    assert time.monotonic() - started < 10, "reset only after the SYN timed out"
    report = console(mgmt, "slirp/print")
    assert "forwards 1 refused by guests, 0 unanswered" in report, report
    log = sw.logText()
    assert f"forward to {guest}:8080: the guest rejected it ({name[reject]})" in log, log


#: A command that says its pid, then ignores hang-ups, TERM and the end of
#: its input, and sleeps on (sleep keeps the pid and what is ignored);
#: given C{close}, it first closes its side of the connection.
STUBBORN = "trap '' HUP TERM; echo $$; if [ $1 = close ]; then exec 0<&- 1>&-; fi; exec sleep 1000"


def startTime(pid: int) -> str | None:
    """
    Process C{pid}'s start time (to tell it from a later process given the
    same pid), or None if there is no such process.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError):
        return None


#: The guest's client: connect, read the command's pid line and print it,
#: then reset the connection (SO_LINGER 0), read to its end and close, or
#: hold it open.
GUEST_CLIENT = r"""
import socket, struct, sys
c = socket.create_connection(("10.0.2.100", 80), timeout=30)
line = b""
while not line.endswith(b"\n"):
    chunk = c.recv(100)
    if not chunk:
        break
    line += chunk
print(line.decode().strip(), flush=True)
if sys.argv[1] == "reset":
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
else:
    while c.recv(100):
        pass
c.close()
"""


@pytest.mark.parametrize("ending", ["reset", "close", "switch stops"])
def test_aGuestForwardCommandEndsWithItsConnection(vswitch, processes, namespaces, shortdir,
                                                  ending: str) -> None:
    """
    A C{cmd:} guest forward whose command ignores the end of its input,
    hang-ups and C{TERM}, and sleeps on, is killed once the guest's
    connection is over, whether the guest resets it or both sides close it
    (the command closed its side and slept on): its process is gone soon
    after, and C{slirp/print}, which counted it running, counts none.  The
    switch stopping ends it too, its connection still open.
    """
    mgmt = shortdir / "mgmt"
    mode = ending.split()[0]
    rule = f"10.0.2.100:80-cmd:sh -c \"{STUBBORN}\" stubborn {mode}"
    sw, ns = guestOnTap(vswitch, namespaces, ":guestfwd=" + rule.replace(":", "\\:"), mgmt)
    guest = processes.start(execIn(ns, PYTHON, "-c", GUEST_CLIENT, mode),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid = int(readLine(guest, 30))
    born = startTime(pid)
    assert born is not None, "the command runs while its connection is open"
    if ending == "switch stops":
        report = console(mgmt, "slirp/print")
        assert ", 1 commands running" in report, report
        processes.stop(sw.process)
    else:
        assert guest.wait(30) == 0, guest.stderr.read() if guest.stderr else ""
    waitFor(lambda: startTime(pid) != born, timeout=30,
            what=f"the command (pid {pid}) to be ended with its connection")
    assert "Traceback" not in sw.logText(), sw.logText()
    if ending != "switch stops":
        report = console(mgmt, "slirp/print")
        assert ", 0 commands running" in report, report
