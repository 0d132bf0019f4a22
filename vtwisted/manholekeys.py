"""
The SSH manhole's keys: its host key, made once and kept, and the OpenSSH
C{authorized_keys} file logins are checked against.

Theory of operation
-------------------
L{loadHostKey} reads the host key, generating an Ed25519 key (mode 0600, in a
0700 directory) the first time, written whole or not at all.
L{AuthorizedKeysFile} reads the C{authorized_keys} file when a login is
checked, but parses it, and logs what it refuses, only when the file changed
(its inode, size or modification time): OpenSSH checks a key twice per
login, and refused logins may come by the thousand.  A line's options are
parsed by L{vtwisted.keyoptions}; a line with an option the manhole cannot
honour is left out.  L{AuthorizedKeyChecker} accepts a login signed by a key
of a line whose C{from=} and C{expiry-time=} allow it: L{PeerPortal} marks
the credentials with the client's address, which Twisted's do not carry.
A FIDO security key's signature (C{sk-ssh-ed25519@openssh.com},
C{sk-ecdsa-sha2-nistp256@openssh.com}), which Twisted's C{Key.verify} cannot
check, is checked by L{vtwisted.sksig} against the application of the
authorized key and the touch and verification options of its line.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import error as conchError
from twisted.conch.checkers import IAuthorizedKeysDB
from twisted.conch.ssh import keys
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from vtwisted import sksig
from vtwisted.keyoptions import KeyOptionError, KeyOptions, parseOptions, splitOptions

log = Logger()

#: What Twisted's key parser raises for a truncated or corrupt key, besides
#: C{BadKeyError}.
_KEY_ERRORS = (keys.BadKeyError, ValueError, IndexError, struct.error)


def defaultHostKeyPath() -> str:
    """
    Where the host key is kept unless C{--manhole-host-key} says otherwise.
    """
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "vtwisted", "manhole_host_key")


def loadHostKey(path: str) -> keys.Key:
    """
    The host key at C{path}, generated (Ed25519, mode 0600) if missing.

    @raise OSError: it cannot be read, written or parsed; the message names
        the path and says what to do.
    """
    if not os.path.exists(path):
        _writeHostKey(path)
    try:
        key = keys.Key.fromFile(path)
    except OSError as e:
        raise OSError(e.errno, f"--manhole-host-key {path}: cannot read it: {e.strerror} "
                      f"(errno {e.errno})") from e
    except (*_KEY_ERRORS, keys.EncryptedKeyError) as e:
        raise OSError(
            f"--manhole-host-key {path}: not a usable private key ({e or type(e).__name__}); "
            "move it away to have a new one made at the next start (clients that "
            "pinned the old one will warn), or give another --manhole-host-key"
        ) from e
    if key.isPublic():
        raise OSError(f"--manhole-host-key {path}: is a public key; a private key is needed")
    if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        log.warn("manhole host key {path} is readable by others; chmod 600 it", path=path)
    return key


def _writeHostKey(path: str) -> None:
    """
    Make a key and put it at C{path} whole or not at all: written to a
    temporary file (mode 0600 from the start) in the same directory, synced,
    then linked into place, so a crash never leaves a truncated key, and a
    key another process put there first is kept.
    """
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    directory = os.path.dirname(os.path.abspath(path))
    temporary = None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # mkstemp creates the file with mode 0600.
        fd, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(key.toString("openssh"))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return
        except OSError:
            # A file system without hard links: rename, which replaces.
            os.rename(temporary, path)
            temporary = None
        _syncDirectory(directory)
    except OSError as e:
        raise OSError(e.errno, f"--manhole-host-key {path}: cannot create it: {e.strerror} "
                      f"(errno {e.errno})") from e
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    log.info("manhole: generated host key {path} ({fingerprint})", path=path,
             fingerprint=fingerprint(key))


def _syncDirectory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fingerprint(key: keys.Key) -> str:
    """
    C{SHA256:...}, as OpenSSH prints it.
    """
    value = key.fingerprint(format=keys.FingerprintFormats.SHA256_BASE64)
    return "SHA256:" + value.rstrip("=")


@dataclass(frozen=True)
class AuthorizedKey:
    """
    A usable line of an C{authorized_keys} file.
    """

    key: keys.Key
    options: KeyOptions
    number: int


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """
    The keys of an OpenSSH C{authorized_keys} file, for any user name, as
    the file is at each call; parsed, and its bad lines logged, only when it
    changed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: object = None
        self._keys: list[AuthorizedKey] = []

    def check(self) -> int:
        """
        Read the file now.

        @return: how many keys it has.
        @raise OSError: it cannot be read.
        """
        return len(self._read())

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        """
        The keys of lines without restricting options (those with C{from=}
        or C{expiry-time=} are left out: a caller would not enforce them),
        security keys left out (a caller would not check their flags).
        """
        return [entry.key for entry in self.entries() if entry.options == KeyOptions()
                and entry.key.sshType() not in sksig.SECURITY_KEY_TYPES]

    def entries(self) -> list[AuthorizedKey]:
        """
        The usable lines of the file as it is now; none if it cannot be read
        (logged once per error).
        """
        try:
            return self._read()
        except OSError as e:
            if self._stamp != e.errno:
                log.error("manhole: cannot read {path}: {error} (errno {errno})",
                          path=self.path, error=e.strerror, errno=e.errno)
            self._stamp, self._keys = e.errno, []
            return []

    def _read(self) -> list[AuthorizedKey]:
        with open(self.path, "rb") as f:
            info = os.fstat(f.fileno())
            stamp = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            if stamp != self._stamp:
                self._keys = list(self._parse(f))
                self._stamp = stamp
        return self._keys

    def _parse(self, lines: Iterable[bytes]) -> Iterable[AuthorizedKey]:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            try:
                field, keyText = splitOptions(line)
                options = parseOptions(field)
            except KeyOptionError as e:
                log.warn("{path} line {number}: {error}; line refused",
                         path=self.path, number=number, error=e)
                continue
            try:
                yield AuthorizedKey(keys.Key.fromString(keyText), options, number)
            except _KEY_ERRORS as e:
                log.warn("{path} line {number}: not a key ({error}); line ignored",
                         path=self.path, number=number, error=e)


