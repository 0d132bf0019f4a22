"""
The manhole's authorized_keys options: from= and expiry-time= enforced, the
options that restrict nothing it serves accepted, every other option (and a
malformed field) refusing its line with one warning.
"""

from __future__ import annotations

import calendar
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from vtwisted.keyoptions import KeyOptionError, matchFrom, parseExpiry, parseOptions
from vtwisted.manholekeys import AuthorizedKeyChecker, AuthorizedKeysFile


def newKey() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def login(checker: AuthorizedKeyChecker, key: keys.Key, address: str | None) -> Any:
    """The outcome of a signed login with C{key} from C{address}."""
    data = b"session data"
    credentials = SSHPrivateKey(b"operator", b"ssh-ed25519", key.public().blob(), data,
                                key.sign(data))
    credentials.peerAddress = address  # type: ignore[attr-defined]
    results: list[Any] = []
    d: Deferred[Any] = checker.requestAvatarId(credentials)
    d.addBoth(results.append)
    return results[0]


def checkerWith(tmp_path, options: bytes, clock: Any = None) -> tuple[AuthorizedKeyChecker,
                                                                      keys.Key]:
    key = newKey()
    path = tmp_path / "authorized_keys"
    path.write_bytes(options + b" " + key.public().toString("openssh") + b"\n")
    return AuthorizedKeyChecker(AuthorizedKeysFile(str(path)), clock), key


@pytest.mark.parametrize(("patterns", "address", "allowed"), [
    ("10.1.2.3", "10.1.2.3", True),
    ("10.1.2.3", "10.1.2.4", False),
    ("10.1.2.3", "::ffff:10.1.2.3", True),  # an IPv4 client on a dual-stack socket
    ("10.1.2.0/24", "10.1.2.200", True),
    ("10.1.2.0/24", "10.1.3.1", False),
    ("10.1.*", "10.1.9.9", True),
    ("10.1.?.1", "10.1.22.1", False),
    ("!10.1.2.3,10.1.2.0/24", "10.1.2.3", False),
    ("10.1.2.0/24,!10.1.2.3", "10.1.2.3", False),  # a negated match wins wherever it is
    ("!10.1.2.3", "10.1.2.4", False),  # a negation alone allows nobody
    ("!10.1.2.3,*", "10.1.2.4", True),
    ("2001:db8::/32", "2001:DB8::1", True),
    ("2001:db8::/32", "10.1.2.3", False),
    ("*.example.com", "10.1.2.3", False),  # host names: the client's name is its address
    ("127.0.0.1", "fe80::1%lo", False),
])
def test_fromFollowsOpenSSHPatternLists(patterns, address, allowed) -> None:
    """from= patterns: addresses, CIDR, * and ?, ! negation, as sshd matches them."""
    assert matchFrom(patterns, address) is allowed


@pytest.mark.parametrize("patterns", ["10.1.2.3/24", "10.0.0.0/33", "10.1.2.3,", "!"])
def test_badFromPatternsRefuseTheLine(patterns) -> None:
    """Host bits past the mask, a mask too long, an empty entry: the line is refused."""
    with pytest.raises(KeyOptionError, match="from="):
        parseOptions(f'from="{patterns}"')


def test_fromIsEnforcedAgainstTheClientsAddress(tmp_path) -> None:
    """
    A key with from= logs in from an allowed address only, the refusal
    saying why; a client with no IP address (a UNIX socket) is refused.
    """
    checker, key = checkerWith(tmp_path, b'from="127.0.0.0/8,!127.0.0.9"')
    assert login(checker, key, "127.0.0.1") == b"operator"
    for address in ("10.1.2.3", "127.0.0.9", None):
        failure = login(checker, key, address)
        assert failure.check(UnauthorizedLogin), address
    assert 'line 1: from="127.0.0.0/8,!127.0.0.9" does not allow' in failure.getErrorMessage()


def test_anotherLineOfTheSameKeyMayAllowIt(tmp_path) -> None:
    """As in sshd, a key on several lines logs in if any line allows it."""
    key = newKey()
    text = key.public().toString("openssh")
    path = tmp_path / "authorized_keys"
    path.write_bytes(b'from="10.9.9.9" ' + text + b'\nfrom="127.0.0.1" ' + text + b"\n")
    checker = AuthorizedKeyChecker(AuthorizedKeysFile(str(path)))
    assert login(checker, key, "127.0.0.1") == b"operator"
    assert login(checker, key, "10.9.9.9") == b"operator"
    assert login(checker, key, "10.0.0.1").check(UnauthorizedLogin)


