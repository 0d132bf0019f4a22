"""
The SSH manhole: a Python prompt inside the running switch.

Theory of operation
-------------------
L{ManholeService} listens on a Twisted server endpoint (C{--manhole}; a bare
port or a C{tcp:} endpoint without C{interface=} listens on loopback only)
and speaks SSH with L{twisted.conch}.  Each login gets a fresh namespace
holding C{switch} (the L{vtwisted.switch.Switch}), C{service} (the
L{vtwisted.service.SwitchService}) and C{ops} (the
L{vtwisted.operations.SwitchOperations} the console also calls): with a
terminal (C{ssh -t}) it is C{twisted.conch.manhole}'s interactive prompt;
with a command (C{ssh host 'ops.ports()'}) the command runs once, its
output (and the value of an expression) comes back and the exit status is 0,
1 after an exception, or the one C{exit()} gives (which also leaves the
prompt, as Ctrl-D does).

Authentication is by public key against an OpenSSH C{authorized_keys} file
(C{--manhole-keys}, L{vtwisted.manholekeys}), read again at every login so
edits apply at once; C{from=} and C{expiry-time=} options are enforced
(L{vtwisted.manholeauth} gives the checker the client's address), FIDO
security keys' signatures are checked with their touch and verification
options (L{vtwisted.sksig}), and a line with an option the manhole cannot
honour is refused rather than half-honoured (L{vtwisted.keyoptions}).  Passwords
(C{--manhole-passwords}, C{user:password} lines in a file only its owner can
read) are accepted only when that option is given.  Refused logins are
logged with the peer's address and, for keys, the key's fingerprint: the
first from a peer in full, the rest counted (L{vtwisted.refusals}).  So is
every other line a connection brings, Twisted's included (the missing
moduli file, a malformed message, a disconnect with an error, a connection
lost): each kind from a peer address once an interval in full, with the
address, then counted, so a scanner knocking many times a second cannot
fill the log.

The host key is an Ed25519 key kept at C{--manhole-host-key} (default
L{defaultHostKeyPath}: C{$XDG_STATE_HOME/vtwisted/manhole_host_key}, else
C{~/.local/state/vtwisted/manhole_host_key}); it is generated, mode 0600,
on the first start and reused afterwards, so clients can pin it.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import traceback
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.conch import manhole, manhole_ssh
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection, keys
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import (
    DISCONNECT_BY_APPLICATION,
    DISCONNECT_PROTOCOL_ERROR,
    SSHServerTransport,
)
from twisted.cred import portal
from twisted.cred.checkers import FilePasswordDB, ICredentialsChecker
from twisted.internet import defer
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.manholeauth import ManholeUserAuth
from vtwisted.manholekeys import (
    AuthorizedKeyChecker,
    AuthorizedKeysFile,
    defaultHostKeyPath,
    fingerprint,
    loadHostKey,
)
from vtwisted.ports.streamspec import LOOPBACK, serverOptionGiven
from vtwisted.refusals import PeerLogger, RefusalLog
from vtwisted.sockettools import listenError
from vtwisted.spec import PortSpec, SpecError

if TYPE_CHECKING:
    from vtwisted.service import SwitchService

log = Logger()

#: The user key signatures verified (by Twisted, security keys' by
#: L{vtwisted.sksig}), as server-sig-algs lists them.
USER_KEY_ALGORITHMS = (
    b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384", b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512", b"rsa-sha2-256", b"sk-ssh-ed25519@openssh.com",
    b"sk-ecdsa-sha2-nistp256@openssh.com",
)
#: What Twisted's SSH message parsers raise for a message cut short.
_MALFORMED = (struct.error, IndexError, ValueError)
WELCOME = (
    b"vtwisted manhole: switch, service and ops (the console's operations) are here;"
    b" help(ops) lists them.\r\n"
)


def loopbackByDefault(description: str) -> str:
    """
    The endpoint to listen on: a bare port number, or a C{tcp:}/C{tcp6:}
    endpoint without an interface (C{interface=}, or in its place among the
    positional arguments), is bound to loopback only.

    @raise ValueError: the description cannot be parsed.
    """
    text = description.strip()
    if text.isdigit():
        return f"tcp:{text}:interface=127.0.0.1"
    try:
        spec = PortSpec(f"manhole:{text}")
    except SpecError as e:
        raise ValueError(e.problem) from None
    kind = spec.args[0] if spec.args else ""
    if "" in spec.args[1:]:  # interface=::1 is interface= and the arguments "" and "1"
        raise ValueError("an empty argument")
    if kind in ("tcp", "tcp6") and not serverOptionGiven(spec, 0, "interface"):
        return f"{text}:interface={LOOPBACK[kind]}"
    return text


def _colonHint(description: str) -> str:
    """
    L{PortSpec.colonHint} for an endpoint description: a value whose colons
    were left bare (C{interface=::1}).
    """
    try:
        return PortSpec(f"manhole:{description}").colonHint(1)
    except SpecError:
        return ""


class ManholeTransport(SSHServerTransport):
    """
    Twisted's SSH server, telling clients which user key signatures it
    verifies, and taking a client's goodbye for no error; what it logs
    goes through the factory's L{RefusalLog} for lines, per peer.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        factory: Any = self.factory
        self._log = PeerLogger(factory.noise, transport.getPeer())  # type: ignore[assignment]
        super().connectionMade()

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        try:
            super().dispatchMessage(messageNum, payload)
        except _MALFORMED as e:
            # Twisted's parsers raise on a message cut short, before any
            # login, and the reactor logged the traceback of each.
            self._log.warn("malformed SSH message {number} ({error}); disconnected",
                           number=messageNum, error=e)
            self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"malformed message")

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # Twisted logs an error for every disconnect message, the one ssh
        # sends at each normal exit too.
        if reasonCode != DISCONNECT_BY_APPLICATION:
            self._log.warn("disconnected with error {code}: {description}", code=reasonCode,
                           description=description.decode("utf-8", "replace"))

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        # Twisted puts its host key's algorithms in server-sig-algs (RFC 8308);
        # OpenSSH, which no longer signs with ssh-rsa (SHA-1), then finds no
        # signature it may make with an RSA key and gives up on it.
        super().sendExtInfo([
            (name, b",".join(USER_KEY_ALGORITHMS) if name == b"server-sig-algs" else value)
            for name, value in extensions
        ])


