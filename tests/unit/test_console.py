"""
The console's command table and its replies byte for byte (fakes:
L{consolefakes}).  The session protocol is tested in
test_consolesession.py.
"""

from __future__ import annotations

import errno
import os
import re
from typing import cast

import pytest
from consolefakes import makeOperations
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher

from vtwisted import consolecommands
from vtwisted.console import CommandInterpreter
from vtwisted.consoleargs import atoi, parseMac, scanIntegers
from vtwisted.consolecommands import COMMANDS
from vtwisted.consoleservice import RcFileService
from vtwisted.errors import SwitchError
from vtwisted.testing import FakeLink, frame, plug

VDE_HELP_ORDER = [
    "ds", "ds/showinfo", "help", "logout", "shutdown", "showinfo", "load", "debug",
    "debug/list", "debug/add", "debug/del", "plugin", "plugin/list", "plugin/add",
    "plugin/del", "hash", "hash/showinfo", "hash/setsize", "hash/setgcint", "hash/setexpire",
    "hash/setminper", "hash/print", "hash/find", "fstp", "fstp/showinfo", "fstp/setfstp",
    "fstp/setedge", "fstp/bonus", "fstp/print", "port", "port/showinfo", "port/setnumports",
    "port/sethub", "port/setvlan", "port/createauto", "port/create", "port/remove",
    "port/allocatable", "port/setuser", "port/setgroup", "port/epclose", "port/resetcounter",
    "port/print", "port/allprint", "vlan", "vlan/create", "vlan/remove", "vlan/addport",
    "vlan/delport", "vlan/print", "vlan/allprint",
]
ISSUE_COMMANDS = [
    "help", "showinfo", "port/print", "port/allprint", "port/create", "port/remove",
    "port/setvlan", "port/resetcounter", "vlan/create", "vlan/remove", "vlan/addport",
    "vlan/delport", "vlan/print", "vlan/allprint", "hash/print", "hash/find",
    "hash/setexpire", "hash/showinfo", "logout", "shutdown", "port/add", "port/del",
]


@pytest.fixture
def setup():
    ops, service, stopped = makeOperations()
    return CommandInterpreter(ops), ops, stopped


def run(interpreter: CommandInterpreter, line: str) -> str:
    return interpreter.execute(line).text


# The table


def test_everyIssueCommandExists() -> None:
    """Each command the issue lists is in the table, with a handler."""
    paths = {c.path for c in COMMANDS if c.handler is not None}
    assert set(ISSUE_COMMANDS) <= paths


def test_tableFollowsVdeRegistrationOrder() -> None:
    """Commands vde_switch has appear in its help order; ours come after their menu's."""
    ours = [c.path for c in COMMANDS if c.vde]
    assert ours == [p for p in VDE_HELP_ORDER if p in ours]
    extras = [c.path for c in COMMANDS if not c.vde]
    assert {"port/add", "port/del"} <= set(extras)


def test_noCommandHidesALaterOne() -> None:
    """No path is a prefix of a later one, or prefix dispatch could never reach it."""
    paths = [c.path for c in COMMANDS if c.handler is not None]
    for i, earlier in enumerate(paths):
        for later in paths[i + 1 :]:
            assert not later.startswith(earlier), (earlier, later)


def test_portTypesIsOursInThePortMenu() -> None:
    """
    port/types, which lists the port types, is vtwisted's own command (no
    vde_switch command has its name) and help shows it in the port menu.
    """
    [command] = [c for c in COMMANDS if c.path == "port/types"]
    assert not command.vde and command.data and "port/types" not in VDE_HELP_ORDER
    paths = [c.path for c in COMMANDS]
    assert paths.index("port") < paths.index("port/types") < paths.index("vlan")


def test_portTypesMakesRoomForALongPrefix() -> None:
    """
    A port type's name longer than the prefix column moves every
    description past it; none runs into its name.
    """
    from vtwisted.consoleformat import portTypeLines

    lines = portTypeLines([("acme-reflector-port-for-labs", "reflects"), ("vde", "VDE")])
    assert lines == ["PREFIX                       DESCRIPTION",
                     "------------                 -----------",
                     "acme-reflector-port-for-labs reflects",
                     "vde                          VDE"]


def test_helpIsGeneratedInVdeLayout(setup) -> None:
    """help prints vde_switch's header and one 18/15-column row per table entry."""
    interpreter, _, _ = setup
    lines = run(interpreter, "help").split("\n")
    assert lines[:3] == [
        "0000 DATA END WITH '.'",
        "COMMAND PATH       SYNTAX          HELP",
        "------------       --------------  ------------",
    ]
    assert "port/setvlan       N VLAN          set port VLAN (untagged)" in lines
    assert "port               ============    PORT STATUS MENU" in lines
    assert len(lines) == 3 + len(COMMANDS) + 3
    assert lines[-3:] == [".", "1000 Success", ""]


