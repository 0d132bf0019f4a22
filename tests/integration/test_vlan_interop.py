"""
802.1Q VLANs through real clients: Debian's C{vde_plug} on VDE directories
with different VLAN options, and TAP ports whose namespaces send tagged frames
with AF_PACKET sockets and capture them with tcpdump and AF_PACKET (this
kernel has no 8021q module, so there are no VLAN devices: the tags are
written by hand and read from the packet socket's auxiliary data).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import StreamPlug, need, needRoot, uniqueName, waitFor
from taphelpers import RawCapture, TcpDump, moveTap, quietNamespace, sendRaw

from vtwisted.testing import frame, mac
from vtwisted.wire.vlan import insertTag, isTagged, removeTag, vidOf

pytestmark = pytest.mark.integration

BROADCAST = b"\xff" * 6
DATA_SOCKET = re.compile(r"^\d{3,}\.\d+$")
OPTIONS = {
    "a": "vlan=10",
    "b": "vlan=20",
    "t": "trunk=10,18-20",  # VLAN 20 through a range
    "x": "vlan=all",
    "y": "vlan=all",
}


def marked(text: str, src: bytes, vid: int | None = None, pcp: int = 0) -> bytes:
    """
    A broadcast frame whose payload says what it is.
    """
    return frame(BROADCAST, src, text.encode().ljust(46, b"."), vid=vid, pcp=pcp)


class VlanSwitch:
    """
    A switch with one VDE directory per entry of L{OPTIONS}, and a vde_plug
    stream client on each.
    """

    def __init__(self, vswitch, processes, shortdir: Path) -> None:
        need("vde_plug")
        self.processes = processes
        self.dirs = {key: shortdir / f"d{key}" for key in OPTIONS}
        args = []
        for key, options in OPTIONS.items():
            args += ["--port", f"vde:{self.dirs[key]}:{options}"]
        self.sw = vswitch(*args)
        self.plugs = {key: self.plug(key) for key in OPTIONS}

    def plug(self, key: str) -> StreamPlug:
        directory = self.dirs[key]
        before = len(dataSockets(directory))
        made = StreamPlug(self.processes, f"vde://{directory}")
        waitFor(lambda: len(dataSockets(directory)) == before + 1, what=f"client on {key}")
        return made

    def quiet(self, *keys: str) -> None:
        """
        Nothing arrives at these clients (checked together for half a second).
        """
        for key in keys:
            got = self.plugs[key].quiet(0.5 if key == keys[0] else 0.05)
            assert got == [], f"{key} ({OPTIONS[key]}) got {[g.hex() for g in got]}"


def dataSockets(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return [n for n in os.listdir(directory) if DATA_SOCKET.match(n)]


@pytest.fixture
def vlans(vswitch, processes, shortdir) -> VlanSwitch:
    return VlanSwitch(vswitch, processes, shortdir)


def test_accessBroadcastReachesTrunkTaggedAndNeverTheOtherVlan(vlans) -> None:
    """An untagged broadcast on the VLAN-10 directory reaches the trunk tagged 10, not VLAN 20."""
    f = marked("from vlan 10", mac(1))
    vlans.plugs["a"].send(f)
    assert vlans.plugs["t"].receive() == insertTag(f, 10)
    assert vlans.plugs["x"].receive() == insertTag(f, 10), "vlan=all gets it tagged too"
    vlans.quiet("b", "a")


def test_trunkFrameTagged20ReachesVlan20Untagged(vlans) -> None:
    """A frame tagged 20 (priority 3) from the trunk reaches VLAN 20 untagged, not VLAN 10."""
    f = marked("to vlan 20", mac(2), vid=20, pcp=3)
    vlans.plugs["t"].send(f)
    assert vlans.plugs["b"].receive() == removeTag(f)
    assert vlans.plugs["y"].receive() == f, "tagged to tagged keeps the priority"
    vlans.quiet("a", "t")


def test_frameTaggedForVlanOutsideTheTrunkIsDropped(vlans) -> None:
    """A frame tagged 30 from a trunk of VLANs 10 and 20 reaches nobody."""
    vlans.plugs["t"].send(marked("to vlan 30", mac(3), vid=30))
    vlans.quiet("a", "b", "x", "y")
    after = marked("still alive", mac(3), vid=10)
    vlans.plugs["t"].send(after)
    assert vlans.plugs["a"].receive() == removeTag(after)


def test_transparentDirectoriesPassAnyTagUntouched(vlans) -> None:
    """VID 77 (never configured) crosses between two vlan=all clients byte for byte, only there."""
    f = marked("vid 77", mac(4), vid=77, pcp=5)
    vlans.plugs["x"].send(f)
    got = vlans.plugs["y"].receive()
    assert got == f and isTagged(got) and vidOf(got) == 77
    vlans.quiet("a", "b", "t")
    back = frame(mac(4), mac(5), b"reply".ljust(46, b"."), vid=77)
    vlans.plugs["y"].send(back)
    assert vlans.plugs["x"].receive() == back


def test_transparentDirectoriesKeepPriorityTags(vlans) -> None:
    """A priority tag (VID 0, PCP 6) crosses between vlan=all clients byte for byte; the
    trunk client, whose untagged VLAN is 0, gets the frame untagged."""
    f = marked("priority six", mac(7), vid=0, pcp=6)
    vlans.plugs["x"].send(f)
    assert vlans.plugs["y"].receive() == f
    assert vlans.plugs["t"].receive() == removeTag(f)
    vlans.quiet("a", "b")


def test_untaggedTrafficOfTransparentClientsStaysInVlanZero(vlans) -> None:
    """An untagged frame from a vlan=all client is VLAN 0: the other vlan=all client only."""
    f = marked("untagged from x", mac(6))
    vlans.plugs["x"].send(f)
    assert vlans.plugs["y"].receive() == f
    assert vlans.plugs["t"].receive() == f, "trunk=10,20 alone keeps untagged VLAN 0"
    vlans.quiet("a", "b")


def test_reusedPortDoesNotKeepAnotherDirectorysVlans(vlans) -> None:
    """A VLAN-20 client on the port a trunk client just left does not see VLAN 10."""
    trunkPort = int(dataSockets(vlans.dirs["t"])[0].split(".")[0])
    vlans.processes.stop(vlans.plugs["t"].process)
    waitFor(lambda: not dataSockets(vlans.dirs["t"]), what="trunk client gone")
    second = vlans.plug("b")
    names = dataSockets(vlans.dirs["b"])
    assert trunkPort in [int(n.split(".")[0]) for n in names], "the port was reused"
    vlans.plugs["a"].send(marked("vlan 10 only", mac(7)))
    assert second.quiet(0.5) == []


# -- TAP ports, frames from the kernel ------------------------------------------------------------


ETHERTYPE = b"\x88\xb5"


def ours(captured: list[tuple[bytes, int | None]]) -> list[tuple[bytes, int | None]]:
    """
    The captured frames this test sent (its EtherType), in order.
    """
    return [(data, tci) for data, tci in captured if data[12:14] == ETHERTYPE]


def test_tapTrunkFramesReachAccessTapUntaggedAndOnlyTheirVlan(
    vswitch, processes, namespaces
) -> None:
    """Raw tagged frames from a trunk TAP: VLAN 10 arrives untagged at the VLAN-10 TAP, 20 never."""
    needRoot()
    need("tcpdump")
    trunk, access, witness = uniqueName("vtk"), uniqueName("vta"), uniqueName("vtw")
    vswitch("--port", f"tap:{trunk}:trunk=10", "--port", f"tap:{access}:vlan=10",
            "--port", f"tap:{witness}:vlan=4095:trunk=10,20")
    spaces = {}
    for name in (trunk, access, witness):
        spaces[name] = quietNamespace(namespaces, "vtv")
        moveTap(name, spaces[name], None)
    seconds = 2.0
    atAccess = RawCapture(processes, spaces[access], access, seconds)
    atWitness = RawCapture(processes, spaces[witness], witness, seconds)
    dump = TcpDump(processes, spaces[access], access, "ether", "proto", "0x88b5")
    src = bytes.fromhex("020000aa0001")
    in10 = frame(BROADCAST, src, b"tagged ten".ljust(46, b"."), vid=10, pcp=4)
    in20 = frame(BROADCAST, src, b"tagged twenty".ljust(46, b"."), vid=20)
    untagged = frame(BROADCAST, src, b"untagged".ljust(46, b"."))
    sendRaw(spaces[trunk], trunk, in10, in20, untagged)
    assert ours(atAccess.frames()) == [(removeTag(in10), None)]
    # the witness is a tagged member of 10 and 20: it gets VLAN 10 as sent, priority 4
    # included (the kernel hands the tag over aside), and never VLAN 20
    assert ours(atWitness.frames()) == [(removeTag(in10), 4 << 13 | 10)]
    text = dump.stop()
    assert "02:00:00:aa:00:01 > ff:ff:ff:ff:ff:ff, ethertype Unknown (0x88b5)" in text, text
    assert "802.1Q" not in text and "vlan" not in text, text


def test_tapAccessFramesReachTrunkTapTagged(vswitch, processes, namespaces) -> None:
    """An untagged frame from a VLAN-10 TAP reaches the trunk TAP with tag 10 (tcpdump -e)."""
    needRoot()
    need("tcpdump")
    trunk, access = uniqueName("vtk"), uniqueName("vta")
    vswitch("--port", f"tap:{trunk}:vlan=4095:trunk=10", "--port", f"tap:{access}:vlan=10")
    spaces = {}
    for name in (trunk, access):
        spaces[name] = quietNamespace(namespaces, "vtv")
        moveTap(name, spaces[name], None)
    atTrunk = RawCapture(processes, spaces[trunk], trunk, 2)
    dump = TcpDump(processes, spaces[trunk], trunk)
    src = bytes.fromhex("020000aa0002")
    f = frame(BROADCAST, src, b"from access".ljust(46, b"."))
    sendRaw(spaces[access], access, f)
    assert ours(atTrunk.frames()) == [(f, 10)]
    text = dump.stop()
    assert "vlan 10" in text and "ethertype 802.1Q" in text, text
