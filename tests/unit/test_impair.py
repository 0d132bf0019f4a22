"""
Port impairments (L{vtwisted.impair}) on a switch with fake links and a
fake clock: delay, loss, duplication, the rate limit and its queue, frames
kept in order, and the console's C{port/impair}.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.task import Clock

from vtwisted.errors import SwitchError
from vtwisted.impair import MAX_QUEUED_BYTES, PortImpairment
from vtwisted.operations import SwitchOperations
from vtwisted.portoptions import PortOptions
from vtwisted.service import SwitchService
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.switchport import SwitchPort
from vtwisted.testing import FakeLink, frame, mac, plug


def _pair(**impairments: str) -> tuple[Clock, FakeLink, FakeLink, SwitchPort]:
    """
    A switch on a fake clock: link A, and link B whose port is impaired
    (C{delay=} and the like: frames to B; C{indelay=} and the like: from B).
    """
    clock = Clock()
    switch = Switch()
    switch.clock = clock
    a, b = FakeLink("a"), FakeLink("b")
    plug(switch, a)
    port = plug(switch, b)
    b.receive(frame(b"\xff" * 6, mac(2)))
    a.takeSent()
    if impairments:
        port.setImpairment(PortImpairment.fromOptions(impairments), clock)
        for sender in (port.impaired, port.impairedIn):
            if sender is not None:
                sender.random = random.Random(7)
    return clock, a, b, port


def test_delayHoldsFramesUntilTheirTime() -> None:
    """With delay=50, a frame for the impaired port leaves 50 ms later, not before."""
    clock, a, b, _ = _pair(delay="50")
    hello = frame(mac(2), mac(1), payload=b"hello")
    a.receive(hello)
    assert b.sent == []
    clock.advance(0.049)
    assert b.sent == []
    clock.advance(0.002)
    assert b.sent == [hello]


def test_aRememberedRouteIsImpairedToo() -> None:
    """A route the switch remembered before the impairment does not bypass it."""
    clock, a, b, port = _pair()
    first = frame(mac(2), mac(1), payload=b"one")
    a.receive(first)
    a.receive(first)
    assert b.takeSent() == [first, first]
    port.setImpairment(PortImpairment.fromOptions({"delay": "10"}), clock)
    a.receive(first)
    assert b.sent == []
    clock.advance(0.011)
    assert b.sent == [first]


def test_lossDropsAndCounts() -> None:
    """loss=100 loses every frame, counted as impaired; loss=30 about 30 in 100."""
    _, a, b, port = _pair(loss="100")
    for n in range(10):
        a.receive(frame(mac(2), mac(1), payload=bytes([n])))
    assert b.sent == [] and port.counters.drops["impaired"] == 10
    _, a, b, port = _pair(loss="30")
    for n in range(1000):
        a.receive(frame(mac(2), mac(1), payload=n.to_bytes(2, "big")))
    assert 250 < port.counters.drops["impaired"] < 350
    assert len(b.sent) == 1000 - port.counters.drops["impaired"]


def test_duplicationSendsTwice() -> None:
    """dup=100 sends every frame twice, in order."""
    _, a, b, _ = _pair(dup="100")
    one, two = frame(mac(2), mac(1), payload=b"1"), frame(mac(2), mac(1), payload=b"2")
    a.receive(one)
    a.receive(two)
    assert b.sent == [one, one, two, two]


def test_rateSpacesFramesAndItsQueueOverflows() -> None:
    """
    At 1000 kbit/s a 1250-byte frame takes 10 ms; with a 25 ms queue, a
    burst of 10 keeps 3 (the ones due within 25 ms of now) and drops 7 as
    busy; the kept ones leave 10 ms apart.
    """
    clock, a, b, port = _pair(rate="1000", queue="25")
    burst = [frame(mac(2), mac(1), payload=bytes([n]) * 1236) for n in range(10)]
    assert len(burst[0]) == 1250
    for f in burst:
        a.receive(f)
    assert port.counters.drops["busy"] == 7
    times = []
    for _ in range(5):
        clock.advance(0.01)
        times.append(len(b.sent))
    assert times == [1, 2, 3, 3, 3]
    assert b.sent == burst[:3]


def test_jitterNeverReorders() -> None:
    """With delay 20 +-20 ms, 50 frames arrive all, in the order sent."""
    clock, a, b, _ = _pair(delay="20", jitter="20")
    frames = [frame(mac(2), mac(1), payload=n.to_bytes(2, "big")) for n in range(50)]
    for f in frames:
        a.receive(f)
        clock.advance(0.001)
    clock.advance(1)
    assert b.sent == frames


@pytest.mark.parametrize(("text", "message"), [
    ("tap:t0:delay=fast", "delay='fast' is not a number"),
    ("tap:t0:loss=120", r"loss=120 is out of range \(0 to 100\)"),
    ("tap:t0:delay=5:jitter=10", "jitter must not exceed delay"),
])
def test_badImpairmentsInSpecsAreRefused(text: str, message: str) -> None:
    """A wrong impairment is a SpecError naming the spec and the option."""
    with pytest.raises(SpecError, match=message):
        PortOptions.fromSpec(PortSpec(text))


def _managed() -> tuple[Clock, SwitchService, SwitchOperations, FakeLink, FakeLink, Any]:
    """A switch service on a fake clock, its operations, links A and B, B's port."""
    clock = Clock()
    service = SwitchService(Switch(), clock)
    a, b = FakeLink("a"), FakeLink("b")
    plug(service.switch, a)
    port = plug(service.switch, b)
    return clock, service, SwitchOperations(service), a, b, port


