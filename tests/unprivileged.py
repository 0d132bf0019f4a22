"""
A throwaway unprivileged user for the tests that run the switch as one, as
a user without root lives it: its own uid, no capability that matters.

Theory of operation
-------------------
L{throwawayUser} makes a system user with a unique name (no home: the
tests give it a scratch directory as C{HOME}) and deletes it afterwards,
even when the test fails.  It needs root; without it (or without
C{useradd}, C{setpriv}) the test is skipped, or fails under
C{VTWISTED_REQUIRE_PEERS=1}.

L{ThrowawayUser.argv} wraps a command line so that it runs as that user
through C{setpriv} (real and effective ids, its groups, no capabilities),
with two allowances for the machine the tests run on, each given only
where needed and neither touching what the tests check (who owns a TAP
device or a socket, which ports may be bound):

* the interpreter running the tests may live where others cannot read it
  (a pyenv under C{/root}, mode 0700): the user then keeps
  C{CAP_DAC_READ_SEARCH} alone, to read and traverse files, never to
  write them, connect to a socket or open a device;
* C{/dev/net/tun} may be 0600 where most systems make it 0666: the command
  then runs in a private mount namespace where a 0666 node of the same
  device is bound over it, so nothing outside the test sees a change.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers import need, run, unavailable, uniqueName

TUN = "/dev/net/tun"
#: Reading and traversing only: the interpreter's files, never anything else.
READ_ONLY_CAPS = [
    "--inh-caps=-all,+dac_read_search",
    "--ambient-caps=-all,+dac_read_search",
    "--bounding-set=-all,+dac_read_search",
]
NO_CAPS = ["--inh-caps=-all", "--bounding-set=-all"]


@dataclass
class ThrowawayUser:
    """A user made for one test, and a scratch directory it owns."""

    name: str
    uid: int
    gid: int
    home: Path

    def argv(self, *argv: str) -> list[str]:
        """C{argv} run as this user (see the module's docstring)."""
        caps = NO_CAPS if _othersCanRun(Path(sys.executable)) else READ_ONLY_CAPS
        command = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                   *caps, *argv]
        if stat.S_IMODE(os.stat(TUN).st_mode) & 0o006 == 0o006:
            return command
        node = self.home / "tun"
        if not node.exists():
            device = os.stat(TUN).st_rdev
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(os.major(device), os.minor(device)))
            os.chmod(node, 0o666)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount --bind "$0" {TUN} && exec "$@"', str(node), *command]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """C{base} with this user's C{HOME}, C{USER} and C{LOGNAME}."""
        return {**base, "HOME": str(self.home), "USER": self.name, "LOGNAME": self.name}


def _othersCanRun(path: Path) -> bool:
    """Whether every directory above C{path} lets others through."""
    return all(stat.S_IMODE(os.stat(parent).st_mode) & 0o001 for parent in path.resolve().parents)


@contextlib.contextmanager
def throwawayUser(scratch: Path) -> Iterator[ThrowawayUser]:
    """
    A new unprivileged user, with C{scratch/home} as its own directory;
    the user is deleted at the end, whatever happened.
    """
    if os.geteuid() != 0:
        unavailable("needs root to make a throwaway user")
    need("useradd", "userdel", "setpriv", "unshare", "mount")
    name = uniqueName("vtwu")
    run("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
        "--shell", "/usr/sbin/nologin", "--user-group", name)
    try:
        ids = run("id", "-u", name).stdout.strip(), run("id", "-g", name).stdout.strip()
        home = scratch / "home"
        home.mkdir()
        os.chown(home, int(ids[0]), int(ids[1]))
        os.chmod(scratch, 0o755)
        yield ThrowawayUser(name, int(ids[0]), int(ids[1]), home)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)
