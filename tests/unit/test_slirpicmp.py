"""
The ICMP engine of slirp ports (L{vtwisted.slirp.icmp}) against the real
kernel on loopback: a guest's ping beyond the gateway goes out of a ping or
raw socket and its answer comes back, without a log line per socket.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
import pytest_twisted
from ipv6loopback import GUEST6, needIpv6Loopback
from reactortools import until
from slirptcpharness import GUEST
from twisted.internet import reactor

from vtwisted.slirp.icmp import IPV4, IPV6, Family, IcmpNat
from vtwisted.testing import FakeGuestNetwork


def needSocket(family: Family, mode: str) -> None:
    """Skip unless this process may open C{mode} ("ping" or "raw") ICMP sockets."""
    kind = socket.SOCK_DGRAM if mode == "ping" else socket.SOCK_RAW
    try:
        socket.socket(family.domain, kind, family.protocol).close()
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT):
            raise
        # a system setting (ping_group_range) or privilege, not a missing peer
        pytest.skip(f"no {family.name} {mode} sockets here: {e.strerror}")


# Ping mode needs net.ipv4.ping_group_range to cover the test's group, a
# system setting: test_slirp.py's test_guestReachesHostsBeyondTheGateway
# checks it in a namespace of its own, where the range is opened.
@pytest.mark.parametrize("mode", ["raw"])
@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["IPv4", "IPv6"])
@pytest_twisted.ensureDeferred
async def test_pingSocketsOpenAndCloseWithoutLogLines(family: Family, mode: str) -> None:
    """
    A guest's ping session (one socket per session with ping sockets)
    opens and closes without Twisted's "starting on" and "Closed" lines,
    and the ping to the host's loopback is answered.
    """
    from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
    from zope.interface import provider

    if family is IPV6:
        needIpv6Loopback()
    needSocket(family, mode)
    lines: list[str] = []

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    network = FakeGuestNetwork()
    engine = IcmpNat(network, reactor, family)
    engine.mode = mode
    guest, loopback = (GUEST6, "::1") if family is IPV6 else (GUEST, "127.0.0.1")
    globalLogPublisher.addObserver(observer)
    try:
        for ident in (7, 8):
            engine.echoRequest(guest, socket.inet_pton(family.domain, loopback), ident, 1,
                               b"hello")
        await until(lambda: len(network.ip) == 2, what="the echo replies")
        ports = [session.port for session in engine.sessions.values() if mode == "ping"]
        if mode == "raw":
            assert engine._raw is not None
            ports.append(engine._raw.port)
        engine.close()
        await until(lambda: not any(port.connected for port in ports), what="the sockets closed")
    finally:
        globalLogPublisher.removeObserver(observer)
        engine.close()
    assert all(dst == guest and payload.endswith(b"hello") for _, dst, _, payload, _ in network.ip)
    assert not [line for line in lines if "starting on" in line or "Closed" in line], lines


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["IPv4", "IPv6"])
def test_pingsThatCannotGoOutAreDescribedAsNotRelayed(family: Family) -> None:
    """
    With neither ping sockets nor CAP_NET_RAW (an unprivileged switch where
    ping_group_range leaves its group out), the console says the pings are
    not relayed, not that they go "by none socket".
    """
    engine = IcmpNat(FakeGuestNetwork(), reactor, family)
    engine.mode = "none"
    try:
        assert engine.describe() == [f"{family.name} pings beyond the gateway: not relayed "
                                     "(neither ping sockets nor CAP_NET_RAW)"]
    finally:
        engine.close()
