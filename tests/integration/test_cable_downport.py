"""
A connecting cable whose far switch is gone: C{port/allprint} shows, on
the port the cable had, what the spec is doing about it (what it dials,
how many attempts failed since, the last failure), on one line; the line
goes when the cable is back.  Real TCP on loopback, in this process.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from reactortools import until
from test_cable import listenerOf, ports

from vtwisted.consoleformat import portLines, portStats


def printed(service: Any, number: int) -> list[str]:
    (status,) = service.operations.ports(number, inactive=True)
    return portLines(status)


@pytest_twisted.ensureDeferred
async def test_aCableDownSaysWhatItDialsAndWhyItFails(switch) -> None:
    a = switch("cable:listen:tcp:0:interface=127.0.0.1:tls=off")
    number = listenerOf(a).listeningPort.getHost().port
    spec = f"cable:tcp:host=127.0.0.1:port={number}:tls=off"
    b = switch(spec)
    await until(lambda: ports(b).links, what="the cable up")
    port = ports(b).links[0].port.number
    assert not any("-- down:" in line for line in printed(b, port))
    await a.stopService()
    await until(lambda: ports(b).failures.total >= 2, timeout=10, what="failed redials")
    lines = printed(b, port)
    assert "INACTIVE" in lines[0]
    (down,) = [line for line in lines if line.startswith("  -- down: ")]
    assert down.startswith(f"  -- down: dialling tcp:host=127.0.0.1:port={number}, ")
    assert " failures, last: cannot connect: " in down and "refused" in down
    (status,) = b.operations.ports(port, inactive=True)
    assert f" spec: {spec}" in portStats(status)
    assert [s.number for s in b.operations.ports()] == []  # port/print: active ports only
    again = switch(f"cable:listen:tcp:{number}:interface=127.0.0.1:tls=off")
    await until(lambda: ports(b).links and ports(again).links, timeout=10,
                what="the cable back")
    assert not any("-- down:" in line for line in printed(b, ports(b).links[0].port.number))
