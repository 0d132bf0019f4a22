"""
What the datagram port types (C{dgram:}, C{mcast:}) share: their links'
plugging, frame delivery and send-error accounting, and the checking of
UDP port numbers in specs.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.logger import Logger

from vtwisted.spec import PortSpec

log = Logger()
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


class PlainDatagramLink:
    """
    What the links of datagram port types share: plain frames only, send
    errors counted on the port, and closing as unplugging.
    """

    #: How the transport is named in errors.
    transportName = "this transport"
    service: Any
    port: Any = None
    _receive: Any = None

    def plug(self, switch: Any, port: Any) -> None:
        """
        Attach to C{port}.
        """
        self.port = port
        self._receive = switch.frameReceived
        switch.attach(port, self)

    def deliver(self, frame: bytes) -> None:
        """
        Hand a frame read from the socket to the switch, if plugged in.
        """
        if self.port is None:
            return
        try:
            self._receive(self.port, frame)
        except Exception:
            log.failure("{spec}: the switch failed on a frame", spec=self.service.spec)

    def sendVnetPacket(self, packet: bytes) -> None:
        raise NotImplementedError(f"{self.transportName} carries plain frames only")

    def close(self) -> None:
        """
        Unplug from the switch (the sockets stay until the service stops).
        """
        self.service.unplug()

    def sendFailed(self, e: OSError, where: str, hint: str) -> None:
        """
        Count a send that failed: C{busy}, C{mtu}, or C{peer} with C{hint}.
        """
        if self.port is None:
            return
        if e.errno in _BUSY:
            self.port.dropped("busy", f"{where}: the peer is not reading ({e.strerror})")
        elif e.errno == errno.EMSGSIZE:
            self.port.dropped("mtu", f"{where}: message too long (EMSGSIZE)")
        else:
            self.port.dropped("peer", f"{where}: {e.strerror} (errno {e.errno}); {hint}")


def udpPort(spec: PortSpec, text: str | None) -> int:
    """
    A UDP port number from a spec.

    @raise SpecError: not a number from 1 to 65535.
    """
    try:
        number = int(text or "")
    except ValueError:
        raise spec.error(f"{text!r} is not a UDP port number") from None
    if not 1 <= number <= 65535:
        raise spec.error(f"UDP port {number} is out of range (1 to 65535)")
    return number
