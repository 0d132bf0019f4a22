"""
Commands handed one end of a socket pair (C{cmd:COMMAND:socket=KIND}), as
QEMU's C{-netdev stream,addr.type=fd,addr.str=N}, C{-netdev
dgram,local.type=fd,local.str=N} and vdeplug4's C{seqpacket://N} take one:
a VM started from the switch's own configuration, with no socket file.

Theory of operation
-------------------
L{DescriptorEndpoint} is a L{CommandEndpoint} whose runs get a
C{socketpair(AF_UNIX, KIND)}: one end is the command's descriptor
L{CHILD_FD} (3, the first after standard error), C{{fd}} in its command
line replaced by that number (L{placeDescriptor}; C{{{{} and C{}}}} are
literal braces); the other end is the switch's.  The command inherits that
descriptor and its standard input, output and error only (Twisted closes
every other descriptor in the child).  Its standard input is a pipe that
stays open and is never written, so a program that ends at the end of its
input does not end at once (it is closed when the run is stopped); what it
writes to its standard output is logged with the spec as information, to
its standard error as warnings, unless C{stdout=} or C{stderr=} sends it
nowhere or to a file (L{vtwisted.commandoutput}).  Both are read until the
command is gone, stopping included (L{DescriptorRun.stop} closes the
socket and its input only): what it says as it ends is logged.

For C{stream} the switch's end is an ordinary Twisted connection
(C{adoptStreamConnection}); for C{dgram} and C{seqpacket}, which Twisted
cannot adopt, it is a L{MessageSocket}, which reads one message per
C{recv} and hands each to its protocol's C{dataReceived} whole.  Each end's
send buffer is L{SOCKET_BUFFER} bytes: a Unix datagram longer than its
sender's buffer is refused, and the buffer is what may be in flight each way.

The run is the command: its link is lost (L{DescriptorRun.socketLost} and
L{DescriptorRun.processEnded} both seen) only once the command has ended,
with its exit status as the reason, so one run follows another, never two
at once.  The command ending closes the switch's end; the switch's end
closed by the command (or for what it sent) ends the command, if it does
not end by itself, as a socket run does (C{TERM} after
L{vtwisted.processes.ENDED_GRACE} seconds, then C{KILL}).
"""

from __future__ import annotations

import errno
import os
import re
import select
from socket import AF_UNIX, SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, socket, socketpair
from typing import Any

from twisted.internet import abstract, main
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from vtwisted import processgroups
from vtwisted.commandoutput import LOG, OutputFiles
from vtwisted.processes import STOP_GRACE, CommandEndpoint, CommandError, CommandRun
from vtwisted.sockettools import growSendBuffer

__all__ = ["CHILD_FD", "KINDS", "DescriptorEndpoint", "DescriptorRun", "MessageSocket",
           "placeDescriptor"]

#: The socket kinds a command may be handed, by their spec name.
KINDS = {"stream": SOCK_STREAM, "dgram": SOCK_DGRAM, "seqpacket": SOCK_SEQPACKET}
#: The command's descriptor for its end: the first after standard error.
CHILD_FD = 3
#: Each end's send buffer: room for bursts, and for the longest frame.
SOCKET_BUFFER = 2 * 1024 * 1024
#: Messages read per wake-up of a L{MessageSocket} at most.
READS_PER_WAKEUP = 64

_BRACES = re.compile(r"\{\{|\}\}|\{[^{}]*\}|[{}]")


def placeDescriptor(argv: list[str], fd: int) -> list[str]:
    """
    C{argv} with each C{{fd}} replaced by C{fd}, C{{{} by C{{} and C{}}} by
    C{}}.

    @raise CommandError: no C{{fd}} anywhere (the command would not know
        its descriptor), another placeholder, or a lone brace.
    """
    found = False

    def replace(match: re.Match[str]) -> str:
        nonlocal found
        text = match.group(0)
        if text in ("{{", "}}"):
            return text[0]
        if text == "{fd}":
            found = True
            return str(fd)
        if text in ("{", "}"):
            raise CommandError(f"a lone {text!r} in {word!r}: write {text * 2} for a brace")
        raise CommandError(f"unknown placeholder {text} in {word!r}: only {{fd}} is replaced "
                           "(write {{ and }} for braces)")

    placed = []
    for word in argv:
        placed.append(_BRACES.sub(replace, word))
    if not found:
        raise CommandError("has no {fd} where the command takes its descriptor's number "
                           "(for example -netdev stream,id=n,addr.type=fd,addr.str={fd}, "
                           "or vde_plug seqpacket://{fd} ...)")
    return placed


