"""
A cable through any command that speaks C{vde_plug}'s stream on its
standard input and output (C{cmd:COMMAND}): C{cmd:ssh hostb vde_plug
/tmp/sw} joins a switch on another host, C{cmd:ip netns exec lab vde_plug
/tmp/sw} one in another namespace, C{cmd:vde_plug /tmp/sw} a local
C{vde_switch}, what C{dpipe vde_plug = ssh ... vde_plug} does, with the
switch itself at one end and the command restarted when it ends.

Theory of operation
-------------------
The spec's arguments are the command line (split as a shell would, a
colon escaped as in every spec: C{\\:}).  An C{=} in it needs no escape
unless what comes before it, back to the spec's last colon, could be an
option's name (L{vtwisted.spec.OPTION_NAME}: C{cmd:env A=1 vde_plug
/tmp/sw} is the command, C{cmd:A=1} an unknown option, whose refusal says
to write C{A\\=1}); C{vlan=}, C{mtu=}, C{socket=}, C{restart=},
C{stdout=}, C{stderr=} and the impairment options are the port's.
L{vtwisted.processes.CommandEndpoint} is a Twisted client endpoint that
spawns it (with the switch's environment, so C{ssh} finds its agent) and
connects a L{CommandLink} to its pipes: a L{vtwisted.ports.streamlinks.StreamLink}
whose messages are C{vde_plug}'s records (a 2-byte big-endian length and a
frame, written in one piece), so it gets a port, bounded buffering and the
drop counters as C{qemu:} and C{cable:} links do.  A L{ClientService}
spawns the command again when it exits, on the port it had if that is
still free.  A run has I{worked} once it carried a frame and lasted
L{CommandConnector.STEADY_RUN} seconds; runs that end before make the next
one wait longer each time (0.5 s, doubling up to 5 s), so a command that
crashes at once, frames or not, is not run again and again without a
pause.  A run is logged (C{... on port N}) at its first frame, unless
runs are failing: then once it works.  With C{restart=off} a command
that ends is not run again (a VM powered off stays off), with
C{restart=on-failure} unless it exited with status 0.

With C{socket=stream}, C{socket=dgram} or C{socket=seqpacket} the frames
cross a Unix socket pair instead, whose one end the command inherits as
descriptor 3, C{{fd}} in its command line replaced by that number
(L{vtwisted.commanddescriptor}): QEMU's C{-netdev
stream,addr.type=fd,addr.str={fd}} (QEMU's records: the C{qemu:} port's
codec), C{-netdev dgram,local.type=fd,local.str={fd}} and vdeplug4's
C{vde_plug seqpacket://{fd} URL} (one frame per message); see
L{vtwisted.ports.commandlinks}.  Its standard output is logged then
(as information: a guest's console is no warning), or with C{stdout=off}
or C{stdout=FILE} goes to C{/dev/null} or is appended to a file
(L{vtwisted.commandoutput}); without C{socket=} the standard output is the
frame channel, and C{stdout=} is refused.

What the command writes to its standard error is logged line by line with
the spec (C{ssh: connect to host hostb port 22: Connection refused}), as
warnings, unless C{stderr=off} or C{stderr=FILE} sends it elsewhere.  A
run that ends before it worked is a failure: it is logged once per series,
with its exit status (a signal by its name too: C{was killed by signal 11
(SIGSEGV, core dumped)}), however often it is restarted, and so is each
line it says meanwhile.  The end of a run that worked is logged each time,
as a warning unless it exited with status 0; C{port/allprint} and
C{port/specs} show how the last run ended while the port is down, and
C{port/print} how often it was run again and how the run before the
current one ended if it crashed (L{CommandConnector.upState}).  Between
runs its port is reserved for it (see L{vtwisted.ports.streamconnector});
a command not run again (C{restart=}) frees it.  The
files of C{stdout=FILE} and C{stderr=FILE} are checked as the spec is
read, so a wrong path refuses the port at once, and opened at each run
(L{vtwisted.commandoutput.checkOutput}).

Stopping the port closes the command's input and output (or its socket),
which ends C{vde_plug} (and an C{ssh} running one); what is left of it (its
process group: it runs in a session of its own) gets C{TERM} 3 s later and
C{KILL} 3 s after that.  Its standard error is read and logged until
nothing of it is left, so what it says as it ends (why it exits, a C{TERM}
trap) is in the log.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.commanddescriptor import KINDS, DescriptorEndpoint
from vtwisted.commandoutput import LOG, OutputError, checkOutput, parseOutput
from vtwisted.impair import ALL_KEYWORDS as IMPAIRMENTS
from vtwisted.interfaces import IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.commandlinks import LINKS, MAX_FRAME, RunLink
from vtwisted.ports.streamconnector import StreamConnector
from vtwisted.processes import (
    BACKOFF,
    CommandEndpoint,
    CommandError,
    exitText,
    parseCommand,
)
from vtwisted.spec import PortSpec

log = Logger()

#: The longest record C{vde_plug} writes or reads (vdeplug4).
MAX_RECORD = 9236
#: Keywords of a spec that configure the switch port.
PORT_KEYWORDS = ("vlan", "trunk", "mtu", *IMPAIRMENTS)
#: Keywords of a spec that configure the command.
COMMAND_KEYWORDS = ("socket", "restart", "stdout", "stderr")
#: What C{restart=} takes.
RESTARTS = ("on", "on-failure", "off")


class CommandLink(RunLink):
    """
    The command's pipes, plugged into a switch port: each record is a
    2-byte big-endian length and a plain frame.
    """

    structFormat = "!H"
    prefixLength = 2
    MAX_LENGTH = MAX_RECORD


@implementer(IPortService)
class CommandConnector(StreamConnector):
    """
    The service of C{cmd:COMMAND}: one port, the command's.
    """

    protocol: type[RunLink] = CommandLink
    announceLinks = False  # a command that ends at once would be logged at every run
    upMeansWorking = False  # a run has worked once it carried a frame (CommandLink)
    SHORT_LINK = 0.0  # nor does its length count: the endpoint times failed runs itself
    #: Seconds a run that carried a frame must last to have worked: one
    #: that crashes sooner is a failure (the next run waits longer), so a
    #: command that crashes at once, again and again, is not run again
    #: and logged about once a second.
    STEADY_RUN = 5.0
    comesBack = "until it runs again"
    #: Runs started (each one plugged in).
    runs = 0
    #: How the last run that ended ended, if it crashed (a signal, a status
    #: other than 0, a run the switch ended).
    lastCrash = ""

    def __init__(self, switch: Any, reactor: Any, argv: list[str], options: PortOptions,
                 spec: str, socket: str | None = None, restart: str = "on",
                 stdout: str = LOG, stderr: str = LOG) -> None:
        """
        @param socket: the kind of socket the command is handed (a key of
            L{KINDS}; C{{fd}} in C{argv} is its number), or L{None} for
            its pipes.
        @param restart: C{on} (run it again whenever it ends),
            C{on-failure} (unless it exited with status 0) or C{off}.
        @param stdout: where the command's standard output goes when it is
            not the frame channel (C{socket} given): C{log}, C{off} or a
            file's absolute path (L{vtwisted.commandoutput.parseOutput}).
        @param stderr: the same, for its standard error.
        @raise CommandError: C{argv} has no C{{fd}} though C{socket} is given,
            or C{stdout} is not C{log} though it is not.
        """
        endpoint: CommandEndpoint
        if socket is None:
            if stdout != LOG:
                raise CommandError("stdout= needs socket=: without it the command's standard "
                                   "output carries the frames")
            endpoint = CommandEndpoint(reactor, argv, spec, stderr=stderr)
        else:
            endpoint = DescriptorEndpoint(reactor, argv, spec, socket, MAX_FRAME, stdout, stderr)
            self.protocol = LINKS[socket]
        super().__init__(switch, reactor, endpoint, options, spec)
        self.socket = socket
        self.restart = restart
        #: How its last run ended, once it is not run again (C{restart=}).
        self.ended = ""
        #: How its last run ended (C{exited with status 1}), if one did.
        self.lastEnd = ""
        #: Runs being stopped, until nothing is left of them (see L{RunLink.close}).
        self.stopping: set[Deferred[None]] = set()

    def runCarried(self, link: RunLink) -> None:
        """
        C{link}'s run carried its first frame: it works once it has lasted
        L{STEADY_RUN} seconds (now, if it has).  It is announced now unless
        runs are failing (then once it works: a command crashing right
        after its first frames is not announced at every run).
        """
        if not self.failures.total:
            self.announce(link)
        age = self.reactor.seconds() - link.upAt
        if age >= self.STEADY_RUN:
            self.runWorks(link)
        else:
            link.steadyCall = self.reactor.callLater(self.STEADY_RUN - age, self.runWorks, link)

    def runWorks(self, link: RunLink) -> None:
        """
        C{link}'s run carried a frame and lasted: a series of failures
        ends (what the command says is news again, the next run starts at
        once), and the run is announced.
        """
        link.steadyCall = None
        if link.worked or link not in self.links:  # being stopped
            return
        link.worked = True
        self.failures.worked()
        endpoint: Any = self.endpoint
        endpoint.worked()
        self.announce(link)

    def announce(self, link: RunLink) -> None:
        """
        Log C{link}'s run and its port, once.
        """
        if not link.told:
            link.told = True
            log.info("{spec}: {peer} on port {number}", spec=self.spec, peer=link.description,
                     number=link.port.number)

    def runEnded(self, link: RunLink, reason: Failure | None) -> None:
        """
        A run ended (C{reason} has its exit status; one the switch ended,
        for what it sent, is a crash whatever its status): start it again,
        or not, as C{restart=} says, and log it: a run that had not worked
        (carried no frame, or crashed less than L{STEADY_RUN} seconds
        after it started) once per series, as a warning; one that worked
        each time, as a warning if it crashed (a signal, a status other
        than 0).
        """
        status = exitText(reason)
        crashed = not (reason is not None and reason.check(ProcessDone))
        if link.stopping:  # for what it sent (a malformed record): no clean end
            status += " once the switch had ended its run"
            crashed = True
        level = LogLevel.warn if crashed else LogLevel.info
        #: How the last run ended (C{port/allprint} shows it while it is down).
        self.lastEnd = status
        self.lastCrash = status if crashed else ""
        again = self.restart == "on" or (self.restart == "on-failure" and crashed)
        if not again:
            self.ended = f"the command {status}; not started again (restart={self.restart})"
            log.emit(level, "{spec}: {ended}", spec=self.spec, ended=self.ended)
            self.release()
            self.reactor.callLater(0, self.client.stopService)
        elif link.worked:
            log.emit(level, "{spec}: the command {status}; starting it again",
                     spec=self.spec, status=status)
        else:
            when = (f"less than {self.STEADY_RUN:g} s after it started" if link.carried
                    else "before it carried a frame")
            self.failures.note(f"the command {status} {when}; starting it again, "
                               f"every {BACKOFF[2]:g} s at most")

    def linkUp(self, link: Any) -> None:
        self.runs += 1
        super().linkUp(link)

    def upState(self) -> str:
        """
        While a run is up, how many runs came before it, and how the last
        one ended if it crashed (C{run again 3 times; the run before was
        killed by signal 9 (SIGKILL)}); nothing for a first run.
        """
        again = self.runs - 1
        if again <= 0:
            return ""
        state = f"run again {again} time{'' if again == 1 else 's'}"
        if self.lastCrash:
            state += f"; the run before {self.lastCrash}"
        return state

    def downState(self) -> str:
        """
        What it does while it has no run: starts one (with how the last
        run ended, or how often runs failed), or nothing, if C{restart=}
        said not to.
        """
        if self.ended:
            return f"{self.ended}: delete and add the port to run it"
        total, last = self.failures.total, self.failures.last
        if total and last:
            return (f"starting the command again, {total} failure{'' if total == 1 else 's'} "
                    f"in a row, last: {last}")
        if self.lastEnd:
            return f"starting the command again: its last run {self.lastEnd}"
        return "starting the command"

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
    Build the service for C{cmd:COMMAND} with the options C{socket=},
    C{restart=}, C{stdout=}, C{stderr=}, and C{vlan=}, C{trunk=}, C{mtu=} and the impairments for
    its port.
    """
    options = PortOptions.fromSpec(spec, numbered=False)
    known = (*COMMAND_KEYWORDS, *PORT_KEYWORDS)
    for key in spec.kwargs:
        if key not in known:
            raise spec.error(f"unknown option {key} (known: {', '.join(known)}); if {key}= "
                             f"is part of the command, escape its = as {key}\\=")
    socket = spec.string("socket")
    if socket is not None and socket not in KINDS:
        raise spec.error(f"socket={socket}: expected {', '.join(KINDS)}")
    restart = spec.string("restart", "on") or "on"
    restart = {"yes": "on", "true": "on", "no": "off", "false": "off"}.get(restart, restart)
    if restart not in RESTARTS:
        raise spec.error(f"restart={restart}: expected {', '.join(RESTARTS)}")
    if socket is None and "stdout" in spec.kwargs:
        raise spec.error(f"stdout={spec.kwargs['stdout']}: without socket= the command's "
                         "standard output carries the frames (give socket=stream, dgram or "
                         "seqpacket for a command that takes a socket, as QEMU does)")
    try:
        stdout = parseOutput("stdout", spec.string("stdout"))
        stderr = parseOutput("stderr", spec.string("stderr"))
        checkOutput("stdout", stdout)
        checkOutput("stderr", stderr)
    except OutputError as e:
        raise spec.error(str(e)) from None
    command = ":".join(spec.args)  # a colon the user did not escape is the command's
    example = ("cmd:qemu-system-x86_64 ... -netdev stream,id=n,addr.type=fd,"
               "addr.str={fd} ...:socket=stream" if socket else "cmd:ssh hostb vde_plug /tmp/sw")
    try:
        argv = parseCommand(command)
        if socket is None and any("{fd}" in word for word in argv):
            raise CommandError("has {fd} but no socket= to hand it: add :socket=stream, "
                               ":socket=dgram or :socket=seqpacket")
        return CommandConnector(switch, reactor, argv, options, spec.text, socket, restart,
                                stdout, stderr)
    except CommandError as e:
        raise spec.error(f"{e} (for example {example})") from None
