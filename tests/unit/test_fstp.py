"""
FSTP in memory: BPDUs on the wire, loops of fake cables between switches.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import capturedLogs, formatEvent

from vtwisted.errors import SwitchError
from vtwisted.fstptree import HELLO
from vtwisted.switch import Switch
from vtwisted.testing import FakeCable, FakeLink, frame, mac, plug, pumpCables
from vtwisted.wire import bpdu

BROADCAST = b"\xff" * 6
#: The untagged BPDU captured from vde_switch (vde-wire.md 4.6).
CAPTURED = bytes.fromhex(
    "0180c2000000021122334455002742420300000202"
    "3c100002112233445500000000100002112233445580010000280004000000"
    "00"
)


def fstpSwitch(n: int, priority: int = 0x8000) -> Switch:
    switch = Switch(mac=bytes([2, 0, 0, 0, 0, n]))
    switch.spanningTree.setPriority(priority)
    switch.spanningTree.setEnabled(True)
    return switch


def settle(switches: list[Switch], cables: list[FakeCable], seconds: int = 3 * HELLO) -> None:
    """Let hellos run for C{seconds}, delivering everything after each tick."""
    start = switches[0].now
    for now in range(start + 1, start + seconds + 1):
        for switch in switches:
            switch.tick(now)
        assert pumpCables(cables) < 10000, "a broadcast storm"


def broadcastCopies(source: FakeLink, sinks: list[FakeLink], cables: list[FakeCable],
                    payload: bytes) -> tuple[int, list[int]]:
    for sink in sinks:
        sink.takeSent()
    source.receive(frame(BROADCAST, mac(1), payload=payload))
    crossed = pumpCables(cables)
    return crossed, [sum(payload in f for f in sink.sent) for sink in sinks]


def test_capturedBpduDecodes() -> None:
    """vde_switch's captured BPDU decodes to the fields the spec lists."""
    message = bpdu.parse(CAPTURED)
    assert message.flags == 0x3C
    assert message.root == bytes.fromhex("1000021122334455")
    assert message.rootCost == 0
    assert message.bridge == message.root
    assert message.portId == b"\x80\x01"
    assert (message.maxAge, message.hello, message.forwardDelay) == (40, 4, 0)
    assert bpdu.pack(bytes.fromhex("021122334455"), message) == CAPTURED


@given(
    st.integers(0, 255), st.binary(min_size=8, max_size=8), st.integers(0, 2**32 - 1),
    st.binary(min_size=8, max_size=8), st.integers(0, 4095), st.integers(0, 0xFFFF),
    st.one_of(st.none(), st.integers(0, 4094)),
)
def test_bpduRoundTrips(flags: int, root: bytes, cost: int, bridge: bytes, port: int,
                        age: int, vid: int | None) -> None:
    """Any BPDU, tagged or not, parses back to what was packed."""
    message = bpdu.Bpdu(flags, root, cost, bridge, bpdu.portId(port), age)
    packed = bpdu.pack(mac(1), message, vid)
    assert len(packed) == bpdu.LENGTH + (0 if vid is None else 4)
    assert bpdu.parse(packed) == message


@given(st.binary(max_size=60))
def test_bpduParserRefusesGarbageCleanly(data: bytes) -> None:
    """Arbitrary bytes after the BPDU address either parse or raise BpduError."""
    try:
        bpdu.parse(bpdu.BPDU_ADDRESS + data)
    except bpdu.BpduError:
        pass


def test_loopOfTwoCablesIsBroken() -> None:
    """
    Two switches joined twice: without FSTP a broadcast storms forever; with
    it, one end of the redundant cable discards and hosts get one copy.
    """
    plain = [Switch(), Switch()]
    loop = [FakeCable(plain[0], plain[1], "a"), FakeCable(plain[0], plain[1], "b")]
    hostA = FakeLink("host A")
    plug(plain[0], hostA)
    hostA.receive(frame(BROADCAST, mac(1)))
    assert pumpCables(loop, limit=1000) >= 1000

    switches = [fstpSwitch(1), fstpSwitch(2)]
    cables = [FakeCable(switches[0], switches[1], "a"), FakeCable(switches[0], switches[1], "b")]
    hosts = [FakeLink("host A"), FakeLink("host B")]
    plug(switches[0], hosts[0])
    plug(switches[1], hosts[1])
    settle(switches, cables)
    crossed, copies = broadcastCopies(hosts[0], hosts[1:], cables, b"once")
    assert copies == [1]
    assert crossed == 1
    discarding = [p for s in switches for p in s.vlans[0].discarding]
    assert discarding and all(p in (cables[1].ports + cables[0].ports) for p in discarding)