@implementer(ICredentialsChecker)
class AuthorizedKeyChecker:
    """
    Accepts a signed public-key login if the key is on a line of the
    authorized keys whose options allow it: the client's address (the
    C{peerAddress} the manhole sets on the credentials; none, and C{from=}
    refuses) and the time now.  For a security key, the credentials'
    C{sigData} is the message signed (RFC 4252 section 7), which
    L{vtwisted.manholeauth.ManholeUserAuth} gives, not the bytes the
    authenticator signed for it.
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, authorized: AuthorizedKeysFile, clock: Any = None) -> None:
        """
        @param clock: tells the time for C{expiry-time=} (its C{seconds()});
            the system's if L{None}.
        """
        self.authorized = authorized
        self.clock = clock

    def requestAvatarId(self, credentials: Any) -> Any:
        return defer.execute(self._check, credentials)

    def _check(self, credentials: Any) -> bytes:
        try:
            key = keys.Key.fromString(credentials.blob)
        except _KEY_ERRORS as e:
            raise UnauthorizedLogin(f"unusable key: {e}") from None
        lines = [entry for entry in self.authorized.entries() if _sameKey(entry.key, key)]
        if not lines:
            raise UnauthorizedLogin(
                f"key {fingerprint(key)} is not in {self.authorized.path}"
            )
        address = getattr(credentials, "peerAddress", None)
        now = self.clock.seconds() if self.clock is not None else time.time()
        refusals = [(entry.number, entry.options.refusal(address, now)) for entry in lines]
        if all(reason is not None for _, reason in refusals):
            raise UnauthorizedLogin(
                f"key {fingerprint(key)} is refused by {self.authorized.path}: "
                + "; ".join(f"line {number}: {reason}" for number, reason in refusals)
            )
        if not credentials.signature:
            raise conchError.ValidPublicKey()
        if key.sshType() in sksig.SECURITY_KEY_TYPES:
            # Any line that allows the login lets it in, touched or not as it says.
            reasons = {
                sksig.refusal(entry.key.blob(), credentials.signature, credentials.sigData,
                              entry.options.touchRequired, entry.options.verifyRequired)
                for entry, (_, reason) in zip(lines, refusals) if reason is None
            }
            if None in reasons:
                return bytes(credentials.username)
            why = "; ".join(sorted(str(reason) for reason in reasons))
            raise UnauthorizedLogin(f"key {fingerprint(key)}: {why}")
        try:
            if key.verify(credentials.signature, credentials.sigData):
                return bytes(credentials.username)
        except Exception:
            pass
        raise UnauthorizedLogin("bad signature")


def _sameKey(listed: keys.Key, offered: keys.Key) -> bool:
    """
    Whether the client's key is the listed one: Twisted's C{==} compares
    the key material only, so also its type (a security key is not the plain
    key of the same numbers) and a security key's application.
    """
    return listed == offered and listed.blob() == offered.blob()


class PeerPortal:
    """
    A portal that marks the credentials it is given with the client's IP
    address (C{peerAddress}, L{None} for a client without one), for the
    C{from=} options of the authorized keys.
    """

    def __init__(self, realPortal: Any, address: str | None) -> None:
        self.realPortal = realPortal
        self.address = address

    def listCredentialsInterfaces(self) -> Any:
        return self.realPortal.listCredentialsInterfaces()

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> Any:
        credentials.peerAddress = self.address
        return self.realPortal.login(credentials, mind, *interfaces)
