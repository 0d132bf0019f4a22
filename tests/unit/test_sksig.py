"""
FIDO/U2F security key signatures (sk-ssh-ed25519, sk-ecdsa-sha2-nistp256):
checked as OpenSSH's PROTOCOL.u2f defines them, with the touch and
verification options of the key's authorized_keys line; signatures from a
fake authenticator (tests/unit/skfakes.py).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from skfakes import PRESENT, VERIFIED, FakeAuthenticator, mpint, string
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred

from vtwisted import sksig
from vtwisted.keyoptions import parseOptions
from vtwisted.manholekeys import AuthorizedKeyChecker, AuthorizedKeysFile

MESSAGE = b"session id, user, service, publickey, key"
KINDS = ["ed25519", "ecdsa"]


@pytest.mark.parametrize("kind", KINDS)
def test_aTouchedSignatureIsGood(kind) -> None:
    """A signature made with presence (and with verification) verifies."""
    fido = FakeAuthenticator(kind)
    assert sksig.verify(fido.blob(), fido.sign(MESSAGE), MESSAGE)
    signed = fido.sign(MESSAGE, PRESENT | VERIFIED)
    assert sksig.verify(fido.blob(), signed, MESSAGE, verifyRequired=True)


@pytest.mark.parametrize("kind", KINDS)
def test_anUntouchedSignatureIsRefusedUnlessAllowed(kind) -> None:
    """Without the presence flag: 'not touched', unless no-touch-required."""
    fido = FakeAuthenticator(kind)
    untouched = fido.sign(MESSAGE, flags=0)
    assert sksig.refusal(fido.blob(), untouched, MESSAGE) == sksig.NOT_TOUCHED
    assert "security key not touched" in sksig.NOT_TOUCHED
    assert sksig.verify(fido.blob(), untouched, MESSAGE, touchRequired=False)


@pytest.mark.parametrize("kind", KINDS)
def test_verificationIsRequiredOnlyWhenAsked(kind) -> None:
    """verify-required needs flag 0x04; presence alone is then refused."""
    fido = FakeAuthenticator(kind)
    touched = fido.sign(MESSAGE, PRESENT)
    assert sksig.refusal(fido.blob(), touched, MESSAGE, verifyRequired=True) == \
        sksig.NOT_VERIFIED
    assert sksig.verify(fido.blob(), touched, MESSAGE)


@pytest.mark.parametrize("kind", KINDS)
def test_anotherApplicationIsRefused(kind) -> None:
    """
    The application checked is the authorized key's: a signature made for
    another one fails, and so does the authorized key with another one.
    """
    fido = FakeAuthenticator(kind)
    assert not sksig.verify(fido.blob(), fido.sign(MESSAGE, application=b"ssh:other"),
                            MESSAGE)
    assert not sksig.verify(fido.blob(application=b"ssh:other"), fido.sign(MESSAGE), MESSAGE)


@pytest.mark.parametrize("kind", KINDS)
def test_tamperingIsRefused(kind) -> None:
    """Another message, another key, or flags or counter changed on the wire."""
    fido = FakeAuthenticator(kind)
    signed = fido.sign(MESSAGE, flags=0)
    assert sksig.refusal(fido.blob(), signed, MESSAGE + b"!") == sksig.BAD_SIGNATURE
    assert not sksig.verify(FakeAuthenticator(kind).blob(), fido.sign(MESSAGE), MESSAGE)
    # Setting the presence flag afterwards breaks the signature.
    touchedAfter = signed[:-5] + bytes([PRESENT]) + signed[-4:]
    assert sksig.refusal(fido.blob(), touchedAfter, MESSAGE) == sksig.BAD_SIGNATURE
    recounted = signed[:-4] + struct.pack(">L", 7)
    assert not sksig.verify(fido.blob(), recounted, MESSAGE, touchRequired=False)


def malformed(fido: FakeAuthenticator) -> list[tuple[bytes, bytes]]:
    """Pairs of key blob and signature blob that are broken somewhere."""
    good = fido.sign(MESSAGE)
    other = "ecdsa" if fido.kind == "ed25519" else "ed25519"
    pairs = [
        (fido.blob(), b""),
        (fido.blob(), good[:3]),
        (fido.blob(), good[:-1]),  # counter cut short
        (fido.blob(), good[:-5]),  # no flags nor counter
        (fido.blob(), good + b"\x00"),  # trailing bytes
        (fido.blob(), string(b"ssh-ed25519") + good[4 + len(fido.keyType):]),
        (fido.blob(), FakeAuthenticator(other).sign(MESSAGE)),
        (fido.blob(), fido.sign(MESSAGE, keyType=FakeAuthenticator(other).keyType)),
        (fido.blob(), string(b"\xff" * 8)),
        (fido.blob()[:-2], good),
        (fido.blob() + b"\x00", good),
        (b"", good),
        (string(b"ssh-ed25519") + fido.blob()[4 + len(fido.keyType):], good),
        (fido.blob(), string(fido.keyType) + string(b"\x00" * 70) + b"\x01\x00\x00\x00\x01"),
    ]
    if fido.kind == "ecdsa":
        flagsCounter = good[-5:]
        negative = string(fido.keyType) + string(mpint(1) + string(b"\x80" + b"\x01" * 31))
        trailing = string(fido.keyType) + string(mpint(1) + mpint(1) + b"\x00")
        pairs += [
            (fido.blob(), negative + flagsCounter),
            (fido.blob(), trailing + flagsCounter),
            (fido.blob(), string(fido.keyType) + string(mpint(1)) + flagsCounter),
            (fido.blob(), string(fido.keyType) + string(mpint(0) + mpint(0)) + flagsCounter),
            (fido.blob(), string(fido.keyType) + string(mpint(1 << 300) + mpint(1))
             + flagsCounter),
            (fido.blob().replace(b"nistp256", b"nistp384"), good),
            (fido.blob().replace(b"\x00\x00\x00\x41\x04", b"\x00\x00\x00\x41\x03"), good),
        ]
    return pairs


@pytest.mark.parametrize("kind", KINDS)
def test_malformedBlobsAreRefusedWithoutExceptions(kind) -> None:
    """Short, mistyped or overlong key and signature blobs: False, never a traceback."""
    fido = FakeAuthenticator(kind)
    for keyBlob, signature in malformed(fido):
        assert sksig.verify(keyBlob, signature, MESSAGE) is False, (keyBlob, signature)
        assert sksig.refusal(keyBlob, signature, MESSAGE, touchRequired=False) is not None


def loginWith(tmp_path, fido: FakeAuthenticator, signature: bytes | None,
              *lines: bytes) -> Any:
    """The outcome of the manhole's checker for a login signing MESSAGE."""
    path = tmp_path / "authorized_keys"
    path.write_bytes(b"\n".join(lines) + b"\n")
    checker = AuthorizedKeyChecker(AuthorizedKeysFile(str(path)))
    credentials = SSHPrivateKey(b"operator", fido.keyType, fido.blob(), MESSAGE, signature)
    results: list[Any] = []
    d: Deferred[Any] = checker.requestAvatarId(credentials)
    d.addBoth(results.append)
    return results[0]