def test_rootIsTheLowestBridgeId() -> None:
    """The switch with the lowest priority becomes root; the other's root port faces it."""
    switches = [fstpSwitch(1), fstpSwitch(2, priority=0x1000)]
    cables = [FakeCable(switches[0], switches[1])]
    settle(switches, cables)
    trees = [s.spanningTree.trees[0] for s in switches]
    assert trees[1].isRoot() and not trees[0].isRoot()
    assert trees[0].root == b"\x10\x00" + switches[1].mac
    assert trees[0].rootPort is cables[0].ports[0]
    assert trees[0].rootCost == 20000000


def test_triangleCarriesOneCopyAndHealsWhenACableIsCut() -> None:
    """
    Three switches in a ring: each host gets each broadcast once; cutting a
    forwarding cable brings the redundant one back.
    """
    switches = [fstpSwitch(n) for n in (1, 2, 3)]
    cables = [
        FakeCable(switches[0], switches[1], "ab"),
        FakeCable(switches[1], switches[2], "bc"),
        FakeCable(switches[2], switches[0], "ca"),
    ]
    hosts = [FakeLink(f"host {n}") for n in range(3)]
    for switch, host in zip(switches, hosts):
        plug(switch, host)
    settle(switches, cables)
    crossed, copies = broadcastCopies(hosts[0], hosts[1:], cables, b"first")
    assert copies == [1, 1]
    assert crossed == 2
    blocked = [c for c in cables if any(p in s.vlans[0].discarding
                                        for s in switches for p in c.ports)]
    assert len(blocked) == 1
    forwarding = next(c for c in cables if c not in blocked)
    forwarding.cut()
    live = [c for c in cables if c is not forwarding]
    settle(switches, live)
    crossed, copies = broadcastCopies(hosts[0], hosts[1:], live, b"second")
    assert copies == [1, 1]


def test_ringHealsAtTheNextTickWhenThisSecondsChangeWasTold() -> None:
    """
    A switch whose root cable is cut in a second in which it already sent a
    topology change (here a host plugged in; in a ring that just settled,
    the settling's own changes) tells the other side of the ring at the
    next second, not at its next hello: that message is all its neighbour
    hears of the cut, and the ring stays split until it arrives.
    """
    switches = [fstpSwitch(n) for n in (1, 2, 3)]
    toRoot, _, _ = cables = [
        FakeCable(switches[0], switches[1], "ab"),
        FakeCable(switches[1], switches[2], "bc"),
        FakeCable(switches[2], switches[0], "ca"),
    ]
    hosts = [FakeLink(f"host {n}") for n in range(3)]
    plug(switches[0], hosts[0])
    plug(switches[2], hosts[2])
    settle(switches, cables)  # ends on a hello: the next is 4 s away
    plug(switches[1], hosts[1])
    toRoot.cut()
    live = cables[1:]
    pumpCables(live)
    settle(switches, live, seconds=1)
    _, copies = broadcastCopies(hosts[1], [hosts[0], hosts[2]], live, b"healed")
    assert copies == [1, 1]


class EventLines:
    """
    A console session's view of a switch's FSTP debug events
    (C{debug/add fstp}): the lines, without tags.
    """

    def __init__(self, switch: Switch) -> None:
        self.lines: list[str] = []
        switch.events.add(self, "fstp")

    def debugLine(self, line: str) -> None:
        self.lines.append(line.split(" ", 1)[1].rstrip("\n"))

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def test_cableComingAndGoingShowsAsWithVdeSwitch() -> None:
    """
    A cable between two switches shows up and goes away in the FSTP debug
    events with vde_switch's lines (those vde_autolink acts on): the root
    sees C{fstp/+} then C{fstp/-}; the other switch also sees its new root
    port forwarding, then the root forgotten.
    """
    switches = [fstpSwitch(1), fstpSwitch(2)]
    root, other = EventLines(switches[0]), EventLines(switches[1])
    cables = [FakeCable(switches[0], switches[1])]
    settle(switches, cables)
    assert root.take() == ["fstp/+ Port 0001 VLAN 00:00"]
    assert other.take() == [
        "fstp/+ Port 0001 VLAN 00:00",
        "fstp/root Port 0001 VLAN 00:00 -> 80:00:02:00:00:00:00:01",
        "fstp/status Port 0001 VLAN 00:00 learning+forwarding",
    ]
    cables[0].cut()
    assert root.take() == ["fstp/- Port 0001 VLAN 00:00"]
    assert other.take() == [
        "fstp/- Port 0001 VLAN 00:00",
        "fstp/root Port 0000 VLAN 00:00 -> 80:00:02:00:00:00:00:02",
    ]


