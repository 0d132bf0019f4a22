"""
How a slirp port's forwards end when their far side does not take part,
against real peers: a namespace's kernel as the guest behind a TAP port of
a C{twistd vswitch}, host clients over the loopback.

  - A host forward to a guest port nothing listens on (the guest's kernel
    answers the SYN with a RST), or to an address no guest has (no answer
    to ARP or neighbour solicitation), resets the host client, which reads
    C{ECONNRESET} as from a closed port, where libslirp closes it cleanly
    (the client reads an empty reply, as if the service said nothing).

Every address is the loopback's or a namespace's made here.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from helpers import need, needRoot, run, uniqueName
from taphelpers import console, ipv6Namespace, moveTap

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
        client.connect((host, port))
        try:
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
