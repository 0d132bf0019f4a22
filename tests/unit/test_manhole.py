"""
The SSH manhole's parts: loopback by default, a host key made once and kept,
authorized_keys checking, one-shot commands.
"""

from __future__ import annotations

import os
import stat
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactor

from vtwisted import manhole
from vtwisted.manhole import (
    AuthorizedKeyChecker,
    AuthorizedKeysFile,
    ManholeService,
    loadHostKey,
    loopbackByDefault,
    runPython,
)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("2222", "tcp:2222:interface=127.0.0.1"),
        ("tcp:2222", "tcp:2222:interface=127.0.0.1"),
        ("tcp6:2222", r"tcp6:2222:interface=\:\:1"),
        ("tcp:2222:interface=0.0.0.0", "tcp:2222:interface=0.0.0.0"),
        ("unix:/tmp/manhole.sock", "unix:/tmp/manhole.sock"),
    ],
)
def test_listensOnLoopbackUnlessTold(given, used) -> None:
    """A port alone, or tcp: without interface=, binds loopback only."""
    assert loopbackByDefault(given) == used


def test_hostKeyIsGeneratedOnceAndKept(tmp_path) -> None:
    """The first start writes an Ed25519 key (0600, dir 0700); later starts reuse it."""
    path = tmp_path / "state" / "vtwisted" / "host_key"
    first = loadHostKey(str(path))
    assert first.type() == "Ed25519" and not first.isPublic()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert loadHostKey(str(path)) == first


def test_unusableHostKeyNamesThePath(tmp_path) -> None:
    """A corrupt host key file stops start-up with its path in the message."""
    path = tmp_path / "host_key"
    path.write_text("not a key")
    with pytest.raises(OSError, match=str(path)):
        loadHostKey(str(path))


def test_defaultHostKeyPathFollowsXdg(monkeypatch) -> None:
    """The default host key lives under $XDG_STATE_HOME/vtwisted."""
    monkeypatch.setenv("XDG_STATE_HOME", "/var/lib/somewhere")
    assert manhole.defaultHostKeyPath() == "/var/lib/somewhere/vtwisted/manhole_host_key"


def newKey() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def credentials(key: keys.Key, signed: bool = True) -> SSHPrivateKey:
    blob = key.public().blob()
    data = b"session data"
    return SSHPrivateKey(
        b"operator", b"ssh-ed25519", blob, data, key.sign(data) if signed else None
    )


def checkerFor(tmp_path, *lines: bytes) -> AuthorizedKeyChecker:
    path = tmp_path / "authorized_keys"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return AuthorizedKeyChecker(AuthorizedKeysFile(str(path)))