def test_printingTreesWhileFstpIsOffReportsNoEvent() -> None:
    """C{fstp/print} with FSTP off shows the trees without a C{fstp/root} event."""
    switch = Switch(mac=bytes([2, 0, 0, 0, 0, 1]))
    switch.vlans.create(10)
    events = EventLines(switch)
    assert [tree.vlan.vid for tree in switch.spanningTree.allTrees()] == [0, 10]
    assert events.take() == []


def test_blockedCableGoingAwayIsNotReportedForwarding() -> None:
    """
    When the cable a switch blocks (to break a loop) is unplugged, the port
    is reported gone (C{fstp/-}) and never as forwarding, so vde_autolink
    does not take a dead link for a live one.
    """
    switches = [fstpSwitch(1), fstpSwitch(2)]
    cables = [FakeCable(switches[0], switches[1], "a"), FakeCable(switches[0], switches[1], "b")]
    settle(switches, cables)
    blocked = next(iter(switches[1].vlans[0].discarding))
    watcher = EventLines(switches[1])
    next(c for c in cables if blocked in c.ports).cut()
    assert watcher.take() == [f"fstp/- Port {blocked.number:04d} VLAN 00:00"]
    assert not switches[1].vlans[0].discarding


def test_twoPortsOnOneSegmentBlockOnlyOne() -> None:
    """
    Two ports of a switch joined (as two cables to one hub): the switch
    hears its own BPDUs and blocks one of them, not both, so the segment
    stays reachable; a broadcast does not go round.
    """
    switch = fstpSwitch(1)
    loop = FakeCable(switch, switch, "loop")
    host = FakeLink("host")
    plug(switch, host)
    settle([switch], [loop])
    assert len(switch.vlans[0].discarding) == 1
    assert switch.vlans[0].discarding < set(loop.ports)
    crossed, _ = broadcastCopies(host, [], [loop], b"once")
    assert crossed == 1


def test_hostPortsKeepForwarding() -> None:
    """Ports that never hear BPDUs are never blocked, whatever the tree does."""
    switches = [fstpSwitch(1), fstpSwitch(2)]
    cables = [FakeCable(switches[0], switches[1], "a"), FakeCable(switches[0], switches[1], "b")]
    hosts = [FakeLink(f"host {n}") for n in range(4)]
    ports = [plug(switches[n % 2], host) for n, host in enumerate(hosts)]
    settle(switches, cables, seconds=10 * HELLO)
    assert not any(p in s.vlans[0].discarding for s in switches for p in ports)


def test_taggedMembersGetTaggedBpdus() -> None:
    """A tagged member of VLAN 10 gets BPDUs tagged 10, one per VLAN it carries."""
    switch = fstpSwitch(1)
    switch.vlans.create(10)
    trunk = FakeLink("trunk")
    port = plug(switch, trunk)
    switch.vlans.addTagged(port, 10)
    trunk.takeSent()
    switch.tick(HELLO + 1)
    vids = sorted(f[14] << 8 | f[15] if f[12:14] == b"\x81\x00" else -1 for f in trunk.sent)
    assert vids == [-1, 10]
    assert all(bpdu.parse(f).bridge == b"\x80\x00" + switch.mac for f in trunk.sent)


def test_edgePortsGetNoBpdusAndIgnoreThem() -> None:
    """fstp/setedge: an edge port is sent no BPDUs and a BPDU there changes nothing."""
    switch = fstpSwitch(1)
    host = FakeLink("host")
    port = plug(switch, host)
    switch.spanningTree.setEdge(0, port.number, True)
    host.takeSent()
    switch.tick(HELLO + 1)
    assert host.sent == []
    better = bpdu.Bpdu(0x0C, b"\x00\x00" + mac(9), 0, b"\x00\x00" + mac(9), b"\x80\x01")
    host.receive(bpdu.pack(mac(9), better))
    assert switch.spanningTree.trees[0].isRoot()


