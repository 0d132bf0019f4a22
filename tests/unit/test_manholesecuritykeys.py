"""
Logging in to the manhole's real SSH server with a FIDO security key, end
to end on loopback: a Twisted conch client that reads server-sig-algs,
offers the key, and signs with a fake authenticator (tests/unit/skfakes.py)
as OpenSSH's ssh does with a YubiKey; there is no authenticator here, so
OpenSSH's ssh itself cannot be used.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import pytest_twisted
from skfakes import PRESENT, VERIFIED, FakeAuthenticator
from twisted.conch.ssh import channel, connection, keys, transport, userauth
from twisted.conch.ssh.common import NS
from twisted.internet import defer, protocol, reactor
from twisted.logger import capturedLogs, formatEvent

from vtwisted.manhole import ManholeService


class Command(channel.SSHChannel):
    """A session running one Python command; its output and exit status."""

    name = b"session"

    def __init__(self, done: defer.Deferred[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.done = done
        self.output = b""
        self.status: int | None = None

    def channelOpen(self, specificData: bytes) -> None:
        assert self.conn is not None
        self.conn.sendRequest(self, b"exec", NS(b"print(6 * 7)"))

    def dataReceived(self, data: bytes) -> None:
        self.output += data

    def request_exit_status(self, data: bytes) -> int:
        (self.status,) = struct.unpack(">L", data[:4])
        return 1

    def closed(self) -> None:
        if not self.done.called:
            self.done.callback((self.output, self.status))
        assert self.conn is not None
        self.conn.transport.loseConnection()  # type: ignore[union-attr]


class Connection(connection.SSHConnection):
    def __init__(self, done: defer.Deferred[Any]) -> None:
        super().__init__()
        self.done = done

    def serviceStarted(self) -> None:
        self.openChannel(Command(self.done, conn=self))


class SecurityKeyAuth(userauth.SSHUserAuthClient):
    """Offers the security key if server-sig-algs lists its type, once."""

    preferredOrder = [b"publickey"]

    def __init__(self, fido: FakeAuthenticator, flags: int, instance: Any) -> None:
        super().__init__(b"operator", instance)
        self.fido = fido
        self.flags = flags
        self.offered = False

    def getPublicKey(self) -> keys.Key | None:
        assert self.transport is not None
        algorithms = self.transport.peerExtensions.get(b"server-sig-algs", b"").split(b",")
        if self.offered or self.fido.keyType not in algorithms:
            return None
        self.offered = True
        return self.fido.publicKey()

    def signData(self, publicKey: keys.Key, signData: bytes) -> defer.Deferred[bytes]:
        return defer.succeed(self.fido.sign(signData, self.flags))


class Client(transport.SSHClientTransport):
    factory: ClientFactory

    def verifyHostKey(self, hostKey: bytes, fingerprint: str) -> defer.Deferred[bool]:
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(SecurityKeyAuth(self.factory.fido, self.factory.flags,
                                            Connection(self.factory.done)))

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        if not self.factory.done.called:
            self.factory.done.callback(None)
        self.factory.lost.callback(None)


class ClientFactory(protocol.ClientFactory):
    protocol: Any = Client

    def __init__(self, fido: FakeAuthenticator, flags: int) -> None:
        self.fido = fido
        self.flags = flags
        self.done: defer.Deferred[Any] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()


async def login(tmp_path, fido: FakeAuthenticator, flags: int,
                options: bytes = b"") -> tuple[Any, list[str]]:
    """
    Start the manhole with C{fido}'s key on an authorized_keys line with
    C{options}, log in signing with C{flags}, run print(6 * 7).

    @return: the command's output and exit status (L{None} if the login
        was refused) and the log lines.
    """
    keysFile = tmp_path / "authorized_keys"
    keysFile.write_bytes(fido.authorizedLine(options) + b"\n")
    service = ManholeService({}, reactor, "tcp:0:interface=127.0.0.1", str(keysFile),
                             hostKeyPath=str(tmp_path / "host_key"))
    factory = ClientFactory(fido, flags)
    with capturedLogs() as events:
        service.startService()
        try:
            port = service.port.getHost().port
            reactor.connectTCP("127.0.0.1", port, factory)
            result = await factory.done.addTimeout(30, reactor)
            await factory.lost
        finally:
            await defer.maybeDeferred(service.stopService)
    return result, [formatEvent(event) for event in events]


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
@pytest_twisted.ensureDeferred
async def test_aTouchedSecurityKeyLogsIn(tmp_path, kind) -> None:
    """An sk key listed in server-sig-algs logs in and runs a command."""
    fido = FakeAuthenticator(kind)
    result, lines = await login(tmp_path, fido, PRESENT)
    assert result == (b"42\r\n", 0), lines
    assert any("'operator' logged in" in line for line in lines)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
@pytest_twisted.ensureDeferred
async def test_anUntouchedSecurityKeyIsRefusedAndLogged(tmp_path, kind) -> None:
    """Without user presence: refused, the log line says the key was not touched."""
    fido = FakeAuthenticator(kind)
    result, lines = await login(tmp_path, fido, 0)
    assert result is None
    refusals = [line for line in lines if "refused publickey login" in line]
    assert len(refusals) == 1 and "security key not touched" in refusals[0], lines


@pytest_twisted.ensureDeferred
async def test_noTouchRequiredLetsAnUntouchedKeyIn(tmp_path) -> None:
    """The line's no-touch-required accepts a signature without presence."""
    result, lines = await login(tmp_path, FakeAuthenticator(), 0, b"no-touch-required")
    assert result == (b"42\r\n", 0), lines


@pytest_twisted.ensureDeferred
async def test_verifyRequiredNeedsTheVerifiedFlag(tmp_path) -> None:
    """verify-required: touch alone is refused, touch and PIN log in."""
    result, lines = await login(tmp_path, FakeAuthenticator("ecdsa"), PRESENT,
                                b"verify-required")
    assert result is None
    assert any("did not verify the user" in line for line in lines), lines
    result, lines = await login(tmp_path, FakeAuthenticator("ecdsa"), PRESENT | VERIFIED,
                                b"verify-required")
    assert result == (b"42\r\n", 0), lines
