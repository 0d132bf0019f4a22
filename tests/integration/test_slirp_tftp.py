"""
The slirp port's TFTP server with a real client: busybox's tftp and udhcpc
in a namespace behind a TAP, as a network boot would use them.
"""

from __future__ import annotations

import hashlib
import os
import re

import pytest
from helpers import execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import console, moveTap
from test_slirp import guestBehindSlirp
from test_slirp6 import PREFIX, slaacAddress

pytestmark = pytest.mark.integration

#: udhcpc's script printing what a PXE loader reads from the lease.
BOOT_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "boot=$boot_file siaddr=$siaddr"
exit 0
"""


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("busybox")


def test_guestBootsTheWayPxeDoes(vswitch, namespaces, shortdir) -> None:
    """
    DHCP names the boot file and the server; busybox's tftp fetches it from
    10.0.2.2 whole, with the default and with a large block size, and a name
    outside the root is refused.
    """
    root = shortdir / "tftp"
    root.mkdir()
    content = os.urandom(300_000)
    (root / "pxelinux.0").write_bytes(content)
    _, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir,
                                f":tftp={root}:bootfile=pxelinux.0")
    script = shortdir / "boot.sh"
    script.write_text(BOOT_SCRIPT)
    script.chmod(0o755)
    lease = run(*execIn(ns, "sh", "-c", f"busybox udhcpc -i $(ls /sys/class/net | grep -v lo) "
                                         f"-n -q -f -t 5 -T 1 -s {script}"), timeout=30)
    assert "boot=pxelinux.0 siaddr=10.0.2.2" in lease.stdout
    for blockOption in ([], ["-b", "1400"]):
        target = shortdir / f"got{len(blockOption)}"
        got = run(*execIn(ns, "busybox", "tftp", "-g", *blockOption, "-r", "pxelinux.0",
                          "-l", str(target), "10.0.2.2"), check=False, timeout=60)
        assert got.returncode == 0, got.stderr
        assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(content).digest()
    refused = run(*execIn(ns, "busybox", "tftp", "-g", "-r", "../tftp/pxelinux.0", "-l",
                          str(shortdir / "no"), "10.0.2.2"), check=False, timeout=60)
    assert refused.returncode != 0 and "access violation" in refused.stderr


#: iPXE scripts: the boot file fetches a blob, then chains a second script
#: from the server DHCP named.
FIRST_SCRIPT = """#!ipxe
imgfetch tftp://${next-server}/blob
chain tftp://${next-server}/second.ipxe
"""
SECOND_SCRIPT = """#!ipxe
echo done
"""


def test_qemuNetworkBootsThroughSlirp(vswitch, processes, shortdir) -> None:
    """
    QEMU's own network boot firmware (iPXE) gets its lease and boot file by
    DHCP and fetches the script, a 500 KB blob and a chained script by TFTP.
    """
    need("qemu-system-x86_64")
    root = shortdir / "tftp"
    root.mkdir()
    (root / "boot.ipxe").write_text(FIRST_SCRIPT)
    (root / "second.ipxe").write_text(SECOND_SCRIPT)
    blob = os.urandom(500_000)
    (root / "blob").write_bytes(blob)
    sock, mgmt = shortdir / "vm.sock", shortdir / "mgmt"
    sw = vswitch("--mgmt", str(mgmt), "--port", f"qemu:unix:{sock}",
                 "--port", f"slirp:tftp={root}:bootfile=boot.ipxe")
    qemu = processes.start([
        "qemu-system-x86_64", "-display", "none", "-accel", "tcg", "-m", "128",
        "-monitor", "none", "-serial", "none", "-no-reboot",
        "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}",
        "-device", "e1000,netdev=n0,mac=52:54:00:76:74:42,bootindex=1",
    ])
    try:
        waitFor(lambda: "3 files sent" in console(mgmt, "slirp/print"), timeout=90,
                what="iPXE's three TFTP transfers")
    finally:
        processes.stop(qemu)
    log = sw.logText()
    assert "sent boot.ipxe" in log and "sent second.ipxe" in log
    assert f"sent blob ({len(blob)} bytes)" in log


def test_atftpFetchesInWindowsAcrossALossyLink(vswitch, namespaces, shortdir) -> None:
    """
    atftp asks for RFC 7440 windows of 16 blocks and gets 2 MB whole, over a
    clean link and then over one losing 3 % of the frames each way, where
    only windows sent again from the guest's last good block can make it
    whole.
    """
    need("atftp")
    root = shortdir / "tftp"
    root.mkdir()
    content = os.urandom(2_000_000)
    (root / "big").write_bytes(content)
    mgmt = shortdir / "mgmt"
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, f":tftp={root}",
                                 extra=("--mgmt", str(mgmt)))

    def fetch(target: str) -> None:
        for _ in range(2):  # atftp gives up if its ACK of the OACK is lost (the OACK comes again)
            got = run(*execIn(ns, "atftp", "--option", "windowsize 16", "--option",
                              "blksize 1400", "--option", "timeout 1", "--tftp-timeout", "1",
                              "-g", "-r", "big", "-l", str(shortdir / target), "10.0.2.2"),
                      check=False, timeout=180)
            if "unexpected OACK" not in got.stderr:
                break
        assert got.returncode == 0, got.stdout + got.stderr
        assert hashlib.sha256((shortdir / target).read_bytes()).digest() == \
            hashlib.sha256(content).digest()

    fetch("clean")
    waitFor(lambda: f"sent big ({len(content)} bytes, in windows of 16)" in sw.logText(),
            what="the server's log of a windowed transfer")
    console(mgmt, "port/impair 1 loss=3 inloss=3")
    # whole at the guest's end (the server may not hear the last ACK: the
    # client does not wait to answer a resent last block, as RFC 1350 allows)
    fetch("lossy")
    stats = console(mgmt, "port/stats 1")
    assert re.search(r"impaired=[1-9]", stats), stats


def test_anIpv6GuestFetchesFromTheGatewaysIpv6Address(vswitch, namespaces, shortdir) -> None:
    """
    As with libslirp, the TFTP server answers at the gateway's IPv6 address
    (fec0::2) too: a guest with only its SLAAC address fetches a file whole.
    """
    root = shortdir / "tftp"
    root.mkdir()
    content = os.urandom(200_000)
    (root / "boot.img").write_bytes(content)
    tap = uniqueName("vt6t")
    sw = vswitch("--port", f"tap:{tap}", "--port", f"slirp:tftp={root}")
    ns = namespaces.add("vt6t")
    moveTap(tap, ns, None)
    waitFor(lambda: slaacAddress(ns, tap) is not None, timeout=20, what="a SLAAC address")
    target = shortdir / "got"
    got = run(*execIn(ns, "busybox", "tftp", "-g", "-b", "1400", "-r", "boot.img", "-l",
                      str(target), f"{PREFIX}2"), check=False, timeout=60)
    assert got.returncode == 0, f"{got.stderr}\n{sw.logText()}"
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(content).digest()
