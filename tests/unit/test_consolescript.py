"""
C{load} scripts and C{--rcfile}: only regular files are read, so that no
file can make the switch wait (a FIFO nobody writes to, a terminal, a
socket path).
"""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest
from consolefakes import makeOperations

from vtwisted import consolescript
from vtwisted.console import CommandInterpreter
from vtwisted.consoleservice import checkRcFile, runRcFile

INVALID = f"1{errno.EINVAL:03d} Invalid argument\n"


@pytest.fixture
def interpreter() -> CommandInterpreter:
    return CommandInterpreter(makeOperations()[0])


def answerWithin(call, seconds: float, fifo: str | None = None):
    """
    What C{call()} returns, failing if it is still waiting after C{seconds};
    a reader left waiting on C{fifo} is released so that the test run ends.
    """
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail(f"still waiting after {seconds} s")
    return result[0]


def test_loadOfAFifoIsRefusedAtOnce(interpreter, tmp_path) -> None:
    """load of a FIFO nobody writes to answers 1022 at once instead of waiting."""
    fifo = str(tmp_path / "script.fifo")
    os.mkfifo(fifo)
    reply = answerWithin(lambda: interpreter.execute(f"load {fifo}").text, 2.0, fifo)
    assert reply == INVALID


def test_loadOfADeviceOrSocketIsRefused(interpreter, tmp_path) -> None:
    """A character device or a socket path is no script either: 1022, not read."""
    path = str(tmp_path / "sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    try:
        assert interpreter.execute(f"load {path}").text == INVALID
    finally:
        listening.close()
    assert interpreter.execute("load /dev/null").text == INVALID


def test_loadOfADirectoryIsEisdir(interpreter, tmp_path) -> None:
    """A directory answers 1021 Is a directory, as opening it for reading would."""
    assert interpreter.execute(f"load {tmp_path}").text == f"1{errno.EISDIR:03d} Is a directory\n"


def test_loadFollowsALinkToARegularFile(interpreter, tmp_path) -> None:
    """A symbolic link to a script runs the script."""
    script = tmp_path / "real.rc"
    script.write_text("vlan/create 12\n")
    link = tmp_path / "link.rc"
    link.symlink_to(script)
    assert interpreter.execute(f"load {link}").text == (
        f"vde[{link}]: vlan/create 12\n1000 Success\n1000 Success\n"
    )


def test_fileReplacedByAFifoAfterTheCheckIsRefused(interpreter, tmp_path, monkeypatch) -> None:
    """A regular file swapped for a FIFO between the check and the open is refused too."""
    path = str(tmp_path / "swapped")
    os.mkfifo(path)
    regular = os.stat(__file__)
    realStat = os.stat
    monkeypatch.setattr(consolescript.os, "stat", lambda p, *a, **k: regular if p == path
                        else realStat(p, *a, **k))
    reply = answerWithin(lambda: interpreter.execute(f"load {path}").text, 2.0, path)
    assert reply == INVALID


def test_scriptLargerThanTheCapIsRefused(interpreter, tmp_path, monkeypatch) -> None:
    """A script over the size cap answers 1027 File too large and runs nothing."""
    monkeypatch.setattr(consolescript, "MAX_SCRIPT_BYTES", 64)
    script = tmp_path / "big.rc"
    script.write_text("vlan/create 13\n" * 5)
    assert interpreter.execute(f"load {script}").text == f"1{errno.EFBIG:03d} File too large\n"
    assert "VLAN 0013" not in interpreter.execute("vlan/print").text


def test_rcFileThatIsAFifoStopsStartUp(tmp_path) -> None:
    """--rcfile naming a FIFO is a start-up error saying it is a FIFO."""
    fifo = str(tmp_path / "rc.fifo")
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"--rcfile .*rc\.fifo: a FIFO, not a regular file"):
        checkRcFile(fifo)


def test_rcFileReplacedByAFifoIsOneLoggedFailure(interpreter, tmp_path) -> None:
    """An rc file that became a FIFO after start-up checks fails at once, logged."""
    fifo = str(tmp_path / "late.fifo")
    os.mkfifo(fifo)
    assert answerWithin(lambda: runRcFile(interpreter, fifo), 2.0, fifo) == 1


