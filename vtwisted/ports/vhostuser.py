"""
QEMU guests through vhost-user (C{vhostuser:unix:PATH}): the guest's
virtio-net queues in memory it shares with the switch, no system call per
frame on the guest's side and TCP super-frames both ways.

Theory of operation
-------------------
QEMU (C{-chardev socket,path=PATH -netdev vhost-user,chardev=...}, with
its RAM in shared memory: C{-object memory-backend-memfd,share=on}) is the
front-end; the switch is the back-end.  Each connection is one guest and
one switch port, as for C{qemu:}; C{vhostuser:connect:unix:PATH} connects
to a QEMU that listens instead (C{server=on}) and again after it restarts.

Over the socket (L{vtwisted.wire.vhostuser}) QEMU asks for the device's
features, sends the acknowledged ones, the guest memory table (file
descriptors the switch maps, L{vtwisted.ports.virtqueue.GuestMemory}), and
for each queue its size, its start index, where its three parts are, an
eventfd the guest kicks when it adds buffers and one the switch writes to
interrupt the guest (L{vtwisted.ports.vhostrings}): split rings, or packed
ones with C{packed=on} (L{vtwisted.ports.packedring}).  Odd queues carry
the guest's frames: on a kick every available chain is read (up to a
budget per reactor turn), handed to the switch and given back.  Even
queues hold the guest's empty receive buffers: each frame for the guest is written
into the next chains (several, with mergeable buffers) behind a virtio-net
header; with no buffer free it is dropped and counted as C{busy}.  With
several queue pairs enabled (multiqueue; QEMU serves the control queue
the driver picks them with), a hash of each frame's addresses and ports
picks its receive queue, so a flow keeps its order.

The virtio-net header is the TAP's, plus C{num_buffers} (12 bytes with
VIRTIO 1.0 or mergeable buffers).  The device offers checksum and TSO
(IPv4, IPv6, ECN) both ways; a guest that takes them all has a port that
exchanges super-frames untouched with TAP ports and cables, like a TAP
with offloads.  UDP GSO is not offered (QEMU 7.2 cannot pass it on), so
such packets are cut into datagrams for the guest.  A guest that takes
fewer offloads gets plain frames.

A guest migrates live between two QEMUs on the switch: while QEMU copies
its memory (C{F_LOG_ALL}), each page the switch writes is marked in the
dirty log QEMU shares (C{SET_LOG_BASE}, L{vtwisted.ports.virtqueue.DirtyLog}),
and the QEMU it arrives at asks for it to be announced (C{SEND_RARP}): a
broadcast RARP from its new port teaches the switches where it is.

Anything malformed from QEMU or the guest (a message, a memory table, a
ring) is logged once with the spec and the peer, counted, and closes the
connection: QEMU then stops the device, and the other ports carry on.
Each connection is a L{vtwisted.ports.vhostuserlink.VhostUserLink}; this
module holds the services that listen or connect, and the spec.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from vtwisted.interfaces import IPortService
from vtwisted.ports.streamconnector import StreamConnector
from vtwisted.ports.streamlistener import StreamListener
from vtwisted.ports.streamspec import readStreamSpec
from vtwisted.ports.vhostuserlink import (
    MAX_QUEUE_PAIRS,
    OFFERED,
    PACKED_OFFERED,
    PORT_KEYWORDS,
    VhostUserLink,
    flowHash,
    trustedPeer,
)
from vtwisted.sockettools import isAbstract
from vtwisted.spec import PortSpec
from vtwisted.wire.vhostuser import VhostUserError

__all__ = ["MAX_QUEUE_PAIRS", "OFFERED", "PACKED_OFFERED", "VhostUserConnector",
           "VhostUserError", "VhostUserLink", "VhostUserListener", "flowHash", "makeService",
           "trustedPeer"]


@implementer(IPortService)
class VhostUserListener(StreamListener):
    """
    The service of C{vhostuser:unix:PATH}: QEMU connects to the switch.
    """

    protocol = VhostUserLink  # type: ignore[assignment]
    offeredFeatures = OFFERED
    upMeansWorking = False  # QEMU connecting says nothing: a link must last


@implementer(IPortService)
class VhostUserConnector(StreamConnector):
    """
    The service of C{vhostuser:connect:unix:PATH}: the switch connects to
    a QEMU that listens (C{-chardev socket,server=on}).
    """

    protocol = VhostUserLink  # type: ignore[assignment]
    offeredFeatures = OFFERED
    upMeansWorking = False  # a QEMU accepting says nothing: a link must last


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> Any:
    """
    Build the service for C{vhostuser:[listen:|connect:]unix:PATH} with the
    options C{vlan=}, C{trunk=}, C{mtu=} for each guest's port, and
    C{packed=on} to offer packed rings.
    """
    read = readStreamSpec(spec, reactor, (*PORT_KEYWORDS, "packed"), listenByDefault=True)
    if spec.args[read.skip] != "unix":
        raise spec.error("vhost-user needs a Unix socket (unix:PATH): it passes file "
                         "descriptors")
    if read.listen and isAbstract(read.unixPath):
        raise spec.error("abstract=on: whoever connects to a vhost-user socket shares "
                         "memory with the switch, and anyone in the network namespace may "
                         "connect to an abstract name (it has no permissions): listen on a "
                         "file in a private directory, or let QEMU listen "
                         "(vhostuser:connect:unix:NAME:abstract=on)")
    service: VhostUserListener | VhostUserConnector
    if read.listen:
        service = VhostUserListener(switch, reactor, read.endpoint, read.options, spec.text,
                                    read.unixPath)
    else:
        service = VhostUserConnector(switch, reactor, read.endpoint, read.options, spec.text)
    service.offeredFeatures = PACKED_OFFERED if spec.boolean("packed", False) else OFFERED
    return service
