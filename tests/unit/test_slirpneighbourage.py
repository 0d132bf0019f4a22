"""
Tests for the ageing of a slirp router's ARP and IPv6 neighbour entries
(L{vtwisted.slirp.neighbourtable}): guests that went silent are forgotten,
guests that talk are kept, and a packet for a forgotten guest asks for it
again, on a fake clock.
"""

from __future__ import annotations

import router6fakes as v6
from slirpfakes import GATEWAY, GUEST, GUEST_MAC, GW_MAC, echoRequest, ipFrame
from test_slirpdhcpprobe import address, answerProbe, fromClient, probingRouter, sent
from twisted.internet.task import Clock

from vtwisted.slirp.neighbourtable import NEIGHBOUR_AGE, NEIGHBOUR_SWEEP, NeighbourTable
from vtwisted.slirp.packets import udpDatagram
from vtwisted.wire import arp, dhcp, ipv4, ipv6

BROADCAST_MAC = b"\xff" * 6


def _ping(router: object, src: bytes = GUEST) -> None:
    """
    The guest at C{src} pings the gateway (any IPv4 frame of it).
    """
    router.frameReceived(ipFrame(GATEWAY, ipv4.PROTO_ICMP, echoRequest(), src=src))  # type: ignore[attr-defined]


def test_silentGuestIsForgottenAfterFiveMinutes() -> None:
    """
    A guest heard once and then silent leaves C{slirp/print} five to six
    minutes later, counted as forgotten.
    """
    clock = Clock()
    router, _ = v6.makeRouter(clock=clock)
    _ping(router)
    router.frameReceived(v6.echo())
    assert router.neighbours == {GUEST: GUEST_MAC}
    assert router.v6.neighbours == {v6.GUEST: v6.GUEST_MAC}
    clock.pump([NEIGHBOUR_SWEEP] * 4)
    assert router.neighbours and router.v6.neighbours, "four minutes: still known"
    clock.pump([NEIGHBOUR_SWEEP] * 2)
    assert router.neighbours == {} and router.v6.neighbours == {}
    assert router.arp.describe() == ["ARP: 0 guests known, 1 forgotten after 5 minutes silent"]
    assert router.v6.ndp.summary() == "NDP: 0 guests known, 1 forgotten after 5 minutes silent"
    assert not [call for call in clock.getDelayedCalls() if "NeighbourTable" in repr(call)], \
        "an empty table does not sweep"


def test_talkingGuestIsKept() -> None:
    """
    A guest that sends something every few minutes (any frame, not only
    ARP) is never forgotten.
    """
    clock = Clock()
    router, _ = v6.makeRouter(clock=clock)
    for _ in range(10):
        _ping(router)
        router.frameReceived(v6.echo())
        clock.advance(NEIGHBOUR_AGE * 0.8)
    assert router.neighbours == {GUEST: GUEST_MAC}
    assert router.v6.neighbours == {v6.GUEST: v6.GUEST_MAC}
    assert router.arp.table.forgotten == router.v6.ndp.table.forgotten == 0


def test_forgottenGuestIsAskedForAgain() -> None:
    """
    A packet for a guest forgotten while silent (but alive) waits for one
    ARP request, and leaves to its MAC once the guest answers.
    """
    clock = Clock()
    router, seen = v6.makeRouter(clock=clock)
    _ping(router)
    clock.pump([NEIGHBOUR_SWEEP] * 6)
    seen.frames.clear()
    seen.packets.clear()
    router.sendUdp(GATEWAY, GUEST, 53, 5353, b"late answer")
    [request] = seen.frames
    assert request[:12] == BROADCAST_MAC + GW_MAC
    assert arp.ARPPacket.parse(request, 14).targetIp == GUEST and seen.packets == []
    reply = arp.ARPPacket(arp.OP_REPLY, GUEST_MAC, GUEST, GW_MAC, GATEWAY).pack()
    router.frameReceived(GW_MAC + GUEST_MAC + b"\x08\x06" + reply + bytes(18))
    [packet] = seen.packets
    assert packet[10:22] == GUEST_MAC + GW_MAC and packet.endswith(b"late answer")
    assert seen.drops == []


def test_forgottenIpv6GuestIsSolicitedAgain() -> None:
    """
    The same over IPv6: a neighbour solicitation, then the packet.
    """
    clock = Clock()
    router, seen = v6.makeRouter(clock=clock)
    router.frameReceived(v6.echo())
    clock.pump([NEIGHBOUR_SWEEP] * 6)
    seen.frames.clear()
    router.sendIP(v6.GATEWAY, v6.GUEST, ipv6.NH_UDP,
                  udpDatagram(v6.GATEWAY, v6.GUEST, 53, 5353, b"late answer"))
    [solicitation] = seen.frames
    assert v6.parsed(solicitation)[1].type == 135
    answer = bytes([0x60, 0, 0, 0]) + v6.GUEST + v6.slla(kind=2)
    router.frameReceived(v6.icmpFrame(v6.GUEST, v6.ROUTER_LL, 136, answer))
    assert seen.frames[1][:12] == v6.GUEST_MAC + v6.ROUTER_MAC
    assert seen.frames[1].endswith(b"late answer") and seen.drops == []


def test_dhcpProbesAnAddressWhoseUserWasForgotten() -> None:
    """
    Once a guest that used an address by hand is forgotten, the address is
    probed before DHCP offers it to another client, and the guest, alive
    but silent, answers and keeps it.
    """
    router, seen, clock = probingRouter(poolSize=1)
    client = bytes.fromhex("5254000000cc")
    _ping(router, src=address(15))
    clock.pump([NEIGHBOUR_SWEEP] * 6)
    assert router.neighbours == {}
    seen.frames.clear()
    fromClient(router, dhcp.DISCOVER, client)
    [probe] = sent(seen)
    assert probe.op == arp.OP_REQUEST and probe.targetIp == address(15)
    answerProbe(router, probe, GUEST_MAC)
    assert router.dhcp.conflicts == 1
    assert router.dhcp.inUseElsewhere() == [(GUEST_MAC, address(15))]


def test_fullTableForgetsTheGuestHeardFromLongestAgo() -> None:
    """
    At its capacity the table makes room by forgetting the guest heard
    from longest ago, not the one learned first.
    """
    clock = Clock()
    table = NeighbourTable(clock, 2)
    table.remember(b"a", b"A")
    clock.advance(1)
    table.remember(b"b", b"B")
    clock.advance(1)
    table.remember(b"a", b"A")
    table.remember(b"c", b"C")
    assert table.macs == {b"a": b"A", b"c": b"C"}
    table.close()
    assert clock.getDelayedCalls() == []
