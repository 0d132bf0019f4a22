"""
The C{vxlan:} port: its spec, the VXLAN header, and a switch's VXLAN port
exchanging datagrams with endpoints played by sockets on loopback
addresses (learning, flooding, the drops it counts, expiry).
"""

from __future__ import annotations

import errno
import socket

import pytest
import pytest_twisted
from helpers import pendingDatagrams
from hypothesis import given
from hypothesis import strategies as st
from reactortools import until
from twisted.internet.defer import maybeDeferred

from vtwisted.ports import vxlan as vxlanport
from vtwisted.ports import vxvde as vxvdeport
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug, tcpSuperFrame
from vtwisted.wire import vnet, vxlan

BROADCAST = b"\xff" * 6


@given(st.integers(0, vxlan.MAX_VNI), st.binary(min_size=14, max_size=200))
def test_headerCarriesTheVni(vni: int, payload: bytes) -> None:
    """The VNI read back is the VNI written; the header is RFC 7348's."""
    head = vxlan.header(vni)
    assert head[0] == 0x08 and head[1:4] == bytes(3) and head[7] == 0
    assert vxlan.parse(head + payload) == vni


@pytest.mark.parametrize(("datagram", "message"), [
    (vxlan.header(5) + bytes(13), "too short"),
    (b"\x00" + vxlan.header(5)[1:] + bytes(20), "lack the I flag"),
])
def test_badHeadersAreRefused(datagram: bytes, message: str) -> None:
    """A runt, or a header without the I flag, is a ValueError saying so."""
    with pytest.raises(ValueError, match=message):
        vxlan.parse(datagram)


def test_reservedBitsAreIgnored() -> None:
    """Other flags and reserved bytes do not change the VNI read."""
    assert vxlan.parse(b"\x88\x01\x02\x03\x00\x00\x2a\x77" + bytes(14)) == 42


def test_defaultsAreVdeplugs() -> None:
    """Plain C{vxlan} joins vdeplug4's default network: 239.0.0.1, port 4789, VNI 1."""
    config = vxlanport.configFromSpec(PortSpec("vxlan"))
    assert (config.group, config.dstport, config.vni, config.ttl, config.expire) == (
        "239.0.0.1", 4789, 1, 1, 128)
    assert vxlanport.configFromSpec(PortSpec("vxlan:v6")).group == "ff05:56de::1"


def test_specOptionsReachTheConfig() -> None:
    """Remotes, VNI, port, local address, interface, TTL and expiry are read."""
    config = vxlanport.configFromSpec(PortSpec(
        "vxlan:remote=fd00\\:\\:2,fd00\\:\\:3:vni=42:dstport=8472:local=fd00\\:\\:1:"
        "if=eth0:ttl=3:expire=60:coalesce=off"))
    assert config.version == 6 and config.group is None
    assert (config.remotes, config.vni, config.dstport, config.local, config.interface,
            config.ttl, config.expire, config.coalesce) == (
                ["fd00::2", "fd00::3"], 42, 8472, "fd00::1", "eth0", 3, 60, False)
    assert config.where() == "remote [fd00::2],[fd00::3]:8472"


@pytest.mark.parametrize(("text", "message"), [
    ("vxlan:10.0.0.1", "not a multicast group"),
    ("vxlan:lan", "not an IP address"),
    ("vxlan:239.1.1.1:remote=10.0.0.2", "not both"),
    ("vxlan:remote=10.0.0.2,fd00\\:\\:2", "all IPv4 or all IPv6"),
    ("vxlan:remote=10.0.0.2,239.1.1.1", "a multicast group, not an endpoint"),
    ("vxlan:remote=0.0.0.0", "not an endpoint"),
    ("vxlan:remote=", "remote= needs"),
    ("vxvde:10.0.0.1", "not a multicast group$"),
    ("vxlan:remote=10.0.0.2:local=fd00\\:\\:1", "not an IPv4 address"),
    ("vxlan:vni=16777216", "out of range"),
    ("vxlan:dstport=0", "out of range"),
    ("vxlan:expire=0", "out of range"),
    ("vxlan:colour=blue", "colour"),
])
def test_badSpecsAreRefused(text: str, message: str) -> None:
    """Each mistake is a SpecError naming the spec and what is wrong."""
    with pytest.raises(SpecError, match=message) as caught:
        module = vxvdeport if text.startswith("vxvde") else vxlanport
        module.makeService(Switch(), PortSpec(text), None)
    assert caught.value.spec == text