def test_helpWithPrefix(setup) -> None:
    """help X lists only the entries starting with X."""
    interpreter, _, _ = setup
    lines = run(interpreter, "help vlan/").split("\n")[3:-3]
    assert [line.split()[0] for line in lines] == [
        "vlan/create", "vlan/remove", "vlan/addport", "vlan/delport", "vlan/print",
        "vlan/allprint",
    ]


# Framing and dispatch


def test_replyFramesExactly(setup) -> None:
    """A DATA command's reply is header, lines, dot, result; others only the result."""
    interpreter, _, _ = setup
    assert run(interpreter, "port/showinfo") == (
        "0000 DATA END WITH '.'\nNumports=32\nHUB=false\ncounters=true\n.\n1000 Success\n"
    )
    assert run(interpreter, "vlan/create 10") == "1000 Success\n"
    assert run(interpreter, "vlan/create 10") == "1017 File exists\n"


def test_blankAndCommentLinesAnswerNothing(setup) -> None:
    """Empty, blank and # lines produce no output (only the prompt follows)."""
    interpreter, _, _ = setup
    for line in ("", "   \t", "# port/create 3", "  # x"):
        assert run(interpreter, line) == ""


def test_unknownCommandIsENOSYS(setup) -> None:
    """An unknown command (or a menu name) answers 1038."""
    interpreter, _, _ = setup
    for line in ("nosuchcmd", "port", "hash", "\xff\xfe junk", "Help", "\x0b", "\x0c\x1c",
                 "\x85", "\u3000"):
        assert run(interpreter, line) == "1038 Function not implemented\n"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_anyLineGetsAReply(line: bytes) -> None:
    """
    Whatever bytes a client sends as a line, the interpreter answers with
    nothing or with lines ending in a result line; it never raises.
    """
    interpreter = CommandInterpreter(makeOperations()[0])
    reply = interpreter.execute(line.decode("utf-8", "surrogateescape"))
    if reply.end is None and reply.text:
        assert re.fullmatch(r"\d{4} [^\n]*", reply.text.rstrip("\n").split("\n")[-1])


def test_prefixDispatchAndAtoi(setup) -> None:
    """hash/showinfoXYZ runs hash/showinfo; port/create abc creates port 0 (atoi)."""
    interpreter, ops, _ = setup
    assert run(interpreter, "hash/showinfoXYZ").startswith("0000 DATA END WITH '.'\nHash size 128")
    assert run(interpreter, "port/create abc") == "1000 Success\n"
    assert 0 in ops.switch.ports
    assert run(interpreter, "   port/remove   0  ") == "1000 Success\n"


def test_nulEndsTheCommandLikeACString(setup) -> None:
    """Everything after a NUL byte is ignored, as in vde_switch."""
    interpreter, _, _ = setup
    assert run(interpreter, "vlan/create 12\x00garbage") == "1000 Success\n"


def test_twoNumberCommandsUseScanfNotation(setup) -> None:
    """port/setvlan 0x5 012 is port 5, VLAN 10; a missing number is EINVAL."""
    interpreter, ops, _ = setup
    run(interpreter, "vlan/create 10")
    run(interpreter, "port/create 5")
    assert run(interpreter, "port/setvlan 0x5 012") == "1000 Success\n"
    assert ops.ports(5, inactive=True)[0].untaggedVid == 10
    assert run(interpreter, "port/setvlan 5") == "1022 Invalid argument\n"
    assert run(interpreter, "port/setvlan 5 11") == "1006 No such device or address\n"


def test_setUserTakesDigitsAsCDoes(setup) -> None:
    """
    port/setuser and port/setgroup take a number only if it starts with an
    ASCII digit, as C's isdigit: "²" or "٣" is no user (EINVAL), not
    atoi's 0, root.
    """
    interpreter, ops, _ = setup
    run(interpreter, "port/create 5")
    assert run(interpreter, "port/setuser 5 1234") == "1000 Success\n"
    for name in ("\u00b2", "\u0663"):
        assert run(interpreter, f"port/setuser 5 {name}") == "1022 Invalid argument\n"
        assert run(interpreter, f"port/setgroup 5 {name}") == "1022 Invalid argument\n"
    status = ops.ports(5, inactive=True)[0]
    assert (status.user, status.group) == (1234, None)


def test_cParsers() -> None:
    """atoi, sscanf %i and the MAC parser behave as glibc's."""
    assert [atoi(s) for s in ("12", " -3x", "abc", "", "99999999999")] == [
        12, -3, 0, 0, 1215752191,
    ]
    assert scanIntegers(" 0x1f 017 9", 2) == [31, 15]
    with pytest.raises(SwitchError):
        scanIntegers("3abc 10", 2)
    assert parseMac("2:0:0:0:0:a 10") == (bytes.fromhex("02000000000a"), 10)
    assert parseMac("02.00.00.00.00.0b") == (bytes.fromhex("02000000000b"), 0)
    with pytest.raises(SwitchError):
        parseMac("zz")


