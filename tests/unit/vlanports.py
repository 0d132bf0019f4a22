"""
Fake links on VLAN ports of a switch, and 802.1Q tags put on and taken off
frames: for the tests of VLANs in the forwarding core.
"""

from __future__ import annotations

from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, plug
from vtwisted.vlans import NOVLAN
from vtwisted.wire import vlan as vlanwire

BROADCAST = b"\xff" * 6


def port(switch: Switch, untagged: int | None = 0, tagged: tuple[int, ...] = (),
         transparent: bool = False, vnetHeader: bool = False, name: str = "") -> FakeLink:
    """
    A fake link on a new port: untagged member of C{untagged} (None: no
    untagged VLAN), tagged member of C{tagged}, VLANs created as needed.
    """
    link = FakeLink(name or f"link{len(switch.ports)}", vnetHeader=vnetHeader)
    p = plug(switch, link)
    for vid in (untagged, *tagged):
        if vid not in (None, 0) and vid not in switch.vlans:
            switch.vlans.create(vid)
    switch.vlans.join(p, NOVLAN if untagged is None else untagged)
    for vid in tagged:
        switch.vlans.addTagged(p, vid)
    if transparent:
        switch.vlans.setTransparent(p, True)
    return link


def tagged(f: bytes, vid: int) -> bytes:
    """
    C{f} with a tag for C{vid} (priority 0) after the source address.
    """
    return vlanwire.insertTag(f, vid)


def untagged(f: bytes) -> bytes:
    """
    C{f} without its tag.
    """
    return vlanwire.removeTag(f)