# The size of a load's reply

NOBUFS = f"1{errno.ENOBUFS:03d} No buffer space available\n"


def test_loadReplyPastTheCapStopsTheScript(interpreter, tmp_path, monkeypatch) -> None:
    """
    A script whose reply grows past MAX_SCRIPT_OUTPUT stops after the line
    that passed it: the reply ends with 1105 No buffer space available, is
    not much longer than the cap, and the lines after are not run.
    """
    monkeypatch.setattr(consolescript, "MAX_SCRIPT_OUTPUT", 64 * 1024)
    script = tmp_path / "help.rc"
    script.write_text("help\n" * 100 + "vlan/create 14\n")
    reply = interpreter.execute(f"load {script}").text
    assert reply.startswith(f"vde[{script}]: help\n0000 DATA END WITH '.'\n")
    assert reply.endswith(".\n1000 Success\n" + NOBUFS)
    assert 64 * 1024 < len(reply) < 64 * 1024 + 8192
    assert "VLAN 0014" not in interpreter.execute("vlan/print").text


def test_aOneMegabyteScriptOfHelpGetsACappedReply(interpreter, tmp_path) -> None:
    """
    The largest script there may be, all help lines (900 MB of replies),
    gets a reply of about MAX_SCRIPT_OUTPUT bytes, at once.
    """
    script = tmp_path / "help.rc"
    script.write_text("help\n" * (consolescript.MAX_SCRIPT_BYTES // 5))
    reply = interpreter.execute(f"load {script}").text
    assert reply.endswith(NOBUFS)
    assert consolescript.MAX_SCRIPT_OUTPUT < len(reply) < consolescript.MAX_SCRIPT_OUTPUT + 8192


def test_nestedLoadsShareTheCap(interpreter, tmp_path, monkeypatch) -> None:
    """
    A script loaded from another one has what is left of the cap: both stop,
    each with its own 1105 line, and the whole reply stays near the cap.
    """
    monkeypatch.setattr(consolescript, "MAX_SCRIPT_OUTPUT", 64 * 1024)
    inner = tmp_path / "inner.rc"
    inner.write_text("help\n" * 100)
    outer = tmp_path / "outer.rc"
    outer.write_text("help\n" * 10 + f"load {inner}\n" + "vlan/create 14\n")
    reply = interpreter.execute(f"load {outer}").text
    assert reply.endswith(".\n1000 Success\n" + NOBUFS + NOBUFS)
    assert 64 * 1024 < len(reply) < 64 * 1024 + 8192
    assert reply.count(f"vde[{outer}]: ") == 11
    assert "VLAN 0014" not in interpreter.execute("vlan/print").text


def test_smallScriptReplyIsEveryEchoAndReply(interpreter, tmp_path) -> None:
    """A script well under the cap answers every line, echoed, then 1000 Success."""
    script = tmp_path / "small.rc"
    script.write_text("vlan/create 30\nbogus\n\nvlan/print 30\n")
    assert interpreter.execute(f"load {script}").text == (
        f"vde[{script}]: vlan/create 30\n1000 Success\n"
        f"vde[{script}]: bogus\n1038 Function not implemented\n"
        f"vde[{script}]: \n"
        f"vde[{script}]: vlan/print 30\n0000 DATA END WITH '.'\nVLAN 0030\n.\n1000 Success\n"
        "1000 Success\n"
    )


def test_rcFileCollectsNoOutputOfTheScriptsItLoads(interpreter, tmp_path) -> None:
    """
    --rcfile discards output, so a load in it neither collects its script's
    replies (22 MB of help here) nor stops at the cap: the whole script runs.
    """
    import tracemalloc

    loaded = tmp_path / "help.rc"
    loaded.write_text("help\n" * 5000 + "vlan/create 16\n")
    rc = tmp_path / "switch.rc"
    rc.write_text(f"load {loaded}\nvlan/create 15\n")
    tracemalloc.start()
    try:
        failures = runRcFile(interpreter, str(rc))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert failures == 0
    assert "VLAN 0015\nVLAN 0016" in interpreter.execute("vlan/print").text
    assert peak < 2 * 1024 * 1024, f"{peak >> 20} MB at peak"
