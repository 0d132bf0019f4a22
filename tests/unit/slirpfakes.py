"""
Fakes for the slirp router tests: a recorder of what a L{SlirpRouter}
hands the switch, engines that only remember their calls, a router built
with both and no reactor (L{makeRouter} adds a DHCP server), and the
guest's IPv4 frames to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from twisted.internet.task import Clock

from vtwisted.slirp.config import ResolvConf, SlirpConfig, readConfig
from vtwisted.slirp.dhcp import DhcpServer
from vtwisted.slirp.router import SlirpRouter, macFor
from vtwisted.spec import PortSpec
from vtwisted.wire import icmp, ipv4


class Recorder:
    """
    What a router hands the switch, and what it counts.
    """

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.packets: list[bytes] = []
        self.drops: list[tuple[str, str]] = []


class FakeEngine:
    """
    A TCP, UDP or ICMP engine that records each call the router makes.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def segmentReceived(self, *args: Any) -> None:
        self.calls.append(args)

    def datagramReceived(self, *args: Any) -> None:
        self.calls.append(args)

    def echoRequest(self, *args: Any) -> None:
        self.calls.append(args)

    def errorReceived(self, *args: Any) -> None:
        self.calls.append(("errorReceived", *args))

    def neighbourUnanswered(self, address: bytes) -> None:
        self.calls.append(("neighbourUnanswered", address))

    def datagramsReceived(self, src: bytes, srcPort: int, dst: bytes, dstPort: int,
                          payloads: list[bytes], packet: Any) -> None:
        """
        Record each datagram as its own L{datagramReceived} call.
        """
        for payload in payloads:
            self.calls.append((src, srcPort, dst, dstPort, payload, packet))


def recordingRouter(options: str = "",
                    clock: Any = None) -> tuple[SlirpRouter, Recorder, SlirpConfig]:
    """
    A router for C{slirp<options>} that reports to a L{Recorder}, with
    L{FakeEngine}s for TCP, UDP and ICMP and no resolv.conf.
    """
    config = readConfig(PortSpec("slirp" + options))
    seen = Recorder()
    router = SlirpRouter(config, clock or Clock(), seen.frames.append, seen.packets.append,
                         lambda reason, message: seen.drops.append((reason, message)),
                         ResolvConf("/nonexistent"))
    router.tcp, router.udp, router.icmp = FakeEngine(), FakeEngine(), FakeEngine()
    return router, seen, config


@contextlib.contextmanager
def noFailuresLogged() -> Iterator[None]:
    """
    Fail if anything logs a failure meanwhile: the router catches and logs
    what its handlers raise, so a test of bad input must look at the log.
    """
    from twisted.logger import ILogObserver, globalLogPublisher
    from zope.interface import provider

    failures: list[Any] = []

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observer)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not failures, failures[0].getTraceback()


GUEST_MAC = bytes.fromhex("020000000015")
GUEST = bytes([10, 0, 2, 15])
GATEWAY = bytes([10, 0, 2, 2])
DNS = bytes([10, 0, 2, 3])
GW_MAC = macFor(GATEWAY)


def makeRouter(options: str = "", clock: Any = None) -> tuple[SlirpRouter, Recorder]:
    router, seen, config = recordingRouter(options, clock)
    router.dhcp = DhcpServer(gateway=GATEWAY, nameserver=DNS, netmask=config.netmask,
                             poolStart=config.poolStart)
    return router, seen


def ipFrame(dst: bytes, protocol: int, payload: bytes, src: bytes = GUEST,
            dstMac: bytes = GW_MAC, flags: int = 0, offset: int = 0) -> bytes:
    header = ipv4.IPv4Header(0, 20 + len(payload), 1, flags, offset, 64, protocol, 0,
                             src, dst).pack()
    return dstMac + GUEST_MAC + b"\x08\x00" + header + payload


def echoRequest(payload: bytes = b"ping!") -> bytes:
    return icmp.ICMPMessage(icmp.ECHO_REQUEST, 0, 0, b"\x12\x34\x00\x01", payload).pack()