def socketPair(kind: str) -> tuple[socket, socket]:
    """
    A Unix socket pair of C{kind} (a key of L{KINDS}): the switch's end and
    the command's, each with a L{SOCKET_BUFFER}-byte send buffer.
    """
    ours, theirs = socketpair(AF_UNIX, KINDS[kind])
    for end in (ours, theirs):
        growSendBuffer(end, SOCKET_BUFFER)
    return ours, theirs


class DescriptorRun(CommandRun):
    """
    A run of a command that has a socket: its standard output and error
    logged, its link lost once both the command and the socket are gone.

    @ivar connection: the switch's end (a Twisted transport), once made.
    """

    def __init__(self, endpoint: DescriptorEndpoint, protocol: Any) -> None:
        super().__init__(endpoint)
        self.protocol = protocol
        self.kind = endpoint.kind
        self.commandLine = endpoint.shownLine
        self.connection: Any = None
        self._output = b""
        self._socketGone = False
        self._exit: Failure | None = None
        self._told = False

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self._output = self.endpoint.heard(self._output, data, LogLevel.info)
        else:
            super().childDataReceived(childFD, data)

    def describe(self) -> str:
        """
        C{qemu-system-x86_64 ... (pid 1234, stream socket on fd 3)}.
        """
        return f"{self.commandLine} (pid {self.pid}, {self.kind} socket on fd {CHILD_FD})"

    def processEnded(self, reason: Failure) -> None:
        self.endpoint.say(self._output, LogLevel.info)
        super().processEnded(reason)
        self._exit = reason
        connection = self.connection
        if connection is not None and not self._socketGone:
            # Nobody is left to read what is queued for it.
            abort = getattr(connection, "abortConnection", connection.loseConnection)
            abort()
        self._lost()

    def socketLost(self) -> None:
        """
        The switch's end is closed: end the command too, unless it ends by
        itself soon.
        """
        self._socketGone = True
        if self._exit is None:
            self.endpoint.connectionEnded(self)
        self._lost()

    def abandon(self) -> None:
        """
        The switch's end could not be made: end the command, quietly (its
        connection failed, so nobody hears of it ending).
        """
        self._told = True
        self._socketGone = True
        if self._exit is None:
            self.endpoint.connectionEnded(self)

    def _lost(self) -> None:
        if self._socketGone and self._exit is not None and not self._told:
            self._told = True
            self.protocol.connectionLost(self._exit)

    def stop(self, clock: Any) -> Deferred[None]:
        """
        End the run: close the switch's end and the command's input, then
        C{TERM} and C{KILL} what is left of it after L{STOP_GRACE} seconds
        and twice that (L{processgroups.stopGroup}).

        @return: fires once nothing of it is left.
        """
        self.ending = True
        if self.connection is not None and not self._socketGone:
            self.connection.loseConnection()
        transport: Any = self.transport
        if transport is not None and self._exit is None:
            transport.closeStdin()
        return processgroups.stopGroup(clock, self.pid, STOP_GRACE, transport,
                                       self.endpoint.spec)


class _StreamEnd(Protocol):
    """
    The switch's end of a C{stream} pair: passes everything to the run's
    protocol, and tells the run when it is lost.
    """

    def __init__(self, run: DescriptorRun) -> None:
        self.run = run

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = True
        transport.run = self.run
        self.run.connection = transport
        self.run.protocol.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.run.protocol.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self.run.socketLost()


class MessageAddress:
    """
    The peer of a run's socket: the command.
    """

    type = "command"

    def __init__(self, run: DescriptorRun) -> None:
        self.run = run

    def __str__(self) -> str:
        return self.run.describe()


