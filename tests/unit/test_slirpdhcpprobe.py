"""
Tests for the ARP probes of a slirp port's DHCP server
(L{vtwisted.slirp.dhcp.DhcpServer} through L{vtwisted.slirp.router}): a
router that forgot its leases (its port added again, or the switch
restarted) checks an address before it gives it out, on a fake clock.
"""

from __future__ import annotations

from typing import Any

from slirpfakes import GATEWAY, GW_MAC, Recorder, recordingRouter
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

from vtwisted.slirp.dhcp import PROBE_WAIT, DhcpServer
from vtwisted.slirp.packets import udpDatagram
from vtwisted.slirp.router import SlirpRouter
from vtwisted.wire import arp, dhcp, ipv4
from vtwisted.wire.dhcp import DHCPMessage

ZERO = bytes(4)
BROADCAST_IP = b"\xff" * 4
BROADCAST_MAC = b"\xff" * 6
#: The guest that had 10.0.2.15 before the router restarted, and keeps it.
OLD_MAC = bytes.fromhex("5254000000aa")
#: A guest new to the router.
NEW_MAC = bytes.fromhex("5254000000bb")


def address(last: int) -> bytes:
    return bytes([10, 0, 2, last])


def probingRouter(poolSize: int = 16) -> tuple[SlirpRouter, Recorder, Clock]:
    """
    A router whose DHCP server probes, as a slirp port builds it, on a
    fake clock.
    """
    clock = Clock()
    router, seen, config = recordingRouter("", clock)
    router.dhcp = DhcpServer(
        gateway=GATEWAY, nameserver=config.nameserver, netmask=config.netmask,
        poolStart=config.poolStart, poolSize=poolSize, holder=router.neighbours.get,
        now=clock.seconds, probe=router.probeAddress, answer=router.sendDhcp,
        callLater=clock.callLater)
    return router, seen, clock


def fromClient(router: SlirpRouter, kind: int, client: bytes, requested: bytes | None = None,
               ciaddr: bytes = ZERO, xid: int = 0x1234) -> None:
    """
    C{client} sends the router a DHCP message: from 0.0.0.0 broadcast, or
    from C{ciaddr} to the gateway if set (a guest renewing).
    """
    options = [(dhcp.OPT_MESSAGE_TYPE, bytes([kind]))]
    if requested is not None:
        options.append((dhcp.OPT_REQUESTED_ADDRESS, requested))
    body = DHCPMessage(dhcp.BOOTREQUEST, 1, 6, 0, xid, 0, 0, ciaddr, ZERO, ZERO, ZERO,
                       client + bytes(10), bytes(64), bytes(128), tuple(options)).pack()
    src, dst = (ciaddr, GATEWAY) if ciaddr != ZERO else (ZERO, BROADCAST_IP)
    datagram = udpDatagram(src, dst, 68, 67, body)
    header = ipv4.IPv4Header(0, 20 + len(datagram), 1, 0, 0, 64, ipv4.PROTO_UDP, 0,
                             src, dst).pack()
    dstMac = GW_MAC if ciaddr != ZERO else BROADCAST_MAC
    router.frameReceived(dstMac + client + b"\x08\x00" + header + datagram)


def answerProbe(router: SlirpRouter, probe: arp.ARPPacket, mac: bytes) -> None:
    """
    The station C{mac} answers C{probe} as Linux does: a reply from the
    probed address to the prober's MAC and address 0.0.0.0.
    """
    reply = arp.ARPPacket(arp.OP_REPLY, mac, probe.targetIp, probe.senderMac, probe.senderIp)
    router.frameReceived(probe.senderMac + mac + b"\x08\x06" + reply.pack() + bytes(18))


def sent(seen: Recorder) -> list[Any]:
    """
    What the router sent since last asked: ARP packets and DHCP replies.
    """
    out: list[Any] = []
    for frame in seen.frames:
        if frame[12:14] == b"\x08\x06":
            out.append(arp.ARPPacket.parse(frame, 14))
        else:
            out.append(DHCPMessage.parse(frame[42:]))
    seen.frames.clear()
    return out


def test_aFreshAddressIsProbedBeforeItIsOffered() -> None:
    """
    A DISCOVER from a client the router has no record of is answered only
    after an ARP probe of the address (from 0.0.0.0, the gateway's MAC)
    went unanswered for L{PROBE_WAIT} seconds.
    """
    router, seen, clock = probingRouter()
    fromClient(router, dhcp.DISCOVER, NEW_MAC)
    [probe] = sent(seen)
    assert probe == arp.ARPPacket(arp.OP_REQUEST, GW_MAC, ZERO, bytes(6), address(15))
    assert seen.frames[-1:] == [] and router.dhcp.conflicts == 0
    clock.advance(PROBE_WAIT * 0.9)
    assert sent(seen) == []
    clock.advance(PROBE_WAIT * 0.1)
    [offer] = sent(seen)
    assert offer.messageType == dhcp.OFFER and offer.yiaddr == address(15)


