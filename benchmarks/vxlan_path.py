"""
Benchmark: a namespace reaches another across a VXLAN network.

The server's namespace ("far") holds a Linux vxlan device (VNI 42, group
239.0.0.1, port 4789) on a veth pair whose other end is in the "near"
namespace, where the switch under test runs with the client's namespace
behind it.  In the same run and alternating rounds, the near side is:

* vtwisted: C{--port vxlan:vni=42:if=VETH --tap TAP} (an offload TAP);
* the Linux kernel: a bridge with a vxlan device and a veth to the client.

Each row reports iperf3 TCP throughput and the 64-byte UDP packet rate,
from the host behind the switch to the far side and back.  The far veth's
checksum offload is off (a vxlan device leaves inner checksums to a NIC,
and a veth delivers them uncomputed to a user-space reader), and the near
veth merges what it receives (GRO, as network cards do); both are the same
for every row.

There is no C{vde_switch} row: Debian's vdeplug4 (4.0.1) C{vxlan://} plug
fails every unicast send to an endpoint it learned (C{sendmsg} with no
address, EDESTADDRREQ), so only its broadcasts get through.

Run as root:  python benchmarks/vxlan_path.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netbench
from netbench import (
    CLIENT_ADDR,
    SERVER_ADDR,
    Bench,
    configure,
    ends,
    joined,
    sh,
    sourceEnv,
    twistdArgv,
)

Setup = Callable[[Bench], tuple[str, str]]
UNDER = ("10.214.0.1", "10.214.0.2")


def underlay(b: Bench) -> tuple[str, str, str, str]:
    """
    The near and far namespaces and a veth between them, multicast routed
    over it; returns (near, near's veth, far, far's veth).
    """
    near, mine, far, theirs = joined(b, "vtwx", mtu=1550)
    for ns, dev, under in ((near, mine, UNDER[0]), (far, theirs, UNDER[1])):
        configure(ns, dev, under)
        sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
    sh("ip", "netns", "exec", far, "ethtool", "-K", theirs, "tx", "off")
    sh("ip", "netns", "exec", near, "ethtool", "-K", mine, "gro", "on")
    return near, mine, far, theirs


def _underlay(b: Bench, address: str) -> tuple[str, str, str]:
    """
    The L{underlay}, and the far vxlan device with C{address}; returns
    (near, near's veth, far).
    """
    near, mine, far, theirs = underlay(b)
    sh("ip", "-n", far, "link", "add", "vx0", "type", "vxlan", "id", "42", "group", "239.0.0.1",
       "dev", theirs, "dstport", "4789")
    sh("ip", "-n", far, "link", "set", "vx0", "mtu", "1500")
    configure(far, "vx0", address)
    return near, mine, far


def vtwistedVxlan(toVxlan: bool) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        near, veth, far = _underlay(b, SERVER_ADDR if toVxlan else CLIENT_ADDR)
        tap = f"vxt{b.tmp.name[-4:]}"
        b.start(["ip", "netns", "exec", near, *twistdArgv(
            "--sock", str(b.tmp / "sw"), "--port", f"vxlan:vni=42:if={veth}", "--tap", tap)],
            env=sourceEnv())
        return ends(b, near, tap, far, toVxlan, "vtwxc")

    return setup


def linuxBridgeVxlan(toVxlan: bool) -> Setup:
    def setup(b: Bench) -> tuple[str, str]:
        near, veth, far = _underlay(b, SERVER_ADDR if toVxlan else CLIENT_ADDR)
        return ends(b, near, _bridge(near, veth, b.tmp.name[-4:]), far, toVxlan, "vtwxc")

    return setup


def _bridge(near: str, veth: str, suffix: str) -> str:
    """A bridge in C{near} with a vxlan device; returns the name of a veth to it."""
    client = f"vxc{suffix}"
    sh("ip", "-n", near, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", near, "link", "add", "vx0", "type", "vxlan", "id", "42", "group",
       "239.0.0.1", "dev", veth, "dstport", "4789")
    sh("ip", "-n", near, "link", "add", client, "type", "veth", "peer", "name", "up0")
    for dev in ("vx0", "up0"):
        sh("ip", "-n", near, "link", "set", dev, "master", "br0", "up")
    sh("ip", "-n", near, "link", "set", "vx0", "mtu", "1500")
    sh("ip", "-n", near, "link", "set", "br0", "up")
    return client


SETUPS: dict[str, Setup] = {
    "vtwisted, TAP to VXLAN": vtwistedVxlan(True),
    "Linux bridge, to VXLAN": linuxBridgeVxlan(True),
    "vtwisted, VXLAN to TAP": vtwistedVxlan(False),
    "Linux bridge, from VXLAN": linuxBridgeVxlan(False),
}


def main() -> None:
    netbench.runComparison(__doc__ or "", SETUPS, [
        ("vtwisted, TAP to VXLAN", "Linux bridge, to VXLAN"),
        ("vtwisted, VXLAN to TAP", "Linux bridge, from VXLAN"),
    ])


if __name__ == "__main__":
    main()
