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


@pytest_twisted.ensureDeferred
async def test_ipv6ForwardNeedsAGuestInThePrefix(switch) -> None:
    """A forward to an IPv6 guest outside the port's prefix, or with IPv6 off, is refused."""
    from vtwisted.slirp.config import parseForward

    first = bytes([10, 0, 2, 15])
    off = switch("slirp:ipv6=off").specs["slirp:ipv6=off"]
    with pytest.raises(OSError, match="IPv6 is off"):
        off.addForward(parseForward("tcp:[::1]:40001-[fec0::99]:80", first))
    spec = "slirp:net=10.0.5.0/24:net6=fd00\\:5\\:\\:/64"
    on = switch(spec).specs[spec]
    with pytest.raises(OSError, match="fd00:5::/64"):
        on.addForward(parseForward("tcp:[::1]:40002-[fec0::99]:80", first))
    assert not off.forwards and not on.forwards


@pytest_twisted.ensureDeferred
async def test_ipv6ForwardToTheRoutersOwnAddressesIsRefused(switch) -> None:
    """
    A forward to the IPv6 gateway, DNS proxy or the prefix's own address
    is refused, as IPv4's to the gateway and DNS are (it led nowhere: the
    host's client waited forever); one to a guest of the prefix opens.
    """
    import socket

    from vtwisted.slirp.config import parseForward

    first = bytes([10, 0, 2, 15])
    spec = "slirp:host6=fec0\\:\\:1:dns6=fec0\\:\\:a"
    service = switch(spec).specs[spec]
    for guest in ("fec0::1", "fec0::a", "fec0::"):
        with pytest.raises(OSError, match="not the gateway, DNS"):
            service.addForward(parseForward(f"udp:[::1]:40003-[{guest}]:80", first))
    assert not service.forwards
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        probe.bind(("::1", 0))
        free = probe.getsockname()[1]
    service.addForward(parseForward(f"udp:[::1]:{free}-[fec0::2]:80", first))
    assert len(service.forwards) == 1


@pytest_twisted.ensureDeferred
async def test_movingASlirpPortIntoAClashingVlanIsRefused(switch) -> None:
    """
    port/setvlan refuses to bring a slirp router into a VLAN whose slirp
    router has the same gateway, and says which; other moves go through.
    """
    from vtwisted.errors import SwitchError
    from vtwisted.operations import SwitchOperations

    service = switch("slirp", "slirp:vlan=5")
    ops = SwitchOperations(service)
    moving = service.specs["slirp:vlan=5"].link.port
    with pytest.raises(SwitchError, match=r"same gateway.*in VLAN 0") as caught:
        ops.setVlan(moving.number, 0)
    assert "slirp:vlan=5" in str(caught.value)
    assert moving.untaggedVlan.vid == 5
    ops.createVlan(6)
    ops.setVlan(moving.number, 6)
    assert moving.untaggedVlan.vid == 6


@pytest_twisted.ensureDeferred
async def test_otherIpProtocolsAreCountedOnThePort(switch) -> None:
    """
    A guest's packet of a protocol the NAT does not carry (GRE to the
    gateway) is counted on the port as unsupported, not a failure; IGMP
    reports to a multicast group are not the router's and are not counted.
    """
    from slirpfakes import GATEWAY, ipFrame, noFailuresLogged

    service = switch("slirp").specs["slirp"]
    port = service.link.port
    with noFailuresLogged():
        service.link.sendFrame(ipFrame(GATEWAY, 47, b"gre"))
        service.link.sendFrame(ipFrame(bytes([224, 0, 0, 22]), 2, bytes(8),
                                       dstMac=bytes.fromhex("01005e000016")))
        service.link.sendFrame(ipFrame(bytes([10, 0, 2, 255]), 2, bytes(8),
                                       dstMac=b"\xff" * 6))
    assert port.counters.drops["unsupported"] == 1


@pytest_twisted.ensureDeferred
async def test_ipv4ForwardNeedsAGuestAddressOfTheNetwork(switch) -> None:
    """
    A forward to an address outside the port's network, or to the gateway,
    DNS or broadcast, is refused at once: nothing there would answer, and
    the host's clients would hang for the SYN's retries.
    """
    from vtwisted.slirp.config import parseForward

    first = bytes([10, 0, 2, 15])
    service = switch("slirp").specs["slirp"]
    for guest in ("192.168.1.5", "10.0.2.2", "10.0.2.3", "10.0.2.255"):
        with pytest.raises(OSError, match=r"must be a guest's address in 10\.0\.2\.0/24"):
            service.addForward(parseForward(f"tcp::40011-{guest}:80", first))
    assert not service.forwards
    service.addForward(parseForward("tcp::40011-10.0.2.99:80", first))
    assert len(service.forwards) == 1


