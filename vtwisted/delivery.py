"""
The switch's slow path: frames that take no route.

Theory of operation: L{Delivery} is the half of L{vtwisted.switch.Switch}
that handles a tagged frame (its VLAN from the tag, membership, FSTP's
screen, learning, lookup) and that delivers any frame that took no route to
each of its targets in the form that target needs: as it came when the form
matches, else through L{vtwisted.forms.Forms}, which makes each form (tag
added or removed, virtio-net header kept or resolved into plain frames) at
most once per received frame whatever the number of targets.  Every target
is checked against its MTU and counted; the fast path (routes) is in
L{vtwisted.switch}.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from vtwisted.forms import Forms
from vtwisted.switchport import SwitchPort
from vtwisted.vlans import Vlan, VlanRegistry
from vtwisted.wire import arp, vnet, vnetcheck
from vtwisted.wire import vlan as vlanwire

if TYPE_CHECKING:
    from vtwisted.fdb import MacTable
    from vtwisted.fstp import FastSpanningTree

_RARP = arp.ETHERTYPE_RARP.to_bytes(2, "big")
_VNET = vnet.HEADER_LENGTH
_largest = vnetcheck.largestFrame


class Delivery:
    """
    Tagged frames and delivery to targets, for L{vtwisted.switch.Switch}.
    """

    vlans: VlanRegistry
    fdb: MacTable
    stp: FastSpanningTree | None
    now: int

    def _taggedReceived(self, port: SwitchPort, data: bytes, isVnet: bool) -> None:
        """
        Switch a frame with an 802.1Q tag (after the virtio-net header if
        C{isVnet}).
        """
        offset = vnet.HEADER_LENGTH if isVnet else 0
        if len(data) < offset + vlanwire.TAGGED_HEADER_LENGTH:
            port.dropped("runt", f"{len(data) - offset} bytes, too short for an 802.1Q tag")
            return
        vid = vlanwire.vidOf(data, offset)
        vlan = self.vlans.forTag(vid, port)
        if vlan is None:
            port.dropped("vlan", f"tagged for VLAN {vid}, which this port is not in")
            return
        if self.stp is not None and self.stp.screen(port, vlan, data, offset):
            return
        if not data[offset + 6] & 1:
            src = data[offset + 6 : offset + 12]
            entry = vlan.macs.get(src)
            if entry is not None and entry.port is port:
                entry.seen = self.now
            else:
                self.fdb.learn(vlan.macs, src, port, self.now,
                               data[offset + 16 : offset + 18] == _RARP)
        targets: Iterable[SwitchPort] = vlan.active
        if not data[offset] & 1:
            entry = vlan.macs.get(data[offset : offset + 6])
            if entry is not None:
                targets = (entry.port,)
        self._deliver(port, data, isVnet, True, vlan, targets)

    def _deliver(
        self,
        port: SwitchPort,
        data: bytes,
        isVnet: bool,
        tagged: bool,
        vlan: Vlan | None,
        targets: Iterable[SwitchPort],
    ) -> None:
        """
        Send to each target but the ingress port, in the form it needs.
        """
        forms = None
        for out in targets:
            if out is port:
                continue
            # a priority tag (VID 0) leaves a vlan=all port as it came, PCP kept
            wantTagged = tagged if vlan is None else (
                out.untaggedVlan is not vlan or (tagged and out.transparent and not vlan.vid)
            )
            if not isVnet and wantTagged == tagged:
                n = len(data)
                if n > out.maxFrame:
                    out.dropped("mtu", f"{n} bytes, more than {out.maxFrame}")
                    continue
                oc = out.counters
                oc.outFrames += 1
                oc.outBytes += n
                out.send(data)
                continue
            if forms is None:
                forms = Forms(data, isVnet, tagged, vlan.vid if vlan else 0)
            try:
                packet = forms.packet(wantTagged) if isVnet and out.vnet else None
                if packet is not None:
                    n = len(packet) - _VNET
                    if n > out.maxFrame and _largest(packet) > out.maxFrame:
                        out.dropped("mtu", f"{_largest(packet)} bytes, more than {out.maxFrame}")
                        continue
                    oc = out.counters
                    oc.outFrames += 1
                    oc.outBytes += n
                    out.sendVnet(packet)
                    continue
                frames = forms.plain(wantTagged)
            except vnet.VnetError as e:
                if not forms.failed:
                    forms.failed = True
                    port.dropped("malformed", str(e))
                continue
            for frame in frames:
                n = len(frame)
                if n > out.maxFrame:
                    out.dropped("mtu", f"{n} bytes, more than {out.maxFrame}")
                    continue
                oc = out.counters
                oc.outFrames += 1
                oc.outBytes += n
                out.send(frame)
