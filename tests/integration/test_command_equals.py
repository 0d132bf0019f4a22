"""
C{cmd:} specs written as a shell line, C{=} unescaped: C{twistd} runs
C{env A=1 B=x=y python peer.py --opt=value}, given with C{--port} and with
C{port/add} in an C{--rcfile}; the command gets those words (it says so on
standard error, which the switch logs), its frame reaches the switch, and
the console shows and deletes each spec by the text it was given as.
"""

from __future__ import annotations

import re
import sys
import textwrap

import pytest
from helpers import waitFor
from taphelpers import console

pytestmark = pytest.mark.integration

#: Says what it got, sends one frame as a vde_plug record, waits for its end.
PEER = textwrap.dedent("""\
    import os, sys
    print("got", os.environ["A"], os.environ["B"], *sys.argv[1:], file=sys.stderr, flush=True)
    frame = b"\\xff" * 6 + bytes.fromhex("020000000001") + b"\\x08\\x00" + b"x" * 46
    sys.stdout.buffer.write(len(frame).to_bytes(2, "big") + frame)
    sys.stdout.flush()
    sys.stdin.buffer.read()
    """)

COMMAND = re.compile(r"command\s*: env A=1 B=x=y \S+ \S+ --opt=(\w+) \(pid (\d+)\)")


def test_aCommandWithUnescapedEqualsSignsRunsAsWritten(vswitch, shortdir) -> None:
    """
    cmd:env A=1 B=x=y python peer.py --opt=value:vlan=3, from --port and
    from an rc file: each run gets A, B and --opt as written and carries
    its frame; port/specs shows each spec as given; port/del of that text
    ends it.
    """
    script = shortdir / "peer.py"
    script.write_text(PEER)
    peer = f"{sys.executable} {script}".replace("\\", "\\\\").replace(":", "\\:")
    given = f"cmd:env A=1 B=x=y {peer} --opt=given:vlan=3"
    loaded = f"cmd:env A=1 B=x=y {peer} --opt=loaded:vlan=3"
    rc, mgmt = shortdir / "equals.rc", shortdir / "mgmt"
    rc.write_text(f"port/add {loaded}\n")
    sw = vswitch("--port", given, "--rcfile", str(rc), "--mgmt", str(mgmt))
    waitFor(mgmt.exists, what="the console")

    def running() -> dict[str, str]:
        return {m.group(1): m.group(2) for m in COMMAND.finditer(console(mgmt, "port/print"))}

    waitFor(lambda: set(running()) == {"given", "loaded"}, timeout=20, what="both commands")
    waitFor(lambda: sw.logText().count("got 1 x=y --opt=") == 2, timeout=20,
            what="both commands' reports")
    assert "got 1 x=y --opt=given" in sw.logText() and "got 1 x=y --opt=loaded" in sw.logText()
    specs = console(mgmt, "port/specs")
    assert f"Spec {given} ports=" in specs and f"Spec {loaded} ports=" in specs, specs
    printed = console(mgmt, "port/print")
    assert printed.count("untagged_vlan=0003") == 2, printed
    waitFor(lambda: len(re.findall(r"IN: +pkts +1 ", console(mgmt, "port/print"))) == 2,
            timeout=10, what="each command's frame")
    assert console(mgmt, f"port/del {loaded}").rstrip().endswith("1000 Success"), sw.logText()
    assert set(running()) == {"given"}
    assert console(mgmt, f"port/del {given}").rstrip().endswith("1000 Success"), sw.logText()
    assert f"Spec {given}" not in console(mgmt, "port/specs")
    assert "Traceback" not in sw.logText(), sw.logText()
