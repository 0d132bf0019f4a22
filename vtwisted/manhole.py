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
or 1 after an exception.

Authentication is by public key against an OpenSSH C{authorized_keys} file
(C{--manhole-keys}), read again at every login so edits apply at once; lines
with options (C{from=...}) are refused rather than half-honoured.  Passwords
(C{--manhole-passwords}, C{user:password} lines in a file only its owner can
read) are accepted only when that option is given.  Every refused login is
logged with the peer's address and, for keys, the key's fingerprint.

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
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.service import Service
from twisted.conch import error as conchError
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection, keys, userauth
from twisted.cred import portal
from twisted.cred.checkers import FilePasswordDB, ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.endpoints import _parse, serverFromString
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.sockettools import listenError

if TYPE_CHECKING:
    from vtwisted.service import SwitchService

log = Logger()

#: Seconds a client has to log in.
LOGIN_TIMEOUT = 60
#: What Twisted's key parser raises for a truncated or corrupt key, besides
#: C{BadKeyError}.
_KEY_ERRORS = (keys.BadKeyError, ValueError, IndexError, struct.error)
WELCOME = (
    b"vtwisted manhole: switch, service and ops (the console's operations) are here;"
    b" help(ops) lists them.\r\n"
)


def defaultHostKeyPath() -> str:
    """
    Where the host key is kept unless C{--manhole-host-key} says otherwise.
    """
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "vtwisted", "manhole_host_key")


def loopbackByDefault(description: str) -> str:
    """
    The endpoint to listen on: a bare port number, or a C{tcp:}/C{tcp6:}
    endpoint without C{interface=}, is bound to loopback only.

    @raise ValueError: the description cannot be parsed.
    """
    text = description.strip()
    if text.isdigit():
        return f"tcp:{text}:interface=127.0.0.1"
    try:
        args, kwargs = _parse(text)
    except (RuntimeError, StopIteration):
        raise ValueError("ends with a lone backslash") from None
    kind = args[0] if args else ""
    if kind in ("tcp", "tcp6") and "interface" not in kwargs:
        return text + (":interface=127.0.0.1" if kind == "tcp" else r":interface=\:\:1")
    return text


def loadHostKey(path: str) -> keys.Key:
    """
    The host key at C{path}, generated (Ed25519, mode 0600) if missing.

    @raise OSError: it cannot be read, written or parsed; the message names
        the path.
    """
    if not os.path.exists(path):
        _writeHostKey(path)
    try:
        key = keys.Key.fromFile(path)
    except (OSError, keys.BadKeyError) as e:
        raise OSError(f"--manhole-host-key {path}: cannot load it: {e}") from e
    if key.isPublic():
        raise OSError(f"--manhole-host-key {path}: is a public key; a private key is needed")
    if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        log.warn("manhole host key {path} is readable by others; chmod 600 it", path=path)
    return key


def _writeHostKey(path: str) -> None:
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.toString("openssh"))
    except OSError as e:
        raise OSError(e.errno, f"--manhole-host-key {path}: cannot create it: {e.strerror}") from e
    log.info("manhole: generated host key {path} ({fingerprint})", path=path,
             fingerprint=fingerprint(key))


def fingerprint(key: keys.Key) -> str:
    """
    C{SHA256:...}, as OpenSSH prints it.
    """
    value = key.fingerprint(format=keys.FingerprintFormats.SHA256_BASE64)
    return "SHA256:" + value.rstrip("=")


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """
    The keys of an OpenSSH C{authorized_keys} file, for any user name, read
    at every call.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def check(self) -> int:
        """
        Read the file now.

        @return: how many keys it has.
        @raise OSError: it cannot be read.
        """
        with open(self.path, "rb") as f:
            return len(list(self._parse(f)))

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        try:
            with open(self.path, "rb") as f:
                return list(self._parse(f))
        except OSError as e:
            log.error("manhole: cannot read {path}: {error}", path=self.path, error=e.strerror)
            return []

    def _parse(self, lines: Iterable[bytes]) -> Iterable[keys.Key]:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            if not line.split()[0].startswith((b"ssh-", b"ecdsa-", b"sk-")):
                log.warn("{path} line {number}: key options are not supported; line ignored",
                         path=self.path, number=number)
                continue
            try:
                yield keys.Key.fromString(line)
            except _KEY_ERRORS as e:
                log.warn("{path} line {number}: not a key ({error}); line ignored",
                         path=self.path, number=number, error=e)


@implementer(ICredentialsChecker)
class AuthorizedKeyChecker:
    """
    Accepts a signed public-key login if the key is in the authorized keys.
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, authorized: AuthorizedKeysFile) -> None:
        self.authorized = authorized

    def requestAvatarId(self, credentials: Any) -> Any:
        return defer.execute(self._check, credentials)

    def _check(self, credentials: Any) -> bytes:
        try:
            key = keys.Key.fromString(credentials.blob)
        except _KEY_ERRORS as e:
            raise UnauthorizedLogin(f"unusable key: {e}") from None
        if not any(key == k for k in self.authorized.getAuthorizedKeys(credentials.username)):
            raise UnauthorizedLogin(
                f"key {fingerprint(key)} is not in {self.authorized.path}"
            )
        if not credentials.signature:
            raise conchError.ValidPublicKey()
        try:
            if key.verify(credentials.signature, credentials.sigData):
                return bytes(credentials.username)
        except Exception:
            pass
        raise UnauthorizedLogin("bad signature")


