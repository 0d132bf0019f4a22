"""
C{vde_switch}'s command line read by C{twistd vswitch}'s options: single-dash
long options, and the options whose meaning C{twistd} has.
"""

from __future__ import annotations

import pytest
from twisted.python import usage

from vtwisted.app import Options
from vtwisted.compatoptions import longOnly


class Parent(dict):
    """twistd's options, as far as vswitch's look at them."""


def parse(*argv: str, **parent: object) -> Options:
    options = Options()
    options.parent = Parent({"pidfile": "twistd.pid", "nodaemon": False, **parent})
    options.parseOptions(list(argv))
    return options


def test_singleDashLongOptionsAreReadAsVdeSwitchReadsThem() -> None:
    """
    vde_switch's manual page spelling (-sock, -hub, -daemon, unique prefixes
    such as -mod) is read as the long options; short options, clusters of
    them and option values are left alone.
    """
    options = Options()
    assert longOnly(["-sock", "/tmp/-hub", "-hub", "-mod=0660", "-xF", "-s", "-numports",
                     "-n", "8", "--", "-hub"], options.shortOpt, options.longOpt) == \
        ["--sock", "/tmp/-hub", "--hub", "--mod=0660", "-xF", "-s", "-numports",
         "-n", "8", "--", "-hub"]
    parsed = parse("-sock", "/tmp/sw", "-hub", "-numports", "8", "-mod", "0660", "-daemon")
    assert (parsed["sock"], parsed["hub"], parsed["numports"], parsed["mode"]) == \
        ("/tmp/sw", 1, 8, "0660")


def test_vdeSwitchSpellingsOfOptions() -> None:
    """--vdesock and --unix are --sock; --hashsize sets hash/print's buckets;
    -D is accepted."""
    assert parse("--vdesock", "/tmp/a")["sock"] == "/tmp/a"
    assert parse("--unix", "/tmp/b")["sock"] == "/tmp/b"
    assert parse("-D", "4", "--hashsize", "100")["hashsize"] == 100
    service = parse("--hashsize", "100").build(reactor=None)
    assert service.operations.macTableInfo().buckets == 128
    with pytest.raises(usage.UsageError, match="--hashsize must be at least 1"):
        parse("--hashsize", "0")


def test_pidfileIsTwistds() -> None:
    """
    -p names twistd's pid file, unless twistd's --pidfile names another;
    -d is what twistd does anyway, and an error naming -n with it.
    """
    options = parse("-d", "-p", "/run/sw.pid")
    assert options.parent["pidfile"] == "/run/sw.pid"
    assert parse("-p", "/run/sw.pid", pidfile="")["sock"] is None
    with pytest.raises(usage.UsageError, match=r"twistd's --pidfile already names /run/a\.pid"):
        parse("-p", "/run/b.pid", pidfile="/run/a.pid")
    with pytest.raises(usage.UsageError, match=r"unless given -n \(--nodaemon\)"):
        parse("-d", nodaemon=True)


def test_theReadmesSwitchOptionsReachTheSwitch() -> None:
    """
    The README's C{--hub --numports 64 --macaddr-ttl 300} and
    C{--mac-table-size} configure the switch built; C{--debugclients} (C{-D}'s
    long spelling) is accepted and changes nothing.
    """
    switch = parse("--hub", "--numports", "64", "--macaddr-ttl", "300",
                   "--mac-table-size", "500", "--debugclients", "3").build(reactor=None).switch
    assert (switch.hub, switch.numPorts) == (True, 64)
    assert (switch.fdb.expiry, switch.fdb.capacity) == (300, 500)
    plain = parse().build(reactor=None).switch
    assert (plain.hub, plain.numPorts, plain.fdb.capacity) == (False, 32, 16384)


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_vPrintsTwistedsVersion(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """-v, as vde_switch's, prints a version (Twisted's) and exits."""
    import twisted

    with pytest.raises(SystemExit) as exited:
        parse(flag)
    assert exited.value.code in (0, None)
    assert twisted.__version__ in capsys.readouterr().out
