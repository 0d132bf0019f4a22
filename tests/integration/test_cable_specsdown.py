"""
C{port/specs} for a connecting cable that has never connected: the spec
line says what it dials, how many attempts failed and the last failure,
instead of a bare C{ports=none}.  Real TCP on loopback, in this process;
the console's own interpreter on the running switch.
"""

from __future__ import annotations

import socket

import pytest_twisted
from reactortools import until
from test_cable import ports

from vtwisted.console import CommandInterpreter


@pytest_twisted.ensureDeferred
async def test_aCableThatNeverConnectedSaysWhatItDialsInPortSpecs(switch) -> None:
    closed = socket.socket()  # bound, never listening: every connect is refused
    closed.bind(("127.0.0.1", 0))
    try:
        number = closed.getsockname()[1]
        spec = f"cable:tcp:host=127.0.0.1:port={number}:tls=off"
        service = switch(spec)
        await until(lambda: ports(service).failures.total >= 2, timeout=10,
                    what="failed dials")
        reply = CommandInterpreter(service.operations).execute("port/specs").text
        (line,) = [line for line in reply.split("\n") if line.startswith("Spec cable:")]
        assert line.startswith(f"Spec {spec} ports=none single startup -- dialling "
                               f"tcp:host=127.0.0.1:port={number}, "), line
        assert " failures, last: cannot connect: " in line and "refused" in line, line
    finally:
        closed.close()