def test_theConsoleSetsAndClearsImpairments() -> None:
    """port/impair through the operations: set, shown in port/stats, then off."""
    clock, service, ops, a, b, port = _managed()
    ops.setImpairment(port.number, "delay=30 loss=0")
    assert ops.ports(port.number)[0].impairment == "delay 30 ms"
    a.receive(frame(mac(2), mac(1)))
    b.receive(frame(mac(1), mac(2)))
    a.receive(frame(mac(2), mac(1)))
    assert b.sent == []
    clock.advance(0.031)
    assert len(b.sent) == 2
    ops.setImpairment(port.number, "off")
    assert port.impaired is None and ops.ports(port.number)[0].impairment == "none"
    with pytest.raises(SwitchError, match="not KEY=VALUE"):
        ops.setImpairment(port.number, "slow")
    with pytest.raises(SwitchError, match="unknown impairment colour"):
        ops.setImpairment(port.number, "colour=red")


def test_theConsoleCommandTakesAnyBlankAfterThePort() -> None:
    """port/impair N<TAB>OPTS works as with a space, as other commands' arguments do."""
    from vtwisted.console import CommandInterpreter

    _, _, ops, _, _, port = _managed()
    reply = CommandInterpreter(ops).execute(f"port/impair {port.number}\tdelay=30  loss=0")
    assert reply.text.endswith("1000 Success\n")
    assert ops.ports(port.number)[0].impairment == "delay 30 ms"


def test_framesDroppedByAStopNoLongerHoldTheLink() -> None:
    """
    After the held frames are dropped (a client joined or left the port),
    the next frame waits only for its own time on a rate-limited link, not
    behind the time the dropped ones would have taken.
    """
    clock, a, b, port = _pair(rate="8")  # kbit/s: 1000 bytes a second
    for _ in range(5):
        a.receive(frame(mac(2), mac(1), payload=bytes(1000)))
    assert port.impaired is not None
    port.impaired.stop()
    a.receive(frame(mac(2), mac(1), payload=bytes(10)))
    clock.advance(0.2)
    assert len(b.sent) == 1