def test_malformedBpduIsCountedAndDropped(caplog: pytest.LogCaptureFixture) -> None:
    """A short frame to the BPDU address is counted as malformed, never flooded."""
    switch = fstpSwitch(1)
    a, b = FakeLink("a"), FakeLink("b")
    port = plug(switch, a)
    plug(switch, b)
    b.takeSent()
    a.receive(bpdu.BPDU_ADDRESS + mac(3) + b"\x00\x27\x42\x42\x03\x00\x00\x02\x02")
    assert port.counters.drops["malformed"] == 1
    assert b.sent == []


#: A Linux bridge's IEEE 802.1D configuration BPDU as its TAP hands it over
#: (52 bytes, unpadded), and its topology change notification (21 bytes).
IEEE_CONFIG = bytes.fromhex(
    "0180c20000001a2b3c4d5e6f002642420300000000008000"
    "1a2b3c4d5e6f000000008000 1a2b3c4d5e6f8001000014000200 0f00".replace(" ", ""))
IEEE_TCN = bytes.fromhex("0180c20000001a2b3c4d5e6f0007424203000000 80".replace(" ", ""))
#: The same configuration as the head of an MSTP BPDU (version 3, type 2).
MSTP = IEEE_CONFIG[:19] + b"\x03\x02" + IEEE_CONFIG[21:]


@pytest.mark.parametrize(("message", "what"), [
    (IEEE_CONFIG, "an IEEE 802.1D configuration BPDU"),
    (IEEE_TCN, "an IEEE 802.1D topology change notification"),
    (MSTP, "an MSTP BPDU"),
], ids=["config", "tcn", "mstp"])
def test_ieeeBpduIsUnsupportedNotMalformed(message: bytes, what: str) -> None:
    """
    A Linux bridge's (or a hardware switch's) spanning tree BPDU is a sound
    frame of a protocol FSTP does not speak: counted as unsupported, saying
    what it is, not as malformed; never flooded.
    """
    switch = fstpSwitch(1)
    a, b = FakeLink("a"), FakeLink("b")
    port = plug(switch, a)
    plug(switch, b)
    b.takeSent()
    with capturedLogs() as events:
        a.receive(message)
    assert (port.counters.drops["unsupported"], port.counters.drops["malformed"]) == (1, 0)
    assert b.sent == []
    assert any(f"BPDU: {what}" in formatEvent(e) for e in events), events


def test_disablingMakesEveryPortForward() -> None:
    """fstp/setfstp 0 puts every blocked port back to forwarding."""
    switches = [fstpSwitch(1), fstpSwitch(2)]
    cables = [FakeCable(switches[0], switches[1], "a"), FakeCable(switches[0], switches[1], "b")]
    settle(switches, cables)
    assert any(s.vlans[0].discarding for s in switches)
    for switch in switches:
        switch.spanningTree.setEnabled(False)
    assert not any(s.vlans[0].discarding for s in switches)
    assert all(len(s.vlans[0].active) == 2 for s in switches)


def test_hubModeRefusesAndStopsFstp() -> None:
    """FSTP cannot start in hub mode, and hub mode stops it."""
    switch = fstpSwitch(1)
    switch.setHub(True)
    assert switch.stp is None
    with pytest.raises(SwitchError):
        switch.spanningTree.setEnabled(True)


def test_bpdusAreFloodedWhenFstpIsOff() -> None:
    """Without FSTP a BPDU is just multicast: flooded, as vde_switch does."""
    switch = Switch()
    a, b = FakeLink("a"), FakeLink("b")
    plug(switch, a)
    plug(switch, b)
    message = bpdu.pack(mac(3), bpdu.Bpdu(0, b"\x80\x00" + mac(3), 0, b"\x80\x00" + mac(3),
                                          b"\x80\x01"))
    a.receive(message)
    assert b.sent == [message]


def test_discardingPortNeitherLearnsNorForwards() -> None:
    """A frame arriving on a blocked port is dropped, counted, and not learned."""
    switches = [fstpSwitch(1), fstpSwitch(2)]
    cables = [FakeCable(switches[0], switches[1], "a"), FakeCable(switches[0], switches[1], "b")]
    host = FakeLink("host")
    plug(switches[0], host)
    settle(switches, cables)
    blocked = next(iter(switches[0].vlans[0].discarding | switches[1].vlans[0].discarding))
    switch = switches[0] if blocked in switches[0].vlans[0].discarding else switches[1]
    end = next(e for c in cables for e in c.ends if e.port is blocked)
    host.takeSent()
    end.receive(frame(BROADCAST, mac(7), payload=b"sneaky"))
    assert blocked.counters.drops["discarding"] == 1
    assert switch.fdb.lookup(0, mac(7)) is None
    pumpCables(cables)
    assert not any(b"sneaky" in f for f in host.sent)


