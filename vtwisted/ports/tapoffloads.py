"""
The offloads a TAP port asks the kernel for, and how they follow the other
ports of the switch (C{offload=auto}).

Theory of operation
-------------------
A TAP opened with the virtio-net header asks for every offload the kernel
has (L{TapOffloads._negotiate}: checksum, TSO, USO where known), falling
back when the kernel refuses the USO bits.  The kernel then hands over
super-frames, which only pay where they go whole: to another port that
takes the header.  Cutting them for any other port costs the switch Python
for every segment, while the kernel would do the same in C before they
reach the device.  So with C{offload=auto} the link watches the switch
(L{vtwisted.interfaces.ISwitch.watchSuperFrames}) and sets the offloads to
what was negotiated while another port in one of its VLANs takes
super-frames, and to none otherwise; the header stays, so nothing about
reads and writes changes.  A TCP socket already sending super-frames when
they go off has them cut by its kernel in software.  UDP coalescing needs
USO, so it follows too (the coalescer, and its counts, are kept).
"""

from __future__ import annotations

import errno
import functools
from typing import Any

from twisted.logger import Logger

from vtwisted.ports.tapdevice import (
    OFFLOAD_CHOICES,
    TUN_F_USO4,
    TUN_F_USO6,
    TUNSETOFFLOAD,
    offloadNames,
)
from vtwisted.wire import udpgro

log = Logger()


class TapOffloads:
    """
    The offload part of L{vtwisted.ports.tap.TapLink}.

    @ivar offloads: the C{TUN_F_*} bits in force.
    @ivar supported: what the kernel agreed to when asked for everything.
    @ivar auto: whether the offloads follow the other ports.
    """

    _system: Any
    _fileno: int
    _closing: bool
    _gro: udpgro.UdpCoalescer | None
    _coalescer: udpgro.UdpCoalescer | None = None
    _offloadText: str
    name: str
    service: Any
    switch: Any
    port: Any
    uso: bool
    coalesce: bool
    auto: bool
    offloads: int
    supported: int

    def _receiveOne(self, packet: bytes) -> None:
        raise NotImplementedError

    def _describeOffloads(self) -> None:
        """
        Set what C{port/print} says of the offloads.
        """
        if not self.supported:
            self._offloadText = "none (refused by the kernel)"
        elif not self.auto:
            self._offloadText = offloadNames(self.offloads)
        elif self.offloads:
            self._offloadText = offloadNames(self.offloads) + " (auto)"
        else:
            self._offloadText = "none (auto: no other port takes super-frames)"

    def _negotiate(self) -> int:
        """
        Ask for every offload, without USO if the kernel refuses it.

        @return: the C{TUN_F_*} bits set, 0 if the kernel took none.
        """
        for flags in OFFLOAD_CHOICES if self.uso else OFFLOAD_CHOICES[1:]:
            try:
                self._system.ioctl(self._fileno, TUNSETOFFLOAD, flags)
                return flags
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        log.warn("{spec}: the kernel refused every offload; frames stay small",
                 spec=self.service.spec)
        return 0

    def _switchStopping(self) -> bool:
        """
        Whether the switch's service is stopping: the other ports leave one
        by one then, and the offloads need not follow them.
        """
        parent = getattr(self.service, "parent", None)
        return parent is not None and not parent.running

    def _makeCoalescer(self) -> None:
        """
        Merge runs of UDP datagrams into USO packets while USO is on.
        """
        if self.coalesce and self.offloads & TUN_F_USO4 and self.offloads & TUN_F_USO6:
            if self._coalescer is None:  # made once: its counts outlive the offloads' changes
                self._coalescer = udpgro.UdpCoalescer(
                    self._receiveOne, functools.partial(self.switch.coalescingPays, self.port)
                )
            self._gro = self._coalescer
        else:
            self._gro = None

    def superFramesTaken(self, taken: bool) -> None:
        """
        With C{offload=auto}: whether another port sharing a VLAN with this
        one now takes virtio-net packets whole.  If none does, every super-frame would be
        cut apart in Python, so the offloads are turned off and the kernel
        hands over ordinary frames with their checksums done (in C, before
        they reach the device); they are turned on again when such a port
        comes.  The header stays either way, so frames for this device may
        still be super-frames.
        """
        wanted = self.supported if taken else 0
        if wanted == self.offloads or self._closing or self._switchStopping():
            return
        try:
            self._system.ioctl(self._fileno, TUNSETOFFLOAD, wanted)
        except OSError as e:
            log.warn("{spec}: setting offloads {flags} on {name} failed: {error} (errno "
                     "{errno}); they stay {text}", spec=self.service.spec, name=self.name,
                     flags=offloadNames(wanted), error=e.strerror, errno=e.errno,
                     text=self._offloadText)
            return
        self.offloads = wanted
        self._makeCoalescer()
        self._describeOffloads()
        log.info("{spec}: {name} offload={text}", spec=self.service.spec, name=self.name,
                 text=self._offloadText)
