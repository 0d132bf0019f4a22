"""
A cable through any command that speaks C{vde_plug}'s stream on its
standard input and output (C{cmd:COMMAND}): C{cmd:ssh hostb vde_plug
/tmp/sw} joins a switch on another host, C{cmd:ip netns exec lab vde_plug
/tmp/sw} one in another namespace, C{cmd:vde_plug /tmp/sw} a local
C{vde_switch}, what C{dpipe vde_plug = ssh ... vde_plug} does, with the
switch itself at one end and the command restarted when it ends.

Theory of operation
-------------------
The spec's arguments are the command line (split as a shell would, colons
and equals signs escaped as in every spec: C{\\:} and C{\\=}; C{vlan=},
C{mtu=} and the impairment options are the port's).  L{CommandEndpoint}
is a Twisted client endpoint that spawns it (with the switch's
environment, so C{ssh} finds its agent) and connects a
L{CommandLink} to its pipes: a L{vtwisted.ports.streamlinks.StreamLink}
whose messages are C{vde_plug}'s records (a 2-byte big-endian length and a
frame, written in one piece), so it gets a port, bounded buffering and the
drop counters as C{qemu:} and C{cable:} links do.  A L{ClientService}
spawns the command again when it exits, with a backoff of up to 5 s.

What the command writes to its standard error is logged line by line with
the spec (C{ssh: connect to host hostb port 22: Connection refused}).  A
command that ends before it carried a frame is a failure: it is logged
once per series, with its exit status, however often it is restarted, and
so is each line it says meanwhile.
Stopping the port closes the command's pipes, which ends C{vde_plug} (and
an C{ssh} running one); a command still running 3 s later is terminated.
"""

from __future__ import annotations

import os
import shlex
import shutil
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.impair import ALL_KEYWORDS as IMPAIRMENTS
from vtwisted.interfaces import IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.streamlinks import SEND_BUFFER, StreamConnector, StreamLink
from vtwisted.spec import PortSpec

log = Logger()

#: The longest record C{vde_plug} writes or reads (vdeplug4).
MAX_RECORD = 9236
#: Seconds a command may take to end after its pipes are closed.
STOP_GRACE = 3.0
#: Keywords of a spec that configure the switch port.
PORT_KEYWORDS = ("vlan", "trunk", "mtu", *IMPAIRMENTS)


class CommandLink(StreamLink):
    """
    The command's pipes, plugged into a switch port: each record is a
    2-byte big-endian length and a plain frame.
    """

    structFormat = "!H"
    prefixLength = 2
    MAX_LENGTH = MAX_RECORD
    module = "command"

    def connectionMade(self) -> None:
        transport: Any = self.transport
        owner: Any = self.owner
        self.linkId = transport.pid
        self.description = f"{owner.commandLine} (pid {transport.pid})"
        transport.registerProducer(self.valve, True)
        self.sendFrame = self._makeSender(transport.writeSequence)  # type: ignore[method-assign]
        self.carried = False
        self.linkReady()

    def stringReceived(self, frame: bytes) -> None:
        if not self.carried:
            self.carried = True
            owner: Any = self.owner
            owner.failures.worked()
            owner.endpoint.said.clear()
        super().stringReceived(frame)

    def close(self) -> None:
        """
        Unplug, and end the command: close its pipes (C{vde_plug} exits on
        end of input), then terminate it if it is still running.
        """
        self.owner.linkDown(self)
        transport: Any = self.transport
        if transport is not None and transport.pid is not None:
            transport.unregisterProducer()
            transport.loseConnection()
            self.owner.reactor.callLater(STOP_GRACE, _terminate, transport)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if self.owner.running:
            status = _exitText(reason)
            if self.carried:
                log.info("{spec}: the command {status}; starting it again",
                         spec=self.owner.spec, status=status)
            else:
                self.owner.failures.note(f"the command {status} before it carried a frame; "
                                         "starting it again every 5 s at most")