class ManholeConnection(connection.SSHConnection):
    """
    Sessions only: other channels (C{ssh -L}, C{-W}, C{-D}) are refused with
    a line in the log rather than Twisted's traceback, as many times a
    minute per peer as its connection's other lines (L{PeerLogger}).
    """

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        kind, rest = getNS(packet)
        transport: Any = self.transport
        if kind in transport.avatar.channelLookup:
            super().ssh_CHANNEL_OPEN(packet)
            return
        # the connection's own logger: bounded per peer, as its other lines
        transport._log.warn("refused a {channel} channel: only sessions are served",
                            manhole_kind="refused a channel",
                            channel=kind.decode("utf-8", "replace"))
        (sender,) = struct.unpack(">L", rest[:4])
        transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            + NS(b"only sessions are served") + NS(b""),
        )


class ManholeFactory(manhole_ssh.ConchFactory):
    """
    An SSH server factory with logged logins and its own host key.
    """

    protocol = ManholeTransport
    services = {
        b"ssh-userauth": ManholeUserAuth,
        b"ssh-connection": ManholeConnection,
    }

    def __init__(self, realmPortal: portal.Portal, hostKey: keys.Key, clock: Any,
                 refusals: RefusalLog | None = None, noise: RefusalLog | None = None) -> None:
        super().__init__(realmPortal)
        self.clock = clock
        self.refusals = refusals or RefusalLog(clock)
        #: Every other line a connection logs, bounded per peer and kind.
        self.noise = noise or RefusalLog(clock, what="line(s)")
        # Twisted annotates these as bytes to bytes; they hold Key objects.
        public: Any = {hostKey.sshType(): hostKey.public()}
        private: Any = {hostKey.sshType(): hostKey}
        self.publicKeys = public
        self.privateKeys = private

    def buildProtocol(self, addr: Any) -> Any:
        # Twisted logs the missing moduli file here, for every connection.
        self._log = PeerLogger(self.noise, addr)  # type: ignore[assignment]
        return super().buildProtocol(addr)


class SwitchManhole(manhole.ColoredManhole):
    """
    The interactive prompt, with a line saying what is in it.

    @ivar exitStatus: the status C{exit()} asked for, L{None} before.
    """

    exitStatus: int | None = None

    def lineReceived(self, line: bytes) -> None:
        try:
            super().lineReceived(line)
        except SystemExit as e:
            # exit() and quit() leave the prompt, as Ctrl-D does, rather
            # than drop the connection with a traceback in the log.
            output, self.exitStatus = _exitStatus(e)
            self.terminal.write(output.replace("\n", "\r\n").encode("utf-8", "replace"))
            self.terminal.loseConnection()

    def initializeScreen(self) -> None:
        self.terminal.reset()
        self.terminal.write(WELCOME)
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def terminalSize(self, width: int, height: int) -> None:
        # Twisted clears the screen to redraw the line at each size: the
        # first, given once the screen is drawn, wiped the welcome at once,
        # and a resized window lost what it showed.  The terminal keeps it.
        self.width, self.height = width, height


