"""
The states of a relayed TCP connection, and its opening: the SYN/SYN-ACK
exchange with the guest, whichever side starts it, and the segment sizes
both sides agree on.

Theory of operation: the family of a connection is the length of its
guest-side addresses (4 bytes IPv4, 16 IPv6), fixed when the connection is
made.  It sets the headers an MSS leaves room for (40 bytes of IPv4 and
TCP, 60 of IPv6 and TCP): the MSS we advertise is the router's MTU less
those, the guest's is capped to the same, and a SYN without an MSS option
means 536 bytes over IPv4 (RFC 9293) or 1220 over IPv6 (RFC 8200's minimum
MTU less the headers).  Nothing per segment depends on the family.

A guest's SYN (L{Handshake.guestSyn}) is answered only once the host
connect succeeded (L{Handshake.hostConnected}); a host client of a port
forward (L{Handshake.forwardAccepted}) is paused while our SYN waits for
the guest's SYN-ACK.  One timer, the connection's only one
(L{vtwisted.slirp.tcpsend.SendSide.armTimer}), repeats the SYN or SYN-ACK
with backoff until L{HANDSHAKE_RETRIES}.

A forward's SYN that the guest refuses (a RST, or an ICMP destination
unreachable quoting it, a firewall's reject: L{vtwisted.slirp.guesterrors}),
or that goes unanswered
(no SYN-ACK after the retransmissions, or L{NEIGHBOUR_TRIES} lookups of
the guest's MAC without an answer: no guest has that address), resets the
host client rather than closing it (libslirp closes it: the client reads an
empty reply, as if the service had answered nothing), so the client's
C{connect}ed socket fails with C{ECONNRESET}, the nearest a host client can
get to the C{ECONNREFUSED} or C{EHOSTUNREACH} a direct connect would get.
"""

from __future__ import annotations

import struct
from typing import Any

from vtwisted.slirp.tcpsend import (
    INITIAL_CWND,
    INITIAL_RTO,
    MASK,
    SCALE_SHIFT,
    SendSide,
)
from vtwisted.wire.tcp import (
    ACK,
    OPT_MSS,
    OPT_SACK_PERMITTED,
    OPT_WINDOW_SCALE,
    RST,
    SYN,
    iterOptions,
)

#: The guest's MSS when its SYN has no MSS option, over IPv4 (RFC 9293).
DEFAULT_MSS = 536
#: The same over IPv6: RFC 8200's minimum MTU, 1280, less 60 bytes of headers.
DEFAULT_MSS6 = 1220

_MSS_OPTION = struct.Struct("!BBH")


def synOptions(mss: int, scale: bool, sack: bool = False) -> bytes:
    """
    The options of our SYN or SYN-ACK: an MSS, a window scale if C{scale},
    SACK permitted if C{sack} (we send SACK blocks and read the guest's).
    """
    options = _MSS_OPTION.pack(OPT_MSS, 4, mss)
    if scale:
        options += bytes((1, OPT_WINDOW_SCALE, 3, SCALE_SHIFT))
    if sack:
        options += bytes((1, 1, OPT_SACK_PERMITTED, 2))
    return options


def readSynOptions(options: bytes, default: int = DEFAULT_MSS) -> tuple[int, int | None]:
    """
    The MSS (C{default} if absent: L{DEFAULT_MSS} for IPv4, L{DEFAULT_MSS6}
    for IPv6) and window scale shift (L{None} if absent) of a SYN's options.

    @raise vtwisted.wire.tcp.TCPError: unreadable options.
    """
    mss, shift = default, None
    for kind, value in iterOptions(options):
        if kind == OPT_MSS and len(value) == 2:
            mss = max(int.from_bytes(value, "big"), 64)
        elif kind == OPT_WINDOW_SCALE and len(value) == 1:
            shift = min(value[0], 14)
    return mss, shift


CONNECTING = "connecting"
SYN_RECEIVED = "syn-received"
SYN_SENT = "syn-sent"
ESTABLISHED = "established"
TIME_WAIT = "time-wait"
CLOSED = "closed"

#: How a forward's SYN failed (L{Handshake.forwardFailed}): the guest refused it
#: (a RST or an ICMP destination unreachable), answered it with another ICMP
#: error (time exceeded, parameter problem), or did not answer.
REFUSED, FAILED, UNANSWERED = "refused", "failed", "unanswered"

