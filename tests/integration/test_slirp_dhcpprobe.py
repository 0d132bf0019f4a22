"""
A slirp port that forgot its leases (deleted and added again on the
console) does not hand a guest's address to another: namespaces behind
TAPs take leases with busybox's udhcpc, and the router's ARP probe finds
the address the first guest keeps using.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import execIn
from taphelpers import console, readLine
from test_slirp_vlans import twoGuestsAndSlirp, udhcpc

pytestmark = pytest.mark.integration


def leaseLine(process: subprocess.Popen[bytes]) -> str:
    """
    The address in the next line udhcpc's script prints.
    """
    line = readLine(process, 20)
    found = re.match(r"lease (\S+)/", line)
    assert found, line
    return found.group(1)


def test_aRestartedSlirpPortDoesNotGiveAwayAGuestsAddress(vswitch, namespaces, processes,
                                                          shortdir: Path) -> None:
    """
    Guest A leases 10.0.2.15 and keeps running udhcpc; the slirp port is
    deleted and added again.  Guest B then gets 10.0.2.16, not A's address
    (A answered the router's probe), and A renewing keeps 10.0.2.15; the
    console shows the conflict.
    """
    sw, mgmt, script, [(nsA, tapA), (nsB, tapB)] = twoGuestsAndSlirp(
        vswitch, namespaces, shortdir, "vdp", ("", ""), "slirp")
    guestA = processes.start(execIn(nsA, "busybox", "udhcpc", "-i", tapA, "-f", "-t", "5",
                                    "-T", "1", "-s", str(script)), stdout=subprocess.PIPE)
    assert leaseLine(guestA) == "10.0.2.15", sw.logText()

    removed = console(mgmt, "port/del slirp")
    assert "1000 Success" in removed, removed
    added = console(mgmt, "port/add slirp")
    assert "1000 Success" in added, added

    assert udhcpc(nsB, tapB, script, 5) == "10.0.2.16", sw.logText()
    guestA.send_signal(signal.SIGUSR1)  # renew now: a unicast REQUEST from 10.0.2.15
    assert leaseLine(guestA) == "10.0.2.15", sw.logText()
    shown = console(mgmt, "slirp/print")
    assert "1 probed addresses found in use" in shown, shown
    assert re.search(r"lease 10\.0\.2\.15 ", shown) and re.search(r"lease 10\.0\.2\.16 ", shown), \
        shown
    assert "slirp: DHCP: 10.0.2.15 answered an ARP probe from" in sw.logText()
