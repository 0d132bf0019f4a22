"""
Two C{twistd vswitch} processes joined by a TLS cable over loopback, each
with an offload TAP in a namespace of its own: the kernels on both ends
talk through both switches and the cable.

Addresses are in a private test /24 that exists only in the two namespaces
the test made; the cable listens on 127.0.0.1 only.
"""

from __future__ import annotations

import re
import socket

import pytest
from certs import selfSignedCertificate
from helpers import need, needRoot, uniqueName
from taphelpers import (
    checkedTransfer,
    checksumErrors,
    console,
    iperf3,
    moveTap,
    quietNamespace,
    waitForPing,
)

pytestmark = pytest.mark.integration


def freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_namespacesOnTwoSwitchesTalkThroughACable(vswitch, processes, namespaces,
                                                  shortdir) -> None:
    """
    Ping, a 16 MB transfer with the same SHA-256 at both ends and no
    checksum errors, and iperf3; the cable carries TCP super-frames whole
    (far fewer messages than 1500-byte frames would take).
    """
    need("iperf3", "ping")
    needRoot()
    for who in ("a", "b"):
        selfSignedCertificate(shortdir, prefix=who)
    number = freePort()
    taps = uniqueName("ca"), uniqueName("cb")
    mgmt = shortdir / "mgmt-b"
    vswitch("--port", f"tap:{taps[0]}",
            "--port", f"cable:listen:tcp:{number}:interface=127.0.0.1:cert={shortdir}/acert.pem"
            f":key={shortdir}/akey.pem:ca={shortdir}/bcert.pem")
    vswitch("--mgmt", str(mgmt), "--port", f"tap:{taps[1]}",
            "--port", f"cable:tcp:host=localhost:port={number}:cert={shortdir}/bcert.pem"
            f":key={shortdir}/bkey.pem:ca={shortdir}/acert.pem")
    left, right = quietNamespace(namespaces, "vtwca"), quietNamespace(namespaces, "vtwcb")
    moveTap(taps[0], left, "10.211.9.1/24")
    moveTap(taps[1], right, "10.211.9.2/24")
    waitForPing(left, "10.211.9.2", timeout=20)
    sent, got = checkedTransfer(processes, left, right, "10.211.9.2", 16 << 20, port=7310)
    assert sent == got
    assert not any(checksumErrors(right).values()), checksumErrors(right)
    report = iperf3(processes, right, left, "10.211.9.1", "-t", "3")
    gbps = report["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"iperf3 through two switches and a TLS cable: {gbps:.2f} Gbit/s")
    ports = console(mgmt, "port/allprint")
    print(ports)
    (cablePort,) = [b for b in re.split(r"(?m)^Port ", ports) if "module cable" in b]
    # iperf3 sent from B's side: its data left B through the cable as super-frames
    counters = re.search(r"OUT:\s+pkts\s+(\d+)\s+bytes\s+(\d+)", cablePort)
    assert counters, cablePort
    packets, octets = int(counters[1]), int(counters[2])
    assert octets / packets > 10_000, (packets, octets)