def test_dataCommandErrorsKeepTheBlock(setup) -> None:
    """port/print 40 prints an empty DATA block then 1022, as vde_switch."""
    interpreter, _, _ = setup
    assert run(interpreter, "port/print 40") == (
        "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"
    )
    assert run(interpreter, "hash/find 1:2:3:4:5:6") == (
        "0000 DATA END WITH '.'\n.\n1019 No such device\n"
    )
    assert run(interpreter, "vlan/allprint 0").endswith(".\n1022 Invalid argument\n")


def test_ourCommandsExplainFailures(setup) -> None:
    """port/add prints why it failed inside its DATA block."""
    interpreter, _, _ = setup
    reply = run(interpreter, "port/add nosuch:x")
    assert reply.startswith("0000 DATA END WITH '.'\nport spec 'nosuch:x': unknown port type")
    assert reply.endswith(".\n1022 Invalid argument\n")
    assert run(interpreter, "port/add").endswith("1022 Invalid argument\n")


def test_portPrintTemplate(setup) -> None:
    """port/print lines match vde_switch's printf templates."""
    interpreter, ops, _ = setup
    link = FakeLink("vdeplug: user=root pid=1", linkId=3, uid=0)
    plug(ops.switch, link, 1)
    link.receive(frame(b"\xff" * 6, bytes.fromhex("02000000000a")))
    assert run(interpreter, "port/print") == (
        "0000 DATA END WITH '.'\n"
        "Port 0001 untagged_vlan=0000 ACTIVE - Unnamed Allocatable\n"
        " Current User: root Access Control: (User: NONE - Group: NONE)\n"
        " IN:  pkts          1          bytes                   60\n"
        " OUT: pkts          0          bytes                    0\n"
        "  -- endpoint ID 0003 module fake        : vdeplug: user=root pid=1\n"
        ".\n1000 Success\n"
    )
    assert run(interpreter, "hash/print").split("\n")[1] == (
        "Hash: 0009 Addr: 02:00:00:00:00:0a VLAN 0000 to port: 001  age 0 secs"
    )


def test_descriptionsCannotBreakTheBlock(setup) -> None:
    """A client's description with a newline and a dot cannot end the DATA block."""
    interpreter, ops, _ = setup
    plug(ops.switch, FakeLink("evil\n.\n1000 Success"), 1)
    lines = run(interpreter, "port/print").split("\n")
    assert lines.count(".") == 1


def test_vlanPrintTemplates(setup) -> None:
    """vlan/print shows active members; allprint adds inactive ones as Learning."""
    interpreter, ops, _ = setup
    run(interpreter, "vlan/create 10")
    plug(ops.switch, FakeLink(), 2)
    run(interpreter, "port/create 9")
    run(interpreter, "port/setvlan 9 10")
    run(interpreter, "vlan/addport 10 2")
    assert run(interpreter, "vlan/allprint") == (
        "0000 DATA END WITH '.'\nVLAN 0000\n -- Port 0002 tagged=0 active=1 status=Forwarding\n"
        "VLAN 0010\n -- Port 0002 tagged=1 active=1 status=Forwarding\n"
        " -- Port 0009 tagged=0 active=0 status=Learning\n.\n1000 Success\n"
    )
    assert "Port 0009" not in run(interpreter, "vlan/print 10")


def test_showinfoAndCreateAuto(setup) -> None:
    """showinfo starts with the banner; createauto names the port it made."""
    interpreter, ops, _ = setup
    ops.registerConsole("/tmp/mgmt", 0o660)
    lines = run(interpreter, "showinfo").split("\n")
    assert lines[1] == "VDE switch V.2.3.2" and lines[3] == ""
    assert lines[4] == f"pid {os.getpid()} MAC 00:ff:01:02:03:04 uptime 0"
    assert lines[5] == "mgmt /tmp/mgmt perm 0660"
    assert run(interpreter, "port/createauto") == (
        "0000 DATA END WITH '.'\nPort 0001\n.\n1000 Success\n"
    )


