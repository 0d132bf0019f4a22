"""
Why a cable refused its peer's certificate, in plain words.

Theory of operation
-------------------
When OpenSSL refuses the peer's certificate, the handshake fails with
"certificate verify failed" and nothing more: not whether the certificate
expired, is not valid yet, or comes from a CA that C{ca=} does not hold.
L{RecordingCreator} wraps the connection creator of a cable's TLS endpoint
(Twisted's C{optionsForClientTLS} on the connecting side, a
C{CertificateOptions} on the listening one) and gives each new OpenSSL
connection a verify callback, with the verify mode the connection already
had (peer verification, and on the listening side failure when the peer
shows no certificate).  The callback returns OpenSSL's own verdict
unchanged and remembers the first X.509 error with the depth of the
certificate it concerns, in a L{Verdict} kept for the connection's TLS
transport; L{rejection} turns it into a line that names the C{ca=} file.

The connecting side also checks that the listener's certificate names the
host it dialled (or C{name=}), as Twisted's own callback, which this one
replaces, does (recent Twisted; older ones check once the handshake is
done, and still do): a name that does not match fails the handshake there
and then, so the listening switch gets an alert instead of a connection
cut off after it.  (OpenSSL sends "internal error" for it: pyOpenSSL's
callback cannot set the X.509 error that would make it "bad certificate";
L{vtwisted.ports.streamfailures.whyLost} says what it means from a cable.)

Nothing here runs per frame: a callback per certificate, per handshake.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.ports.streamfailures import misnamed

log = Logger()

#: What is wrong with a refused certificate, by the name of its X.509
#: error (C{X509_V_ERR_...}), and a detail; C{{ca}} is the C{ca=} file.
#: Others are named by their code.
REASONS = {
    "ERR_CERT_HAS_EXPIRED": ("has expired", ""),
    "ERR_CERT_NOT_YET_VALID": ("is not valid yet", "check the clocks"),
    "ERR_DEPTH_ZERO_SELF_SIGNED_CERT": ("is self-signed and not in ca={ca}",
                                        "self-signed certificate"),
    "ERR_SELF_SIGNED_CERT_IN_CHAIN": ("comes from a CA that is not in ca={ca}",
                                      "self-signed certificate in the chain"),
    "ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY": ("is not signed by ca={ca}",
                                              "unable to get local issuer certificate"),
    "ERR_UNABLE_TO_GET_ISSUER_CERT": ("is not signed by ca={ca}",
                                      "unable to get issuer certificate"),
    "ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE": ("is not signed by ca={ca}",
                                            "unable to verify the first certificate"),
    "ERR_CERT_SIGNATURE_FAILURE": ("has a signature that does not verify", ""),
    "ERR_INVALID_CA": ("is signed by a certificate that is not a CA", ""),
    "ERR_INVALID_PURPOSE": ("is not meant for TLS", "wrong purpose: see its extended key usage"),
    "ERR_CERT_REVOKED": ("has been revoked", ""),
    "ERR_CERT_CHAIN_TOO_LONG": ("has a chain too long", ""),
    "ERR_PATH_LENGTH_EXCEEDED": ("has a chain longer than its CA allows", ""),
    "ERR_EE_KEY_TOO_SMALL": ("has a key too small for this host's OpenSSL", ""),
    "ERR_CA_KEY_TOO_SMALL": ("comes from a CA whose key is too small for this host's OpenSSL",
                             ""),
    "ERR_CA_MD_TOO_WEAK": ("is signed with a digest too weak for this host's OpenSSL", ""),
}

#: The names of X.509 error codes (C{X509VerificationCodes} is recent).
_NAMES = {value: name for name, value in vars(getattr(SSL, "X509VerificationCodes", object))
          .items() if name.startswith("ERR_") and isinstance(value, int)}

#: The verdict of each connection's checks, by its TLS transport.
_verdicts: weakref.WeakKeyDictionary[Any, Verdict] = weakref.WeakKeyDictionary()


@dataclass
class Verdict:
    """
    What refused a peer's certificate, if something did: the first X.509
    error and its depth, or a name that does not match.
    """

    ca: str
    error: int | None = None
    depth: int = 0
    mismatch: VerificationError | None = None

    def describe(self) -> str | None:
        """
        The refusal in plain words, or L{None} if nothing was refused.
        """
        if self.mismatch is not None:
            return misnamed(self.mismatch)
        if self.error is None:
            return None
        return "TLS handshake failed: " + describeError(self.error, self.depth, self.ca)


def describeError(number: int, depth: int, ca: str) -> str:
    """
    What X.509 error C{number} at C{depth} (0: the peer's own certificate)
    means, naming the C{ca=} file the chain was checked against.
    """
    whose = "the peer's certificate" if depth == 0 else "a CA certificate of the peer's chain"
    name = _NAMES.get(number, "")
    text, detail = REASONS.get(name, ("was refused", ""))
    if name not in REASONS:
        detail = f"X509_V_{name}, X.509 error {number}" if name else f"X.509 error {number}"
    text = text.format(ca=ca)
    where = [f"depth {depth}"] if f"ca={ca}" in text else [f"depth {depth}",
                                                             f"checked against ca={ca}"]
    return f"{whose} {text} ({'; '.join([detail, *where] if detail else where)})"


def rejection(transport: Any) -> str | None:
    """
    Why this side refused the peer's certificate on C{transport} (the TLS
    transport of a cable's link), or L{None} if it did not.
    """
    verdict = _verdicts.get(transport)
    return verdict.describe() if verdict is not None else None


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class RecordingCreator:
    """
    A TLS connection creator that makes its connections through
    C{creator} and remembers why each refused its peer's certificate.

    @ivar ca: the C{ca=} file the peer's chain is checked against.
    @ivar name: on the connecting side, the name the peer's certificate
        must carry (L{None} on the listening side).
    """

    def __init__(self, creator: Any, ca: str, name: str | None = None) -> None:
        self.creator = creator
        self.ca = ca
        self.name = name

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self._watch(self.creator.clientConnectionForTLS(tlsProtocol), tlsProtocol)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self._watch(self.creator.serverConnectionForTLS(tlsProtocol), tlsProtocol)

    def _watch(self, connection: SSL.Connection, tlsProtocol: Any) -> SSL.Connection:
        mode = connection.get_verify_mode()
        if not mode & SSL.VERIFY_PEER:  # nothing is checked: nothing to record
            return connection
        verdict = Verdict(self.ca)
        _verdicts[tlsProtocol] = verdict
        connection.set_verify(mode, _callback(verdict, self.name))
        return connection


def _callback(verdict: Verdict, name: str | None) -> Any:
    """
    The verify callback of one connection: OpenSSL's verdict, recorded in
    C{verdict}; and, if C{name} is given, the leaf must name it.
    """
    def verify(connection: Any, certificate: Any, error: int, depth: int, ok: int) -> bool:
        if not ok:
            if verdict.error is None and verdict.mismatch is None:
                verdict.error, verdict.depth = error, depth
            return False
        if depth != 0 or name is None:
            return True
        try:
            checkName(certificate.to_cryptography(), name)
        except VerificationError as e:
            verdict.mismatch = e
            return False
        except Exception:  # a certificate service_identity cannot read: refused
            log.failure("checking the peer certificate's name")
            return False
        return True

    return verify


def checkName(certificate: Any, name: str) -> None:
    """
    Raise L{VerificationError} unless C{certificate} names C{name} (a host
    name, or an IP address).
    """
    if isIPAddress(name) or isIPv6Address(name):
        verify_certificate_ip_address(certificate, name)
    else:
        verify_certificate_hostname(certificate, name)