@pytest.mark.parametrize("arriving", [False, True])
def test_lossStrikesWireFramesNotSuperFrames(arriving: bool) -> None:
    """
    Between offload ports with loss= on the way out of one (or inloss= on
    the way in), a 64 KB super-frame is cut first: about half its 45
    segments arrive, each a whole frame behind a plain header, in order.
    """
    from vtwisted.testing import tcpSuperFrame
    from vtwisted.wire import vnet

    clock = Clock()
    switch = Switch()
    a, b = FakeLink("a", vnetHeader=True), FakeLink("b", vnetHeader=True)
    plug(switch, a)
    port = plug(switch, b)
    sender, receiver = (b, a) if arriving else (a, b)
    receiver.receivePacket(vnet.PLAIN_HEADER + frame(b"\xff" * 6, mac(2)))
    port.setImpairment(PortImpairment.fromOptions({"inloss" if arriving else "loss": "50"}),
                       clock)
    impaired = port.impairedIn if arriving else port.impaired
    assert impaired is not None
    impaired.random = random.Random(3)
    packet = tcpSuperFrame(mac(2), mac(1), bytes(range(256)) * 254)
    segments = vnet.toFrames(packet)
    assert len(segments) == 45
    sender.receivePacket(packet)
    got = receiver.sentPackets
    assert all(p[:10] == vnet.PLAIN_HEADER for p in got)
    kept = [p[10:] for p in got]
    assert 10 < len(kept) < 35 and kept == [s for s in segments if s in kept]
    assert port.counters.drops["impaired"] == 45 - len(kept)


def _bitsDiffering(one: bytes, other: bytes) -> int:
    assert len(one) == len(other)
    return sum(bin(x ^ y).count("1") for x, y in zip(one, other))


def test_noiseFlipsBitsAtItsRate() -> None:
    """
    noise=1000 bits per megabyte flips one bit in each 1000-byte frame, and
    on average 0.1 in each 100-byte one; port/stats counts damaged frames.
    """
    _, a, b, port = _pair(noise="1000")
    big = frame(mac(2), mac(1), payload=bytes(986))
    for _ in range(20):
        a.receive(big)
    assert [_bitsDiffering(f, big) for f in b.takeSent()] == [1] * 20
    small = frame(mac(2), mac(1), payload=bytes(86))
    for _ in range(1000):
        a.receive(small)
    damaged = sum(f != small for f in b.takeSent())
    assert 60 < damaged < 140
    assert port.impaired is not None
    assert port.impaired.describe().endswith(f"noise 1000 bits/MB, {20 + damaged} frames "
                                             "damaged")


def test_noiseStrikesFramesWithCompleteChecksums() -> None:
    """
    A super-frame leaving a noisy offload port is cut into segments whose
    checksums are complete, then damaged behind a plain header (the header
    itself never); towards a plain port the same: each delivered segment
    differs in exactly one bit from the correct one, so its receiver can
    tell.
    """
    from vtwisted.testing import tcpSuperFrame
    from vtwisted.wire import vnet

    for offload in (True, False):
        clock = Clock()
        switch = Switch()
        a, b = FakeLink("a", vnetHeader=True), FakeLink("b", vnetHeader=offload)
        plug(switch, a)
        port = plug(switch, b)
        b.receive(frame(b"\xff" * 6, mac(2)))
        port.setImpairment(PortImpairment.fromOptions({"noise": str(1_000_000 / 1514)}), clock)
        port.impaired.random = random.Random(5)
        packet = tcpSuperFrame(mac(2), mac(1), (bytes(range(256)) * 46)[:8 * 1448])
        segments = vnet.toFrames(packet)
        a.receivePacket(packet)
        if offload:
            assert all(p[:10] == vnet.PLAIN_HEADER for p in b.sentPackets)
            got = [p[10:] for p in b.sentPackets]
        else:
            got = b.sent
        assert len(got) == len(segments) == 8
        assert [_bitsDiffering(g, s) for g, s in zip(got, segments)] == [1] * 8


def test_burstLossComesInRunsOfItsMeanLength() -> None:
    """
    loss=20 burst=5: about a fifth of 20000 frames lost, in runs of about 5
    (independent losses at 20% would make runs of 1.25).
    """
    _, a, b, port = _pair(loss="20", burst="5")
    sent = [frame(mac(2), mac(1), payload=n.to_bytes(2, "big")) for n in range(20000)]
    for f in sent:
        a.receive(f)
    arrived = set(b.sent)
    lost = [f not in arrived for f in sent]
    runs = [len(run) for run in "".join("x" if x else "." for x in lost).split(".") if run]
    assert 0.17 < sum(lost) / len(lost) < 0.23
    assert 4.2 < sum(runs) / len(runs) < 5.8
    assert port.impaired is not None
    assert port.impaired.describe() == "loss 20% in bursts of 5"