def test_expiryTimeIsEnforcedOnTheGivenClock(tmp_path) -> None:
    """expiry-time="...Z" lets the key in until that second, not after."""
    clock = Clock()
    expiry = calendar.timegm((2030, 1, 2, 3, 4, 5, 0, 0, 0))
    checker, key = checkerWith(tmp_path, b'no-pty,expiry-time="20300102030405Z"', clock)
    clock.advance(expiry)
    assert login(checker, key, "127.0.0.1") == b"operator"
    clock.advance(1)
    failure = login(checker, key, "127.0.0.1")
    assert failure.check(UnauthorizedLogin) and "line 1: expired" in failure.getErrorMessage()


def test_expiryTimeForms() -> None:
    """YYYYMMDD[HHMM[SS]] in local time, or UTC with Z; the earliest of two wins."""
    assert parseExpiry("20300102Z") == calendar.timegm((2030, 1, 2, 0, 0, 0, 0, 0, 0))
    assert parseExpiry("203001020304") == time.mktime((2030, 1, 2, 3, 4, 0, 0, 0, -1))
    assert parseOptions('expiry-time="20300102Z",Expiry-Time="20290101Z"').expiry == \
        calendar.timegm((2029, 1, 1, 0, 0, 0, 0, 0, 0))
    for bad in ("2030010", "20301302", "2030-01-02", "tomorrow"):
        with pytest.raises(KeyOptionError, match="expiry-time"):
            parseExpiry(bad)


@pytest.mark.parametrize("options", [
    "restrict", "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-user-rc",
    "no-pty", "restrict,pty", "no-touch-required", "verify-required",
])
def test_optionsThatRestrictNothingServedAreAccepted(tmp_path, options) -> None:
    """
    Forwarding, X11, agent, rc and pty flags take nothing from a manhole
    login; the security key ones (tests/unit/test_sksig.py) nothing from a
    plain key's, as with sshd.
    """
    checker, key = checkerWith(tmp_path, options.encode())
    with capturedLogs() as events:
        assert login(checker, key, "192.0.2.1") == b"operator"
    assert events == []


@pytest.mark.parametrize(("options", "named"), [
    ('command="ops.ports()"', "'command'"),
    ('principals="alice"', "'principals'"),
    ("cert-authority", "'cert-authority'"),
    ('permitopen="localhost:80"', "'permitopen'"),
    ('permitlisten="8080"', "'permitlisten'"),
    ('tunnel="0"', "'tunnel'"),
    ('environment="A=b"', "'environment'"),
    ('no-pty,frobnicate', "'frobnicate'"),
    ('from="127.0.0.1",command="x \\" y"', "'command'"),
    ('from="127.0.0.1', "quote"),  # unterminated: the rest of the line is in it
    ('from=127.0.0.1', "double quotes"),
    ('from="127.0.0.1",from="127.0.0.2"', "more than one"),
    ("restrict,", "comma"),
])
def test_optionsItCannotHonourRefuseTheLineWithOneWarning(tmp_path, options, named) -> None:
    """
    A line with an option the manhole cannot honour, or a malformed one, is
    refused (its key does not log in, from anywhere), with one warning per
    change of the file naming the file, the line and the option.
    """
    checker, key = checkerWith(tmp_path, options.encode())
    with capturedLogs() as events:
        for _ in range(3):
            assert login(checker, key, "127.0.0.1").check(UnauthorizedLogin)
    (event,) = events
    text = event["log_format"].format(**event)
    assert text.startswith(f"{tmp_path / 'authorized_keys'} line 1: ") and named in text, text
    assert "line refused" in text


def test_quotedValuesKeepEscapedQuotesAndSpaces() -> None:
    """A value is taken up to its closing quote, with \\" standing for a quote."""
    assert parseOptions('from="10.0.0.1,10.0.0.2",no-pty').fromPatterns == "10.0.0.1,10.0.0.2"
    with pytest.raises(KeyOptionError, match="'command'"):
        parseOptions('command="echo \\"a b\\""')
