"""
Console sessions from other users: with C{--mgmt-group} the console may be
shared, and a session whose peer is neither the switch's user nor root may
not make the switch write files, open devices, listen or run commands
(C{port/add}, C{load}, C{slirp/hostfwd_add}); everything else stays open
to it, as on C{vde_switch}.  The peer's user comes from C{SO_PEERCRED}.
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
from consolefakes import makeOperations
from twisted.internet.testing import StringTransport

from vtwisted.console import CommandInterpreter, peerUid


@pytest.mark.parametrize("line", ["port/add single:tap9", "load /etc/hostname",
                                  "slirp/hostfwd_add tcp::2222-:22"])
def test_anotherUsersSessionMayNotAddPortsLoadOrForward(line: str) -> None:
    """EPERM, saying who may; the same line from the operator is not refused."""
    ops, _, _ = makeOperations()
    interpreter = CommandInterpreter(ops)
    stranger = SimpleNamespace(trusted=False)
    reply = interpreter.execute(line, session=stranger)
    assert reply.error is not None and reply.error.errno == 1, reply.text
    assert "only the switch's own user (or root) may do this" in reply.error.message
    assert reply.text.endswith("1001 Operation not permitted\n")
    assert "Operation not permitted" not in interpreter.execute(
        line, session=SimpleNamespace(trusted=True)).text
    assert interpreter.execute("port/print", session=stranger).text.endswith("1000 Success\n")


def test_thePeersUserComesFromTheSocket() -> None:
    """SO_PEERCRED names this process's user at the other end of a socket pair."""
    ours, theirs = socket.socketpair()
    try:
        assert peerUid(SimpleNamespace(getHandle=lambda: ours)) == os.geteuid()
        assert peerUid(StringTransport()) is None
    finally:
        ours.close()
        theirs.close()
