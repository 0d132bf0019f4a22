"""
A fake FIDO/U2F authenticator: what a YubiKey behind OpenSSH's ssh client
would produce, built here from OpenSSH's PROTOCOL.u2f with C{cryptography}
keys (there is no authenticator on the test machine), independently of
L{vtwisted.sksig}.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from twisted.conch.ssh import keys

PRESENT = 0x01
VERIFIED = 0x04


def string(data: bytes) -> bytes:
    return struct.pack(">L", len(data)) + data


def mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""
    return string(raw)


class FakeAuthenticator:
    """
    One security key credential: an Ed25519 or ECDSA P-256 key made for an
    application (C{ssh:} as ssh-keygen -t ed25519-sk makes it).
    """

    def __init__(self, kind: str = "ed25519", application: bytes = b"ssh:") -> None:
        self.kind = kind
        self.application = application
        self.counter = 0
        self.private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
        if kind == "ed25519":
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.keyType = b"sk-ssh-ed25519@openssh.com"
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.keyType = b"sk-ecdsa-sha2-nistp256@openssh.com"

    def blob(self, application: bytes | None = None) -> bytes:
        """The public key blob (PROTOCOL.u2f), with another application if given."""
        public = self.private.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            body = string(public.public_bytes(serialization.Encoding.Raw,
                                              serialization.PublicFormat.Raw))
        else:
            body = string(b"nistp256") + string(public.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
        return (string(self.keyType) + body
                + string(self.application if application is None else application))

    def publicKey(self) -> keys.Key:
        """The public key as Twisted reads it."""
        return keys.Key.fromString(self.blob())

    def authorizedLine(self, options: bytes = b"") -> bytes:
        """An authorized_keys line for the key, as ssh-keygen writes its .pub file."""
        line = self.keyType + b" " + base64.b64encode(self.blob()) + b" yubikey"
        return options + b" " + line if options else line

    def sign(self, message: bytes, flags: int = PRESENT, application: bytes | None = None,
             keyType: bytes | None = None) -> bytes:
        """
        The signature blob ssh sends for C{message}: the authenticator signs
        SHA256(application) || flags || counter || SHA256(message).
        """
        self.counter += 1
        signed = (hashlib.sha256(self.application if application is None else application)
                  .digest() + bytes([flags]) + struct.pack(">L", self.counter)
                  + hashlib.sha256(message).digest())
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            signature = string(self.private.sign(signed))
        else:
            r, s = decode_dss_signature(self.private.sign(signed, ec.ECDSA(hashes.SHA256())))
            signature = string(mpint(r) + mpint(s))
        return (string(keyType or self.keyType) + signature + bytes([flags])
                + struct.pack(">L", self.counter))
