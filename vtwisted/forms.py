"""
The forms one received frame takes on its way out of a switch.

Theory of operation: a frame flooded to many ports may leave tagged or
untagged, with or without the virtio-net header, as one packet or as the
plain frames of a super-frame.  L{Forms} makes each of those at most once
per received frame, on first demand, and hands the same object to every
port that wants it.

A super-frame (GSO) that would leave with its IP header behind more tags
than a GSO packet may carry (L{vtwisted.wire.vnet.MAX_TAGS}: a QinQ frame
tagged once more) has no packet form: ports with the header get its plain
frames instead, which they take whatever the tags.
"""

from __future__ import annotations

from vtwisted.wire import vlan as vlanwire
from vtwisted.wire import vnet
from vtwisted.wire.ethernet import ETH_P_8021AD, ETH_P_8021Q

_VLAN_TYPES = (ETH_P_8021Q, ETH_P_8021AD)


class Forms:
    """
    The forms one received frame takes on its way out, each made once.
    """

    __slots__ = ("data", "isVnet", "tagged", "vid", "failed", "_plain", "_packets")

    def __init__(self, data: bytes, isVnet: bool, tagged: bool, vid: int) -> None:
        self.data = data
        self.isVnet = isVnet
        self.tagged = tagged
        self.vid = vid
        self.failed = False
        self._plain: dict[bool, list[bytes]] = {}
        self._packets: dict[bool, bytes] = {}

    def plain(self, tagged: bool) -> list[bytes]:
        """
        Plain frames (a super-frame gives several), tagged or not.
        """
        frames = self._plain.get(tagged)
        if frames is None:
            if tagged == self.tagged:
                frames = vnet.toFrames(self.data) if self.isVnet else [self.data]
            else:
                base = self.plain(self.tagged)
                if tagged:
                    frames = [vlanwire.insertTag(f, self.vid) for f in base]
                else:
                    frames = [vlanwire.removeTag(f) for f in base]
            self._plain[tagged] = frames
        return frames

    def packet(self, tagged: bool) -> bytes | None:
        """
        The virtio-net packet, tagged or not; None if that form would be a
        super-frame no port with the header takes (see the module's
        docstring), so that its plain frames must go instead.
        """
        packet = self._packets.get(tagged)
        if packet is None:
            if tagged == self.tagged:
                packet = self.data
            elif tagged:
                packet = vnet.insertTag(self.data, self.vid)
                if packet[1] and vnet.networkHeader(packet)[1] in _VLAN_TYPES:
                    packet = b""  # a GSO packet's IP header behind a third tag
            else:
                packet = vnet.removeTag(self.data)
            self._packets[tagged] = packet
        return packet or None