def test_descriptorLimitIsRaisedToTheHardLimit(monkeypatch) -> None:
    """
    The soft descriptor limit is raised to the hard one (at most 65536),
    but not for a select() reactor, which cannot watch descriptors past 1023.
    """
    import resource

    from vtwisted.sockettools import descriptorLimit

    limits = [(1024, 524288)]
    monkeypatch.setattr(resource, "getrlimit", lambda kind: limits[-1])
    monkeypatch.setattr(resource, "setrlimit", lambda kind, value: limits.append(value))

    class SelectReactor:
        pass

    SelectReactor.__module__ = "twisted.internet.selectreactor"
    assert descriptorLimit(SelectReactor()) == 1024 and limits == [(1024, 524288)]
    assert descriptorLimit(object()) == 65536 and limits[-1] == (65536, 524288)


@pytest_twisted.ensureDeferred
async def test_hostSocketsStayWithinTheDescriptorLimit(switch, monkeypatch) -> None:
    """
    Under a limit of 1024 descriptors a slirp port opens at most 256 TCP
    connections, 64 UDP sockets and 32 ping sessions per family, so that a
    guest opening connections cannot take the descriptors the switch's
    other ports (and its console) need; with room, QEMU's numbers hold.
    """
    from vtwisted.ports import slirp

    monkeypatch.setattr(slirp, "descriptorLimit", lambda reactor: 1024)
    small = switch("slirp").specs["slirp"]
    assert (small.tcp.maxConnections, small.udp.maxMappings, small.icmp.maxSessions,
            small.icmp6.maxSessions) == (256, 64, 32, 32)
    assert slirp.hostSocketRoom(1 << 16) == (4096, 1024, 1024)


@pytest_twisted.ensureDeferred
async def test_tcpBuffersSetsThePortsBudget(switch) -> None:
    """
    C{tcpbuffers=MB} is what a port's TCP connections may buffer together,
    256 MB unless told; one connection alone may still hold its most.
    """
    ports = switch("slirp", "slirp:net=10.0.3.0/24:ipv6=off:tcpbuffers=64").specs
    assert ports["slirp"].tcp.budget == 256 << 20
    small = ports["slirp:net=10.0.3.0/24:ipv6=off:tcpbuffers=64"].tcp
    assert small.budget == 64 << 20 and small.share == 16 << 20


@pytest_twisted.ensureDeferred
async def test_removedForwardsPortIsFreeAtOnce(switch) -> None:
    """
    A forward removed can be added again in the same reactor turn (a
    console script's hostfwd_remove then hostfwd_add), TCP and UDP.
    """
    from vtwisted.slirp.config import parseForward

    first = bytes([10, 0, 2, 15])
    service = switch("slirp").specs["slirp"]
    for rule in ("tcp::40021-:80", "udp::40021-:53"):
        forward = parseForward(rule, first)
        service.addForward(forward)
        service.removeForward(forward)
        service.addForward(forward)
    assert len(service.forwards) == 2


@pytest_twisted.ensureDeferred
async def test_stoppingLeavesNoTimerForGuestsThatDidNotAnswerArp(switch) -> None:
    """
    A packet waiting for a guest's ARP answer when the port stops takes its
    timer with it (as IPv6's waiting for a neighbour advertisement does).
    """
    from twisted.internet import defer, reactor

    service = switch("slirp")
    slirp = service.specs["slirp"]
    router = slirp.router
    router.sendUdp(router.gateway, bytes([10, 0, 2, 15]), 53, 4000, b"for nobody yet")
    waiting = [call for call in reactor.getDelayedCalls() if call.active()
               and getattr(getattr(call, "func", None), "__self__", None) is router.arp]
    assert len(waiting) == 1
    await defer.maybeDeferred(service.removePort, "slirp")
    assert not waiting[0].active()


@pytest.mark.parametrize("option", ["trunk=20", "vlan=all", "vlan=10:trunk=20,30", "vlan=4095"])
def test_taggedMembershipsAreRefused(option: str) -> None:
    """
    A slirp router takes untagged frames only: a spec that would make it a
    tagged member of a VLAN (which it would then never serve, silently), or
    leave it in no VLAN, is refused, saying what to give instead.
    """
    from vtwisted.app import buildService
    from vtwisted.spec import SpecError

    with pytest.raises(SpecError, match=r"untagged frames only: give it vlan=N"):
        buildService(None, [f"slirp:{option}"], defaultSock=False)


@pytest_twisted.ensureDeferred
async def test_taggedFramesAreCountedAsUnsupported(switch) -> None:
    """
    Made a tagged member on the console (vlan/addport), the router gets
    frames tagged for that VLAN, which it cannot answer: each is counted as
    unsupported on its port, not ignored unseen.
    """
    from slirpfakes import GATEWAY, ipFrame, noFailuresLogged

    from vtwisted.wire.vlan import insertTag

    service = switch("slirp").specs["slirp"]
    port = service.link.port
    with noFailuresLogged():
        service.link.sendFrame(insertTag(ipFrame(GATEWAY, 47, b"gre"), 20))
        service.link.sendFrame(insertTag(ipFrame(bytes([10, 0, 2, 255]), 17, bytes(8),
                                                 dstMac=b"\xff" * 6), 20))
    assert port.counters.drops["unsupported"] == 2
    assert port.counters.drops["malformed"] == 0
