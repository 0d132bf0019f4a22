"""
C{port/specs} for a connecting cable, or a C{qemu:connect:} port, that has
never connected: the spec line says what it dials, how many attempts
failed and the last failure, instead of a bare C{ports=none}.  Real TCP on
loopback, in this process; the console's own interpreter on the running
switch.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from reactortools import until
from test_cable import ports

from vtwisted.console import CommandInterpreter


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("template", ["cable:tcp:host=127.0.0.1:port={}:tls=off",
                                      "qemu:connect:tcp:host=127.0.0.1:port={}"])
async def test_aCableThatNeverConnectedSaysWhatItDialsInPortSpecs(switch, template: str) -> None:
    closed = socket.socket()  # bound, never listening: every connect is refused
    closed.bind(("127.0.0.1", 0))
    try:
        number = closed.getsockname()[1]
        spec = template.format(number)
        service = switch(spec)
        await until(lambda: ports(service).failures.total >= 2, timeout=10,
                    what="failed dials")
        reply = CommandInterpreter(service.operations).execute("port/specs").text
        (line,) = [line for line in reply.split("\n") if line.startswith(f"Spec {spec} ")]
        assert line.startswith(f"Spec {spec} ports=none single startup -- dialling "
                               f"tcp:host=127.0.0.1:port={number}, "), line
        assert " failures, last: cannot connect: " in line and "refused" in line, line
    finally:
        closed.close()