def runPython(source: str, namespace: dict[str, Any]) -> tuple[str, int]:
    """
    Run C{source} (statements, or an expression whose value is printed).

    @return: the output and an exit status (1 after an exception).
    """
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        try:
            try:
                code = compile(source, "<manhole>", "eval")
            except SyntaxError:
                exec(compile(source, "<manhole>", "exec"), namespace)
            else:
                value = eval(code, namespace)
                if value is not None:
                    print(repr(value))
        except SystemExit as e:
            message, status = _exitStatus(e)
            return output.getvalue() + message, status
        except Exception:
            traceback.print_exc(file=output)
            return output.getvalue(), 1
    return output.getvalue(), 0


def _exitStatus(exit: SystemExit) -> tuple[str, int]:
    """
    What C{exit(code)} prints and the exit status it means, as for Python.
    """
    if exit.code is None:
        return "", 0
    if isinstance(exit.code, int):
        return "", exit.code & 0xFF
    return f"{exit.code}\n", 1


class ManholeSession(manhole_ssh.TerminalSession):
    """
    A session: the interactive prompt on a terminal, or one command.
    """

    width = 80
    height = 24

    def __init__(self, original: Any, namespace: dict[str, Any], clock: Any) -> None:
        super().__init__(original)
        self.namespace = namespace
        self.clock = clock
        self.terminal: Any = None

    def openShell(self, proto: Any) -> None:
        self.terminal = self.transportFactory(
            proto, self.chainedProtocolFactory(), IConchUser(self.original), self.width,
            self.height,
        )
        # Leaving the prompt (Ctrl-D, exit()) ends the session with its status.
        self.terminal.chainedProtocol.transport.loseConnection = partial(self._leave, proto)

    def _leave(self, proto: Any) -> None:
        status = self.terminal.chainedProtocol.terminalProtocol.exitStatus or 0
        proto.processEnded(Failure(_ended(status)))

    def execCommand(self, proto: Any, cmd: bytes) -> None:
        source = cmd.decode("utf-8", "replace")
        log.info("manhole: running {source!r}", source=source)
        self.clock.callLater(0, self._runCommand, proto, source)

    def _runCommand(self, proto: Any, source: str) -> None:
        output, status = runPython(source, dict(self.namespace))
        proto.write(output.replace("\n", "\r\n").encode("utf-8", "replace"))
        proto.processEnded(Failure(_ended(status)))

    def windowChanged(self, newWindowSize: Any) -> None:
        rows, columns = newWindowSize[:2]
        if self.terminal is not None:
            self.terminal.chainedProtocol.terminalProtocol.terminalSize(columns, rows)

    def eofReceived(self) -> None:
        if self.terminal is not None:
            self.terminal.chainedProtocol.transport.loseConnection()


def _ended(status: int) -> Exception:
    """
    How a session ending with C{status} is told to the client.
    """
    return ProcessDone(0) if status == 0 else ProcessTerminated(exitCode=status)


@implementer(portal.IRealm)
class ManholeRealm(manhole_ssh.TerminalRealm):
    """
    Gives each login its own copy of the namespace.
    """

    def __init__(self, namespace: dict[str, Any], clock: Any) -> None:
        super().__init__()
        sessions: Any = partial(ManholeSession, namespace=namespace, clock=clock)
        # Manhole copies the namespace it is given: each login starts afresh.
        shells: Any = partial(insults.ServerProtocol, SwitchManhole, namespace)
        self.sessionFactory = sessions
        self.chainedProtocolFactory = shells


