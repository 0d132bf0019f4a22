"""
Helpers for the integration tests of C{cmd:} ports run by a real switch:
the pid of a command as C{port/print} shows it, and whether its process
group still has a process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from taphelpers import console

#: A command's pid in C{port/print}'s endpoint line.
PID = re.compile(r"module command\s*: .*\(pid (\d+)")


def commandPid(mgmt: Path) -> int | None:
    """The pid of the (first) command C{port/print} shows, if one runs."""
    found = PID.search(console(mgmt, "port/print"))
    return int(found.group(1)) if found else None


def groupAlive(group: int) -> bool:
    """Whether process group C{group} (a command's: it leads it) has a process left."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
