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
C{mtu=} and the impairment options are the port's).
L{vtwisted.processes.CommandEndpoint} is a Twisted client endpoint that
spawns it (with the switch's environment, so C{ssh} finds its agent) and
connects a L{CommandLink} to its pipes: a L{vtwisted.ports.streamlinks.StreamLink}
whose messages are C{vde_plug}'s records (a 2-byte big-endian length and a
frame, written in one piece), so it gets a port, bounded buffering and the
drop counters as C{qemu:} and C{cable:} links do.  A L{ClientService}
spawns the command again when it exits; runs that end before they carried
a frame make the next one wait longer each time, up to 5 s.

What the command writes to its standard error is logged line by line with
the spec (C{ssh: connect to host hostb port 22: Connection refused}).  A
command that ends before it carried a frame is a failure: it is logged
once per series, with its exit status, however often it is restarted, and
so is each line it says meanwhile.

Stopping the port closes the command's pipes, which ends C{vde_plug} (and
an C{ssh} running one); what is left of it (its process group: it runs in a
session of its own) gets C{TERM} 3 s later and C{KILL} 3 s after that.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.impair import ALL_KEYWORDS as IMPAIRMENTS
from vtwisted.interfaces import IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.streamconnector import StreamConnector
from vtwisted.ports.streamlinks import StreamLink
from vtwisted.processes import CommandEndpoint, CommandError, exitText, parseCommand
from vtwisted.spec import PortSpec

log = Logger()

#: The longest record C{vde_plug} writes or reads (vdeplug4).
MAX_RECORD = 9236
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
        self.linkId = transport.pid
        self.description = str(transport.getPeer())
        transport.registerProducer(self.valve, True)
        self.sendFrame = self._makeSender(transport.writeSequence)  # type: ignore[method-assign]
        self.carried = False
        self.linkReady()

    def stringReceived(self, frame: bytes) -> None:
        if not self.carried:
            self.carried = True
            owner: Any = self.owner
            owner.failures.worked()
            owner.endpoint.worked()
            log.info("{spec}: {peer} on port {number}", spec=owner.spec,
                     peer=self.description, number=self.port.number)
        super().stringReceived(frame)

    def close(self) -> None:
        """
        Unplug, and end the command: close its pipes (C{vde_plug} exits on
        end of input), then C{TERM} and C{KILL} what is left of it.
        """
        self.owner.linkDown(self)
        transport: Any = self.transport
        if transport is not None and not transport.disconnecting:
            transport.unregisterProducer()
            owner: Any = self.owner
            owner.waitFor(transport.stop(owner.reactor))

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        owner: Any = self.owner
        if not self.carried:
            owner.endpoint.failed()
        if owner.running:
            status = exitText(reason)
            if self.carried:
                log.info("{spec}: the command {status}; starting it again",
                         spec=self.owner.spec, status=status)
            else:
                self.owner.failures.note(f"the command {status} before it carried a frame; "
                                         "starting it again every 5 s at most")


@implementer(IPortService)
class CommandConnector(StreamConnector):
    """
    The service of C{cmd:COMMAND}: one port, the command's.
    """

    protocol = CommandLink
    announceLinks = False  # a command that ends at once would be logged at every run
    upMeansWorking = False  # a run has worked once it carried a frame (CommandLink)
    SHORT_LINK = 0.0  # nor does its length count: the endpoint times failed runs itself

    def __init__(self, switch: Any, reactor: Any, argv: list[str], options: PortOptions,
                 spec: str) -> None:
        super().__init__(switch, reactor, CommandEndpoint(reactor, argv, spec), options, spec)
        #: Runs being stopped, until nothing is left of them (see L{CommandLink.close}).
        self.stopping: set[Deferred[None]] = set()

    def waitFor(self, stopped: Deferred[None]) -> None:
        """
        Have L{stopService} wait for C{stopped} too, until it fires.
        """
        self.stopping.add(stopped)
        stopped.addBoth(lambda result: self.stopping.discard(stopped))

    def stopService(self) -> Any:
        """
        Stop, and wait until the command's last run has ended (its pipes
        closed, then TERM and KILL: see L{CommandLink.close}).
        """
        stopped = super().stopService()
        endpoint: Any = self.endpoint
        return DeferredList([stopped, endpoint.whenAllEnded(), *list(self.stopping)])

    def retryDelay(self, attempts: int) -> float:
        """
        Wait as the command's failures ask (0.5 s after the first run that
        carried no frame, doubling up to 5 s); after a run that worked, or
        when the command could not be started, as any connector waits
        (see L{StreamConnector.retryDelay}).
        """
        endpoint: Any = self.endpoint
        return endpoint.delay() or super().retryDelay(attempts)



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
        argv = parseCommand(command)
    except CommandError as e:
        raise spec.error(f"{e} (for example cmd:ssh hostb vde_plug /tmp/sw)") from None
    return CommandConnector(switch, reactor, argv, options, spec.text)
