"""
The links of C{cmd:} ports: one run of the command each, whatever carries
its frames (its pipes, or a socket it was handed: C{socket=stream},
C{socket=dgram}, C{socket=seqpacket}).

Theory of operation
-------------------
L{RunLink} is what every run shares: it is plugged into the port as it
starts; once it has carried a frame and lasted 5 s it has worked, which
ends a series of failures (a run that ends before is one, and the next
waits longer: a command that crashes at once is not run again and again
without a pause); closing it stops the command (its input and output, or
its socket, closed, then C{TERM} and C{KILL} to what is left; its standard
error is read until it is gone, so its last words are logged); its end,
with the command's exit status, is reported to the connector
(L{vtwisted.ports.command.CommandConnector.runEnded}), which decides
whether the command runs again (C{restart=}).

The frames: L{vtwisted.ports.command.CommandLink} reads C{vde_plug}'s
records from the command's output; L{SocketStreamLink} reads QEMU's
stream records (a 4-byte big-endian length and a frame: the C{qemu:}
port's codec, L{QemuStreamLink}, with its limit and its handling of bad
lengths, which close the link); L{SocketPacketLink} takes each message of
a C{dgram} or C{seqpacket} socket as one frame, both ways, and counts a
message longer than L{MAX_FRAME} as an C{oversize} drop (the socket stays:
messages cannot lose their boundaries).  A frame the command's socket
cannot take now (C{EAGAIN}: its buffer is full) is dropped and counted as
C{busy}; nothing is queued for it.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from vtwisted.ports.qemu import MAX_FRAME, QemuStreamLink
from vtwisted.ports.streamlinks import SEND_BUFFER, StreamLink

__all__ = ["LINKS", "MAX_FRAME", "RunLink", "SocketPacketLink", "SocketStreamLink"]

log = Logger()


class RunLink(StreamLink):
    """
    One run of a command, plugged into a switch port (see the module
    docstring); subclasses say how frames cross.
    """

    module = "command"
    #: Whether the transport buffers what is sent (and pauses a valve).
    buffered = True

    def connectionMade(self) -> None:
        transport: Any = self.transport
        #: The run: the command's transport for pipes, else the process
        #: protocol the socket's transport names.
        self.run: Any = getattr(transport, "run", transport)
        self.linkId = self.run.pid
        self.description = self.run.describe()
        self.stopping = False
        if self.buffered:
            if transport is not self.run:
                transport.bufferSize = SEND_BUFFER
            transport.registerProducer(self.valve, True)
        self.sendFrame = self.makeSender(transport)  # type: ignore[method-assign]
        #: Whether the run carried a frame; whether it has worked (carried
        #: one and lasted: L{vtwisted.ports.command.CommandConnector.runCarried}).
        self.carried = self.worked = False
        #: Whether it was logged as on its port.
        self.told = False
        #: The call that makes it work once it has lasted, if pending.
        self.steadyCall: Any = None
        self.linkReady()

    def makeSender(self, transport: Any) -> Any:
        """
        The link's C{sendFrame} (see L{StreamLink._makeSender}).
        """
        return self._makeSender(transport.writeSequence)

    def stringReceived(self, frame: bytes) -> None:
        if not self.carried:
            self.carried = True
            owner: Any = self.owner
            owner.runCarried(self)
        super().stringReceived(frame)

    def close(self) -> None:
        """
        Unplug, and end the command: close its input and output, or its
        socket (C{vde_plug} exits at the end of its input), then C{TERM}
        and C{KILL} what is left of it (its standard error still read).
        """
        self.owner.linkDown(self)
        transport: Any = self.transport
        if transport is None or self.stopping or transport.disconnecting:
            return
        self.stopping = True
        if self.buffered:
            transport.unregisterProducer()
        owner: Any = self.owner
        owner.waitFor(self.run.stop(owner.reactor))

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if self.steadyCall is not None:
            self.steadyCall.cancel()
            self.steadyCall = None
        owner: Any = self.owner
        if not self.worked:
            owner.endpoint.failed()
        if owner.running:
            owner.runEnded(self, reason)


class SocketStreamLink(RunLink, QemuStreamLink):
    """
    A run whose command has one end of a C{stream} pair: QEMU's records.
    """

    module = "command"


class SocketPacketLink(RunLink):
    """
    A run whose command has one end of a C{dgram} or C{seqpacket} pair:
    one message, one frame.
    """

    MAX_LENGTH = MAX_FRAME
    buffered = False

    def dataReceived(self, data: bytes) -> None:
        self.stringReceived(data)  # a whole message (MessageSocket)

    def messageTooLong(self) -> None:
        """
        The command sent a message longer than L{MAX_FRAME} bytes: count it.
        """
        if self.port is not None:
            self.port.dropped("oversize", f"{self.owner.spec}: {self.description}: a message "
                                          f"longer than {MAX_FRAME} bytes")

    def makeSender(self, transport: Any) -> Any:
        send = transport.socket.send
        link = self

        def sendFrame(frame: bytes) -> None:
            try:
                send(frame)
            except OSError as e:
                link.sendFailed(e)

        return sendFrame

    def sendFailed(self, e: OSError) -> None:
        """
        Count a frame the command's socket refused: C{busy} (its buffer is
        full), C{mtu} (too long for the socket), or C{peer}.
        """
        if self.port is None:
            return
        where = f"{self.owner.spec}: {self.description}"
        if e.errno in (errno.EAGAIN, errno.ENOBUFS):
            self.port.dropped("busy", f"{where}: the command is not reading ({e.strerror})")
        elif e.errno == errno.EMSGSIZE:
            self.port.dropped("mtu", f"{where}: message too long (EMSGSIZE)")
        else:
            self.port.dropped("peer", f"{where}: {e.strerror} (errno {e.errno})")


#: The link of each socket kind.
LINKS: dict[str, type[RunLink]] = {
    "stream": SocketStreamLink, "dgram": SocketPacketLink, "seqpacket": SocketPacketLink,
}