class MessageSocket(abstract.FileDescriptor):
    """
    The switch's end of a C{dgram} or C{seqpacket} pair: each message read
    is handed to C{run.protocol.dataReceived} whole (a longer one than
    C{maxMessage}: C{run.protocol.messageTooLong()}).  Frames are
    sent with the socket's own C{send} (L{socket}); nothing is buffered.
    """

    def __init__(self, reactor: Any, sock: socket, run: DescriptorRun, maxMessage: int) -> None:
        super().__init__(reactor)
        self.socket = sock
        self.run = run
        self.kind = run.kind
        self.maxMessage = maxMessage
        sock.setblocking(False)
        self.connected = True

    def fileno(self) -> int:
        return self.socket.fileno()

    def getHandle(self) -> socket:
        return self.socket

    def getPeer(self) -> MessageAddress:
        return MessageAddress(self.run)

    def getHost(self) -> MessageAddress:
        return MessageAddress(self.run)

    def startProtocol(self) -> None:
        """
        Connect the run's protocol and start reading.
        """
        self.run.connection = self
        self.run.protocol.makeConnection(self)
        self.startReading()

    def doRead(self) -> Any:
        # One byte more than the longest message: a read that fills it was
        # cut short.  Each message is read straight into the bytes handed on.
        receive, size = self.socket.recv, self.maxMessage + 1
        protocol = self.run.protocol
        for _ in range(READS_PER_WAKEUP):
            try:
                message = receive(size)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ECONNRESET:
                    return main.CONNECTION_LOST
                return e
            if len(message) == size:
                protocol.messageTooLong()
            elif not message and self.kind == "seqpacket" and self._hungUp():
                return main.CONNECTION_DONE
            else:
                protocol.dataReceived(message)
        return None

    def _hungUp(self) -> bool:
        """
        Whether the command's end is closed (a C{seqpacket} read of nothing
        is that, or a message of no bytes).
        """
        poller = select.poll()
        poller.register(self.socket.fileno(), select.POLLIN)
        return any(events & select.POLLHUP for _, events in poller.poll(0))

    def writeSomeData(self, data: bytes) -> int:
        return len(data)  # nothing is ever buffered: frames are sent at once

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.socket.close()
        self.run.socketLost()


class DescriptorEndpoint(CommandEndpoint):
    """
    A client endpoint whose connections are runs of a command handed one
    end of a socket pair of C{kind} (a key of L{KINDS}).
    """

    def __init__(self, reactor: Any, argv: list[str], spec: str, kind: str,
                 maxMessage: int, stdout: str = LOG, stderr: str = LOG) -> None:
        """
        @param argv: the command, with C{{fd}} where its descriptor's number
            goes (see L{placeDescriptor}).
        @param maxMessage: the longest message read from a C{dgram} or
            C{seqpacket} socket.
        @param stdout: where its standard output goes: C{log}, C{off} or a
            file's absolute path (L{vtwisted.commandoutput.parseOutput}).
        @param stderr: the same, for its standard error.
        @raise CommandError: C{argv} has no C{{fd}}, or other braces.
        """
        super().__init__(reactor, placeDescriptor(argv, CHILD_FD), spec, stderr=stderr)
        self.stdout = stdout
        self.kind = kind
        self.maxMessage = maxMessage

    def __repr__(self) -> str:
        return f"cmd:{self.commandLine} (socket={self.kind})"

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """
        Run the command now, handing it its end of a new socket pair.
        """
        if len(self.runs) >= self.maxRuns:
            return fail(OSError(errno.EAGAIN, f"{self.maxRuns} runs of {self.commandLine} "
                                              "at once already"))
        protocol = protocolFactory.buildProtocol(None)
        try:
            outputs = OutputFiles(self.stdout, self.stderr)
        except ValueError as e:
            return fail(e)
        try:
            ours, theirs = socketPair(self.kind)
        except OSError as e:
            outputs.close()
            return fail(e)
        run = DescriptorRun(self, protocol)
        try:
            self.reactor.spawnProcess(
                run, self.running[0], self.running, env=dict(os.environ),
                childFDs={0: "w", **outputs.childFDs, CHILD_FD: theirs.fileno()})
        except OSError as e:
            ours.close()
            return fail(e)
        finally:
            outputs.close()
            theirs.close()
        try:
            if self.kind == "stream":
                ours.setblocking(False)
                factory = Factory.forProtocol(lambda: _StreamEnd(run))
                self.reactor.adoptStreamConnection(ours.fileno(), AF_UNIX, factory)
                ours.close()
            else:
                MessageSocket(self.reactor, ours, run, self.maxMessage).startProtocol()
        except OSError as e:
            ours.close()
            run.abandon()
            return fail(e)
        return succeed(protocol)