def test_arrivingDelayHoldsFramesFromThePortOnly() -> None:
    """
    indelay=50 holds what B sends for 50 ms before the switch forwards it;
    what B is sent still goes at once, and so does every later frame of the
    flow (no remembered route bypasses the impairment).
    """
    clock, a, b, port = _pair(indelay="50")
    towardA = frame(mac(1), mac(2), payload=b"to a")
    a.receive(frame(b"\xff" * 6, mac(1)))
    b.takeSent()
    for _ in range(3):
        b.receive(towardA)
    assert a.sent == []
    clock.advance(0.049)
    assert a.sent == []
    clock.advance(0.002)
    assert a.sent == [towardA] * 3
    towardB = frame(mac(2), mac(1), payload=b"to b")
    a.receive(towardB)
    assert b.sent == [towardB]
    assert port.impaired is None and port.routes == {}
    assert port.counters.inFrames == 4  # counted as they arrive, lost or not


def test_aRouteRememberedBeforeAnArrivingImpairmentIsForgotten() -> None:
    """A flow from B that the switch remembered is impaired once inloss= is set."""
    clock, a, b, port = _pair()
    a.receive(frame(b"\xff" * 6, mac(1)))
    towardA = frame(mac(1), mac(2), payload=b"to a")
    b.receive(towardA)
    b.receive(towardA)
    assert a.takeSent() == [towardA, towardA] and port.routes
    port.setImpairment(PortImpairment.fromOptions({"inloss": "100"}), clock)
    b.receive(towardA)
    assert a.sent == [] and port.counters.drops["impaired"] == 1


def test_arrivingLossKeepsTheSwitchFromLearning() -> None:
    """
    A frame lost on its way in teaches the switch nothing: with inloss=100,
    B's new address stays unknown, so a frame for it is flooded to B.
    """
    _, a, b, port = _pair(inloss="100")
    b.receive(frame(b"\xff" * 6, mac(9)))
    assert a.sent == [] and port.counters.drops["impaired"] == 1
    c = FakeLink("c")
    plug(a.switch, c)
    a.receive(frame(mac(9), mac(1)))
    assert c.sent == [frame(mac(9), mac(1))]


def test_framesHeldOnTheWayInGoWithTheirPeer() -> None:
    """
    Frames an indelay= holds back when the port's last client leaves are
    dropped with it: they teach the switch nothing, so a frame for that
    client's address is flooded (to its new port) instead of going to the
    port it left, and no timer is left running.
    """
    clock, a, b, port = _pair(indelay="1000")
    b.receive(frame(b"\xff" * 6, mac(9)))
    b.close()
    clock.advance(2)
    assert a.takeSent() == [] and clock.getDelayedCalls() == []
    moved = FakeLink("moved")
    plug(a.switch, moved, 5)
    a.receive(frame(mac(9), mac(1)))
    assert moved.sent == [frame(mac(9), mac(1))]
    assert a.switch.fdb.lookup(0, mac(9)) is None


def test_theReadmesExampleShowsAsTheReadmeSays() -> None:
    """
    README's C{tap:site1:delay=40:jitter=5:loss=0.5:indelay=40}: port/stats
    shows C{delay 40 ms +-5 ms, loss 0.5%; arriving: delay 40 ms}.
    """
    clock, service, ops, a, b, port = _managed()
    spec = PortSpec("tap:site1:delay=40:jitter=5:loss=0.5:indelay=40")
    PortOptions.fromSpec(spec).apply(service.switch, port)
    assert ops.ports(port.number)[0].impairment == \
        "delay 40 ms +-5 ms, loss 0.5%; arriving: delay 40 ms"


