"""
What the datagram port types (C{dgram:}, C{mcast:}, C{vxlan:}, C{vxvde:})
share: their links' plugging, frame delivery and send-error accounting,
their sockets' read-error accounting, and the checking of UDP port numbers
in specs.

Twisted's datagram ports close their socket for good when a read fails
with an errno they do not expect (C{ENOMEM}, an ICMP error such as
C{EHOSTUNREACH} reported on a connected socket), and so does its epoll
reactor when a socket shows an error condition with nothing to read: the
port would hear nothing more.  The ports L{listenUDP},
L{listenUNIXDatagram} and L{listenMulticast} open (L{KeepReading}) count
such an error instead, log it once per errno with the spec
(L{ReadErrors}), and go on reading.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import udp, unix
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.spec import PortSpec

log = Logger()
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
#: Receive errors that are no failure of the read: nothing more to read
#: now, or an earlier datagram was refused (the peer is not there).
READ_LATER = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNREFUSED)


class ReadErrors:
    """
    The receive errors of a port's sockets: counted, each errno logged once.

    @ivar count: how many reads failed.
    """

    def __init__(self) -> None:
        self.count = 0
        self._logged: set[int | None] = set()

    def failed(self, spec: str, where: str, e: OSError) -> None:
        """
        Count a read of C{where} that failed with C{e}; log it if it is the
        first with its errno.
        """
        self.count += 1
        if e.errno in self._logged:
            return
        self._logged.add(e.errno)
        log.error("{spec}: reading {where} failed: {error} ({code}); counted, reading "
                  "goes on (further failures of this kind are only counted)",
                  spec=spec, where=where, error=e.strerror,
                  code=errno.errorcode.get(e.errno or 0, e.errno))

    def describe(self) -> str:
        """
        C{", 3 read errors"}, or nothing if there were none.
        """
        return f", {self.count} read errors" if self.count else ""


class PlainDatagramLink:
    """
    What the links of datagram port types share: plain frames only, send
    errors counted on the port, and closing as unplugging.
    """

    #: How the transport is named in errors.
    transportName = "this transport"
    #: What the link is, for C{port/print}.
    what = ""
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

    @property
    def description(self) -> str:
        """
        What the link is (L{what}), and its sockets' read errors if any.
        """
        return self.what + self.service.readErrors.describe()

    def readFailed(self, where: str, e: OSError) -> None:
        """
        A read of the link's socket failed unexpectedly (see L{KeepReading}).
        """
        self.service.readErrors.failed(self.service.spec, where, e)

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


@implementer(IHalfCloseableDescriptor)
class KeepReading:
    """
    Mixed into a Twisted datagram port: a receive error Twisted does not
    expect goes to the protocol's C{readFailed(where, error)}, and the
    socket stays open and read.
    """

    socket: Any
    protocol: Any
    connected: int

    def doRead(self) -> None:
        try:
            super().doRead()  # type: ignore[misc]
        except OSError as e:
            self.protocol.readFailed(self.where(), e)

    def readConnectionLost(self, reason: Any) -> None:
        """
        The reactor saw an error condition and nothing to read (an ICMP
        error on a connected socket): take the error, count it, go on
        reading.  A condition without an error is Twisted's end of the port.
        """
        try:
            code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:
            code = e.errno
        if not code:
            self.connectionLost(reason)  # type: ignore[attr-defined]
            return
        if code not in READ_LATER:
            self.protocol.readFailed(self.where(), OSError(code, os.strerror(code)))
        if self.connected and not getattr(self, "disconnecting", False):
            self.startReading()  # type: ignore[attr-defined]

    def writeConnectionLost(self, reason: Any) -> None:
        """
        Nothing to do: datagrams are never queued for writing.
        """

    def where(self) -> str:
        return socketName(self.socket, "its socket")


class _UdpPort(KeepReading, udp.Port):
    pass


class _MulticastPort(KeepReading, udp.MulticastPort):
    pass


class _UnixDatagramPort(KeepReading, unix.DatagramPort):
    pass


def listenUDP(reactor: Any, number: int, protocol: Any, interface: str,
              maxPacketSize: int) -> Any:
    """
    The reactor's C{listenUDP}, with a port that keeps reading after an
    unexpected receive error (where the reactor is a real one).
    """
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenUDP(number, protocol, interface, maxPacketSize)
    return _started(_UdpPort(number, protocol, interface, maxPacketSize, reactor))


def listenMulticast(reactor: Any, number: int, protocol: Any, interface: str = "",
                    maxPacketSize: int = 8192, listenMultiple: bool = False) -> Any:
    """
    The reactor's C{listenMulticast}, with a port that keeps reading.
    """
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenMulticast(number, protocol, interface,
                                       maxPacketSize=maxPacketSize,
                                       listenMultiple=listenMultiple)
    return _started(_MulticastPort(number, protocol, interface, maxPacketSize, reactor,
                                   listenMultiple))


def listenUNIXDatagram(reactor: Any, path: str, protocol: Any, maxPacketSize: int,
                       mode: int) -> Any:
    """
    The reactor's C{listenUNIXDatagram}, with a port that keeps reading.
    """
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenUNIXDatagram(path, protocol, maxPacketSize, mode=mode)
    return _started(_UnixDatagramPort(path, protocol, maxPacketSize, mode, reactor))


def _started(port: Any) -> Any:
    port.startListening()
    return port


def socketName(sock: Any, otherwise: str) -> str:
    """
    C{"UDP 127.0.0.1:5555"}, C{"UDP [::1]:5555"} or the Unix path: a
    datagram socket, for messages (C{otherwise} if it has no name now).
    """
    try:
        name = sock.getsockname()
    except OSError:
        return otherwise
    if isinstance(name, tuple):
        host, number = name[:2]
        return f"UDP [{host}]:{number}" if ":" in host else f"UDP {host}:{number}"
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
