"""
A connecting switch's host "reboots" without the listening switch seeing
it, and a switch on the new host dials again from the same address: the
old link (a ghost: nothing told the listener it is gone) must go at once,
not when keepalive would end it; a second live switch from that address
keeps its link.  C{twistd vswitch} processes in namespaces of their own,
plain and TLS cables.

The listening switch's namespace has a bridge; each "host" is a namespace
joined to it by a veth pair.  The reboot: the old host's veth pair is
deleted (so its kernel never sends a FIN or a reset to the listener), its
switch killed, and a new namespace takes the same address and MAC, with a
kernel that has never heard of the old connection.  The listener's
C{keepalive=120} would first probe the idle ghost 40 s after its hello,
so the ghost going within seconds is the listener's doing.

Addresses are in a private test /24 that exists only in the namespaces the
test made.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from certs import selfSignedCertificate
from helpers import (
    allAcknowledged,
    execIn,
    keepaliveProbes,
    needRoot,
    run,
    sourceEnv,
    twistdArgv,
    uniqueName,
    waitFor,
)
from taphelpers import quietNamespace, tcpPeers

pytestmark = pytest.mark.integration

LISTENER, HOST = "10.211.37.1", "10.211.37.2"
HOST_MAC = "02:00:0a:d3:25:02"
PORT = 7637


class Lab:
    """
    The listener's namespace with its bridge, hosts plugged into it, and
    switches started in them.
    """

    def __init__(self, processes: Any, namespaces: Any, shortdir: Path, tls: bool) -> None:
        self.processes, self.namespaces, self.dir = processes, namespaces, shortdir
        self.listenerNs = quietNamespace(namespaces, "vtwrl")
        run("ip", "-n", self.listenerNs, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.listenerNs, "addr", "add", f"{LISTENER}/24", "dev", "br0")
        run("ip", "-n", self.listenerNs, "link", "set", "br0", "up")
        if tls:
            selfSignedCertificate(shortdir, "switch-l", prefix="l")
            selfSignedCertificate(shortdir, "switch-c", prefix="c")
            self.listenerTls = (f"cert={shortdir}/lcert.pem:key={shortdir}/lkey.pem:"
                                f"ca={shortdir}/ccert.pem")
            self.connectorTls = (f"cert={shortdir}/ccert.pem:key={shortdir}/ckey.pem:"
                                 f"ca={shortdir}/lcert.pem:name=switch-l")
        else:
            self.listenerTls = self.connectorTls = "tls=off"
        self.logs: dict[str, Path] = {}

    def host(self) -> tuple[str, str]:
        """
        A new host namespace at L{HOST} (always the same MAC, as a rebooted
        host has), plugged into the bridge; its namespace and the name of
        the bridge's end of its veth pair.
        """
        ns = quietNamespace(self.namespaces, "vtwrh")
        near, far = uniqueName("rl"), uniqueName("rh")
        run("ip", "link", "add", near, "netns", self.listenerNs, "type", "veth", "peer", "name",
            far, "netns", ns, "address", HOST_MAC)
        run("ip", "-n", self.listenerNs, "link", "set", near, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"{HOST}/24", "dev", far)
        run("ip", "-n", ns, "link", "set", far, "up")
        return ns, near

    def switch(self, name: str, ns: str, spec: str) -> tuple[Any, Path]:
        """
        Start C{twistd vswitch} C{name} in C{ns} with one port; its process
        and console.
        """
        mgmt = self.dir / f"mgmt-{name}"
        self.logs[name] = self.dir / f"sw-{name}.log"
        process = self.processes.start(execIn(ns, *twistdArgv(
            "--sock", str(self.dir / f"sw-{name}"), "--mgmt", str(mgmt), "--port", spec,
            logfile=str(self.logs[name]))), env=sourceEnv())
        waitFor(mgmt.exists, what=f"switch {name}'s console")
        return process, mgmt

    def connector(self, name: str, ns: str) -> tuple[Any, Path]:
        process, mgmt = self.switch(name, ns, f"cable:tcp:host={LISTENER}:port={PORT}:"
                                              f"{self.connectorTls}")
        waitFor(lambda: tcpPeers(mgmt), timeout=15, what=f"{name}'s cable up")
        return process, mgmt

    def dump(self) -> None:
        for name, path in self.logs.items():
            print(f"--- switch {name}:\n{path.read_text() if path.exists() else ''}")


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_aSwitchDiallingAgainFromARebootedHostEndsItsGhost(processes, namespaces, shortdir,
                                                           tls: bool) -> None:
    needRoot()
    lab = Lab(processes, namespaces, shortdir, tls)
    _, listener = lab.switch("l", lab.listenerNs, f"cable:listen:tcp:{PORT}:interface={LISTENER}"
                                                  f":keepalive=120:{lab.listenerTls}")
    try:
        oldHost, oldVeth = lab.host()
        victim, _ = lab.connector("old", oldHost)
        (ghost,) = tcpPeers(listener)
        # an idle link, the case keepalive is slow on: whatever the listener
        # sent has been acknowledged (a retransmission would draw a reset too)
        waitFor(lambda: allAcknowledged(lab.listenerNs), what="the old link idle")
        # the old host goes without a word: its wire first, then its switch
        run("ip", "-n", lab.listenerNs, "link", "del", oldVeth)
        processes.stop(victim, signal.SIGKILL)
        newHost, _ = lab.host()
        _, new = lab.connector("new", newHost)
        (newPeer,) = tcpPeers(new)  # the listener's address as the new switch sees it
        # keepalive=120 would first probe the idle ghost 40 s after its last
        # word: its going before then is the probe
        waitFor(lambda: ghost not in tcpPeers(listener), timeout=20,
                what="the old host's link gone from the listener")
        peers = tcpPeers(listener)
        assert len(peers) == 1 and peers[0] != ghost, peers
        assert "probing them" in lab.logs["l"].read_text()

        # a second live switch from the same address: the new one's link is
        # probed too, answers, and stays
        sent = keepaliveProbes(lab.listenerNs)
        lab.connector("live", newHost)
        waitFor(lambda: len(tcpPeers(listener)) == 2, timeout=15,
                what="both links from the new host at the listener")
        waitFor(lambda: keepaliveProbes(lab.listenerNs) > sent, timeout=20,
                what="the listener's kernel probing the new switch's link")
        time.sleep(1.5)  # answered (or reset) within a round trip; let a reset land
        assert len(tcpPeers(listener)) == 2, tcpPeers(listener)
        assert tcpPeers(new) == [newPeer]
    except AssertionError:
        lab.dump()
        raise
