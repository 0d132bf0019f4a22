"""
The VDE control request and reply codec.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtwisted.wire import vdecontrol
from vtwisted.wire.vdecontrol import MalformedRequest, packRequest, parseRequest

paths = st.binary(min_size=1, max_size=100).map(
    lambda b: b"/" + bytes(c for c in b if c != 0)[:100]
)


@given(
    path=paths,
    port=st.one_of(st.none(), st.integers(0, 0xFFFFFF)),
    description=st.text(max_size=120).filter(lambda t: "\0" not in t),
)
def test_requestRoundTrips(path: bytes, port: int | None, description: str) -> None:
    """Whatever libvdeplug can ask for parses back to the same request."""
    data = packRequest(path, port, description)
    data = data[: vdecontrol.MAX_REQUEST]
    request = parseRequest(data)
    assert request.version == 3
    assert request.path == path
    assert request.port == port
    kept = description.encode()[: vdecontrol.MAX_DESCRIPTION]
    assert request.description == kept.decode("utf-8", "replace")


def test_capturedRequestBytes() -> None:
    """The type field matches the bytes captured from the real libvdeplug."""
    assert packRequest(b"/x", None)[8:12] == b"\x00\x00\x00\x00"
    assert packRequest(b"/x", 7)[8:12] == b"\x00\x07\x00\x00"
    assert packRequest(b"/x", 0)[8:12] == b"\x01\x00\x00\x00"
    assert packRequest(b"/x")[:8] == bytes.fromhex("cefaedfe03000000")


def test_versionOneRequestIsAccepted() -> None:
    """The legacy layout (MAC before the address) still works, as in vde_switch."""
    data = struct.pack("<II", vdecontrol.MAGIC, 0) + b"\x02" * 6
    data += vdecontrol.packSockaddr(b"/tmp/client") + b"old client"
    request = parseRequest(data)
    assert (request.version, request.port, request.path) == (1, None, b"/tmp/client")
    assert request.description == "old client"


@pytest.mark.parametrize(
    "data, complaint",
    [
        (b"\x00" * 130, "bad magic"),
        (struct.pack("<III", vdecontrol.MAGIC, 2, 0) + bytes(120), "unsupported protocol version"),
        (struct.pack("<III", vdecontrol.MAGIC, 4, 0) + bytes(120), "protocol version 4"),
        (packRequest(b"/x")[:100], "too short"),
        (packRequest(b"/x") + b"d" * 200, "longer than 256"),
        (struct.pack("<III", vdecontrol.MAGIC, 3, 5) + vdecontrol.packSockaddr(b"/x"), "type 5"),
        (
            struct.pack("<IIIH", vdecontrol.MAGIC, 3, 0, 1) + bytes(108),
            "empty client socket path",
        ),
        (packRequest(b"relative/path"), "not absolute"),
        (
            struct.pack("<IIIH", vdecontrol.MAGIC, 3, 0, 2) + b"/x".ljust(108, b"\0"),
            "not AF_UNIX",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformedRequestsSayWhatIsWrong(data: bytes, complaint: str) -> None:
    """Each malformed request is refused with a sentence naming the problem."""
    with pytest.raises(MalformedRequest) as e:
        parseRequest(data)
    assert complaint in str(e.value)


@given(st.binary(max_size=300))
def test_garbageOnlyEverRaisesMalformedRequest(data: bytes) -> None:
    """Random bytes never crash the parser with anything but MalformedRequest."""
    try:
        parseRequest(data)
    except MalformedRequest:
        pass


def test_replyIsOneSockaddr() -> None:
    """The reply is exactly 110 bytes: AF_UNIX then the NUL-padded path."""
    reply = vdecontrol.packReply(b"/tmp/vde.ctl/001.7")
    assert len(reply) == 110 and reply[:2] == b"\x01\x00"
    assert vdecontrol.parseReply(reply) == b"/tmp/vde.ctl/001.7"