def _endpoints(*hosts: str) -> tuple[int, list[socket.socket]]:
    """Sockets on C{hosts} that share one free UDP port number."""
    first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first.bind((hosts[0], 0))
    number = first.getsockname()[1]
    sockets = [first]
    for host in hosts[1:]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, number))
        sockets.append(sock)
    for sock in sockets:
        sock.setblocking(False)
    return number, sockets


@pytest_twisted.ensureDeferred
async def test_floodsToEveryRemoteAndAnswersTheOneLearned(switch) -> None:
    """
    A broadcast goes to both endpoints; a frame from one teaches the port
    where its source lives, and the reply goes to that endpoint alone.
    """
    number, (two, three) = _endpoints("127.0.0.2", "127.0.0.3")
    try:
        service = switch(f"vxlan:remote=127.0.0.2,127.0.0.3:local=127.0.0.1:dstport={number}:"
                         "vni=7")
        link = FakeLink()
        plug(service.switch, link)
        hello = frame(BROADCAST, mac(1), payload=b"hello")
        link.receive(hello)
        head = vxlan.header(7)
        assert pendingDatagrams(two) == [head + hello] and pendingDatagrams(three) == [head + hello]
        fromThree = frame(mac(1), mac(0x33), payload=b"from three")
        three.sendto(head + fromThree, ("127.0.0.1", number))
        await until(lambda: link.sent, what="the frame from 127.0.0.3")
        assert link.takeSent() == [fromThree]
        reply = frame(mac(0x33), mac(1), payload=b"reply")
        link.receive(reply)
        assert pendingDatagrams(three) == [head + reply] and pendingDatagrams(two) == []
        vxlanLink = service.specs[next(iter(service.specs))].link
        assert "1 MACs behind 1 endpoints" in vxlanLink.description
    finally:
        two.close()
        three.close()


@pytest_twisted.ensureDeferred
async def test_otherNetworksAndStrangersAreCountedAndDropped(switch) -> None:
    """
    Datagrams for another VNI, without the I flag, or from an address that
    is not a remote endpoint reach no port and are counted by kind.
    """
    number, (two, stranger) = _endpoints("127.0.0.2", "127.0.0.9")
    try:
        spec = f"vxlan:remote=127.0.0.2:local=127.0.0.1:dstport={number}:vni=7"
        service = switch(spec)
        link = FakeLink()
        plug(service.switch, link)
        payload = frame(BROADCAST, mac(0x22))
        target = ("127.0.0.1", number)
        two.sendto(vxlan.header(8) + payload, target)
        two.sendto(b"\x00" + vxlan.header(7)[1:] + payload, target)
        stranger.sendto(vxlan.header(7) + payload, target)
        two.sendto(vxlan.header(7) + payload, target)
        await until(lambda: link.sent, what="the good datagram")
        port = service.specs[spec].link.port
        assert link.sent == [payload]
        assert (port.counters.drops["vlan"], port.counters.drops["malformed"],
                port.counters.drops["peer"]) == (1, 1, 1)
    finally:
        two.close()
        stranger.close()


