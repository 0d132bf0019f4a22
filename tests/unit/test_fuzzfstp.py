"""
A switch running FSTP driven through random sequences: BPDUs with random
fields (roots, costs, senders, port ids, flags, tagged or not) from random
ports, data frames, ports created, removed, moved between VLANs, made edges
and given bonuses, links plugged and unplugged, FSTP turned off and on, and
the clock ticking.  Nothing raises or logs a failure, no frame leaves by a
port discarding in its VLAN, and the console's C{fstp/print} answers at
every step.

The examples are few by default; set C{VTWISTED_FUZZ_EXAMPLES} for a long run.
"""

from __future__ import annotations

import os
from typing import Any

from consolefakes import makeOperations
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from slirpfakes import noFailuresLogged

from vtwisted.console import CommandInterpreter
from vtwisted.testing import FakeLink, frame, plug
from vtwisted.wire import bpdu

EXAMPLES = int(os.environ.get("VTWISTED_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

OUR_MAC = bytes.fromhex("00ff01020304")
BRIDGES = [bytes.fromhex("0000020000000001"), bytes.fromhex("8000020000000002"),
           bytes.fromhex("800000ff01020304"), bytes.fromhex("ffff020000000003"),
           bytes.fromhex("8000020000000001")]
VIDS = st.sampled_from([None, None, None, 0, 5, 7, 4095])

BPDUS = st.tuples(st.just("bpdu"), st.integers(0, 5), VIDS, st.integers(0, 255),
                  st.sampled_from(BRIDGES), st.sampled_from([0, 1, 19, 0xFFFFFFFF]),
                  st.sampled_from(BRIDGES), st.integers(0, 0xFFFF))
DATA = st.tuples(st.just("data"), st.integers(0, 5), VIDS,
                 st.sampled_from([b"\xff" * 6, bytes.fromhex("02000000000a"),
                                  bytes.fromhex("02000000000b")]),
                 st.sampled_from([bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")]))
COMMANDS = st.tuples(st.just("command"), st.sampled_from([
    "port/create {p}", "port/remove {p}", "vlan/create {v}", "vlan/remove {v}",
    "vlan/addport {v} {p}", "vlan/delport {v} {p}", "port/setvlan {p} {v}",
    "fstp/setedge {v} {p} 1", "fstp/setedge {v} {p} 0", "fstp/bonus {v} {p} {c}",
    "fstp/setfstp 0", "fstp/setfstp 1", "port/sethub 1", "port/sethub 0", "hash/print",
    "vlan/allprint", "port/allprint", "fstp/print {v}", "fstp/showinfo"]),
    st.integers(0, 8), st.sampled_from([0, 5, 7, 4095]), st.sampled_from([0, 1, -1, 1 << 31]))
LINKS = st.tuples(st.sampled_from(["plug", "unplug"]), st.integers(0, 5))
TICKS = st.tuples(st.just("tick"), st.sampled_from([1, 2, 4, 9, 13, 60]))
ACTIONS = st.lists(st.one_of(BPDUS, DATA, COMMANDS, LINKS, TICKS), max_size=60)


class Rig:
    """
    A switch with FSTP on, its console, and up to six fake links.
    """

    def __init__(self) -> None:
        self.ops, self.service, _ = makeOperations(numPorts=8)
        self.switch = self.service.switch
        self.console = CommandInterpreter(self.ops)
        self.command("fstp/setfstp 1")
        self.links: list[FakeLink | None] = [None] * 6
        self.now = self.switch.now
        for index in range(4):
            self.plug(index)

    def command(self, line: str) -> str:
        text = self.console.execute(line).text
        assert text.splitlines()[-1][:1] == "1", (line, text)
        assert "internal error" not in text, (line, text)
        return text

    def plug(self, index: int) -> None:
        if self.links[index] is None:
            link = FakeLink(f"link{index}")
            plug(self.switch, link)
            if link.port is not None:
                self.links[index] = link

    def unplug(self, index: int) -> None:
        link = self.links[index]
        if link is not None:
            self.links[index] = None
            link.close()

    def do(self, action: tuple[Any, ...]) -> None:
        kind = action[0]
        if kind in ("plug", "unplug"):
            getattr(self, kind)(action[1])
        elif kind == "tick":
            self.now += action[1]
            self.switch.tick(self.now)
        elif kind == "command":
            _, template, port, vid, cost = action
            self.command(template.format(p=port, v=vid, c=cost))
        elif kind == "bpdu":
            _, index, vid, flags, root, cost, bridge, portId = action
            link = self.links[index]
            if link is not None:
                message = bpdu.Bpdu(flags, root, cost, bridge, portId.to_bytes(2, "big"))
                link.receive(bpdu.pack(bridge[2:], message, vid))
        else:
            self.data(*action[1:])
        self.check()

    def data(self, index: int, vid: int | None, dst: bytes, src: bytes) -> None:
        source = self.links[index]
        if source is None:
            return
        for link in self.links:
            if link is not None:
                link.takeSent()
        payload = os.urandom(8) + bytes(38)
        source.receive(frame(dst, src, payload=payload, vid=vid))
        if self.switch.hub:
            return  # a hub repeats every frame to every port, as vde_switch's does
        port = source.port
        vlan = self.switch.vlans.get(vid) if vid else port.untaggedVlan
        for link in self.links:
            if link is None or link is source:
                continue
            for sent in link.takeSent():
                if payload not in sent:
                    continue
                assert vlan is not None, f"a frame of VLAN {vid}, which does not exist"
                assert port not in vlan.discarding, (
                    f"port {port.number} discards in VLAN {vlan.vid}, yet forwarded")
                assert link.port not in vlan.discarding, (
                    f"a frame of VLAN {vlan.vid} left by port {link.port.number}, discarding")

    def check(self) -> None:
        self.command("fstp/print")


@FUZZ
@given(actions=ACTIONS)
def test_fstpSequences(actions: list[tuple[Any, ...]]) -> None:
    """
    Random BPDUs, frames, port and VLAN changes and ticks: no failure, no
    frame out of a discarding port, C{fstp/print} always answers.
    """
    with noFailuresLogged():
        rig = Rig()
        for action in actions:
            note(repr(action))
            rig.do(action)