HANDSHAKE_RTO = 1.0
#: Retransmissions of a SYN or SYN-ACK before giving up.
HANDSHAKE_RETRIES = 4
#: Unanswered ARP or neighbour lookups of a forward's guest before giving up
#: (a Linux host's connect fails after three solicitations).
NEIGHBOUR_TRIES = 3
#: Bytes of IP and TCP headers (without options) an MSS leaves room for.
HEADERS = 40
HEADERS6 = 60
#: Bytes read from a host socket per system call: several super-frames.
READ_SIZE = 1 << 20


class Handshake(SendSide):
    """
    The opening of a connection; mixed into
    L{vtwisted.slirp.tcpconnection.TcpConnection}, which provides
    L{forget}, L{segmentReceived} and the receiving state.

    @ivar headers: L{HEADERS} or L{HEADERS6}, by the connection's family.
    @ivar defaultMss: the guest's MSS when its SYN names none.
    """

    nat: Any
    network: Any
    key: tuple[bytes, int, bytes, int]
    state: str
    connector: Any
    synPacket: bytes
    irs: int
    rcvNxt: int
    rcvEdge: int
    rcvShift: int
    retries: int
    transport: Any

    def initHandshake(self, v6: bool) -> None:
        """
        Size segments for a guest of IPv6 if C{v6}, else IPv4, before its
        SYN tells its MSS.
        """
        self.headers = HEADERS6 if v6 else HEADERS
        #: The guest takes SACK options (its SYN or SYN-ACK said so).
        self.sackOk = False
        self.defaultMss = DEFAULT_MSS6 if v6 else DEFAULT_MSS
        self.setMss(self.defaultMss)
        #: Unanswered neighbour lookups of the guest while our SYN waits.
        self.lookups = 0

    # Hooks the connection provides.

    def forget(self) -> None:
        raise NotImplementedError()

    def segmentReceived(self, header: Any, payload: memoryview) -> None:
        raise NotImplementedError()

    # Sizes.

    def ourMss(self) -> int:
        """
        The MSS we advertise: the MTU less the IP and TCP headers.
        """
        return self.network.mtu - self.headers

    def setMss(self, guestMss: int) -> None:
        """
        Size our segments for a guest that takes C{guestMss} bytes.
        """
        most = self.ourMss()
        mss = self.mss = min(guestMss, most)
        largest = self.network.maxSegment
        if largest > most:
            self.segmentSize = largest // mss * mss
        else:
            self.segmentSize = min(mss, largest)
        self.cwnd = max(INITIAL_CWND, 10 * mss)

    def takeSynOptions(self, options: bytes) -> None:
        """
        Adopt the guest's MSS and window scale from its SYN or SYN-ACK.

        @raise vtwisted.wire.tcp.TCPError: unreadable options.
        """
        mss, shift = readSynOptions(options, self.defaultMss)
        self.sackOk = any(kind == OPT_SACK_PERMITTED for kind, _ in iterOptions(options))
        self.setMss(mss)
        if shift is not None:
            self.sndShift, self.rcvShift = shift, SCALE_SHIFT

    # The guest opens.

    def guestSyn(self, seq: int, options: bytes, packet: bytes) -> None:
        """
        Take the guest's SYN (before the host connect starts).
        """
        self.takeSynOptions(options)
        self.irs = seq
        self.rcvNxt = self.rcvEdge = (seq + 1) & MASK
        self.synPacket = packet

    def hostConnected(self, transport: Any) -> None:
        """
        The host connect succeeded: answer the guest's SYN.
        """
        self.connector = None
        self.synPacket = b""
        if self.state != CONNECTING:
            transport.abortConnection()
            return
        self.transport = transport
        readLarger(transport, self.nat.share)
        transport.registerProducer(self, True)
        self.state = SYN_RECEIVED
        self.sendSynAck()
        self.armTimer(HANDSHAKE_RTO)

    def sendSynAck(self) -> None:
        self.emit(0, SYN | ACK, options=synOptions(self.ourMss(), bool(self.rcvShift),
                                                   self.sackOk))

    def connectFailed(self, code: int | None) -> None:
        """
        The host connect failed: RST if refused (C{code} None), else ICMP
        destination unreachable with C{code}.
        """
        self.connector = None
        if self.state != CONNECTING:
            return
        if code is None:
            self.nat.refused += 1
            self.nat.sendReset(self.key, 0, (self.irs + 1) & MASK, RST | ACK)
        else:
            self.nat.unreachable += 1
            self.network.sendUnreachable(self.synPacket, code)
        self.forget()

    def synReceivedSegment(self, header: Any, payload: memoryview) -> None:
        """
        A segment from the guest while our SYN-ACK waits for its ACK.
        """
        flags = header.flags
        if flags & SYN:
            if header.seq == self.irs:
                self.sendSynAck()
            return
        if not flags & ACK:
            return
        if header.ack != (self.iss + 1) & MASK:
            self.nat.sendReset(self.key, header.ack, 0, RST)
            return
        self.establish(header.window << self.sndShift)
        self.nat.opened += 1
        self.segmentReceived(header, payload)

    # A host client of a forward opens.

    def forwardAccepted(self, transport: Any) -> None:
        """
        A host client of a port forward connected: pause it and send our SYN.
        """
        self.transport = transport
        self.readingPaused = True
        transport.pauseProducing()
        self.state = SYN_SENT
        self.sendSyn()
        self.armTimer(HANDSHAKE_RTO)

    def sendSyn(self) -> None:
        self.emit(0, SYN, options=synOptions(self.ourMss(), True, True))

    def forwardFailed(self, why: str, outcome: str = UNANSWERED) -> None:
        """
        The guest refused our SYN (a RST or an ICMP error: C{outcome}
        L{REFUSED} or L{FAILED}), did not answer it, or is not there: reset
        the host client (C{abortConnection}, so its socket gets
        C{ECONNRESET}, as from a host whose port is closed, not an empty
        reply), count it, and log it once until a forward to that guest
        port works (L{vtwisted.slirp.tcp.TcpNat.forwardFailed}).
        """
        transport = self.transport
        self.forget()
        self.nat.forwardFailed(self.key, why, outcome)
        if transport is not None:
            transport.abortConnection()

    def neighbourUnanswered(self) -> None:
        """
        The guest's address did not answer ARP or neighbour solicitation
        while our SYN waited for it: after L{NEIGHBOUR_TRIES} lookups in a
        row, give up as a host's kernel would (its connect fails with
        C{EHOSTUNREACH} after three), not after every SYN retransmission.
        """
        self.lookups += 1
        if self.lookups >= NEIGHBOUR_TRIES:
            self.forwardFailed("is not there (no answer to ARP or neighbour solicitation)")

    def synSentSegment(self, header: Any) -> None:
        """
        A segment from the guest while our SYN waits for its SYN-ACK.
        """
        flags = header.flags
        if flags & ACK and header.ack != (self.iss + 1) & MASK:
            self.nat.sendReset(self.key, header.ack, 0, RST)
            return
        if flags & (SYN | ACK) != SYN | ACK:
            return
        self.takeSynOptions(header.options)
        self.irs = header.seq
        self.rcvNxt = self.rcvEdge = (header.seq + 1) & MASK
        self.establish(header.window)
        self.nat.opened += 1
        self.nat.forwardWorked(self.key)
        self.emit(1, ACK)
        readLarger(self.transport, self.nat.share)
        self.transport.registerProducer(self, True)
        self.readingPaused = False
        self.transport.resumeProducing()
        self.output()

    # Either way.

    def handshakeTimeout(self) -> None:
        """
        Resend the SYN or SYN-ACK with backoff; give up after a few.
        """
        if self.state not in (SYN_SENT, SYN_RECEIVED):
            return
        self.retries += 1
        if self.retries > HANDSHAKE_RETRIES:
            if self.state == SYN_SENT:
                self.forwardFailed("did not answer its SYN")
            else:
                self.abort(resetGuest=True)
            return
        if self.state == SYN_SENT:
            self.sendSyn()
        else:
            self.sendSynAck()
        self.armTimer(HANDSHAKE_RTO * 2 ** self.retries)

    def establish(self, window: int) -> None:
        """
        The handshake completed.
        """
        self.state = ESTABLISHED
        self.stopTimer()
        self.sndUna = 1
        self.sndWnd = self.maxWnd = window
        self.rto = INITIAL_RTO
        self.backoff = 0

    def sendAllowed(self) -> bool:
        return self.state == ESTABLISHED


def readLarger(transport: Any, share: int = READ_SIZE) -> None:
    """
    Make C{transport} read up to L{READ_SIZE} bytes at a time (Twisted's
    default is 64 KB), so a fast host sender costs fewer system calls and
    fills whole super-frames; at most C{share}, what the connection may
    buffer (L{vtwisted.slirp.tcp.TcpNat.share}).
    """
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = min(READ_SIZE, share)