@pytest_twisted.ensureDeferred
async def test_superFramesLeaveCutWithTheirHeaders(switch) -> None:
    """
    A TCP super-frame from a port with the virtio-net header crosses as the
    frames it stands for, each in a datagram of its own with the VXLAN
    header (the switch hands it whole to the port, which sends the
    datagrams with UDP_SEGMENT).
    """
    number, (two,) = _endpoints("127.0.0.2")
    try:
        service = switch(f"vxlan:remote=127.0.0.2:local=127.0.0.1:dstport={number}:vni=3")
        tap = FakeLink(vnetHeader=True)
        plug(service.switch, tap)
        packet = tcpSuperFrame(mac(0x44), mac(1), bytes(range(256)) * 100, gsoSize=1400)
        tap.receivePacket(packet)
        expected = [vxlan.header(3) + f for f in vnet.toFrames(packet)]
        assert len(expected) == 19
        got: list[bytes] = []

        def arrived() -> bool:
            got.extend(pendingDatagrams(two))
            return len(got) >= len(expected)

        await until(arrived, what="the datagrams")
        assert got == expected
    finally:
        two.close()


@pytest_twisted.ensureDeferred
async def test_segmentsFromTheNetworkAreMergedForOffloadPortsOnly(switch) -> None:
    """
    TCP segments read in one batch reach a port with the virtio-net header
    as one super-frame that cuts back into them, and a port without it as
    the segments themselves.
    """
    from test_tcpgro import MAC_B, segments

    number, (two,) = _endpoints("127.0.0.2")
    try:
        service = switch(f"vxlan:remote=127.0.0.2:local=127.0.0.1:dstport={number}")
        offload, plain = FakeLink(vnetHeader=True), FakeLink()
        plug(service.switch, offload)
        plug(service.switch, plain)
        offload.receivePacket(vnet.PLAIN_HEADER + frame(b"\xff" * 6, MAC_B))
        plain.receive(frame(b"\xff" * 6, MAC_B[:5] + b"\x0c"))
        offload.takeSent(), plain.takeSent()
        stream = segments(bytes(range(256)) * 40, 1000)
        toPlain = [MAC_B[:5] + b"\x0c" + f[6:] for f in segments(bytes(3000), 1000)]
        for f in stream + toPlain:
            two.sendto(vxlan.header(1) + f, ("127.0.0.1", number))
        await until(lambda: len(plain.sent) >= len(toPlain) and offload.sentPackets,
                    what="the segments")
        assert [f for p in offload.sentPackets for f in vnet.toFrames(p)] == stream
        assert len(offload.sentPackets) < len(stream)
        assert plain.sent == toPlain
    finally:
        two.close()


def test_endpointsAreForgottenAfterTheExpiryTime() -> None:
    """A MAC not heard for the expiry time is flooded to again."""
    config = vxlanport.configFromSpec(PortSpec("vxlan:remote=127.0.0.2:expire=8"))
    service = vxlanport.VxlanService(Switch(), None, config, None, "vxlan")  # type: ignore[arg-type]
    link = vxlanport.VxlanLink(service)
    head = vxlan.header(1)
    link.datagramReceived(head + frame(BROADCAST, mac(5)), ("127.0.0.2", 40000))
    assert link.where == {mac(5): ("127.0.0.2", 4789)}
    for _ in range(vxlanport.TICKS):
        link.expire()
    assert mac(5) in link.where
    link.datagramReceived(head + frame(BROADCAST, mac(6)), ("127.0.0.2", 40000))
    link.expire()
    assert list(link.where) == [mac(6)]


def test_bindErrorsSayWhatHoldsThePort() -> None:
    """A VXLAN port already in use fails with the errno and the likely owner."""
    number, (holder,) = _endpoints("127.0.0.1")
    try:
        spec = f"vxlan:remote=127.0.0.2:local=127.0.0.1:dstport={number}"
        service = vxlanport.makeService(Switch(), PortSpec(spec), None)
        with pytest.raises(OSError, match=r"EADDRINUSE.*vxlan device") as caught:
            service.bind()
        assert spec in str(caught.value)
    finally:
        holder.close()