def test_portAddDelStatsSpecs(setup) -> None:
    """port/add reports the port; port/stats and port/specs show it; port/del removes it."""
    interpreter, ops, _ = setup
    assert run(interpreter, "port/add single:tap9") == (
        "0000 DATA END WITH '.'\nSpec single:tap9\nPort 0001\n.\n1000 Success\n"
    )
    assert "Spec single:tap9 ports=0001 single runtime" in run(interpreter, "port/specs")
    stats = run(interpreter, "port/stats 1").split("\n")
    assert stats[1] == "Port 0001 mtu=9216 untagged_vlan=0000 tagged_vlans=none all_vlans=0"
    assert stats[3] == " spec: single:tap9"
    assert run(interpreter, "port/del 1") == (
        "0000 DATA END WITH '.'\nPort 0001\nSpec single:tap9\n.\n1000 Success\n"
    )
    assert run(interpreter, "port/del 1") == (
        "0000 DATA END WITH '.'\nport 1 does not exist\n.\n1006 No such device or address\n"
    )
    assert run(interpreter, "port/del no:such").endswith("1002 No such file or directory\n")


def test_portAddThatCannotStartSaysWhyOnceWithItsErrno(setup) -> None:
    """
    A spec that fails to start is answered with its message as at start-up
    (C{spec: what failed: why (errno N)}), not Python's C{[Errno N]} in
    front of it.
    """
    interpreter, _, _ = setup
    assert run(interpreter, "port/add broken:x") == (
        "0000 DATA END WITH '.'\nbroken:x: cannot open: Device or resource busy (errno 16)"
        "\n.\n1016 Device or resource busy\n"
    )


def test_logoutAndShutdownEndTheSession(setup) -> None:
    """logout and shutdown return no text and say how the session ends."""
    interpreter, _, _ = setup
    assert interpreter.execute("logout").end.shutdown is False
    assert interpreter.execute("shutdown now").end.shutdown is True


def test_loadEchoesEachLine(setup, tmp_path) -> None:
    """load PATH echoes vde[PATH]: LINE before each reply, then succeeds."""
    interpreter, _, _ = setup
    script = tmp_path / "s.rc"
    script.write_text("vlan/create 10\nbogus\n\nlogout\n")
    assert run(interpreter, f"load {script}") == (
        f"vde[{script}]: vlan/create 10\n1000 Success\n"
        f"vde[{script}]: bogus\n1038 Function not implemented\n"
        f"vde[{script}]: \nvde[{script}]: logout\n1000 Success\n"
    )
    assert run(interpreter, "load /no/such") == "1002 No such file or directory\n"


def test_loadCannotRecurseForever(setup, tmp_path) -> None:
    """A script that loads itself stops at the nesting limit with ELOOP."""
    interpreter, _, _ = setup
    script = tmp_path / "loop.rc"
    script.write_text(f"load {script}\n")
    assert f"1{errno.ELOOP:03d} Too many levels of symbolic links" in run(
        interpreter, f"load {script}"
    )


def test_handlerBugIsAnErrorReply(setup, monkeypatch) -> None:
    """An unexpected exception in a handler answers 1005 and is logged."""
    interpreter, ops, _ = setup
    monkeypatch.setattr(ops, "info", lambda: 1 / 0)
    logged: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, logged.append))
    try:
        assert run(interpreter, "port/showinfo").endswith(".\n1005 Input/output error\n")
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, logged.append))
    assert any(e.get("log_failure") for e in logged)


def test_rcFileRunsEveryLineAndLogsFailures(setup, tmp_path) -> None:
    """--rcfile runs each line, logs bad ones with their number, and goes on."""
    interpreter, ops, _ = setup
    rc = tmp_path / "vde.rc"
    rc.write_text("vlan/create 10\nport/setvlan 3 10\nport/create 3\nport/setvlan 3 10\nshutdown\n")
    logged: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, logged.append))
    try:
        clock = Clock()
        service = RcFileService(interpreter, str(rc), clock)
        service.startService()
        assert 10 not in ops.switch.vlans
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, logged.append))
    assert service.failures == 1
    assert ops.ports(3, inactive=True)[0].untaggedVid == 10
    errors = [e for e in logged if "line" in e.get("log_format", "") and e.get("number") == 2]
    assert errors and errors[0]["result"] == "1006 No such device or address"


def test_commandsTableIsTheModuleConstant() -> None:
    """The interpreter's default table is consolecommands.COMMANDS."""
    ops = makeOperations()[0]
    assert CommandInterpreter(ops).commands is consolecommands.COMMANDS


def test_vdeErrorsSayWhyInTheLogOnly(setup) -> None:
    """
    A vde_switch command that fails in a session answers as vde_switch
    does, the errno alone, and the switch's log says why; a command that
    succeeds logs nothing.
    """
    from twisted.logger import capturedLogs, formatEvent

    interpreter, _, _ = setup
    session = object()
    with capturedLogs() as events:
        reply = interpreter.execute("vlan/create 5000", session=session)
        assert reply.text == "1022 Invalid argument\n"
        interpreter.execute("vlan/create 7", session=session)
    assert [formatEvent(e) for e in events] == [
        "console: 'vlan/create 5000': VLAN 5000 is out of range (1 to 4093)"]