def outcome(deferred: Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    return results[0]


def test_authorizedKeyLogsIn(tmp_path) -> None:
    """A signed login with a listed key gives the user name."""
    key = newKey()
    checker = checkerFor(tmp_path, b"# comment", key.public().toString("openssh"))
    assert outcome(checker.requestAvatarId(credentials(key))) == b"operator"


def test_queryForListedKeyIsAccepted(tmp_path) -> None:
    """An unsigned query for a listed key gets 'valid key, now sign'."""
    key = newKey()
    checker = checkerFor(tmp_path, key.public().toString("openssh"))
    assert outcome(checker.requestAvatarId(credentials(key, signed=False))).check(ValidPublicKey)


def test_wrongKeyIsRefusedWithItsFingerprint(tmp_path) -> None:
    """A key not in the file is refused, even for a query, naming its fingerprint."""
    checker = checkerFor(tmp_path, newKey().public().toString("openssh"))
    other = newKey()
    for signed in (True, False):
        failure = outcome(checker.requestAvatarId(credentials(other, signed)))
        assert failure.check(UnauthorizedLogin)
    assert manhole.fingerprint(other) in failure.getErrorMessage()


def test_badSignatureIsRefused(tmp_path) -> None:
    """A listed key with someone else's signature is refused."""
    key = newKey()
    checker = checkerFor(tmp_path, key.public().toString("openssh"))
    forged = credentials(key)
    forged.signature = newKey().sign(b"session data")
    assert outcome(checker.requestAvatarId(forged)).check(UnauthorizedLogin)


def test_keyLinesWithOptionsAreNotHalfHonoured(tmp_path) -> None:
    """A command=... key is refused rather than given the prompt."""
    key = newKey()
    checker = checkerFor(tmp_path, b'command="ops.ports()" ' + key.public().toString("openssh"))
    assert outcome(checker.requestAvatarId(credentials(key))).check(UnauthorizedLogin)


def test_keysFileIsReadAtEachLogin(tmp_path) -> None:
    """Adding a key to the file lets it in without a restart."""
    key = newKey()
    checker = checkerFor(tmp_path)
    assert outcome(checker.requestAvatarId(credentials(key))).check(UnauthorizedLogin)
    (tmp_path / "authorized_keys").write_bytes(key.public().toString("openssh"))
    assert outcome(checker.requestAvatarId(credentials(key))) == b"operator"


def test_passwordsOnlyFromAPrivateFile(tmp_path) -> None:
    """--manhole-passwords must not be readable by others."""
    passwords = tmp_path / "passwords"
    passwords.write_text("operator:secret\n")
    passwords.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        ManholeService({}, MemoryReactor(), "2222", passwordsFile=str(passwords))
    passwords.chmod(0o600)
    service = ManholeService({}, MemoryReactor(), "2222", passwordsFile=str(passwords))
    assert len(service.checkers) == 1


def test_noAuthenticationIsRefused() -> None:
    """A manhole without keys or passwords is refused when built."""
    with pytest.raises(ValueError, match="--manhole-keys"):
        ManholeService({}, MemoryReactor(), "2222")


def test_serviceStartsOnItsEndpoint(tmp_path) -> None:
    """Starting listens (on loopback) and makes the host key."""
    keysFile = tmp_path / "authorized_keys"
    keysFile.write_bytes(newKey().public().toString("openssh"))
    reactor = MemoryReactor()
    service = ManholeService(
        {}, reactor, "2222", keysFile=str(keysFile), hostKeyPath=str(tmp_path / "hk")
    )
    service.startService()
    (listened,) = reactor.tcpServers
    assert (listened[0], listened[3]) == (2222, "127.0.0.1")
    assert (tmp_path / "hk").exists()
    service.stopService()


def test_portInUseSaysSoWithItsErrno(tmp_path) -> None:
    """A manhole that cannot listen says where, why and the errno, once."""
    import errno
    import socket

    from twisted.internet import reactor

    keysFile = tmp_path / "authorized_keys"
    keysFile.write_bytes(newKey().public().toString("openssh"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ManholeService({}, reactor, str(port), keysFile=str(keysFile),
                                 hostKeyPath=str(tmp_path / "hk"))
        with pytest.raises(OSError) as raised:
            service.startService()
    assert raised.value.errno == errno.EADDRINUSE
    assert str(raised.value.strerror) == (f"--manhole tcp:{port}:interface=127.0.0.1: cannot "
                                          "listen: Address already "
                                          "in use (errno 98)")


def test_runPythonPrintsValuesAndTracebacks() -> None:
    """A one-shot command prints an expression's value, or a traceback and status 1."""
    namespace = {"x": 41}
    assert runPython("x + 1", namespace) == ("42\n", 0)
    assert runPython("y = x; print(y)", namespace) == ("41\n", 0)
    output, status = runPython("1 / 0", namespace)
    assert status == 1 and "ZeroDivisionError" in output


def test_loginTimeoutUsesTheServiceReactor(tmp_path) -> None:
    """An SSH client that never logs in is timed out on the given clock."""
    from types import SimpleNamespace

    from twisted.conch.ssh.transport import SSHTransportBase
    from twisted.cred import portal
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock

    from vtwisted.manhole import ManholeFactory, ManholeRealm
    from vtwisted.manholeauth import LOGIN_TIMEOUT, ManholeUserAuth

    clock = Clock()
    checker = checkerFor(tmp_path, newKey().public().toString("openssh"))
    factory = ManholeFactory(portal.Portal(ManholeRealm({}, clock), [checker]), newKey(), clock)
    auth = ManholeUserAuth()
    # A stand-in with just what serviceStarted reads of an SSH transport.
    auth.transport = cast(SSHTransportBase, SimpleNamespace(
        factory=factory, isEncrypted=lambda direction: True,
        transport=SimpleNamespace(getPeer=lambda: IPv4Address("TCP", "127.0.0.1", 5555))))
    auth.serviceStarted()
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == LOGIN_TIMEOUT
    auth.serviceStopped()


@pytest.mark.parametrize("broken", [
    b"ssh-ed25519 AAAA",  # cut short: Twisted's parser raises struct.error
    b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ",  # bad base64 padding
    b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==",  # a key of the wrong length
    b"ssh-ed25519",  # no key at all
])
def test_aCorruptKeyLineSpoilsOnlyItself(tmp_path, broken) -> None:
    """
    A truncated or corrupt line of the authorized keys (an editor's wrap, a
    bad paste) is skipped with a warning: the keys on the other lines still
    log in, and the service starts.
    """
    key = newKey()
    checker = checkerFor(tmp_path, broken, key.public().toString("openssh"))
    assert outcome(checker.requestAvatarId(credentials(key))) == b"operator"
    ManholeService({}, MemoryReactor(), "2222", checker.authorized.path)


def test_aCorruptClientKeyIsRefusedAsABadKey(tmp_path) -> None:
    """
    A client offering a corrupt public key (a blob Twisted's parser cannot
    read) is refused like any bad key: no exception out of the SSH
    protocol, a USERAUTH_FAILURE, and the login refusal logged.
    """
    from types import SimpleNamespace

    from twisted.conch.ssh import userauth
    from twisted.conch.ssh.common import NS
    from twisted.conch.ssh.transport import SSHTransportBase
    from twisted.cred import portal
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock

    from vtwisted.manhole import ManholeFactory, ManholeRealm, ManholeUserAuth

    clock = Clock()
    checker = checkerFor(tmp_path, newKey().public().toString("openssh"))
    factory = ManholeFactory(portal.Portal(ManholeRealm({}, clock), [checker]), newKey(), clock)
    sent: list[tuple[int, bytes]] = []
    auth = ManholeUserAuth()
    auth.transport = cast(SSHTransportBase, SimpleNamespace(
        factory=factory, isEncrypted=lambda direction: True, sessionID=b"id",
        sendPacket=lambda kind, payload: sent.append((kind, payload)),
        transport=SimpleNamespace(getPeer=lambda: IPv4Address("TCP", "127.0.0.1", 40000))))
    auth.serviceStarted()
    corrupt = NS(b"ssh-ed25519") + NS(b"short")
    auth.ssh_USERAUTH_REQUEST(NS(b"operator") + NS(b"ssh-connection") + NS(b"publickey")
                              + b"\x00" + NS(b"ssh-ed25519") + NS(corrupt))
    assert [kind for kind, _ in sent] == [userauth.MSG_USERAUTH_FAILURE]
    auth.serviceStopped()


def test_anUnparsableEndpointSaysSo(tmp_path) -> None:
    """--manhole 'tcp:22\\' is refused with a message naming it, not a traceback."""
    keysFile = tmp_path / "keys"
    keysFile.write_bytes(newKey().public().toString("openssh") + b"\n")
    with pytest.raises(ValueError, match=r"--manhole tcp:22\\: ends with a lone backslash"):
        ManholeService({}, MemoryReactor(), "tcp:22\\", str(keysFile))


def test_aMissingCertificateFileSaysSo(tmp_path) -> None:
    """--manhole ssl:... with a missing key file names the file, not a traceback."""
    keysFile = tmp_path / "keys"
    keysFile.write_bytes(newKey().public().toString("openssh") + b"\n")
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=f"--manhole ssl:2222:privateKey={missing}: cannot "
                                         f"read {missing}: No such file or directory"):
        ManholeService({}, MemoryReactor(), f"ssl:2222:privateKey={missing}", str(keysFile))


def test_serverSigAlgsListsTheUserKeySignaturesVerified() -> None:
    """
    server-sig-algs lists RSA's SHA-2 signatures, which the checker verifies,
    though the host key is Ed25519: OpenSSH 9 will not log in with an RSA
    key otherwise.
    """
    from twisted.conch.ssh.common import getNS

    from vtwisted.manhole import ManholeTransport

    sent: list[bytes] = []
    server = ManholeTransport()
    server._peerSupportsExtensions = True
    server.sendPacket = lambda kind, payload: sent.append(payload)  # type: ignore[method-assign]
    server.sendExtInfo([(b"server-sig-algs", b"ssh-ed25519")])
    name, value, _ = getNS(sent[0][4:], 2)
    assert name == b"server-sig-algs"
    assert {b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256"} <= set(value.split(b","))
    assert b"ssh-rsa" not in value.split(b",")


def test_runPythonExitGivesItsStatus() -> None:
    """exit() in a one-shot command ends it with Python's status, not an escaping SystemExit."""
    assert runPython("print(1); exit(3)", {}) == ("1\n", 3)
    assert runPython("raise SystemExit", {}) == ("", 0)
    assert runPython("exit('no such port')", {}) == ("no such port\n", 1)


def test_keyFileRemarksAreLoggedOncePerChange(tmp_path) -> None:
    """
    A bad line, or a file that cannot be read, is logged when first seen,
    not at every login; an edit is read and judged again.
    """
    from twisted.logger import capturedLogs

    key = newKey()
    checker = checkerFor(tmp_path, b'tunnel="0" ' + newKey().public().toString("openssh"),
                         key.public().toString("openssh"))
    path = tmp_path / "authorized_keys"
    with capturedLogs() as events:
        for _ in range(3):
            assert outcome(checker.requestAvatarId(credentials(key))) == b"operator"
    assert len(events) == 1 and events[0]["number"] == 1
    path.write_bytes(b"# moved\n" + path.read_bytes())
    with capturedLogs() as events:
        for _ in range(2):
            assert outcome(checker.requestAvatarId(credentials(key))) == b"operator"
    assert [event["number"] for event in events] == [2]
    path.unlink()
    with capturedLogs() as events:
        for _ in range(2):
            assert outcome(checker.requestAvatarId(credentials(key))).check(UnauthorizedLogin)
    assert len(events) == 1 and "errno 2" in events[0]["log_format"].format(**events[0])


def test_welcomeLineIsNotWipedWhenSized() -> None:
    """
    The session gives the prompt its size right after it drew the screen:
    the welcome line stays, and a resized window keeps what it shows.
    """
    from twisted.conch.insults import insults
    from twisted.internet.testing import StringTransport

    from vtwisted.manhole import WELCOME, SwitchManhole

    terminal = insults.ServerProtocol(SwitchManhole, {})
    screen = StringTransport()
    terminal.makeConnection(screen)
    prompt = cast(SwitchManhole, terminal.terminalProtocol)
    prompt.terminalSize(132, 40)
    assert WELCOME.strip() in screen.value().rpartition(b"\x1b[2J")[2]
    assert (prompt.width, prompt.height) == (132, 40)
    terminal.dataReceived(b"switch\r")
    prompt.terminalSize(100, 30)
    assert b"\x1b[2J" not in screen.value() and b"'switch' is not defined" in screen.value()
    assert (prompt.width, prompt.height) == (100, 30)


def test_nonSessionChannelsAreRefusedInOneLine() -> None:
    """
    ssh -L/-W/-D ask for a TCP channel: refused as administratively
    prohibited, with one warning naming it and the peer, not a logged
    traceback; a client asking again and again gets no more lines until the
    minute's count.
    """
    import struct
    from types import SimpleNamespace

    from twisted.conch.ssh import connection, session
    from twisted.conch.ssh.common import NS
    from twisted.conch.ssh.transport import SSHServerTransport
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs, formatEvent

    from vtwisted.manhole import ManholeConnection
    from vtwisted.refusals import PeerLogger, RefusalLog

    sent: list[tuple[int, bytes]] = []
    clock = Clock()
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    conn = ManholeConnection()
    conn.transport = cast(SSHServerTransport, SimpleNamespace(
        avatar=SimpleNamespace(channelLookup={b"session": session.SSHSession}),
        sendPacket=lambda kind, payload: sent.append((kind, payload)),
        _log=PeerLogger(RefusalLog(clock, what="line(s)"), peer),
        transport=SimpleNamespace(getPeer=lambda: peer)))
    with capturedLogs() as events:
        for number in range(50):
            conn.ssh_CHANNEL_OPEN(NS(b"direct-tcpip") + struct.pack(">3L", number, 65536, 32768)
                                  + NS(b"127.0.0.1") + struct.pack(">L", 9))
    assert len(sent) == 50
    kind, payload = sent[0]
    assert kind == connection.MSG_CHANNEL_OPEN_FAILURE
    assert struct.unpack(">2L", payload[:8]) == (0, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
    (line,) = [formatEvent(event) for event in events]
    assert line == ("manhole: 127.0.0.1:40000: refused a direct-tcpip channel: "
                    "only sessions are served"), line
    assert not any("log_failure" in event for event in events)
    with capturedLogs() as events:
        clock.advance(60)
    (summary,) = [formatEvent(event) for event in events]
    assert summary.startswith("manhole: 49 more line(s) like 'refused a channel' from 127.0.0.1"), (
        summary)


def test_aClientsGoodbyeIsNoError() -> None:
    """
    ssh's disconnect message at a normal exit is not logged as an error;
    another reason is logged as a warning naming the peer.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.logger import LogLevel, capturedLogs

    from vtwisted.manhole import ManholeTransport

    server = ManholeTransport()
    server.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    with capturedLogs() as events:
        server.receiveError(11, b"disconnected by user")
        server.receiveError(2, b"bad packet length")
    assert [(event["log_level"], event["code"]) for event in events] == [(LogLevel.warn, 2)]


def test_aMalformedMessageDisconnectsInOneLine(tmp_path) -> None:
    """
    A key exchange message cut short is a protocol error: the client is
    disconnected and one warning names the message and the peer; nothing
    escapes into the reactor.
    """
    from twisted.cred import portal
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.logger import capturedLogs

    from vtwisted.manhole import ManholeFactory, ManholeRealm

    clock = Clock()
    checker = checkerFor(tmp_path, newKey().public().toString("openssh"))
    factory = ManholeFactory(portal.Portal(ManholeRealm({}, clock), [checker]), newKey(), clock)
    factory.startFactory()
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    wire = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    server.makeConnection(wire)
    with capturedLogs() as events:
        server.dataReceived(b"SSH-2.0-probe\r\n\x00\x00\x00\x0c\x0a\x14" + b"\x00" * 11)
    assert wire.disconnecting
    assert [event["number"] for event in events if "number" in event] == [20]


def test_hostKeyIsNeverLeftHalfWritten(tmp_path, monkeypatch) -> None:
    """
    A crash while the new host key is written (here: at its sync) leaves no
    key file behind, so the next start makes a whole one; the file being
    written is private from the start.
    """
    path = tmp_path / "host_key"
    modes = []

    def crash(fd: int) -> None:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match=f"{path}: cannot create it"):
        loadHostKey(str(path))
    assert modes == [0o600]
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    key = loadHostKey(str(path))
    assert loadHostKey(str(path)) == key
    assert os.listdir(tmp_path) == ["host_key"]


def test_aTruncatedHostKeySaysWhatToDo(tmp_path) -> None:
    """
    A host key file cut short (a crash of an older version, a bad copy)
    stops start-up with a message naming it and the way out, not a
    traceback of the key parser.
    """
    path = tmp_path / "host_key"
    whole = newKey().toString("openssh")
    for broken in (whole[:200], whole[:-60], b""):
        path.write_bytes(broken)
        with pytest.raises(OSError) as raised:
            loadHostKey(str(path))
        assert f"--manhole-host-key {path}: not a usable private key" in str(raised.value)
        assert "move it away" in str(raised.value)
