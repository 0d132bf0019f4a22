"""
A listening spec given TCP port 0 (C{qemu:tcp:0}, C{qemu:listen:tcp:0},
C{cable:listen:tcp:0}, C{pcap:listen:tcp:0}) gets a port the system chose:
C{port/specs} on a real switch's console says which, and peers connect
there (a TCP guest, another switch's cable, a capture reader).
"""

from __future__ import annotations

import re
import socket

import pytest
from helpers import waitFor
from taphelpers import console

from vtwisted.wire import pcap

pytestmark = pytest.mark.integration


def _listeningPort(mgmt: object, spec: str) -> int:
    """The TCP port C{port/specs} says spec C{spec} listens on."""
    specs = console(mgmt, "port/specs")  # type: ignore[arg-type]
    found = re.search(rf"^Spec {re.escape(spec)} ports=\S+ \w+ runtime "
                      r"-- listening on tcp 127\.0\.0\.1:(\d+)$", specs, re.MULTILINE)
    assert found, specs
    number = int(found.group(1))
    assert number != 0, specs
    return number


def _portOf(mgmt: object, peer: str) -> bool:
    """Whether C{port/print} shows an endpoint whose peer is C{peer}."""
    return peer in console(mgmt, "port/print")  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["qemu:tcp:0", "qemu:listen:tcp:0"])
def test_aGuestConnectsToThePortShown(vswitch, shortdir, spec: str) -> None:
    """
    qemu:tcp:0 added on the console: port/specs shows the port it got; a
    guest connecting there gets a switch port, which port/print shows.
    """
    mgmt = shortdir / "mgmt"
    vswitch("--mgmt", str(mgmt))
    assert "1000 Success" in console(mgmt, f"port/add {spec}")
    number = _listeningPort(mgmt, spec)
    with socket.create_connection(("127.0.0.1", number), timeout=10) as guest:
        peer = f"tcp 127.0.0.1:{guest.getsockname()[1]}"
        waitFor(lambda: _portOf(mgmt, peer), timeout=20, what="the guest on a port")


def test_aCableDialsThePortShown(vswitch, shortdir) -> None:
    """
    cable:listen:tcp:0 added on one switch's console: port/specs shows the
    port it got, and another switch's cable to that port comes up.
    """
    mgmt, far = shortdir / "mgmt", shortdir / "far.mgmt"
    vswitch("--mgmt", str(mgmt))
    spec = "cable:listen:tcp:0:tls=off"
    assert "1000 Success" in console(mgmt, f"port/add {spec}")
    number = _listeningPort(mgmt, spec)
    vswitch("--mgmt", str(far), "--port", f"cable:tcp:host=127.0.0.1:port={number}:tls=off")
    waitFor(lambda: "ports=0001 listening" in console(mgmt, "port/specs"), timeout=30,
            what="the cable up at the listening switch")


def test_aCaptureReaderReadsFromThePortShown(vswitch, shortdir) -> None:
    """
    pcap:listen:tcp:0 added on the console: port/specs shows the port it
    got, and a reader connecting there is sent a pcap stream's header.
    """
    mgmt = shortdir / "mgmt"
    vswitch("--mgmt", str(mgmt))
    spec = "pcap:listen:tcp:0"
    assert "1000 Success" in console(mgmt, f"port/add {spec}")
    number = _listeningPort(mgmt, spec)
    with socket.create_connection(("127.0.0.1", number), timeout=10) as reader:
        header = b""
        while len(header) < pcap.FILE_HEADER_LENGTH:
            chunk = reader.recv(pcap.FILE_HEADER_LENGTH - len(header))
            assert chunk, "the stream ended before its header"
            header += chunk
    assert header[:4] == pcap.MAGIC.to_bytes(4, "little")
