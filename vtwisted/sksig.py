"""
Signatures of FIDO/U2F security keys (OpenSSH's C{sk-ssh-ed25519@openssh.com}
and C{sk-ecdsa-sha2-nistp256@openssh.com}), which Twisted cannot check.

Theory of operation
-------------------
OpenSSH's PROTOCOL.u2f defines them.  A security key's public key blob is
an ordinary one (C{ssh-ed25519}'s key, or C{ecdsa-sha2-nistp256}'s curve name
and point) under the C{sk-} name, followed by the I{application} string the
key was made for (usually C{ssh:}).  The authenticator does not sign the
message it is given: it signs::

    SHA256(application) || flags (1 byte) || counter (uint32) || SHA256(message)

where the flags say whether a person touched it (user presence, C{0x01})
and whether it checked who they are, by PIN or fingerprint (user
verification, C{0x04}), and the counter counts its signatures.  The
signature blob on the wire therefore carries them after the signature
proper::

    string  key type (the sk- name of the key)
    string  signature (Ed25519: 64 bytes; ECDSA: mpint r, mpint s)
    byte    flags
    uint32  counter

L{refusal} rebuilds the signed bytes from the application of the
I{authorized} key (so a client cannot choose another) and the message, and
verifies the signature over them (Ed25519 directly; ECDSA P-256 with
SHA-256 over them, as for C{ecdsa-sha2-nistp256}).  Then, as sshd does, it
requires the presence flag unless told not to (C{no-touch-required}) and
the verification flag when told to (C{verify-required}).  Every part is
checked for length and trailing bytes; anything malformed is a refusal,
never an exception.  The counter is not checked (sshd does not either).
Webauthn signatures (C{webauthn-sk-ecdsa-sha2-nistp256@openssh.com}, made
by browsers) are not accepted.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ED25519_SK = b"sk-ssh-ed25519@openssh.com"
ECDSA_SK = b"sk-ecdsa-sha2-nistp256@openssh.com"
#: The security key types whose signatures L{refusal} checks.
SECURITY_KEY_TYPES = (ED25519_SK, ECDSA_SK)

#: Flags of the authenticator: a person touched it; it verified who.
USER_PRESENT = 0x01
USER_VERIFIED = 0x04

#: Why a login is refused when a flag the line asks for is missing.
NOT_TOUCHED = "security key not touched (no user presence; no-touch-required would allow it)"
NOT_VERIFIED = "security key did not verify the user (verify-required: PIN or biometric)"
BAD_SIGNATURE = "bad signature"

#: The longest mpint an r or s of P-256 takes (32 bytes, and a zero before
#: a first byte with its high bit set).
_MAX_SCALAR = 33


class MalformedError(ValueError):
    """
    A blob is not what its type says it is.
    """


@dataclass(frozen=True)
class SecurityKey:
    """
    The public key of a security key, and the application it signs for.
    """

    keyType: bytes
    publicKey: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
    application: bytes


@dataclass(frozen=True)
class SecuritySignature:
    """
    A signature by a security key, as it came on the wire.

    @ivar signature: Ed25519's 64 bytes, or ECDSA's DER form.
    """

    keyType: bytes
    signature: bytes
    flags: int
    counter: int


def isSecurityKey(blob: bytes) -> bool:
    """
    Whether a public key blob names a security key type.
    """
    try:
        keyType, _ = _string(blob)
    except MalformedError:
        return False
    return keyType in SECURITY_KEY_TYPES


def parsePublicKey(blob: bytes) -> SecurityKey:
    """
    The security key of a public key blob.

    @raise MalformedError: another key type, a short or bad blob, or bytes
        after it.
    """
    keyType, rest = _string(blob)
    publicKey: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
    if keyType == ED25519_SK:
        raw, rest = _string(rest)
        if len(raw) != 32:
            raise MalformedError(f"an Ed25519 key of {len(raw)} bytes")
        publicKey = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    elif keyType == ECDSA_SK:
        curve, rest = _string(rest)
        point, rest = _string(rest)
        if curve != b"nistp256":
            raise MalformedError(f"curve {curve!r}, not nistp256")
        if point[:1] != b"\x04":
            raise MalformedError("not an uncompressed point")
        try:
            publicKey = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError as e:
            raise MalformedError(f"not a point of the curve ({e})") from None
    else:
        raise MalformedError(f"{keyType!r} is not a security key type")
    application, rest = _string(rest)
    _end(rest)
    return SecurityKey(keyType, publicKey, application)


def parseSignature(blob: bytes) -> SecuritySignature:
    """
    The parts of a security key's signature blob.

    @raise MalformedError: a short or bad blob, another signature type, or
        bytes after it.
    """
    keyType, rest = _string(blob)
    if keyType not in SECURITY_KEY_TYPES:
        raise MalformedError(f"{keyType!r} is not a security key signature")
    signature, rest = _string(rest)
    if len(rest) < 5:
        raise MalformedError("no flags and counter")
    flags, counter = struct.unpack(">BL", rest[:5])
    _end(rest[5:])
    if keyType == ED25519_SK:
        if len(signature) != 64:
            raise MalformedError(f"an Ed25519 signature of {len(signature)} bytes")
    else:
        r, inner = _scalar(signature)
        s, inner = _scalar(inner)
        _end(inner)
        signature = encode_dss_signature(r, s)
    return SecuritySignature(keyType, signature, flags, counter)


def signedBytes(application: bytes, flags: int, counter: int, message: bytes) -> bytes:
    """
    What the authenticator signs for C{message} (PROTOCOL.u2f, without
    extensions, which SSH does not use).
    """
    return (hashlib.sha256(application).digest() + struct.pack(">BL", flags, counter)
            + hashlib.sha256(message).digest())


def refusal(keyBlob: bytes, signatureBlob: bytes, message: bytes,
            touchRequired: bool = True, verifyRequired: bool = False) -> str | None:
    """
    Why a security key's signature of C{message} is refused, or L{None} if
    it is good.

    @param keyBlob: the authorized public key (its application is the one
        checked).
    @param touchRequired: refuse a signature without user presence.
    @param verifyRequired: refuse a signature without user verification.
    """
    try:
        key = parsePublicKey(keyBlob)
        signature = parseSignature(signatureBlob)
    except MalformedError as e:
        return f"{BAD_SIGNATURE} ({e})"
    if signature.keyType != key.keyType:
        return f"{BAD_SIGNATURE} (a {signature.keyType.decode()} signature)"
    signed = signedBytes(key.application, signature.flags, signature.counter, message)
    try:
        if isinstance(key.publicKey, ed25519.Ed25519PublicKey):
            key.publicKey.verify(signature.signature, signed)
        else:
            key.publicKey.verify(signature.signature, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return BAD_SIGNATURE
    if touchRequired and not signature.flags & USER_PRESENT:
        return NOT_TOUCHED
    if verifyRequired and not signature.flags & USER_VERIFIED:
        return NOT_VERIFIED
    return None


def verify(keyBlob: bytes, signatureBlob: bytes, message: bytes,
           touchRequired: bool = True, verifyRequired: bool = False) -> bool:
    """
    Whether a security key's signature of C{message} is good and has the
    flags required (see L{refusal}).
    """
    return refusal(keyBlob, signatureBlob, message, touchRequired, verifyRequired) is None


def _string(data: bytes) -> tuple[bytes, bytes]:
    if len(data) < 4:
        raise MalformedError("cut short")
    (length,) = struct.unpack(">L", data[:4])
    if len(data) < 4 + length:
        raise MalformedError("cut short")
    return data[4:4 + length], data[4 + length:]


def _scalar(data: bytes) -> tuple[int, bytes]:
    value, rest = _string(data)
    if value[:1] >= b"\x80":
        raise MalformedError("a negative mpint")
    if len(value) > _MAX_SCALAR:
        raise MalformedError("an mpint too long")
    return int.from_bytes(value, "big"), rest


def _end(rest: bytes) -> None:
    if rest:
        raise MalformedError(f"{len(rest)} bytes after it")