def test_anAnsweredProbeMovesTheClientOn() -> None:
    """
    A station that answers the probe keeps its address: the client is
    offered the next one, probed in turn, the conflict is counted, and the
    address is kept for that station, which gets it if it asks.
    """
    router, seen, clock = probingRouter()
    fromClient(router, dhcp.DISCOVER, NEW_MAC)
    [probe] = sent(seen)
    answerProbe(router, probe, OLD_MAC)
    [second] = sent(seen)
    assert second.op == arp.OP_REQUEST and second.targetIp == address(16)
    clock.advance(PROBE_WAIT)
    [offer] = sent(seen)
    assert offer.yiaddr == address(16)
    assert router.dhcp.conflicts == 1
    assert router.dhcp.inUseElsewhere() == [(OLD_MAC, address(15))]
    assert (NEW_MAC, address(15)) not in router.dhcp.leases()
    fromClient(router, dhcp.REQUEST, OLD_MAC, requested=address(15))
    [ack] = sent(seen)
    assert ack.messageType == dhcp.ACK and ack.yiaddr == address(15)


def test_conflictsAreLoggedOncePerAddress() -> None:
    """
    Each address found in use is logged once, naming it and the station:
    with a pool of one, the address is probed again once the station's
    hold on it runs out, and still answered for.
    """
    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        if "ARP probe" in event.get("log_format", ""):
            events.append(event)

    router, seen, clock = probingRouter(poolSize=1)
    globalLogPublisher.addObserver(observer)
    try:
        for client in (NEW_MAC, bytes.fromhex("5254000000cc")):
            fromClient(router, dhcp.DISCOVER, client)
            [probe] = sent(seen)
            assert probe.targetIp == address(15)
            answerProbe(router, probe, OLD_MAC)
            assert sent(seen) == []  # the pool has nothing else
            clock.advance(router.dhcp.leaseTime + 1)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert router.dhcp.conflicts == 2
    assert [(e["address"], e["mac"]) for e in events] == [("10.0.2.15", "52:54:00:00:00:aa")]


def test_aRetransmittedDiscoverWaitsForTheSameProbe() -> None:
    """
    A client's DISCOVER sent again during the probe starts no second
    probe; the offer answers its latest transaction.
    """
    router, seen, clock = probingRouter()
    fromClient(router, dhcp.DISCOVER, NEW_MAC, xid=1)
    [probe] = sent(seen)
    fromClient(router, dhcp.DISCOVER, NEW_MAC, xid=2)
    assert sent(seen) == []
    clock.advance(PROBE_WAIT)
    [offer] = sent(seen)
    assert offer.xid == 2 and offer.yiaddr == address(15)


def test_aRenewalOfTheClientsOwnAddressIsNotDelayed() -> None:
    """
    A client renewing the address it sends from is acknowledged at once,
    without a probe, though the router has no record of its lease.
    """
    router, seen, clock = probingRouter()
    fromClient(router, dhcp.REQUEST, OLD_MAC, ciaddr=address(20))
    [ack] = sent(seen)
    assert ack.messageType == dhcp.ACK and ack.yiaddr == address(20)


def test_initRebootForAnUnknownAddressIsProbed() -> None:
    """
    A REQUEST in INIT-REBOOT (from 0.0.0.0) for an address the router has
    no record of is acknowledged after an unanswered probe, and refused
    (NAK) if another station answers for it.
    """
    router, seen, clock = probingRouter()
    fromClient(router, dhcp.REQUEST, NEW_MAC, requested=address(20))
    [probe] = sent(seen)
    assert probe.targetIp == address(20)
    clock.advance(PROBE_WAIT)
    [ack] = sent(seen)
    assert ack.messageType == dhcp.ACK and ack.yiaddr == address(20)

    fromClient(router, dhcp.REQUEST, NEW_MAC, requested=address(21), xid=7)
    [probe] = sent(seen)
    answerProbe(router, probe, OLD_MAC)
    [nak] = sent(seen)
    assert nak.messageType == dhcp.NAK and nak.xid == 7


def test_anAddressTheRouterSawInUseIsNeverOffered() -> None:
    """
    An address the ARP cache saw another station use is not offered; when
    nothing else is left it is probed again, and offered only if nobody
    answers (the station left).
    """
    router, seen, clock = probingRouter()
    for last in range(15, 31):
        router.learn(address(last), bytes([0x52, 0x54, 0, 0, 1, last]))
    fromClient(router, dhcp.DISCOVER, NEW_MAC)
    [probe] = sent(seen)
    assert probe.targetIp == address(15)
    answerProbe(router, probe, bytes([0x52, 0x54, 0, 0, 1, 15]))
    [probe] = sent(seen)
    assert probe.targetIp == address(16)
    clock.advance(PROBE_WAIT)
    [offer] = sent(seen)
    assert offer.yiaddr == address(16)


def test_closingStopsTheProbes() -> None:
    """
    A port deleted during a probe answers nobody afterwards.
    """
    router, seen, clock = probingRouter()
    fromClient(router, dhcp.DISCOVER, NEW_MAC)
    [probe] = sent(seen)
    assert isinstance(probe, arp.ARPPacket)
    router.dhcp.close()
    assert clock.getDelayedCalls() == []
    clock.advance(PROBE_WAIT)
    assert sent(seen) == []
