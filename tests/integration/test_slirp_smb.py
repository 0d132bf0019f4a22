"""
QEMU's C{smb=} on a slirp port: a host directory shared with the guests
by Samba's C{smbd}, run once per connection as QEMU runs it; the guest is
a namespace behind a TAP using C{smbclient}.
"""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import execIn, need, needRoot, run, unavailable
from test_slirp import guestBehindSlirp

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("busybox", "smbclient")
    if shutil.which("smbd") is None and not os.path.exists("/usr/sbin/smbd"):
        unavailable("smbd (Debian's samba) is not installed")


def test_guestsReadAndWriteTheSharedDirectory(vswitch, namespaces, shortdir, tmp_path) -> None:
    """
    smb=DIR: the guest lists \\\\10.0.2.4\\qemu, gets a file the host put
    there and puts one the host then finds; a second connection works as
    the first (each runs its own smbd).
    """
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_text("hello from the host\n")
    sw, ns, _ = guestBehindSlirp(vswitch, namespaces, shortdir, f":smb={share}")
    got = shortdir / "got.txt"
    first = run(*execIn(ns, "smbclient", "//10.0.2.4/qemu", "-N", "-c",
                        f"ls; get hello.txt {got}"), check=False, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr + sw.logText()
    assert "hello.txt" in first.stdout and got.read_text() == "hello from the host\n"
    second = run(*execIn(ns, "smbclient", "//10.0.2.4/qemu", "-N", "-c",
                         f"put {got} fromguest.txt"), check=False, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr + sw.logText()
    assert (share / "fromguest.txt").read_text() == "hello from the host\n"
    assert "Traceback" not in sw.logText(), sw.logText()