class ManholeUserAuth(userauth.SSHUserAuthServer):
    """
    Logs every login, accepted or refused, with the peer's address.
    """

    loginTimeout = LOGIN_TIMEOUT

    def serviceStarted(self) -> None:
        # Time out logins with the service's reactor, not the global one.
        transport: Any = self.transport
        self.clock = transport.factory.clock
        super().serviceStarted()

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> Any:
        try:
            d = super().tryAuth(kind, user, data)
        except _KEY_ERRORS as e:
            # Twisted parses the client's key before any checker sees it, and
            # lets a corrupt one raise: refuse it as a bad key is refused.
            d = defer.fail(UnauthorizedLogin(f"unusable key: {e}"))
        transport: Any = self.transport
        peer = transport.transport.getPeer()
        who = user.decode("utf-8", "replace")

        def refused(reason: Failure) -> Failure:
            if reason.check(UnauthorizedLogin):
                log.warn("manhole: refused {kind} login of {user!r} from {peer}: {reason}",
                         kind=kind.decode(), user=who, peer=peer,
                         reason=reason.getErrorMessage())
            return reason

        def accepted(result: Any) -> Any:
            log.info("manhole: {user!r} logged in from {peer} ({kind})", user=who, peer=peer,
                     kind=kind.decode())
            return result

        return d.addCallbacks(accepted, refused)


class ManholeFactory(manhole_ssh.ConchFactory):
    """
    An SSH server factory with logged logins and its own host key.
    """

    services = {
        b"ssh-userauth": ManholeUserAuth,
        b"ssh-connection": connection.SSHConnection,
    }

    def __init__(self, realmPortal: portal.Portal, hostKey: keys.Key, clock: Any) -> None:
        super().__init__(realmPortal)
        self.clock = clock
        # Twisted annotates these as bytes to bytes; they hold Key objects.
        public: Any = {hostKey.sshType(): hostKey.public()}
        private: Any = {hostKey.sshType(): hostKey}
        self.publicKeys = public
        self.privateKeys = private


class SwitchManhole(manhole.ColoredManhole):
    """
    The interactive prompt, with a line saying what is in it.
    """

    def initializeScreen(self) -> None:
        self.terminal.reset()
        self.terminal.write(WELCOME)
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()


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
        except Exception:
            traceback.print_exc(file=output)
            return output.getvalue(), 1
    return output.getvalue(), 0


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
        # Leaving the prompt (Ctrl-D) ends the session with exit status 0.
        self.terminal.chainedProtocol.transport.loseConnection = partial(
            proto.processEnded, Failure(ProcessDone(0))
        )

    def execCommand(self, proto: Any, cmd: bytes) -> None:
        source = cmd.decode("utf-8", "replace")
        log.info("manhole: running {source!r}", source=source)
        self.clock.callLater(0, self._runCommand, proto, source)

    def _runCommand(self, proto: Any, source: str) -> None:
        output, status = runPython(source, dict(self.namespace))
        proto.write(output.replace("\n", "\r\n").encode("utf-8", "replace"))
        ended = ProcessDone(0) if status == 0 else ProcessTerminated(exitCode=status)
        proto.processEnded(Failure(ended))

    def windowChanged(self, newWindowSize: Any) -> None:
        rows, columns = newWindowSize[:2]
        if self.terminal is not None:
            self.terminal.chainedProtocol.terminalProtocol.terminalSize(columns, rows)

    def eofReceived(self) -> None:
        if self.terminal is not None:
            self.terminal.chainedProtocol.transport.loseConnection()


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
            self.checkers.append(AuthorizedKeyChecker(_checkedKeys(keysFile)))
        if passwordsFile is not None:
            self.checkers.append(_passwordChecker(passwordsFile))
        try:
            self.endpointText = loopbackByDefault(endpoint)
            self.endpoint = serverFromString(reactor, self.endpointText)
        except (ValueError, TypeError) as e:
            raise ValueError(f"--manhole {endpoint}: {e}") from None
        except OSError as e:  # ssl: reads its certificate and key files here
            raise ValueError(f"--manhole {endpoint}: cannot read {e.filename}: {e.strerror} "
                             f"(errno {e.errno})") from None
        self.hostKey: keys.Key | None = None
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.hostKey is None:
            self.hostKey = loadHostKey(self.hostKeyPath)

    def startService(self) -> None:
        self.privilegedStartService()
        assert self.hostKey is not None
        realm = ManholeRealm(self.namespace, self.reactor)
        factory = ManholeFactory(portal.Portal(realm, self.checkers), self.hostKey, self.reactor)
        outcome: list[Any] = []
        self.endpoint.listen(factory).addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            failure: Failure = outcome[0]
            raise listenError(f"--manhole {self.endpointText}: cannot listen",
                              failure.value or Exception(failure.getErrorMessage()))
        self.port = outcome[0] if outcome else None
        super().startService()
        log.info("manhole: SSH on {endpoint}, host key {fingerprint} in {path}",
                 endpoint=self.endpointText, fingerprint=fingerprint(self.hostKey),
                 path=self.hostKeyPath)

    def stopService(self) -> Any:
        super().stopService()
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