def test_fstpOptionsReachTheSwitch() -> None:
    """--fstp, --priority and --macaddr give the switch its bridge id and start FSTP."""
    from twisted.internet.testing import MemoryReactor

    from vtwisted.app import Options

    options = Options()
    options.parseOptions(["--sock", "/tmp/vtw-unit-fstp", "--fstp", "--priority", "0x1000",
                          "--macaddr", "02:aa:bb:cc:dd:ee"])
    switch = options.build(MemoryReactor()).switch
    assert switch.stp is not None
    assert switch.stp.bridgeId == bytes.fromhex("100002aabbccddee")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--priority", "70000"], "--priority"),
        (["--priority", "high"], "--priority"),
        (["--macaddr", "01:00:00:00:00:01"], "--macaddr"),
        (["--macaddr", "02:00:00:00:01"], "--macaddr"),
        (["--fstp", "--hub"], "hub mode"),
    ],
)
def test_badFstpOptionsAreUsageErrors(argv: list[str], message: str) -> None:
    """A wrong FSTP option stops start-up with a message naming it."""
    from twisted.python import usage

    from vtwisted.app import Options

    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(["--sock", "/tmp/vtw-unit-fstp", *argv])


def test_deadRootIsForgottenNotCountedToInfinity() -> None:
    """
    Two switches whose root went away while BPDUs naming it were on the
    wire do not hand them to each other for ever with a growing cost: once
    the path is longer than 40 cables the root is forgotten, and they agree
    on a new one.
    """
    switches = [fstpSwitch(1), fstpSwitch(2), fstpSwitch(3)]
    a, b, c = (FakeCable(switches[0], switches[1], "a"), FakeCable(switches[0], switches[2], "b"),
               FakeCable(switches[1], switches[2], "c"))
    settle(switches, [a, b, c])
    a.cut()  # switch 2 asks switch 3 the way to the root, over c
    for frame_ in c.ends[0].takeSent():
        c.ends[1].receive(frame_)
    for frame_ in c.ends[1].takeSent():
        c.ends[0].receive(frame_)
    assert switches[1].spanningTree.trees[0].rootPort is c.ports[0]
    b.cut()  # ... and switch 3 loses the root while the answer is on its way
    assert pumpCables([c], limit=1000) < 1000, "BPDUs counting to infinity"
    settle(switches[1:], [c])
    trees = [s.spanningTree.trees[0] for s in switches[1:]]
    assert trees[0].isRoot()
    assert trees[1].root == trees[0].root and trees[1].rootCost == 20000000


@pytest.mark.parametrize("seed", range(30))
def test_cablesComingAndGoingAlwaysSettle(seed: int) -> None:
    """
    Three switches, cables plugged in and cut at random while the trees
    converge: once BPDUs settle, each connected group has the lowest id as
    its root and a broadcast reaches each host once, without a storm of
    frames or BPDUs.
    """
    rnd = random.Random(seed)
    switches = [fstpSwitch(n) for n in (1, 2, 3)]
    hosts = [FakeLink(f"host {n}") for n in range(3)]
    for switch, host in zip(switches, hosts):
        plug(switch, host)
    cables: list[FakeCable] = []
    for step in range(60):
        live = [c for c in cables if not c.ends[0].closed]
        if rnd.random() < 0.3 and len(live) < 5:
            a, b = rnd.sample(range(3), 2)
            cables.append(FakeCable(switches[a], switches[b], f"cable {step}"))
        elif rnd.random() < 0.2 and live:
            rnd.choice(live).cut()
        settle(switches, cables, seconds=1)
    settle(switches, cables, seconds=12 * HELLO)
    groups = [{n} for n in range(3)]
    for cable in cables:
        if not cable.ends[0].closed:
            a, b = (switches.index(end.switch) for end in cable.ends)
            merged = groups[a] | groups[b]
            for n in merged:
                groups[n] = merged
    for n, switch in enumerate(switches):
        lowest = switches[min(groups[n])]
        assert switch.spanningTree.trees[0].root == b"\x80\x00" + lowest.mac
    _, copies = broadcastCopies(hosts[0], hosts[1:], cables, b"probe")
    assert copies == [int(n in groups[0]) for n in (1, 2)]
