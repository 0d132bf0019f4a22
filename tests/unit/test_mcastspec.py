"""
The C{mcast:} spec: what it accepts, and the errors that name what is wrong.
"""

from __future__ import annotations

import pytest

from vtwisted.ports import mcast
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch


def test_specGivesGroupPortAndOptions() -> None:
    """Group, port, localaddr and ttl reach the service."""
    service = mcast.makeService(Switch(), PortSpec("mcast:230.0.0.1:1234:localaddr=127.0.0.1:"
                                                   "ttl=4:vlan=3"), None)
    assert (service.group, service.number, service.localaddr, service.ttl) == (
        "230.0.0.1", 1234, "127.0.0.1", 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mcast:10.0.0.1:1234", "not a multicast group"),
        ("mcast:group:1234", "not an IPv4 address"),
        ("mcast:230.0.0.1:http", "not a UDP port number"),
        ("mcast:230.0.0.1:70000", "out of range"),
        ("mcast:230.0.0.1:1234:localaddr=eth0", "localaddr"),
        ("mcast:230.0.0.1:1234:ttl=300", "ttl"),
        ("mcast:230.0.0.1:1234:colour=blue", "colour"),
    ],
)
def test_badSpecsAreRefused(text: str, message: str) -> None:
    """Each mistake is a SpecError naming the spec and what is wrong."""
    with pytest.raises(SpecError, match=message) as caught:
        mcast.makeService(Switch(), PortSpec(text), None)
    assert text.split(":colour")[0] in str(caught.value)
