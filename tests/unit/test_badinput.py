"""
Bad input from an administrator never reaches a traceback: random arguments
to every console command, and random port specs, get a clear error.
"""

from __future__ import annotations

import pytest
from consolefakes import makeOperations
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vtwisted.console import CommandInterpreter
from vtwisted.consolecommands import COMMANDS
from vtwisted.errors import SwitchError
from vtwisted.spec import SpecError

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