def test_theEndpointTableIsBounded(monkeypatch) -> None:
    """Past MAX_LEARNED addresses, new ones are not remembered (their frames are flooded)."""
    monkeypatch.setattr(vxlanport, "MAX_LEARNED", 3)
    config = vxlanport.configFromSpec(PortSpec("vxlan:remote=127.0.0.2"))
    service = vxlanport.VxlanService(Switch(), None, config, None, "vxlan")  # type: ignore[arg-type]
    link = vxlanport.VxlanLink(service)
    for n in range(10):
        link.datagramReceived(vxlan.header(1) + frame(BROADCAST, mac(n)), ("127.0.0.2", 1))
    assert len(link.where) == 3 and len(link.seen) == 3


@pytest_twisted.ensureDeferred
async def test_severalVnisShareOneSocket(switch) -> None:
    """
    Two vxlan: ports on one UDP port carry two VNIs into two VLANs; a third
    for a VNI already served is refused; the socket closes with its last port.
    """
    number, (two,) = _endpoints("127.0.0.2")
    try:
        base = f"vxlan:remote=127.0.0.2:local=127.0.0.1:dstport={number}"
        service = switch(f"{base}:vni=1", f"{base}:vni=2:vlan=2")
        ten, twenty = FakeLink(), FakeLink()
        plug(service.switch, ten)
        port = plug(service.switch, twenty)
        service.switch.vlans.join(port, 2)
        one = frame(BROADCAST, mac(0x61), payload=b"vni one")
        other = frame(BROADCAST, mac(0x62), payload=b"vni two")
        two.sendto(vxlan.header(1) + one, ("127.0.0.1", number))
        two.sendto(vxlan.header(2) + other, ("127.0.0.1", number))
        await until(lambda: ten.sent and twenty.sent, what="both networks")
        assert ten.sent == [one] and twenty.sent == [other]
        with pytest.raises(OSError, match=r"VNI 2 on UDP port .* already"):
            service.addPort(f"{base}:vni=2:vlan=3")
        await maybeDeferred(service.removePort, f"{base}:vni=1")
        two.sendto(vxlan.header(2) + other, ("127.0.0.1", number))
        await until(lambda: len(twenty.sent) == 2, what="VNI 2 after VNI 1 left")
        await maybeDeferred(service.removePort, f"{base}:vni=2:vlan=2")
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", number))
        probe.close()
    finally:
        two.close()


def test_aPortThatCannotJoinLeavesNoSocketBehind() -> None:
    """
    A group on an interface that does not exist fails with ENODEV and frees
    the UDP port before the failure returns.
    """
    from twisted.internet import reactor

    number, (probe,) = _endpoints("127.0.0.1")
    probe.close()
    spec = f"vxlan:239.1.2.3:dstport={number}:if=vtwnosuch0"
    service = vxlanport.makeService(Switch(), PortSpec(spec), reactor)
    with pytest.raises(OSError, match=r"vtwnosuch0") as caught:
        service.bind()
    assert spec in str(caught.value) and caught.value.errno == errno.ENODEV
    assert "cannot join 239.1.2.3 on vtwnosuch0" in str(caught.value)
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    again.bind(("0.0.0.0", number))
    again.close()


def test_vxvdeSpecsTakeGroupsOnly() -> None:
    """vxvde: defaults to vdeplug4's group and port 14789, and has no unicast mode."""
    from vtwisted.ports import vxvde

    service = vxvde.makeService(Switch(), PortSpec("vxvde:vni=7"), None)
    assert (service.config.group, service.config.dstport, service.config.vni) == (
        "239.0.0.1", 14789, 7)
    assert vxvde.makeService(Switch(), PortSpec("vxvde:v6"), None).config.group == "ff05:56de::1"
    for text in ("vxvde:remote=10.0.0.2", "vxvde:local=10.0.0.1"):
        with pytest.raises(SpecError, match="unknown option"):
            vxvde.makeService(Switch(), PortSpec(text), None)


