"""
A slirp TCP engine (L{vtwisted.slirp.tcp.TcpNat}) under test: a L{Harness}
with a fake router and a memory reactor, a scripted guest, host transports
that record what the engine does to them, and the addresses and options the
tests of the engine share.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection

from vtwisted.slirp.tcp import TcpNat
from vtwisted.testing import FakeGuestNetwork
from vtwisted.wire.ipv4 import IPv4Header
from vtwisted.wire.ipv6 import IPv6Header
from vtwisted.wire.tcp import ACK, OPT_MSS, OPT_WINDOW_SCALE, PSH, SYN, TCPHeader

#: What a lossy channel in the property tests does to each segment.
FATES = st.sampled_from(["deliver", "drop", "duplicate", "delay"])

GUEST = bytes([10, 0, 2, 15])
GATEWAY = bytes([10, 0, 2, 2])
DNS = bytes([10, 0, 2, 3])
REMOTE = bytes([192, 0, 2, 7])
GUEST_PORT = 40000
GUEST_ISN = 1000
MASK = 0xFFFFFFFF


class HostTransport(StringTransportWithDisconnection):
    """
    A host TCP transport: records writes, half-closes, pauses and aborts.
    """

    #: How much Twisted's transports read at once and buffer before pausing.
    bufferSize = 1 << 16

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 80)) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", *peer), lenient=True)
        self.writeClosed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def mssOption(mss: int) -> bytes:
    return bytes((OPT_MSS, 4)) + mss.to_bytes(2, "big")


SCALE_OPTION = bytes((1, OPT_WINDOW_SCALE, 3, 7))


def ipPacket(src: bytes, dst: bytes, segment: bytes) -> bytes:
    """
    An IPv4 or IPv6 packet (by the address length) carrying C{segment}.
    """
    if len(src) == 16:
        return IPv6Header(0, 0, len(segment), 6, 64, src, dst).pack() + segment
    return IPv4Header(0, 20 + len(segment), 1, 2, 0, 64, 6, 0, src, dst).pack() + segment


class Harness:
    """
    A L{TcpNat} with a fake router and reactor, and a scripted guest.
    """

    def __init__(self, guest: bytes = GUEST, dst: bytes = GATEWAY, **network: Any) -> None:
        self.clock = MemoryReactorClock()
        self.network = FakeGuestNetwork(**network)
        self.nat = TcpNat(self.network, self.clock)
        self.guest = guest
        self.dst = dst
        self.dport = 80
        self.sport = GUEST_PORT
        self.seq = GUEST_ISN + 1
        self.ours = 0

    def send(self, flags: int, seq: int | None = None, ack: int | None = None,
             payload: bytes = b"", window: int = 65535, options: bytes = b"",
             dst: bytes | None = None, dport: int | None = None) -> bytes:
        """
        Send a segment from the guest; sequence and ack default to the
        guest's current ones.
        """
        header = TCPHeader(
            self.sport, self.dport if dport is None else dport,
            (self.seq if seq is None else seq) & MASK,
            (self.ours if ack is None else ack) & MASK, flags, window, 0, 0, options)
        segment = header.pack() + payload
        packet = ipPacket(self.guest, dst or self.dst, segment)
        self.nat.segmentReceived(self.guest, dst or self.dst, segment, packet)
        return packet

    def data(self, payload: bytes, window: int = 65535) -> None:
        """
        Send in-order data from the guest and advance its sequence number.
        """
        self.send(ACK | PSH, payload=payload, window=window)
        self.seq += len(payload)

    def syn(self, options: bytes = b"", dst: bytes | None = None, dport: int | None = None,
            window: int = 65535) -> bytes:
        return self.send(SYN, seq=GUEST_ISN, ack=0, options=options, dst=dst, dport=dport,
                         window=window)

    def connectHost(self, transport: HostTransport | None = None) -> HostTransport:
        """
        Complete the host connect the engine started last.
        """
        factory = self.clock.tcpClients[-1][2]
        transport = transport or HostTransport()
        protocol = factory.buildProtocol(transport.getPeer())
        assert protocol is not None
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def open(self, options: bytes = b"", window: int = 65535,
             transport: HostTransport | None = None) -> HostTransport:
        """
        A full handshake (the host's side on C{transport}, if given);
        returns the host transport.
        """
        self.syn(options, window=window)
        transport = self.connectHost(transport)
        (synAck,) = self.take()
        self.ours = (synAck.seq + 1) & MASK
        self.send(ACK, window=window)
        return transport

    def take(self) -> list[TCPHeader]:
        return [header for _, _, header, _, _ in self.network.takeTcp()]

    def takeAll(self) -> list[tuple[TCPHeader, bytes]]:
        return [(header, payload) for _, _, header, payload, _ in self.network.takeTcp()]

    def turn(self) -> None:
        """
        Let the reactor turn end (callLater(0) calls run).
        """
        self.clock.advance(0)

    def ack(self, upTo: int, window: int = 65535) -> None:
        self.send(ACK, ack=upTo, window=window)

    def host(self, transport: HostTransport) -> Any:
        return transport.protocol
