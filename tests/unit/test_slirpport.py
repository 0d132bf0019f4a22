"""
The slirp port service on a switch: what it refuses to share a VLAN with.
"""

from __future__ import annotations

import pytest
import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_secondSlirpOnTheSameVlanIsRefused(switch) -> None:
    """
    A second slirp port with the same gateway (or IPv6 on both) in one VLAN
    is refused with what to do; one with its own net= and ipv6=off joins.
    """
    from vtwisted.spec import SpecError

    service = switch("slirp")
    with pytest.raises(SpecError, match="own net= and ipv6=off"):
        service.addPort("slirp:restrict=on")
    with pytest.raises(SpecError, match="runs IPv6 too"):
        service.addPort("slirp:net=10.0.3.0/24")
    assert list(service.specs) == ["slirp"]
    service.addPort("slirp:net=10.0.3.0/24:ipv6=off")
    assert len([p for p in service.switch.ports.values() if p.links]) == 2