class _DropLog:
    """A port's C{dropped}, remembered."""

    def __init__(self) -> None:
        self.drops: list[tuple[str, str]] = []

    def dropped(self, reason: str, message: str) -> None:
        self.drops.append((reason, message))


class _Underlay:
    """
    A socket's sending calls: what each destination got, with C{failing}
    refusing everything (as ENETUNREACH: no route to it) and C{noGso}
    refusing C{UDP_SEGMENT} sends (as EINVAL, a path MTU too small).
    """

    def __init__(self, failing: str = "", noGso: str = "") -> None:
        self.failing, self.noGso = failing, noGso
        self.got: dict[str, list[bytes]] = {}

    def sendto(self, data: bytes, dest: tuple[str, int]) -> int:
        if dest[0] == self.failing:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        self.got.setdefault(dest[0], []).append(bytes(data))
        return len(data)

    def sendmsg(self, buffers: list[bytes], control: list, flags: int,
                dest: tuple[str, int]) -> int:
        if dest[0] in (self.failing, self.noGso):
            raise OSError(errno.ENETUNREACH if dest[0] == self.failing else errno.EINVAL, "no")
        size = int.from_bytes(control[0][2], "little")
        data = b"".join(buffers)
        self.got.setdefault(dest[0], []).extend(
            data[at:at + size] for at in range(0, len(data), size))
        return len(data)


@pytest.mark.parametrize("underlay", [_Underlay(failing="10.0.0.2"),
                                      _Underlay(noGso="10.0.0.3")],
                         ids=["unreachable", "no-gso"])
def test_oneRemoteThatCannotBeReachedCostsTheOthersNothing(underlay: _Underlay) -> None:
    """
    Floods reach every remote endpoint that can be reached, whatever an
    earlier one's failure (counted as a C{peer} drop naming it), and each
    frame once: a broadcast and a super-frame's frames (with UDP_SEGMENT),
    to an endpoint listed after one without a route, or before one whose
    path refuses UDP_SEGMENT.
    """
    config = vxlanport.configFromSpec(PortSpec("vxlan:remote=10.0.0.2,10.0.0.3"))
    service = vxlanport.VxlanService(Switch(), None, config, None, "vxlan")  # type: ignore[arg-type]
    link = vxlanport.VxlanLink(service)
    link.port = _DropLog()
    link._makeSenders(underlay)
    hello = frame(BROADCAST, mac(1), payload=b"hello")
    link.sendFrame(hello)
    packet = tcpSuperFrame(BROADCAST, mac(1), bytes(range(256)) * 40, gsoSize=1000)
    link.sendVnetPacket(packet)
    head = vxlan.header(1)
    expected = [head + hello] + [head + f for f in vnet.toFrames(packet)]
    assert underlay.got["10.0.0.3"] == expected
    if underlay.failing:
        assert link.port.drops and all(reason == "peer" and "10.0.0.2" in message
                                       for reason, message in link.port.drops)
    else:
        assert underlay.got["10.0.0.2"] == expected and not link.port.drops


@pytest.mark.parametrize("interface, hint", [
    (None, "no route leads to the group: give if=IFACE, or a route "
           "(ip route add 239.0.0.1 dev IFACE)"),
    ("eth9", "is there an interface 'eth9' in this namespace?"),
])
def test_joinWithoutADeviceSaysWhatIsMissing(interface: str | None, hint: str) -> None:
    """A group that cannot be joined (ENODEV) names the missing interface or route."""
    from vtwisted.ports.vxlanconfig import VxlanConfig, joinHint

    config = VxlanConfig(version=4, vni=9, dstport=14789, group="239.0.0.1",
                         interface=interface)
    text = joinHint(OSError(errno.ENODEV, "No such device"), config)
    assert text.endswith(hint)
    assert "None" not in text
