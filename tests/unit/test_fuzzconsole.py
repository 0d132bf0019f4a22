"""
The management console on a live in-process switch, fed random sequences
of its real commands (every one of the table's, but those that reach
outside the process) with random and hostile arguments: each answers with a
vde_switch status line and logs no failure, and afterwards the switch still
forwards a frame between two ports of its default VLAN.

The examples are few by default; set C{VTWISTED_FUZZ_EXAMPLES} for a long run.
"""

from __future__ import annotations

import os
import re

from consolefakes import makeOperations
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from slirpfakes import noFailuresLogged

from vtwisted.console import CommandInterpreter
from vtwisted.consolecommands import COMMANDS
from vtwisted.testing import FakeLink, frame, plug

EXAMPLES = int(os.environ.get("VTWISTED_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

#: Commands that reach outside the process (files, sockets, the log).
OUTSIDE = {"load", "debug/add", "debug/del", "port/add", "slirp/hostfwd_add"}
PATHS = sorted(c.path for c in COMMANDS if c.handler is not None and c.path not in OUTSIDE)
STATUS = re.compile(r"(?m)^1(000 Success|\d{3} \S.*)\n\Z")

NUMBERS = st.sampled_from([
    "0", "1", "2", "3", "7", "31", "32", "33", "64", "-1", "-2", "4094", "4095", "4096",
    "65535", "65536", "2147483647", "2147483648", "-2147483648", "4294967296",
    "99999999999999999999", "0x10", "0x", "010", "08", "1e3", "1.5", "+3", " 5", "abc", "",
    "\t", "\u00e9", "\u0663", "1\x00", "nan"])
WORDS = st.sampled_from([
    "", "on", "off", "0/1", "root", "nobody", "nosuchuser\u00e9", "0", "65534", "-1",
    "00:11:22:33:44:55", "ff:ff:ff:ff:ff:ff", "0:1:2:3:4", "zz:zz:zz:zz:zz:zz",
    "single:", "listen:", "broken:x", "nosuch:thing", ":", "a" * 300, "%s%n", "${x}",
    "loss=50%", "delay=10ms", "rate=1kbit", "off", "loss=", "loss=-1%", "delay=1e308s",
    "dup=200%", "mtu=0", "mtu=70000", "udp:8080-:80", "tcp::1-:1"])
ARGUMENTS = st.lists(st.one_of(NUMBERS, WORDS), max_size=4).map(" ".join)
LINES = st.tuples(st.sampled_from(PATHS), ARGUMENTS).map(lambda pair: f"{pair[0]} {pair[1]}")
SETUP = ["port/create 1", "port/create 2", "vlan/create 5", "vlan/addport 5 2",
         "port/add listen:", "port/add single:", "fstp/setfstp 1", "port/sethub 0"]


def forwards(service: object, ops: object, interpreter: CommandInterpreter) -> None:
    """
    Two new ports of VLAN 0 (fast spanning tree off, as a switch that
    starts) pass a broadcast and then a unicast frame.
    """
    for line in ["fstp/setfstp 0", "port/sethub 0", "port/setnumports 32"]:
        interpreter.execute(line)
    switch = service.switch  # type: ignore[attr-defined]
    a, b = FakeLink("a"), FakeLink("b")
    plug(switch, a)
    plug(switch, b)
    assert a.port is not None and b.port is not None, "no free port"
    for link in (a, b):
        reply = interpreter.execute(f"port/setvlan {link.port.number} 0").text
        assert reply.endswith("1000 Success\n"), reply
    macA, macB = bytes.fromhex("020000000a0a"), bytes.fromhex("020000000b0b")
    a.receive(frame(b"\xff" * 6, macA))
    assert b.takeSent() == [frame(b"\xff" * 6, macA)]
    b.receive(frame(macA, macB))
    assert a.takeSent()[-1:] == [frame(macA, macB)]


@FUZZ
@given(lines=st.lists(st.one_of(LINES, st.sampled_from(SETUP)), max_size=30))
def test_commandsAnswerAndTheSwitchForwards(lines: list[str]) -> None:
    """
    Each command of a random sequence answers with a status line and logs
    no failure; the switch forwards afterwards.
    """
    ops, service, stopped = makeOperations()
    interpreter = CommandInterpreter(ops)
    with noFailuresLogged():
        for line in lines:
            note(line)
            reply = interpreter.execute(line)
            if reply.end is not None:
                continue
            assert STATUS.search(reply.text), (line, reply.text)
            assert "Traceback" not in reply.text
            assert "internal error" not in reply.text, (line, reply.text)
        forwards(service, ops, interpreter)
