"""
A listener the switch stops frees its address before the stop returns, not
on the reactor's next turn (L{vtwisted.sockettools.stopListeningNow}): the
console runs a batch of commands (one read, a C{load} script) in one turn,
so C{port/del SPEC} then C{port/add SPEC} must find the address free.
These run without turning the reactor at all (as a batch does not).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import freeTcpPort, freeUdpPorts
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import Clock

from vtwisted.console import CommandInterpreter
from vtwisted.operations import SwitchOperations
from vtwisted.service import SwitchService
from vtwisted.sockettools import stopListeningNow
from vtwisted.switch import Switch

_reactor: Any = reactor


def _samePort(listen: Callable[[int], Any]) -> Callable[[], Any]:
    """
    C{listen} on a port the kernel picks (0), then again and again on the
    port it got: a port found free by a probe socket and closed could be
    taken by another process on the machine before the first listen.
    """
    port = 0

    def again() -> Any:
        nonlocal port
        listening = listen(port)
        port = listening.getHost().port
        return listening

    return again


def listener(kind: str, directory: Path) -> Callable[[], Any]:
    """
    How to listen, again and again, at one address of C{kind}: a Unix
    stream socket, TCP, UDP or a Unix datagram socket.
    """
    factory = Factory.forProtocol(Protocol)
    if kind == "unix":
        return lambda: _reactor.listenUNIX(str(directory / "s"), factory)
    if kind == "unixgram":
        return lambda: _reactor.listenUNIXDatagram(str(directory / "g"), DatagramProtocol())
    if kind == "tcp":
        return _samePort(lambda port: _reactor.listenTCP(port, factory, interface="127.0.0.1"))
    return _samePort(
        lambda port: _reactor.listenUDP(port, DatagramProtocol(), interface="127.0.0.1"))


@pytest.mark.parametrize("kind", ["unix", "tcp", "udp", "unixgram"])
def test_theAddressIsFreeWhenTheStopReturns(tmp_path: Path, kind: str) -> None:
    listen = listener(kind, tmp_path)
    first = listen()
    stopped = stopListeningNow(first)
    assert stopped.called and not first.connected
    assert first not in _reactor.getReaders()
    if kind == "unix":
        assert not (tmp_path / "s").exists()  # Twisted removed its file
    if kind == "unixgram":
        (tmp_path / "g").unlink()  # the dgram: port removes its own
    second = listen()  # raised CannotListenError before: the address was taken
    assert stopListeningNow(second).called
    assert stopListeningNow(second).called  # stopped already: nothing to do


def test_aFakePortIsLeftToItsOwnStop() -> None:
    class Fake:
        def stopListening(self) -> str:
            return "its own"

    assert stopListeningNow(Fake()).result == "its own"


@pytest.mark.parametrize("spec", ["qemu:unix:{d}/vm.sock", "pcap:listen:unix:{d}/lab.cap",
                                  "vhostuser:unix:{d}/vu.sock", "vde:{d}/lab"])
def test_delAndAddInOneBatchListensAgain(tmp_path: Path, spec: str) -> None:
    """
    C{port/del SPEC} and C{port/add SPEC} one after the other, no reactor
    turn between them: the second succeeds and a client can connect.
    """
    text = spec.format(d=tmp_path)
    service = SwitchService(Switch(8), reactor=_reactor, clock=Clock())
    service.startService()
    interpreter = CommandInterpreter(SwitchOperations(service, stop=lambda: None, mac=bytes(6)))
    path = text.rpartition(":")[2] + ("/ctl" if text.startswith("vde:") else "")
    try:
        assert interpreter.execute(f"port/add {text}").error is None
        removed, added = (interpreter.execute(f"port/{verb} {text}") for verb in ("del", "add"))
        assert removed.error is None and added.error is None, added.text
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    finally:
        service.stopService()
    assert not Path(path).exists()


#: Batches of commands on bound UDP or TCP ports: {vxlan} binds every
#: address's UDP port {udp} (the other ports' multicast stays on C{lo}).
BOUND = {
    "vxlan": ["port/add {vxlan}", "port/del {vxlan}", "port/add {vxlan}"],
    "vxlan-group": ["port/add vxlan:239.1.2.3:if=lo:dstport={udp}",
                    "port/del vxlan:239.1.2.3:if=lo:dstport={udp}",
                    "port/add vxlan:239.1.2.3:if=lo:dstport={udp}"],
    "vxlan-shared": ["port/add {vxlan}", "port/add {other}", "port/del {other}",
                     "port/add {other}", "port/del {vxlan}", "port/del {other}",
                     "port/add {other}"],
    "vxvde": ["port/add {vxvde}", "port/del {vxvde}", "port/add {vxvde}", "port/del {vxvde}",
              "port/add {vxlan}"],
    "mcast": ["port/add {mcast}", "port/del {mcast}", "port/add {mcast}", "port/del {mcast}",
              "port/add {vxlan}"],
    "slirp-tcp": ["port/add slirp:hostfwd=tcp\\:127.0.0.1\\:{tcp}-\\:22",
                  "port/del slirp:hostfwd=tcp\\:127.0.0.1\\:{tcp}-\\:22",
                  "port/add slirp:hostfwd=tcp\\:127.0.0.1\\:{tcp}-\\:22"],
    "slirp-udp": ["port/add slirp:hostfwd=udp\\:127.0.0.1\\:{udp}-\\:53",
                  "port/del slirp:hostfwd=udp\\:127.0.0.1\\:{udp}-\\:53",
                  "port/add slirp:hostfwd=udp\\:127.0.0.1\\:{udp}-\\:53"],
}


@pytest.mark.parametrize("kind", sorted(BOUND))
def test_boundPortsAreFreeWhenTheDelAnswers(kind: str) -> None:
    """
    C{vxlan:} (the last of the ports sharing its socket too), C{vxvde:},
    C{mcast:} and slirp's host forwards free their UDP or TCP port when
    C{port/del} answers: the same spec, or a C{vxlan:} port, takes it again
    in the same batch; once the switch stops, the ports are free at once.
    """
    (udp,), tcp = freeUdpPorts(1), freeTcpPort()
    names = {"udp": udp, "tcp": tcp, "vxlan": f"vxlan:remote=127.0.0.2:dstport={udp}",
             "other": f"vxlan:remote=127.0.0.2:vni=2:dstport={udp}",
             "vxvde": f"vxvde:239.1.2.4:if=lo:ttl=0:dstport={udp}",
             "mcast": f"mcast:230.0.0.7:{udp}:localaddr=127.0.0.1:ttl=0"}
    service = SwitchService(Switch(8), reactor=_reactor, clock=Clock())
    service.startService()
    interpreter = CommandInterpreter(SwitchOperations(service, stop=lambda: None, mac=bytes(6)))
    try:
        for line in BOUND[kind]:
            reply = interpreter.execute(line.format(**names))
            assert reply.error is None, (line, reply.text)
    finally:
        service.stopService()
    for sockType, number in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)):
        with socket.socket(socket.AF_INET, sockType) as probe:
            probe.bind(("127.0.0.1", number))
