"""
C{offload=auto}, the TAP port's default, against the real kernel: a TAP
whose only peers cannot take super-frames (here a C{vde_plug} client) turns
its offloads off, so the kernel segments and checksums in C and the switch
cuts nothing; a second TAP coming into its VLAN turns them on, and its
going off again.
What C{ethtool} shows in the TAP's namespace is the kernel's own view.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import need, needRoot, uniqueName, waitFor
from taphelpers import (
    assertNoChecksumErrors,
    checkedTransfer,
    console,
    ethtoolFeatures,
    moveTap,
    quietNamespace,
    tapAndVdePlug,
    waitForPing,
)

pytestmark = pytest.mark.integration

NET = "10.215.0"
OFF = "offload=none (auto: no other port takes super-frames)"


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("ethtool", "vde_plug", "ping")


def readByTap(mgmt: Path) -> tuple[int, int]:
    """
    Packets and bytes port 1 (the first TAP) has read, from C{port/print}.
    """
    text = console(mgmt, "port/print 1")
    found = re.search(r"IN: +pkts +(\d+) +bytes +(\d+)", text)
    assert found, text
    return int(found[1]), int(found[2])


def tsoOf(ns: str, tap: str) -> tuple[str, str]:
    features = ethtoolFeatures(ns, tap)
    return features["tcp-segmentation-offload"], features["tx-checksumming"]


def test_withOnlyAVdeClientTheKernelSegments(vswitch, processes, namespaces,
                                             shortdir) -> None:
    """
    Beside a C{vde_plug} client only, the TAP's kernel side shows TSO and
    checksumming off, the switch reads no packet larger than a frame, and
    8 MB each way arrive intact with no checksum errors.
    """
    mgmt = shortdir / "mgmt"
    _, nsA, tap, nsB, _ = tapAndVdePlug(vswitch, processes, namespaces, f"{NET}.{{}}/24",
                                        extra=("--mgmt", str(mgmt)), tapOptions="")
    waitForPing(nsA, f"{NET}.2")
    assert tsoOf(nsA, tap) == ("off", "off")
    assert OFF in console(mgmt, "port/print 1")
    before = readByTap(mgmt)
    sent, got = checkedTransfer(processes, nsA, nsB, f"{NET}.2", 8_000_000, seed=71)
    assert got == sent
    packets, size = (now - then for now, then in zip(readByTap(mgmt), before))
    assert size > 8_000_000 and size / packets <= 1514, (packets, size)
    sent, got = checkedTransfer(processes, nsB, nsA, f"{NET}.1", 8_000_000, seed=72)
    assert got == sent
    assertNoChecksumErrors(nsA, nsB)


def test_offloadsFollowASecondTapAddedAndDeleted(vswitch, processes, namespaces,
                                                 shortdir) -> None:
    """
    C{port/add} of a second TAP turns the first one's offloads on (TSO on
    in its namespace, super-frames read, 8 MB across intact); C{port/del}
    of it turns them off again, and the VDE client is served throughout.
    """
    mgmt = shortdir / "mgmt"
    sw, nsA, tap, nsB, _ = tapAndVdePlug(vswitch, processes, namespaces, f"{NET}.{{}}/24",
                                         extra=("--mgmt", str(mgmt)), tapOptions="")
    waitForPing(nsA, f"{NET}.2")
    second = uniqueName("vta")
    reply = console(mgmt, f"port/add tap:{second}")
    assert "Success" in reply, reply
    nsC = quietNamespace(namespaces, "vta")
    moveTap(second, nsC, f"{NET}.3/24")
    waitFor(lambda: tsoOf(nsA, tap) == ("on", "on"), what=f"TSO on for {tap}")
    assert re.search(rf"{tap} offload=csum,tso4,tso6,ecn\S* \(auto\)",
                     console(mgmt, "port/print 1"))
    waitForPing(nsA, f"{NET}.3")
    before = readByTap(mgmt)
    sent, got = checkedTransfer(processes, nsA, nsC, f"{NET}.3", 8_000_000, seed=73)
    assert got == sent
    packets, size = (now - then for now, then in zip(readByTap(mgmt), before))
    assert size / packets > 4000, (packets, size)
    reply = console(mgmt, f"port/del tap:{second}")
    assert "Success" in reply, reply
    waitFor(lambda: tsoOf(nsA, tap) == ("off", "off"), what=f"TSO off again for {tap}")
    sent, got = checkedTransfer(processes, nsA, nsB, f"{NET}.2", 4_000_000, seed=74)
    assert got == sent
    assertNoChecksumErrors(nsA, nsB, nsC)
    assert f"tap:{second}" in sw.logText() and "Traceback" not in sw.logText()


def test_tapsInDifferentVlansKeepTheirOffloadsOff(vswitch, namespaces, shortdir) -> None:
    """
    Two TAPs in VLANs 10 and 20 never exchange a frame: both stay without
    offloads until C{port/setvlan} puts them in one VLAN, and they ping.
    """
    mgmt = shortdir / "mgmt"
    taps = uniqueName("vtv"), uniqueName("vtv")
    vswitch("--mgmt", str(mgmt), "--port", f"tap:{taps[0]}:vlan=10",
            "--port", f"tap:{taps[1]}:vlan=20")
    sides = []
    for n, tap in enumerate(taps, 1):
        ns = quietNamespace(namespaces, "vtv")
        moveTap(tap, ns, f"{NET}.{n}/24")
        sides.append(ns)
    waitFor(lambda: all(tsoOf(ns, tap) == ("off", "off") for ns, tap in zip(sides, taps)),
            what="both TAPs without offloads")
    reply = console(mgmt, "port/setvlan 2 10")
    assert "Success" in reply, reply
    waitFor(lambda: all(tsoOf(ns, tap) == ("on", "on") for ns, tap in zip(sides, taps)),
            what="both TAPs with offloads, in one VLAN")
    waitForPing(sides[0], f"{NET}.2")
