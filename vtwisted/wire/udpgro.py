"""
Receive coalescing for UDP: runs of datagrams of one flow, read one by one
from a TAP, become one USO super-frame (what Linux calls UDP GRO).

Theory of operation: a switch pays a system call per packet it writes to a
TAP, and for small datagrams that is most of its cost.  A TAP that
negotiated USO takes a C{GSO_UDP_L4} packet instead: one virtio-net header,
one set of Ethernet, IP and UDP headers, and the payloads of up to 64
datagrams of C{gso_size} bytes each, which the receiving kernel cuts back
into the original datagrams.  L{UdpCoalescer} watches the packets of one
read batch in order, keeps one run per flow (addresses and ports, up to
L{MAX_FLOWS} flows), and merges the datagrams of a flow that follow each
other in it when the kernel's cut gives them back exactly:

  - an untagged IPv4 (20-byte header, not a fragment, valid header
    checksum) or IPv6 (no extension header) UDP datagram with a partial
    checksum (C{NEEDS_CSUM}, csum_start at the UDP header), as Linux hands
    every UDP datagram to a TAP with C{TUN_F_CSUM}; lengths consistent;
  - every header byte equal to the run's first datagram but for the IPv4 id
    and header checksum: same addresses, ports, TOS, TTL, DF, flow label,
    length, and the same partial checksum;
  - IPv4 ids consecutive, as the cut numbers them (the first one's, then
    one more per segment);
  - at most L{USO_MAX_SEGMENTS} datagrams and 64 KB of payload.

A datagram that does not continue its flow's run ends it: the run is handed
on first, so each flow keeps its order (different flows may not).  A run of
one is handed on untouched, and is not even checked until a second datagram
of its flow comes, so traffic that forms no runs costs little; a batch of
mostly lone datagrams of many flows makes coalescing rest for the next
L{_REST} batches.  The port hands every run on before any other packet, and
tells the coalescer not to merge a flow whose datagrams the switch would
only cut apart again (one bound for a port without the header); a batch in
which such a flow passed and nothing was merged makes coalescing rest too,
so that a flood from a TAP to VDE clients is handed to the switch packet by
packet without being looked at here (measured in-process, from reading a
fake TAP to the plain port's send: 2.0 us per 64-byte datagram against 2.5,
and TAP-to-TAP coalescing unchanged, where looking up each candidate's
route instead had cost it 3 %).

The merged packet's UDP checksum field holds the pseudo-header sum for the
whole length, the kernel's own convention for USO (see
L{vtwisted.wire.vnet}), and its IPv4 header checksum is recomputed.
Cutting it with L{vtwisted.wire.vnet.toFrames} gives the original datagrams
with their checksums completed, byte for byte (the tests check exactly
that).  No timer is involved: runs end with the batch.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from vtwisted.wire.checksum import MODULUS, checksumValid, internetChecksum
from vtwisted.wire.vnet import GSO_UDP_L4, NEEDS_CSUM, USO_MAX_SEGMENTS

#: The virtio-net header bytes 6-9 (csum_start, csum_offset) of an untagged
#: IPv4 or IPv6 UDP datagram with a partial checksum: what to pre-filter on.
CANDIDATES = frozenset((struct.pack("<HH", 34, 6), struct.pack("<HH", 54, 6)))
#: Its first two bytes (C{NEEDS_CSUM}, no GSO).
PARTIAL = bytes((NEEDS_CSUM, 0))

_HEADER = struct.Struct("<BBHHHH")
_U16 = struct.Struct("!H")
_IPV4 = b"\x08\x00"
_IPV6 = b"\x86\xdd"
#: Where the payload starts: virtio-net, Ethernet, IP and UDP headers.
_V4_PAYLOAD = 10 + 14 + 20 + 8
_V6_PAYLOAD = 10 + 14 + 40 + 8
_MAX_IP = 0xFFFF


def _eligible(packet: bytes) -> bool:
    """
    Whether C{packet} can start a run (see the module docstring).
    """
    size = len(packet)
    if packet[:2] != PARTIAL or packet[6:10] not in CANDIDATES or packet[4:6] != b"\0\0":
        return False
    etherType = packet[22:24]
    if etherType == _IPV4:
        return (
            size > _V4_PAYLOAD
            and packet[6] == 34
            and packet[24] == 0x45
            and packet[33] == 17
            and not packet[30] & 0x3F
            and not packet[31]
            and _U16.unpack_from(packet, 26)[0] == size - 24
            and _U16.unpack_from(packet, 48)[0] == size - 44
            and checksumValid(packet[24:44])
        )
    return (
        etherType == _IPV6
        and size > _V6_PAYLOAD
        and packet[6] == 54
        and packet[24] >> 4 == 6
        and packet[30] == 17
        and _U16.unpack_from(packet, 28)[0] == size - 64
        and _U16.unpack_from(packet, 68)[0] == size - 64
    )


def merge(run: list[bytes]) -> bytes:
    """
    One USO packet carrying the datagrams of C{run}, which L{UdpCoalescer}
    found mergeable (at least two, all as long as the first).
    """
    first = run[0]
    isV4 = first[22:24] == _IPV4
    start = _V4_PAYLOAD if isV4 else _V6_PAYLOAD
    mss = len(first) - start
    total = mss * len(run)
    headers = bytearray(first[10:start])
    if isV4:
        udp = 34
        _U16.pack_into(headers, 2 + 14, 28 + total)
        headers[24:26] = b"\0\0"
        _U16.pack_into(headers, 24, internetChecksum(headers[14:34]))
    else:
        udp = 54
        _U16.pack_into(headers, 4 + 14, 8 + total)
    partial = (_U16.unpack_from(headers, udp + 6)[0] + total - mss) % MODULUS or MODULUS
    _U16.pack_into(headers, udp + 4, 8 + total)
    _U16.pack_into(headers, udp + 6, partial)
    vnet = _HEADER.pack(NEEDS_CSUM, GSO_UDP_L4, udp + 8, mss, udp, 6)
    return b"".join([vnet, headers, *[p[start:] for p in run]])


#: Flows with a run in progress at once (Linux's GRO keeps 8 per device; a
#: switch port may carry many hosts' flows, and an idle entry costs nothing).
MAX_FLOWS = 64
#: A batch that hands on at least this many datagrams alone...
_IDLE_SINGLES = 64
#: ...and merges fewer than a quarter as many makes coalescing rest this
#: many batches: too many flows interleave finely for runs to form.
_REST = 32


class _Run:
    """
    The datagrams of one flow waiting to be merged, and what the next one
    must look like to join them.  A run of one is not checked (L{begin}) until
    a second datagram of its flow comes, so a flow that sends one datagram
    per batch costs little.
    """

    __slots__ = ("packets", "key", "next", "size", "room")

    def __init__(self, packet: bytes) -> None:
        self.packets = [packet]
        self.size = len(packet)
        self.key = b""
        self.next = 0
        self.room = 0

    def begin(self) -> bool:
        """
        Check the first datagram and remember what the next must look like.

        @return: whether it can be merged at all.
        """
        packet = self.packets[0]
        if not _eligible(packet):
            return False
        if packet[22:24] == _IPV4:
            self.key = packet[:28] + packet[30:34] + packet[36:52]
            self.next = (packet[28] << 8 | packet[29]) + 1 & 0xFFFF
            mss, room = self.size - _V4_PAYLOAD, _MAX_IP - 28
        else:
            self.key = packet[:72]
            mss, room = self.size - _V6_PAYLOAD, _MAX_IP - 8
        self.room = min(USO_MAX_SEGMENTS, room // mss)
        return True


def _always(packet: bytes) -> bool:
    return True


class UdpCoalescer:
    """
    Merge runs of UDP datagrams, packet by packet, and hand everything on
    to C{deliver}: the packets of one flow (addresses and ports) in the order
    they came, those of different flows perhaps not.

    @ivar datagrams: how many datagrams went into merged packets.
    @ivar packets: how many merged packets were handed on.
    """

    __slots__ = ("_deliver", "_pays", "_runs", "_singles", "_merged", "_unpaid", "_resting",
                 "datagrams", "packets")

    def __init__(
        self, deliver: Callable[[bytes], object], pays: Callable[[bytes], bool] | None = None
    ) -> None:
        """
        @param deliver: called with every packet handed on.
        @param pays: asked when a flow's second datagram of a batch comes
            whether merging that flow pays (it does not when the datagrams
            would only be cut apart again); if not, its datagrams are handed
            on one by one for the rest of the batch.
        """
        self._deliver = deliver
        self._pays = pays or _always
        self._runs: dict[bytes, _Run] = {}
        self._singles = self._merged = self._unpaid = self._resting = 0
        self.datagrams = 0
        self.packets = 0

    def resting(self) -> bool:
        """
        Whether the next batch should skip coalescing: in the last one, too
        many flows interleaved for runs to form (see L{flush}).  Call it
        once per batch.
        """
        if self._resting:
            self._resting -= 1
            return True
        return False

    def add(self, packet: bytes) -> None:
        """
        Take the next packet of the batch, normally one whose header bytes
        6-9 are in L{CANDIDATES}: it joins its flow's run, or ends that run
        and starts another.  A packet that cannot be merged is handed on
        (after its flow's run) when the next one of its flow comes, or at
        the batch's end.
        """
        isV4 = packet[6:7] == b"\x22"
        flow = packet[36:48] if isV4 else packet[32:68]
        runs = self._runs
        run = runs.get(flow)
        if run is not None:
            if run.room <= 0:
                if run.room < 0:
                    self._unpaid += 1
                    self._deliver(packet)
                    return
                if not self._pays(packet):
                    self._unpaid += 1
                    run.room = -1
                    self._hand(run.packets)
                    run.packets = []
                    self._deliver(packet)
                    return
            if len(packet) == run.size and (run.room or run.begin()):
                if len(run.packets) < run.room:
                    if isV4:
                        if (
                            packet[:28] + packet[30:34] + packet[36:52] == run.key
                            and (packet[28] << 8 | packet[29]) == run.next
                            # checksumValid, inline: this runs once per datagram
                            and int.from_bytes(packet[24:44], "big") % MODULUS == 0
                        ):
                            run.packets.append(packet)
                            run.next = (run.next + 1) & 0xFFFF
                            return
                    elif packet[:72] == run.key:
                        run.packets.append(packet)
                        return
            del runs[flow]
            self._hand(run.packets)
        runs[flow] = _Run(packet)
        if len(runs) > MAX_FLOWS:
            self._hand(runs.pop(next(iter(runs))).packets)

    def flush(self) -> None:
        """
        Hand on every run, oldest first, merged if it holds more than one
        datagram.
        """
        runs = self._runs
        if runs:
            self._runs = {}
            for run in runs.values():
                self._hand(run.packets)

    def finish(self) -> None:
        """
        End the batch: L{flush}, and decide whether the next batches rest.
        """
        self.flush()
        if (self._singles >= _IDLE_SINGLES and self._merged * 4 < self._singles) or (
            self._unpaid and not self._merged
        ):
            self._resting = _REST
        self._singles = self._merged = self._unpaid = 0

    def _hand(self, packets: list[bytes]) -> None:
        if not packets:
            return
        if len(packets) == 1:
            self._singles += 1
            self._deliver(packets[0])
            return
        self._merged += len(packets)
        self.datagrams += len(packets)
        self.packets += 1
        self._deliver(merge(packets))
