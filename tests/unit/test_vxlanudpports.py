"""
Two C{vxlan:}/C{vxvde:} ports of one switch that cannot share a UDP port:
the second one's error names the first, and says what to do; with no such
port, it names the other possibilities.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred

from vtwisted.ports import vxlan as vxlanport
from vtwisted.ports import vxvde as vxvdeport
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch


def _freePort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _service(text: str) -> Any:
    module = vxvdeport if text.startswith("vxvde") else vxlanport
    return module.makeService(Switch(), PortSpec(text), reactor)


@pytest.mark.parametrize(("first", "second"), [
    ("vxlan:239.1.2.3:if=lo", "vxlan:remote=127.0.0.2:local=127.0.0.1"),
    ("vxlan:remote=127.0.0.2:local=127.0.0.1", "vxlan:239.1.2.3:if=lo"),
    ("vxvde:239.1.2.4:if=lo", "vxlan:remote=127.0.0.2"),
    ("vxlan:239.1.2.3:if=lo", "vxvde:239.1.2.4:if=lo"),
])
@pytest_twisted.ensureDeferred
async def test_theSecondPortOnAUdpPortNamesTheFirst(first: str, second: str) -> None:
    """
    A multicast port and a unicast one with local= on one UDP port, or a
    vxvde: port and a vxlan: one on every address: the second fails with
    EADDRINUSE naming the first, and says to give one another dstport=.
    """
    number = _freePort()
    held = _service(f"{first}:dstport={number}")
    held.bind()
    try:
        refused = _service(f"{second}:dstport={number}")
        with pytest.raises(OSError) as caught:
            refused.bind()
        message = caught.value.strerror or ""
        assert caught.value.errno == errno.EADDRINUSE
        assert message.startswith(f"{second}:dstport={number}: "), message
        assert f"this switch's {first}:dstport={number} already uses it" in message, message
        assert "another dstport=" in message and "Linux vxlan device" not in message, message
    finally:
        await maybeDeferred(held.stopService)
    again = _service(f"{second}:dstport={number}")  # the stop freed the UDP port at once
    again.bind()
    await maybeDeferred(again.stopService)


def test_withNoPortOfTheSwitchOnItTheHintNamesTheOthers() -> None:
    """Taken by someone else, the UDP port's error asks about Linux vxlan devices."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("0.0.0.0", 0))
        number = other.getsockname()[1]
        spec = f"vxlan:remote=127.0.0.2:dstport={number}"
        with pytest.raises(OSError) as caught:
            _service(spec).bind()
    message = caught.value.strerror or ""
    assert caught.value.errno == errno.EADDRINUSE and message.startswith(spec), message
    assert "no vxlan: or vxvde: port of this switch has it" in message, message
    assert "Linux vxlan device" in message, message
