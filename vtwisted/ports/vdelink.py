"""
The data side of a VDE connection: one client's datagram socket, plugged into
a switch port.  Part of the C{vde:} port type (L{vtwisted.ports.vde}).

Theory of operation
-------------------
Every frame is one datagram.  L{VdeDataLink.doRead} reads up to a batch per
reactor wake-up and hands each frame to the switch; a failure inside the
switch is logged and the next frame read.  Sending never blocks: a frame the
client cannot take now (EAGAIN, ENOBUFS) is dropped and counted on the port,
a client gone (ECONNREFUSED) is counted too, and the link stays until its
control stream closes, as with vde_switch.  Once a client's socket is full,
the frames for it are dropped and counted without trying until the
reactor's next turn: a socket rarely drains within one batch, and each
failed send would cost a system call and an exception, CPU taken from the
clients on the same machine (measured under a flood of 64-byte frames
through two vde_plug clients: a few per cent more delivered).  Closing the
link removes its socket file and closes the control stream, which makes
C{vde_plug} exit.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.interfaces import ILink
from vtwisted.wire.ethernet import DEFAULT_MTU, maxFrameFor

if TYPE_CHECKING:
    from vtwisted.ports.vde import VdeControlProtocol, VdeSwitchDirectory

log = Logger()

#: Frames read from one socket per reactor wake-up.
READ_BATCH = 64
#: The longest read: the longest frame any port carries (vdeplug4's too,
#: its C{VDE_ETHBUFSIZE}) and a byte, whatever the port's MTU, so that a
#: frame over a lower one is counted and logged at its own length.
MAX_READ = maxFrameFor(DEFAULT_MTU) + 1


@implementer(ILink, IReadDescriptor)
class VdeDataLink:
    """
    One VDE client's datagram socket, plugged into a switch port.
    """

    module = "unix prog"
    vnetHeader = False

    def __init__(
        self,
        directory: VdeSwitchDirectory,
        control: VdeControlProtocol,
        sock: socket.socket,
        path: str,
        port: Any,
        description: str,
        uid: int | None,
    ) -> None:
        self.directory = directory
        self.control = control
        self.socket = sock
        self.path = path
        self.port = port
        self.description = description
        self.uid = uid
        transport: Any = control.transport
        self.linkId = transport.fileno() if transport is not None else sock.fileno()
        self._fileno = sock.fileno()
        self._recv = sock.recv
        self._receive = directory.switch.frameReceived
        self._closed = False
        #: Whether the client's socket was found full during this reactor turn.
        self.congested = False
        self._fullDetail = f"{path}: client not reading (EAGAIN)"
        self.sendFrame = self._makeSender(sock.send)  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return f"<VdeDataLink {self.path}>"

    # IReadDescriptor

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return f"vde {self.path}"

    def doRead(self) -> None:
        """
        Hand every datagram waiting (up to a batch) to the switch.
        """
        recv = self._recv
        receive = self._receive
        port = self.port
        size = MAX_READ
        for _ in range(READ_BATCH):
            try:
                frame = recv(size)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as e:
                self._readFailed(e)
                return
            try:
                receive(port, frame)
            except Exception:
                log.failure("{link}: the switch failed on a frame", link=self)

    def _readFailed(self, e: OSError) -> None:
        if e.errno == errno.ECONNREFUSED:
            return
        log.error(
            "{link}: reading failed: {error} (errno {errno}); closing",
            link=self,
            error=e.strerror,
            errno=e.errno,
        )
        self.close()

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    # ILink

    def plug(self, switch: Any, port: Any) -> None:
        """
        Attach to C{port}; the directory's service starts reading once the
        client is told where the socket is.
        """
        self.port = port
        self._receive = switch.frameReceived
        switch.attach(port, self)

    def sendFrame(self, frame: bytes) -> None:
        """
        Send one frame; drop it if the client cannot take it now.  Replaced
        per link by a closure from L{_makeSender}.
        """

    def _makeSender(self, send: Any) -> Any:
        """
        L{sendFrame} as a closure: it runs once per frame, so every attribute
        lookup saved there counts.
        """
        failed = self._sendFailed
        link = self

        def sendFrame(frame: bytes) -> None:
            if link.congested:
                link.port.dropped("busy", link._fullDetail)
                return
            try:
                send(frame)
            except OSError as e:
                failed(e)

        return sendFrame

    def _congested(self) -> None:
        """
        The client's socket is full: drop what is sent to it until the
        reactor's next turn.
        """
        if not self.congested:
            self.congested = True
            self.directory.reactor.callLater(0, self._uncongest)

    def _uncongest(self) -> None:
        self.congested = False

    def _sendFailed(self, e: OSError) -> None:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            self.port.dropped("busy", self._fullDetail)
            self._congested()
        elif e.errno == errno.ENOBUFS:
            self.port.dropped("busy", f"{self.path}: no buffer space (ENOBUFS)")
            self._congested()
        elif e.errno == errno.EMSGSIZE:
            self.port.dropped("mtu", f"{self.path}: message too long (EMSGSIZE)")
        else:
            self.port.dropped(
                "peer", f"{self.path}: {e.strerror} (errno {e.errno}); client gone?"
            )

    def sendVnetPacket(self, packet: bytes) -> None:
        raise NotImplementedError("VDE sockets carry plain frames only")

    def close(self) -> None:
        """
        Unplug from the switch, close the socket, remove its file and close
        the client's control stream (which makes C{vde_plug} exit).
        """
        if self._closed:
            return
        self._closed = True
        self.directory.linkClosed(self)
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.socket.close()
        if self.control.transport is not None:
            self.control.transport.loseConnection()
