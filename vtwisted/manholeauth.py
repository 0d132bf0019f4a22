"""
The SSH manhole's user authentication: Twisted's, with every login logged
and the message a FIDO security key signed given to the checker.

Theory of operation
-------------------
L{ManholeUserAuth} is Twisted's C{ssh-userauth} service with three
changes.  It hands the portal a L{PeerPortal}, which marks credentials with
the client's IP address for C{from=}.  It logs each accepted login, and
each refused one through the factory's L{vtwisted.refusals.RefusalLog}
(the checker's reason in it), and Twisted's own lines through the one for
other lines, bounded per peer, and refuses a corrupt client key, which
Twisted parses before any checker and lets raise.  And for a signed login
with a security key it builds the credentials itself, with the message
signed as RFC 4252 section 7 defines it, which L{vtwisted.sksig} checks
against the authenticator's flags and the authorized key's application.
"""

from __future__ import annotations

from typing import Any

from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from vtwisted import sksig
from vtwisted.manholekeys import _KEY_ERRORS, PeerPortal
from vtwisted.refusals import PeerLogger

log = Logger()

#: Seconds a client has to log in.
LOGIN_TIMEOUT = 60


class ManholeUserAuth(userauth.SSHUserAuthServer):
    """
    Logs every login with the peer's address: each accepted one, and
    refused ones through the factory's
    L{vtwisted.refusals.RefusalLog}; gives the checker a
    security key's message signed.
    """

    loginTimeout = LOGIN_TIMEOUT

    def serviceStarted(self) -> None:
        # Time out logins with the service's reactor, not the global one.
        transport: Any = self.transport
        self.clock = transport.factory.clock
        peer = transport.transport.getPeer()
        self._log = PeerLogger(transport.factory.noise, peer)  # type: ignore[assignment]
        super().serviceStarted()
        portal: Any = PeerPortal(self.portal, getattr(peer, "host", None))
        self.portal = portal

    def auth_publickey(self, packet: bytes) -> Any:
        """
        A signed login with a security key gets credentials whose C{sigData}
        is the message signed (RFC 4252 section 7), for
        L{vtwisted.sksig}: recent Twisted releases give instead the bytes the
        authenticator signs, built with the application the client names,
        older ones the message; other logins are Twisted's.
        """
        hasSignature = packet[:1]
        algorithm, blob, rest = getNS(packet[1:], 2)
        if hasSignature == b"\x00" or not sksig.isSecurityKey(blob):
            return super().auth_publickey(packet)
        transport: Any = self.transport
        user, service = self.user, self.nextService
        assert user is not None and service is not None  # set before auth_ methods run
        message = (NS(transport.sessionID) + bytes((userauth.MSG_USERAUTH_REQUEST,))
                   + NS(user) + NS(service) + NS(b"publickey") + hasSignature
                   + NS(algorithm) + NS(blob))
        signed = SSHPrivateKey(user, algorithm, blob, message, getNS(rest)[0])
        return self.portal.login(signed, None, IConchUser)

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
                transport.factory.refusals.refused(
                    str(getattr(peer, "host", peer)),
                    "manhole: refused {kind} login of {user!r} from {peer}: {reason}",
                    kind=kind.decode(), user=who, peer=peer,
                    # The password checker gives no reason.
                    reason=reason.getErrorMessage() or "wrong user name or password")
            return reason

        def accepted(result: Any) -> Any:
            log.info("manhole: {user!r} logged in from {peer} ({kind})", user=who, peer=peer,
                     kind=kind.decode())
            return result

        return d.addCallbacks(accepted, refused)
