"""
The switch's route cache changes nothing a user can see: the same random
traffic and configuration changes, applied to a switch that remembers
routes and to one that never does, give the same frames on every port, the
same counters and the same MAC table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vnetpackets import UDP, kernelPacket

from vtwisted.errors import SwitchError
from vtwisted.fdb import MacTable
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import vnet

MACS = [mac(1), mac(2), mac(3), mac(4), mac(5)]
BROADCAST = b"\xff" * 6
#: Port index to whether its link speaks the virtio-net header.
KINDS = (True, True, True, False, False)


def build(routes: bool, capacity: int = 100) -> tuple[Switch, list[FakeLink]]:
    switch = Switch(macTable=MacTable(capacity=capacity))
    if not routes:
        switch._addRoute = lambda *args: None  # type: ignore[method-assign]
    links = []
    for i, isVnet in enumerate(KINDS):
        link = FakeLink(f"link{i}", vnetHeader=isVnet)
        plug(switch, link)
        links.append(link)
    switch.vlans.create(5)
    return switch, links


def packetFor(link: FakeLink, dst: bytes, src: bytes, kind: int, size: int, vid: int | None
              ) -> bytes:
    """
    What C{link} sends: a small frame, a TCP or UDP super-frame (cut into
    plain frames for a link without the header), tagged or not.
    """
    if kind == 0:
        data = vnet.PLAIN_HEADER + frame(dst, src, bytes(size % 2000 + 1), vid=vid)
    else:
        gsoSize = 60 if kind == 2 else 1000
        data = kernelPacket(bytes(size), gsoSize, proto=UDP if kind == 2 else 6, vid=vid,
                            macs=(dst, src)).packet
    return data if link.vnetHeader else vnet.toFrames(data)[0]


def send(switch: Switch, links: list[FakeLink], i: int, dst: int, src: int | None, kind: int,
         size: int, vid: int | None) -> None:
    """
    Port C{i} sends to C{MACS[dst]} (broadcast if out of range) from its own
    address, or from C{MACS[src]} if given (an address moving).
    """
    link = links[i]
    dstMac = MACS[dst] if dst < len(MACS) else BROADCAST
    srcMac = MACS[i % len(MACS) if src is None else src]
    data = packetFor(link, dstMac, srcMac, kind, size, vid)
    if link.vnetHeader:
        link.receivePacket(data)
    else:
        link.receive(data)


def configure(switch: Switch, links: list[FakeLink], op: str, i: int, value: int
              ) -> int | None:
    """
    Apply one configuration change; the errno it was refused with, if any.
    """
    port = links[i].port
    actions: dict[str, Callable[[], Any]] = {
        "join": lambda: switch.vlans.join(port, (0, 5, 4095)[value % 3]),
        "tag": lambda: switch.vlans.addTagged(port, 5),
        "untag": lambda: switch.vlans.removeTagged(port, 5),
        "transparent": lambda: switch.vlans.setTransparent(port, bool(value % 2)),
        "unplug": lambda: switch.detach(port, links[i]),
        "plug": lambda: switch.attach(port, links[i]) if not port.links else None,
        "flush": lambda: switch.fdb.flush(port),
        "tick": lambda: switch.tick(switch.now + value % 400),
        "hub": lambda: switch.setHub(bool(value % 2)),
        "mtu": lambda: port.setMtu((1500, 1000, 9000)[value % 3]),
    }
    try:
        actions[op]()
    except SwitchError as e:
        return e.errno
    return None


def state(switch: Switch, links: list[FakeLink]) -> Any:
    sent = [(link.takeSent(), list(link.sentPackets)) for link in links]
    for link in links:
        link.sentPackets.clear()
    counters = [(c.inFrames, c.inBytes, c.outFrames, c.outBytes, dict(c.drops))
                for c in (link.port.counters for link in links)]
    fdb = switch.fdb
    table = [(vid, m, e.port.number, e.seen) for vid, m, e in fdb.entries()]
    return sent, counters, table, (fdb.size, fdb.moves, fdb.movesRefused, fdb.evictions)


SENDS = st.tuples(st.just("send"), st.integers(0, 4), st.integers(0, len(MACS)),
                  st.sampled_from([None] * 6 + list(range(len(MACS)))), st.integers(0, 2),
                  st.integers(40, 5000), st.sampled_from([None, None, None, 5, 7]))
CHANGES = st.tuples(st.sampled_from(["join", "tag", "untag", "transparent", "unplug", "plug",
                                     "flush", "tick", "hub", "mtu"]),
                    st.integers(0, 4), st.integers(0, 1000))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([3, 100]), st.lists(st.one_of(SENDS, SENDS, SENDS, CHANGES), max_size=60))
def test_routesChangeNothingVisible(capacity: int, steps: list[tuple[Any, ...]]) -> None:
    """
    Step by step, the switch with routes and the one without agree on what
    every port was sent, every counter and the MAC table (a small one too,
    where learning evicts).
    """
    compare(capacity, steps)


def compare(capacity: int, steps: list[tuple[Any, ...]]) -> None:
    """
    Apply C{steps} to a switch with routes and one without, comparing
    everything visible after each step.
    """
    cached, cachedLinks = build(routes=True, capacity=capacity)
    plain, plainLinks = build(routes=False, capacity=capacity)
    for step in steps:
        refused = []
        for switch, links in ((cached, cachedLinks), (plain, plainLinks)):
            if step[0] == "send":
                send(switch, links, *step[1:])
            else:
                refused.append(configure(switch, links, *step))
        assert state(cached, cachedLinks) == state(plain, plainLinks), step
        assert len(set(refused)) <= 1, (step, refused)


#: Port 4 (no header) talks to port 3, port 1 (header) to port 0.
_PLAIN_FLOW = [("send", 3, 4, None, 0, 100, None), ("send", 4, 3, None, 0, 100, None),
               ("send", 4, 3, None, 0, 100, None)]
_VNET_FLOW = [("send", 0, 1, None, 0, 100, None), ("send", 1, 0, None, 0, 100, None),
              ("send", 1, 0, None, 0, 100, None)]
SCENARIOS: dict[str, list[tuple[Any, ...]]] = {
    "the egress MTU shrinks": [*_PLAIN_FLOW, ("mtu", 3, 1), ("send", 4, 3, None, 0, 1399, None)],
    "a frame over the ingress MTU": [("mtu", 4, 1), *_PLAIN_FLOW,
                                     ("send", 4, 3, None, 0, 1599, None)],
    "a refused move": [("send", 0, 1, None, 0, 100, None), ("send", 1, 0, None, 0, 100, None),
                       ("send", 2, 1, 0, 0, 100, None), ("send", 2, 1, 0, 0, 100, None)],
    "the sender's address is flushed": [*_PLAIN_FLOW, ("flush", 4, 0),
                                                      ("send", 4, 3, None, 0, 100, None)],
    "learning evicts the destination": [*_VNET_FLOW,
        ("send", 2, 5, None, 0, 100, None), ("send", 3, 5, None, 0, 100, None),
        ("send", 1, 0, None, 0, 100, None)],
    "the destination moves": [*_VNET_FLOW,
        ("tick", 0, 5), ("send", 1, 0, None, 0, 100, None), ("send", 2, 5, 0, 0, 100, None),
        ("send", 1, 0, None, 0, 100, None)],
    "a frame with the header over the egress MTU": [
        ("mtu", 0, 1), *_VNET_FLOW, ("send", 1, 0, None, 0, 1399, None)],
    "a super-frame of segments over the egress MTU": [
        ("mtu", 0, 1), *_VNET_FLOW, ("send", 1, 0, None, 1, 900, None),
        ("send", 1, 0, None, 1, 3000, None)],
    "a super-frame of segments over the ingress MTU": [
        ("mtu", 1, 1), *_VNET_FLOW, ("send", 1, 0, None, 1, 900, None),
        ("send", 1, 0, None, 1, 3000, None)],
    "a UDP super-frame of too many datagrams": [
        ("send", 0, 1, None, 0, 100, None), ("send", 1, 0, None, 2, 1000, None),
        ("send", 1, 0, None, 2, 1000, None), ("send", 1, 0, None, 2, 4500, None)],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_routesAreForgottenWhenTheyNoLongerHold(name: str) -> None:
    """
    Each change that makes a remembered route wrong is seen by the switch.
    """
    compare(3 if "evicts" in name else 100, SCENARIOS[name])


def test_aFlowIsRemembered() -> None:
    """
    A frame to a learned address leaves a route on its ingress port; a
    flooded one does not; a tick forgets routes.
    """
    switch, links = build(routes=True)
    send(switch, links, 1, 0, None, 0, 100, None)
    assert links[1].port.routes == {}
    send(switch, links, 0, 1, None, 0, 100, None)
    assert [route[2] for route in links[0].port.routes.values()] == [links[1].port.counters]
    switch.tick(switch.now + 1)
    assert links[0].port.routes == {}