def test_bothWaysMakeARoundTrip() -> None:
    """
    delay=10:indelay=20 in a spec: a request to B leaves after 10 ms, its
    answer reaches A 20 ms after B sent it; port/stats shows both.
    """
    clock, service, ops, a, b, port = _managed()
    PortOptions.fromSpec(PortSpec("tap:t0:delay=10:indelay=20")).apply(service.switch, port)
    assert ops.ports(port.number)[0].impairment == "delay 10 ms; arriving: delay 20 ms"
    a.receive(frame(b"\xff" * 6, mac(1)))
    clock.advance(0.011)
    assert b.takeSent() == [frame(b"\xff" * 6, mac(1))]
    b.receive(frame(mac(1), mac(2)))
    clock.advance(0.019)
    assert a.sent == []
    clock.advance(0.002)
    assert a.sent == [frame(mac(1), mac(2))]
    ops.setImpairment(port.number, "inloss=50")
    assert ops.ports(port.number)[0].impairment == "arriving: loss 50%"
    assert port.impaired is None
    ops.setImpairment(port.number, "off")
    assert port.impairedIn is None and ops.ports(port.number)[0].impairment == "none"
    with pytest.raises(SwitchError, match="unknown impairment inlatency"):
        ops.setImpairment(port.number, "inlatency=5")


@pytest.mark.parametrize(("text", "message"), [
    ("tap:t0:indelay=fast", "indelay='fast' is not a number"),
    ("tap:t0:indelay=5:injitter=10", "injitter must not exceed indelay"),
    ("tap:t0:inloss=101", r"inloss=101 is out of range"),
])
def test_badArrivingImpairmentsAreRefused(text: str, message: str) -> None:
    """The in options are checked as the others, and errors name them."""
    with pytest.raises(SpecError, match=message):
        PortOptions.fromSpec(PortSpec(text))


@pytest.mark.parametrize("module, text", [
    ("qemu", "qemu:unix:/tmp/vtw-guest.sock:delay=5:indelay=7"),
    ("vhostuser", "vhostuser:unix:/tmp/vtw-guest.vhost:delay=5:indelay=7"),
    ("cable", "cable:tcp:host=127.0.0.1:port=9:delay=5:indelay=7"),
])
def test_portsOnStreamsTakeBothWays(module: str, text: str) -> None:
    """
    Port types whose specs wrap a Twisted endpoint keep every impairment
    option, either way, out of the endpoint and on the port.
    """
    import importlib

    from twisted.internet.testing import MemoryReactor

    from vtwisted.ports.streamspec import readStreamSpec

    ports = importlib.import_module(f"vtwisted.ports.{module}")
    keywords = getattr(ports, "CABLE_KEYWORDS", None) or ports.PORT_KEYWORDS
    read = readStreamSpec(PortSpec(text), MemoryReactor(), keywords, listenByDefault=False)
    impairment = read.options.impairment
    assert impairment is not None
    assert (impairment.leaving.delay, impairment.arriving.delay) == (0.005, 0.007)


@pytest.mark.parametrize("arriving", [False, True])
def test_heldFramesAreBounded(arriving: bool) -> None:
    """
    A flood into a delayed port (or from one, with indelay=) is held back
    up to MAX_QUEUED_BYTES only: the frames beyond are dropped as busy
    instead of filling the switch's memory, and those held arrive in time.
    """
    clock, a, b, port = _pair(**{"indelay" if arriving else "delay": "1000"})
    a.receive(frame(b"\xff" * 6, mac(1)))
    clock.advance(1.001)
    b.takeSent()
    jumbo = frame(mac(1) if arriving else mac(2), mac(2) if arriving else mac(1),
                  payload=b"x" * 9000)
    sender, receiver = (b, a) if arriving else (a, b)
    flood = MAX_QUEUED_BYTES // len(jumbo) + 100
    for _ in range(flood):
        sender.receive(jumbo)
    assert port.counters.drops["busy"] == 100
    held = port.impairedIn if arriving else port.impaired
    assert held is not None and held.queuedBytes <= MAX_QUEUED_BYTES
    clock.advance(1.001)
    assert len(receiver.takeSent()) == flood - 100 and held.queuedBytes == 0
    sender.receive(jumbo)
    clock.advance(1.001)
    assert receiver.sent == [jumbo]