@pytest.mark.parametrize("kind", KINDS)
def test_theCheckerHonoursTheLinesTouchOptions(tmp_path, kind) -> None:
    """
    The checker logs a touched signature in; an untouched one is refused
    with 'security key not touched' unless the line says no-touch-required.
    """
    fido = FakeAuthenticator(kind)
    assert loginWith(tmp_path, fido, fido.sign(MESSAGE), fido.authorizedLine()) == b"operator"
    refused = loginWith(tmp_path, fido, fido.sign(MESSAGE, flags=0), fido.authorizedLine())
    assert refused.check(UnauthorizedLogin)
    assert "security key not touched" in refused.getErrorMessage()
    assert loginWith(tmp_path, fido, fido.sign(MESSAGE, flags=0),
                     fido.authorizedLine(b"no-touch-required")) == b"operator"
    refused = loginWith(tmp_path, fido, fido.sign(MESSAGE, flags=PRESENT),
                        fido.authorizedLine(b"verify-required"))
    assert "did not verify the user" in refused.getErrorMessage()
    assert loginWith(tmp_path, fido, fido.sign(MESSAGE, flags=PRESENT | VERIFIED),
                     fido.authorizedLine(b"verify-required")) == b"operator"


def test_theAuthorizedApplicationIsTheOneChecked(tmp_path) -> None:
    """A key listed for another application is another key: not in the file."""
    fido = FakeAuthenticator()
    listed = FakeAuthenticator()
    listed.private, listed.application = fido.private, b"ssh:elsewhere"
    refused = loginWith(tmp_path, fido, fido.sign(MESSAGE), listed.authorizedLine())
    assert "is not in" in refused.getErrorMessage()


def test_aPlainKeyOfTheSameNumbersIsNotTheSecurityKey(tmp_path) -> None:
    """ssh-ed25519 with the numbers of a listed sk-ssh-ed25519 key is not listed."""
    fido = FakeAuthenticator()
    plain = string(b"ssh-ed25519") + fido.blob()[4 + len(fido.keyType):-8]
    path = tmp_path / "authorized_keys"
    path.write_bytes(fido.authorizedLine() + b"\n")
    checker = AuthorizedKeyChecker(AuthorizedKeysFile(str(path)))
    results: list[Any] = []
    checker.requestAvatarId(
        SSHPrivateKey(b"operator", b"ssh-ed25519", plain, MESSAGE, None)).addBoth(results.append)
    assert "is not in" in results[0].getErrorMessage()
    assert list(AuthorizedKeysFile(str(path)).getAuthorizedKeys(b"operator")) == []


@pytest.mark.parametrize(("field", "touch", "verify"), [
    ("", True, False),
    ("no-touch-required", False, False),
    ("no-touch-required,touch-required", True, False),
    ("verify-required", True, True),
    ("verify-required,no-verify-required", True, False),
    ("restrict,no-touch-required,verify-required", False, True),
])
def test_touchAndVerifyOptionsLastOneWins(field, touch, verify) -> None:
    """As with sshd, the last of touch-required/no-touch-required (and verify) decides."""
    options = parseOptions(field)
    assert (options.touchRequired, options.verifyRequired) == (touch, verify)


def test_onlyLinesThatAllowTheClientExcuseTheTouch(tmp_path) -> None:
    """
    A no-touch-required line whose from= refuses the client does not let an
    untouched signature in; another line of the key that allows it does.
    """
    fido = FakeAuthenticator()
    elsewhere = fido.authorizedLine(b'from="192.0.2.1",no-touch-required')
    refused = loginWith(tmp_path, fido, fido.sign(MESSAGE, flags=0), elsewhere,
                        fido.authorizedLine())
    assert "security key not touched" in refused.getErrorMessage()
    assert loginWith(tmp_path, fido, fido.sign(MESSAGE, flags=0), elsewhere,
                     fido.authorizedLine(), fido.authorizedLine(b"no-touch-required")) == \
        b"operator"
