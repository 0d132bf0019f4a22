"""
Bad input from an administrator never reaches a traceback: random arguments
to every console command, and random port specs, get a clear error.
"""

from __future__ import annotations

import pytest
from consolefakes import makeOperations
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from vlanports import port
from vnetpackets import UDP, kernelPacket

from vtwisted.console import CommandInterpreter
from vtwisted.consolecommands import COMMANDS
from vtwisted.errors import SwitchError
from vtwisted.spec import SpecError
from vtwisted.switch import Switch
from vtwisted.wire import vnet, vnetcheck

#: Commands that would touch the world with a valid argument (start ports,
#: read files, stop the switch); their parsing is covered by their own tests.
WORLDLY = {"port/add", "load", "shutdown", "logout"}
COMMAND_PATHS = sorted(c.path for c in COMMANDS if c.handler is not None and c.path not in WORLDLY)
ARGUMENTS = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["0", "1", "-1", "4095", "99999999999999999999", "0x10", "010",
                              "abc", "NONE", "ANY", "root", "1:2:3:4:5:6", "%", "\\:", ":",
                              "vde:/x", "=", ",", "10,20"]), max_size=4).map(" ".join),
)
PROP = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(st.sampled_from(COMMAND_PATHS), ARGUMENTS)
def test_everyCommandAnswersBadArgumentsClearly(path: str, argument: str) -> None:
    """
    No argument makes a command fail with an internal error (a traceback
    and 1005): bad ones get the errno that says what is wrong.
    """
    interpreter = CommandInterpreter(makeOperations()[0])
    reply = interpreter.execute(f"{path} {argument}")
    assert reply.error is None or "internal error" not in reply.error.message, reply.error


SPEC_WORDS = st.sampled_from(["vde", "tap", "nosuch", "", ":", "\\:", "=", "mode=", "mode=0777",
                              "vlan=", "vlan=5", "vlan=x", "trunk=1,2", "trunk=,", "mtu=0",
                              "mtu=99999999", "offload=maybe", "busypoll=-1", "group=",
                              "/tmp/x", "a" * 20, "port=3", "ports=1-"])


@PROP
@given(st.one_of(st.text(max_size=60), st.lists(SPEC_WORDS, max_size=5).map(":".join)))
@example("vde:/tmp/x:gr\xfcp=3")
def test_randomPortSpecsAreRefusedClearly(text: str) -> None:
    """
    Building a port service from any spec either works or raises an error
    that names the spec; nothing is started.
    """
    _, service, _ = makeOperations()
    try:
        service.makePortService(text)
    except (SpecError, SwitchError) as e:
        assert str(e)
    except OSError as e:
        pytest.fail(f"{text!r}: {e!r} while only validating")


def _mutated(base: bytes, changes: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(base)
    for offset, value in changes:
        data[offset % len(data)] = value
    return bytes(data[: max(cut, 0) or len(data)])


_BASES = [
    kernelPacket(bytes(3000), 1448).packet,
    kernelPacket(bytes(3000), 1448, v6=True).packet,
    kernelPacket(bytes(3000), 1000, proto=UDP).packet,
    kernelPacket(bytes(3000), 1448, vid=5).packet,
    kernelPacket(bytes(100), gso=False).packet,
    kernelPacket(bytes(100), gso=False, proto=UDP, vid=5).packet,
]
PACKETS = st.one_of(
    st.binary(max_size=120),
    st.builds(_mutated, st.sampled_from(_BASES),
              st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=4),
              st.integers(-3000, 3100)),
)


@PROP
@given(st.lists(st.tuples(st.integers(0, 4), PACKETS), max_size=25))
def test_switchSurvivesAnyFrame(sends: list[tuple[int, bytes]]) -> None:
    """
    Whatever the ports send (garbage, truncated or corrupted super-frames,
    tagged or not), the switch counts every frame (runts are only drops,
    as for vde_switch, which ignores them), never raises, never
    writes a packet a TAP would refuse, and never sends a runt or oversized
    plain frame.
    """
    switch = Switch()
    links = [
        port(switch, 0, (), False, True),
        port(switch, None, (5,), False, True),
        port(switch, 0, (), True, True),
        port(switch, 0, (5,), False, False),
        port(switch, 5, (), False, False),
    ]
    for i, data in sends:
        link = links[i]
        if link.vnetHeader:
            link.receivePacket(data)
        else:
            link.receive(data[vnet.HEADER_LENGTH :])
    frames = sum(len(data) >= vnet.HEADER_LENGTH + 14 for _, data in sends)
    assert sum(link.port.counters.inFrames for link in links) == frames
    for link in links:
        for packet in link.sentPackets:
            assert vnetcheck.validate(packet) is None, packet.hex()
        for f in link.sent:
            assert 14 <= len(f) <= link.port.maxFrame