class ManholeService(Service):
    """
    The SSH manhole of one switch.
    """

    def __init__(
        self,
        namespace: dict[str, Any],
        reactor: Any,
        endpoint: str,
        keysFile: str | None = None,
        passwordsFile: str | None = None,
        hostKeyPath: str | None = None,
    ) -> None:
        """
        @param namespace: the names each login starts with.
        @param reactor: listens and schedules.
        @param endpoint: a server endpoint description (see
            L{loopbackByDefault}).
        @param keysFile: an OpenSSH C{authorized_keys} file.
        @param passwordsFile: C{user:password} lines, only readable by its
            owner; passwords are refused without it.
        @param hostKeyPath: where the host key is kept (L{defaultHostKeyPath}
            if L{None}).
        @raise ValueError: no way to log in, an unreadable file, a bad
            endpoint.
        """
        if keysFile is None and passwordsFile is None:
            raise ValueError("--manhole needs --manhole-keys AUTHORIZED_KEYS")
        self.namespace = namespace
        self.reactor = reactor
        self.hostKeyPath = hostKeyPath or defaultHostKeyPath()
        self.checkers: list[ICredentialsChecker] = []
        if keysFile is not None:
            self.checkers.append(AuthorizedKeyChecker(_checkedKeys(keysFile), reactor))
        if passwordsFile is not None:
            self.checkers.append(_passwordChecker(passwordsFile))
        try:
            self.endpointText = loopbackByDefault(endpoint)
            self.endpoint = serverFromString(reactor, self.endpointText)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"--manhole {endpoint}: {e}{_colonHint(endpoint)}") from None
        except OSError as e:  # ssl: reads its certificate and key files here
            raise ValueError(f"--manhole {endpoint}: cannot read {e.filename}: {e.strerror} "
                             f"(errno {e.errno})") from None
        self.hostKey: keys.Key | None = None
        self.port: Any = None
        self.refusals = RefusalLog(reactor)
        self.noise = RefusalLog(reactor, what="line(s)")

    def privilegedStartService(self) -> None:
        """
        Load the host key and, unless the endpoint is a Unix socket (which
        is to be the switch's user's), listen: started as root with
        C{twistd --uid}, a port below 1024 is bound before privileges go.
        """
        super().privilegedStartService()
        if self.hostKey is None:
            self.hostKey = loadHostKey(self.hostKeyPath)
        if self.port is None and not isinstance(self.endpoint, UNIXServerEndpoint):
            self._listen()

    def startService(self) -> None:
        if self.hostKey is None:
            self.hostKey = loadHostKey(self.hostKeyPath)
        if self.port is None:
            self._listen()
        super().startService()
        assert self.hostKey is not None
        log.info("manhole: SSH on {endpoint}, host key {fingerprint} in {path}",
                 endpoint=self.endpointText, fingerprint=fingerprint(self.hostKey),
                 path=self.hostKeyPath)

    def _listen(self) -> None:
        assert self.hostKey is not None
        realm = ManholeRealm(self.namespace, self.reactor)
        factory = ManholeFactory(portal.Portal(realm, self.checkers), self.hostKey, self.reactor,
                                 self.refusals, self.noise)
        outcome: list[Any] = []
        self.endpoint.listen(factory).addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            failure: Failure = outcome[0]
            raise listenError(f"--manhole {self.endpointText}: cannot listen",
                              failure.value or Exception(failure.getErrorMessage()))
        self.port = outcome[0] if outcome else None

    def stopService(self) -> Any:
        super().stopService()
        self.refusals.stop()
        self.noise.stop()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        return None


def _checkedKeys(path: str) -> AuthorizedKeysFile:
    authorized = AuthorizedKeysFile(path)
    try:
        count = authorized.check()
    except OSError as e:
        raise ValueError(f"--manhole-keys {path}: {e.strerror}") from None
    if count == 0:
        log.warn("--manhole-keys {path} holds no usable key: nobody can log in", path=path)
    return authorized


def _passwordChecker(path: str) -> FilePasswordDB:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise ValueError(f"--manhole-passwords {path}: {e.strerror}") from None
    if mode & 0o077:
        raise ValueError(
            f"--manhole-passwords {path}: readable by others (mode {mode:04o}); chmod 600 it"
        )
    return FilePasswordDB(path, cache=False)


def addManhole(
    service: SwitchService,
    endpoint: str,
    keysFile: str | None = None,
    passwordsFile: str | None = None,
    hostKeyPath: str | None = None,
) -> ManholeService:
    """
    Give C{service} an SSH manhole with C{switch}, C{service} and C{ops};
    the arguments are those of L{ManholeService}.
    """
    namespace = {
        "switch": service.switch,
        "service": service,
        "ops": service.operations,
    }
    manholeService = ManholeService(
        namespace, service.reactor, endpoint, keysFile, passwordsFile, hostKeyPath
    )
    manholeService.setServiceParent(service)
    return manholeService