def _terminate(process: Any) -> None:
    if process.pid is not None:
        try:
            process.signalProcess("TERM")
        except OSError:
            pass


def _exitText(reason: Failure | None) -> str:
    """
    C{exited with status 1}, C{was killed by signal 9}, or C{exited}.
    """
    if reason is not None and reason.check(ProcessTerminated):
        error: Any = reason.value
        if error.signal is not None:
            return f"was killed by signal {error.signal}"
        return f"exited with status {error.exitCode}"
    if reason is not None and reason.check(ProcessDone):
        return "exited with status 0"
    return "exited"


class _CommandPipes(ProcessProtocol):
    """
    Connects a protocol to a command's standard input and output; logs its
    standard error line by line.
    """

    def __init__(self, protocol: Any, spec: str, said: set[str]) -> None:
        """
        @param said: the lines of standard error logged since the command
            last carried a frame: a command failing again and again says
            each line once.
        """
        self.protocol = protocol
        self.spec = spec
        self.said = said
        self._error = b""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        writer = transport.pipes.get(0)
        if writer is not None:
            writer.bufferSize = SEND_BUFFER
        self.protocol.makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.protocol.dataReceived(data)
        elif childFD == 2:
            *lines, self._error = (self._error + data).split(b"\n")
            for line in lines:
                self._say(line)

    def _say(self, line: bytes) -> None:
        text = line.decode(errors="replace").rstrip()
        if text and text not in self.said:
            self.said.add(text)
            log.warn("{spec}: the command says: {line}", spec=self.spec, line=text)

    def processEnded(self, reason: Failure) -> None:
        self._say(self._error)
        self.protocol.connectionLost(reason)


@implementer(IStreamClientEndpoint)
class CommandEndpoint:
    """
    A client endpoint whose connection is a command's pipes.
    """

    def __init__(self, reactor: Any, argv: list[str], spec: str) -> None:
        self.reactor = reactor
        self.argv = argv
        self.spec = spec
        #: What the command said on standard error since it last worked.
        self.said: set[str] = set()

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        protocol = protocolFactory.buildProtocol(None)
        try:
            self.reactor.spawnProcess(_CommandPipes(protocol, self.spec, self.said), self.argv[0],
                                      self.argv, env=dict(os.environ))
        except OSError as e:
            return fail(e)
        return succeed(protocol)


@implementer(IPortService)
class CommandConnector(StreamConnector):
    """
    The service of C{cmd:COMMAND}: one port, the command's.
    """

    protocol = CommandLink

    def __init__(self, switch: Any, reactor: Any, argv: list[str], options: PortOptions,
                 spec: str) -> None:
        super().__init__(switch, reactor, CommandEndpoint(reactor, argv, spec), options, spec)
        self.commandLine = shlex.join(argv)

    def linkUp(self, link: StreamLink) -> None:
        """
        Plug the command in; it has worked only once it carried a frame.
        """
        last = self.failures.last
        super().linkUp(link)
        self.failures.last = last


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> CommandConnector:
    """
    Build the service for C{cmd:COMMAND} with the options C{vlan=},
    C{trunk=}, C{mtu=} and the impairments for its port.
    """
    options = PortOptions.fromSpec(spec, numbered=False)
    for key in spec.kwargs:
        if key not in PORT_KEYWORDS:
            hint = " (escape an = in the command as \\=)" if " " in key else ""
            raise spec.error(f"unknown option {key}{hint} (known: {', '.join(PORT_KEYWORDS)})")
    command = ":".join(spec.args)  # a colon the user did not escape is the command's
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise spec.error(f"cannot read the command {command!r}: {e}") from None
    if not argv:
        raise spec.error("names no command (for example cmd:ssh hostb vde_plug /tmp/sw)")
    if shutil.which(argv[0]) is None:
        raise spec.error(f"no command {argv[0]!r} on the PATH")
    return CommandConnector(switch, reactor, argv, options, spec.text)
