"""
Cables between switches (C{cable:}) over real TLS on loopback, in this
process's reactor: two switches with certificates on both ends, super-frames
crossing whole, peers that must be refused, a listening switch that
restarts, and spec errors.  Two C{twistd} processes with TAPs in namespaces
joined by a cable: test_cable_interop.py.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from certs import selfSignedCertificate
from reactortools import sleep, until
from twisted.internet import reactor

from vtwisted.ports import cable, streamlinks, streamlistener
from vtwisted.service import SwitchService
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug, tcpSuperFrame
from vtwisted.wire import vnet

BROADCAST = b"\xff" * 6




@pytest.fixture
def pki(shortdir: Path) -> Callable[[str], str]:
    """
    Certificates for switches A (named localhost, which B connects to), B
    (switch-b) and a stranger; C{pki("a")} is A's cert=/key=/ca= options, trusting B.
    """
    for prefix, name in (("a", "localhost"), ("b", "switch-b"), ("stranger", "stranger")):
        selfSignedCertificate(shortdir, name, prefix=prefix)
    trusts = {"a": "b", "b": "a", "stranger": "a"}

    def options(who: str) -> str:
        return (f"cert={shortdir}/{who}cert.pem:key={shortdir}/{who}key.pem:"
                f"ca={shortdir}/{trusts[who]}cert.pem")

    return options


def ports(service: SwitchService) -> streamlinks.StreamPorts:
    (found,) = [s for s in service if isinstance(s, streamlinks.StreamPorts)]
    return found


def listenerOf(service: SwitchService) -> streamlistener.StreamListener:
    found = ports(service)
    assert isinstance(found, streamlistener.StreamListener)
    return found


def listen(switch: Callable[..., SwitchService], pki: Callable[[str], str],
           port: int = 0) -> tuple[SwitchService, int]:
    service = switch(f"cable:listen:tcp:{port}:interface=127.0.0.1:{pki('a')}")
    return service, listenerOf(service).listeningPort.getHost().port


@pytest_twisted.ensureDeferred
async def test_cableJoinsTwoSwitchesAndSuperFramesCrossWhole(switch, pki) -> None:
    """
    Frames cross both ways; a TCP super-frame from an offload port reaches
    the far switch's offload port as the very same packet, and its plain
    port as the segments.
    """
    a, number = listen(switch, pki)
    b = switch(f"cable:tcp:host=localhost:port={number}:{pki('b')}")
    await until(lambda: ports(a).links and ports(b).links, what="the cable up")
    (link,) = ports(b).links
    assert link.module == "cable" and link.vnetHeader
    assert link.description.endswith("(CN=localhost)")
    assert ports(a).links[0].description.endswith("(CN=switch-b)")
    offloadA, plainA = FakeLink(vnetHeader=True), FakeLink()
    offloadB, plainB = FakeLink(vnetHeader=True), FakeLink()
    for service, links in ((a, (offloadA, plainA)), (b, (offloadB, plainB))):
        for fake in links:
            plug(service.switch, fake)
    plainA.receive(frame(BROADCAST, mac(1), b"hello" * 20))
    await until(lambda: plainB.sent and offloadB.sentPackets, what="the broadcast across")
    assert plainB.takeSent() == [frame(BROADCAST, mac(1), b"hello" * 20)]
    assert vnet.toFrame(offloadB.sentPackets.pop()) == frame(BROADCAST, mac(1), b"hello" * 20)
    superFrame = tcpSuperFrame(BROADCAST, mac(2), bytes(range(256)) * 200)
    offloadA.receivePacket(superFrame)
    assert plainA.takeSent() == vnet.toFrames(superFrame)  # flooded on A's side too
    await until(lambda: offloadB.sentPackets, what="the super-frame across")
    assert offloadB.sentPackets == [superFrame]
    await until(lambda: len(plainB.sent) == len(vnet.toFrames(superFrame)), what="segments")
    assert plainB.takeSent() == vnet.toFrames(superFrame)
    largest = tcpSuperFrame(BROADCAST, mac(2), bytes(65495))  # IPv4 length 65535
    offloadA.receivePacket(largest)
    await until(lambda: len(offloadB.sentPackets) == 2, what="the largest super-frame")
    assert offloadB.sentPackets[1] == largest
    plainA.takeSent()
    plainB.takeSent()
    plainB.receive(frame(mac(1), mac(3), b"back"))
    await until(lambda: plainA.sent, what="the answer")
    assert plainA.sent == [frame(mac(1), mac(3), b"back")]


@pytest_twisted.ensureDeferred
async def test_untrustedSwitchNeverGetsAPort(switch, pki) -> None:
    """
    A switch whose certificate A does not trust is refused during the TLS
    handshake: no port on either side, and the refusal is logged by both,
    each saying why (A naming its ca= file, the stranger the alert it got).
    """
    a, number = listen(switch, pki)
    stranger = switch(f"cable:tcp:host=localhost:port={number}:{pki('stranger')}")
    await until(lambda: ports(a).failures.last and ports(stranger).failures.last,
                what="both sides to note the refusal")
    atA, atStranger = ports(a).failures.last, ports(stranger).failures.last
    assert atA is not None and atStranger is not None
    assert "TLS handshake failed: the peer's certificate is self-signed and not in ca=" in atA
    assert "bcert.pem (self-signed certificate; depth 0)" in atA
    assert "TLS handshake failed: the peer refused our certificate (TLS alert: unknown ca)" \
        in atStranger
    assert not ports(a).links and not ports(stranger).links
    assert a.switch.ports.get(1) is None or not a.switch.ports[1].links


@pytest_twisted.ensureDeferred
async def test_connectingSideChecksTheListenersName(switch, pki) -> None:
    """
    The name is checked by the cable's own verify callback (it replaces
    Twisted's, which checks names on recent Twisted): a name= that the
    listener's certificate does not carry is refused.
    """
    a, number = listen(switch, pki)
    b = switch(f"cable:tcp:host=localhost:port={number}:name=elsewhere:{pki('b')}")
    await until(lambda: ports(b).failures.last, what="the name refused")
    refused = ports(b).failures.last
    assert refused is not None
    assert "the peer's certificate does not name elsewhere (name= checks another name)" \
        in refused
    await sleep(0.3)
    assert not ports(a).links and not ports(b).links


@pytest_twisted.ensureDeferred
async def test_peerThatIsNotACableIsClosedWithoutAPort(switch) -> None:
    """
    With C{tls=off}, something else than a cable (here QEMU's framing) is
    told apart by its first message and closed before it gets a port.
    """
    a = switch("cable:listen:tcp:0:interface=127.0.0.1:tls=off")
    number = listenerOf(a).listeningPort.getHost().port
    peer = socket.create_connection(("127.0.0.1", number))
    guestFrame = frame(BROADCAST, mac(9))
    peer.sendall(struct.pack("!I", len(guestFrame)) + guestFrame)
    peer.setblocking(False)

    def closed() -> bool:
        try:
            return peer.recv(65536) == b"" or False
        except BlockingIOError:
            return False

    await until(closed, what="the stranger closed")
    assert "not a vtwisted cable" in (ports(a).failures.last or "")
    assert not ports(a).links
    peer.close()


@pytest_twisted.ensureDeferred
async def test_tlsCableToAPlainListenerIsToldApartOnBothSides(switch, pki) -> None:
    """
    A TLS cable dialling a C{tls=off} listener: each side says the other
    does not speak as it does, not "wrong version number" or a length of
    369 MB.
    """
    a = switch("cable:listen:tcp:0:interface=127.0.0.1:tls=off")
    number = listenerOf(a).listeningPort.getHost().port
    b = switch(f"cable:tcp:host=localhost:port={number}:{pki('b')}")
    await until(lambda: ports(a).failures.last and ports(b).failures.last,
                what="both sides to note it")
    assert "a TLS client, and this cable has tls=off" in (ports(a).failures.last or "")
    assert "the peer does not speak TLS (tls=off on its side" in (ports(b).failures.last or "")
    assert not ports(a).links and not ports(b).links


@pytest_twisted.ensureDeferred
async def test_plainCableToATlsListenerIsToldApart(switch, pki) -> None:
    a, number = listen(switch, pki)
    b = switch(f"cable:tcp:host=127.0.0.1:port={number}:tls=off")
    await until(lambda: ports(a).failures.last, what="the listener to note it")
    assert "the peer does not speak TLS (tls=off on its side" in (ports(a).failures.last or "")
    assert not ports(a).links and not ports(b).links


@pytest_twisted.ensureDeferred
async def test_cableComesBackWhenTheListeningSwitchRestarts(switch, pki) -> None:
    a, number = listen(switch, pki)
    b = switch(f"cable:tcp:host=localhost:port={number}:{pki('b')}")
    await until(lambda: ports(b).links, what="the cable up")
    await a.stopService()
    await until(lambda: not ports(b).links, what="the cable down")
    again, _ = listen(switch, pki, number)
    await until(lambda: ports(again).links and ports(b).links, timeout=10, what="the cable back")


@pytest.mark.parametrize(
    "extra, problem",
    [
        ("", "a cable needs cert=PEM and ca=PEM"),
        ("cert=/nonexistent.pem:ca=/nonexistent.pem", "cert=/nonexistent.pem: No such file"),
        ("cert={d}/acert.pem:ca={d}/acert.pem", "no PEM private key in it (give key=KEY.pem)"),
        ("cert={d}/acert.pem:key={d}/bkey.pem:ca={d}/acert.pem", "not a certificate and key"),
        ("cert={d}/acert.pem:key={d}/akey.pem:ca={d}/akey.pem", "no PEM certificate"),
    ],
)
def test_badTlsOptionsFailWithTheSpecNamed(shortdir: Path, extra: str, problem: str) -> None:
    selfSignedCertificate(shortdir, prefix="a")
    selfSignedCertificate(shortdir, prefix="b")
    text = "cable:tcp:host=localhost:port=7443:" + extra.format(d=shortdir)
    with pytest.raises(SpecError) as info:
        cable.makeService(Switch(), PortSpec(text.rstrip(":")), reactor)
    assert problem in str(info.value) and "cable:tcp" in str(info.value)


def test_connectingWithoutAHostNeedsAName(shortdir: Path) -> None:
    selfSignedCertificate(shortdir, prefix="a")
    spec = (f"cable:unix:/tmp/x.sock:cert={shortdir}/acert.pem:key={shortdir}/akey.pem:"
            f"ca={shortdir}/acert.pem")
    with pytest.raises(SpecError, match="give name="):
        cable.makeService(Switch(), PortSpec(spec), reactor)


@pytest_twisted.ensureDeferred
async def test_aBurstOfSuperFramesCrossesWithoutDrops(switch, pki) -> None:
    """
    A read batch of super-frames (about 1 MB, all in one reactor turn) fits
    the cable's send buffer, under TLS too: nothing is dropped as busy.
    """
    a, number = listen(switch, pki)
    b = switch(f"cable:tcp:host=localhost:port={number}:{pki('b')}")
    await until(lambda: ports(a).links and ports(b).links, what="the cable up")
    sender, receiver = FakeLink(vnetHeader=True), FakeLink(vnetHeader=True)
    plug(a.switch, sender)
    plug(b.switch, receiver)
    burst = [tcpSuperFrame(BROADCAST, mac(2), bytes([n]) * 60000) for n in range(16)]
    for packet in burst:
        sender.receivePacket(packet)
    await until(lambda: len(receiver.sentPackets) == len(burst), what="the whole burst")
    assert receiver.sentPackets == burst
    assert ports(a).links[0].port.counters.drops["busy"] == 0


@pytest_twisted.ensureDeferred
async def test_ringOfCablesWithFstpCarriesOneCopyAndHeals(switch) -> None:
    """
    Three switches joined in a ring by plain cables on loopback, FSTP on:
    BPDUs cross the cables (as virtio-net messages), one cable end turns
    discarding, each host hears a broadcast once; when a forwarding cable
    goes, the blocked one takes over.
    """
    listening = [switch("cable:listen:tcp:0:interface=127.0.0.1:tls=off") for _ in range(3)]
    numbers = [listenerOf(s).listeningPort.getHost().port for s in listening]
    specs = []
    for i, service in enumerate(listening):
        spec = f"cable:tcp:host=127.0.0.1:port={numbers[(i + 1) % 3]}:tls=off"
        service.addPort(spec)
        specs.append(spec)
    hosts = [FakeLink(f"host {i}") for i in range(3)]
    for service, host in zip(listening, hosts):
        plug(service.switch, host)
        service.switch.spanningTree.setEnabled(True)
    trees = [s.switch.vlans[0] for s in listening]
    await until(lambda: all(len([p for p in s.switch.ports.values() if p.links]) == 3
                            for s in listening), what="the three cables up")
    await until(lambda: sum(len(v.discarding) for v in trees) >= 1, timeout=10,
                what="a discarding cable end")
    await sleep(1)

    async def copies(payload: bytes) -> list[int]:
        for host in hosts:
            host.takeSent()
        hosts[0].receive(frame(BROADCAST, mac(0x31), payload=payload))
        await sleep(1)
        return [sum(payload in f for f in host.sent) for host in hosts[1:]]

    assert await copies(b"first broadcast") == [1, 1]
    # Cable k runs from switch k (which connects) to switch k+1 (which listens).
    blockedCables = set()
    for i, vlan in enumerate(trees):
        for port in vlan.discarding:
            peer = port.links[0].transport.getPeer().port
            blockedCables.add(i if peer == numbers[(i + 1) % 3] else (i - 1) % 3)
    assert len(blockedCables) == 1, blockedCables
    forwarding = next(k for k in range(3) if k not in blockedCables)
    await listening[forwarding].removePort(specs[forwarding])
    await sleep(2)
    assert await copies(b"second broadcast") == [1, 1]


def helloTimers() -> list[object]:
    """
    The reactor's timers that would cut off a cable without its hello.
    """
    return [call for call in reactor.getDelayedCalls()
            if getattr(getattr(call, "func", None), "__name__", "") == "_tooLate"]


@pytest_twisted.ensureDeferred
async def test_deletingAListenerClosesConnectionsStillInTheirHandshake(switch, pki) -> None:
    """
    A connection that has not finished TLS when its listening cable is
    deleted is closed with it: its descriptor and timer do not outlive the
    port, and nothing is logged for the deleted spec 10 s later.
    """
    a, number = listen(switch, pki)
    peer = socket.create_connection(("127.0.0.1", number))
    peer.setblocking(False)
    try:
        await until(lambda: helloTimers(), what="the connection accepted")
        await a.stopService()

        def closed() -> bool:
            try:
                return peer.recv(65536) == b""
            except BlockingIOError:
                return False
            except ConnectionResetError:
                return True

        await until(closed, timeout=2, what="the connection closed with its port")
        assert helloTimers() == []
    finally:
        peer.close()


@pytest_twisted.ensureDeferred
async def test_deletingAConnectorStuckInTheHandshakeStopsAtOnce(switch, pki) -> None:
    """
    A connecting cable whose far side accepted but never answers TLS stops
    at once when deleted, not when its hello timer would have cut it off.
    """
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        number = silent.getsockname()[1]
        b = switch(f"cable:tcp:host=localhost:port={number}:{pki('b')}")
        await until(lambda: helloTimers(), what="the connection made")
        started = reactor.seconds()
        await b.stopService()
        assert reactor.seconds() - started < 2
        assert helloTimers() == []
