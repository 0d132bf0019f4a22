"""
The options of an OpenSSH C{authorized_keys} line, as far as the SSH
manhole can honour them.

Theory of operation
-------------------
A key line may begin with options (sshd(8), AUTHORIZED_KEYS FILE FORMAT):
comma-separated, each a flag (C{restrict}, C{no-pty}) or C{name="value"}
with C{\\"} for a quote inside the value; names are case-insensitive.
L{splitOptions} cuts the options field off the key as sshd does (a space
outside quotes ends it) and L{parseOptions} turns it into L{KeyOptions}.

The manhole serves one thing, a Python prompt (or one Python command) in
the switch, and nothing else: no forwarding, no agent, no X11, no rc file.
So the options that only take such things away (C{restrict},
C{no-port-forwarding}, C{no-agent-forwarding}, C{no-X11-forwarding},
C{no-user-rc}) and the ones that give them back (C{port-forwarding}...)
change nothing and are accepted.  C{no-pty} (which C{restrict} implies) is
accepted too: with or without a terminal a login runs any Python it likes
in the switch, so refusing the terminal would take nothing away from it;
the prompt is still served on one.

Four options restrict the login itself and are enforced: C{from="..."}
(L{matchFrom}: OpenSSH's pattern-list, matched against the client's IP
address, its host name being the address as with sshd's default
C{UseDNS no}), C{expiry-time="..."} (L{parseExpiry}), and for FIDO
security keys C{no-touch-required} (a signature without user presence is
accepted; without it, or with C{touch-required}, it is refused) and
C{verify-required} (a signature without user verification, a PIN or a
fingerprint, is refused; C{no-verify-required} undoes it), the last of each
pair winning as with sshd; L{vtwisted.sksig} checks them, and other keys
ignore them.  Every other option (C{command=}, C{principals=},
C{cert-authority}, C{permitopen=}, C{permitlisten=}, C{tunnel=},
C{environment=}, anything unknown) asks for something the manhole cannot
do: L{parseOptions} raises L{KeyOptionError} and the line is refused, never
half-honoured.
"""

from __future__ import annotations

import calendar
import ipaddress
import re
import time
from dataclasses import dataclass
from datetime import datetime

#: Options without a value: those that restrict (or restore) only what the
#: manhole never serves, and the security key ones.
ACCEPTED_FLAGS = frozenset({
    "restrict", "port-forwarding", "no-port-forwarding", "agent-forwarding",
    "no-agent-forwarding", "x11-forwarding", "no-x11-forwarding", "pty", "no-pty",
    "user-rc", "no-user-rc", "touch-required", "no-touch-required", "verify-required",
    "no-verify-required",
})
#: Options the manhole cannot honour: a line with one is refused.
UNSUPPORTED = frozenset({
    "command", "principals", "cert-authority", "permitopen", "permitlisten", "tunnel",
    "environment",
})

_EXPIRY_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


class KeyOptionError(ValueError):
    """
    A key line's options field cannot be parsed, or asks for what the
    manhole cannot honour; the message says which option.
    """


@dataclass(frozen=True)
class KeyOptions:
    """
    What an C{authorized_keys} line's options ask of a login.

    @ivar fromPatterns: the C{from=} pattern-list, or L{None}.
    @ivar expiry: the POSIX time after which the key is refused, or L{None}.
    @ivar touchRequired: a security key's signature needs user presence
        (not C{no-touch-required}).
    @ivar verifyRequired: a security key's signature needs user
        verification (C{verify-required}).
    """

    fromPatterns: str | None = None
    expiry: float | None = None
    touchRequired: bool = True
    verifyRequired: bool = False

    def refusal(self, address: str | None, now: float) -> str | None:
        """
        Why a login from C{address} (an IP address, L{None} if the client
        has none) at C{now} is refused, or L{None} if it is allowed.
        """
        if self.expiry is not None and now > self.expiry:
            return f"expired at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.expiry))}"
        if self.fromPatterns is not None:
            if address is None or not matchFrom(self.fromPatterns, address):
                return f"from=\"{self.fromPatterns}\" does not allow {address or 'this client'}"
        return None


def splitOptions(line: bytes) -> tuple[str, bytes]:
    """
    Cut a key line into its options field and the key that follows.

    @return: the options field (C{""} if the line starts with a key type)
        and the rest of the line.
    @raise KeyOptionError: a quote is not closed.
    """
    if line.split()[0].startswith((b"ssh-", b"ecdsa-", b"sk-")):
        return "", line
    quoted = False
    index = 0
    while index < len(line) and (quoted or line[index] not in b" \t"):
        if line[index:index + 2] == b'\\"':
            index += 1
        elif line[index:index + 1] == b'"':
            quoted = not quoted
        index += 1
    if quoted:
        raise KeyOptionError("a quote in the options is not closed")
    return line[:index].decode("utf-8", "replace"), line[index:].strip()


def parseOptions(field: str) -> KeyOptions:
    """
    The options of a key line's options field.

    @raise KeyOptionError: it is malformed, or has an option the manhole
        cannot honour (the message names it).
    """
    fromPatterns: str | None = None
    expiry: float | None = None
    touchRequired, verifyRequired = True, False
    position = 0
    while position < len(field):
        match = re.match(r"[^=,]*", field[position:])
        assert match is not None
        name = match.group().lower()
        position += match.end()
        value: str | None = None
        if field[position:position + 1] == "=":
            value, position = _dequote(field, position + 1, name)
        if not name:
            raise KeyOptionError("an empty option")
        if name in UNSUPPORTED or (name not in ACCEPTED_FLAGS and name not in
                                   ("from", "expiry-time")):
            kind = "is not supported" if name in UNSUPPORTED else "is unknown"
            raise KeyOptionError(f"option {name!r} {kind} by the manhole")
        if (value is None) != (name in ACCEPTED_FLAGS):
            raise KeyOptionError(f"option {name!r} " + (
                "needs a quoted value" if value is None else "takes no value"))
        if name == "from":
            if fromPatterns is not None:
                raise KeyOptionError("more than one 'from' option")
            assert value is not None
            checkFrom(value)
            fromPatterns = value
        elif name == "expiry-time":
            assert value is not None
            when = parseExpiry(value)
            expiry = when if expiry is None else min(expiry, when)
        elif name in ("touch-required", "no-touch-required"):
            touchRequired = name == "touch-required"
        elif name in ("verify-required", "no-verify-required"):
            verifyRequired = name == "verify-required"
        if position < len(field):
            if field[position] != ",":
                raise KeyOptionError(f"option {name!r} is followed by {field[position]!r}")
            position += 1
            if position == len(field):
                raise KeyOptionError("the options end with a comma")
    return KeyOptions(fromPatterns, expiry, touchRequired, verifyRequired)


def _dequote(field: str, position: int, name: str) -> tuple[str, int]:
    if field[position:position + 1] != '"':
        raise KeyOptionError(f"option {name!r}: its value must be in double quotes")
    value = []
    position += 1
    while position < len(field) and field[position] != '"':
        if field[position:position + 2] == '\\"':
            position += 1
        value.append(field[position])
        position += 1
    if position == len(field):
        raise KeyOptionError(f"option {name!r}: a quote is not closed")
    return "".join(value), position + 1


def parseExpiry(text: str) -> float:
    """
    The POSIX time of an C{expiry-time} value: C{YYYYMMDD[HHMM[SS]]}, in
    local time, or UTC if it ends with C{Z} (or C{UTC}).

    @raise KeyOptionError: another form, or no such date.
    """
    utc = text[-1:].upper() == "Z" or text[-3:].upper() == "UTC"
    digits = text[:-1] if text[-1:].upper() == "Z" else text[:-3] if utc else text
    form = _EXPIRY_FORMATS.get(len(digits))
    try:
        if form is None or not digits.isdigit():
            raise ValueError
        moment = datetime.strptime(digits, form)
    except ValueError:
        raise KeyOptionError(
            f"expiry-time \"{text}\" is not YYYYMMDD[HHMM[SS]][Z]") from None
    if utc:
        return float(calendar.timegm(moment.timetuple()))
    return time.mktime(moment.timetuple())


def checkFrom(patterns: str) -> None:
    """
    @raise KeyOptionError: C{patterns} has an empty entry or an address
        with a bad mask (a mask too long, or bits set past it), which sshd
        refuses every login for.
    """
    for entry in patterns.split(","):
        _entry(entry)


def _entry(entry: str) -> tuple[bool, ipaddress.IPv4Network | ipaddress.IPv6Network | None,
                                str]:
    """
    An entry of a pattern-list: whether it is negated, its network if it is
    an address or address/masklen, and its wildcard pattern.
    """
    negated = entry.startswith("!")
    pattern = entry[1:] if negated else entry
    if not pattern:
        raise KeyOptionError(f"from=: an empty pattern in {entry!r}")
    address, _, mask = pattern.partition("/")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return negated, None, pattern
    if mask and not mask.isdigit():
        return negated, None, pattern
    try:
        return negated, ipaddress.ip_network(pattern, strict=True), pattern
    except ValueError as e:
        raise KeyOptionError(f"from=: {pattern!r}: {e}") from None


def matchFrom(patterns: str, address: str) -> bool:
    """
    Whether a client at C{address} may log in under C{from="patterns"}: a
    match of any C{!}-negated entry refuses it; otherwise it needs a match
    of some entry, an address or C{address/masklen} containing it, or a
    pattern (C{*} any characters, C{?} one) matching it as text.
    """
    client = _normalised(address)
    if client is None:
        return False
    text = str(client)
    allowed = False
    for entry in patterns.split(","):
        negated, network, pattern = _entry(entry)
        matched = (network is not None and client.version == network.version
                   and client in network) or _wildcard(pattern).fullmatch(text) is not None
        if matched and negated:
            return False
        allowed = allowed or matched
    return allowed


def _normalised(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        client = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return None
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        return client.ipv4_mapped
    return client


def _wildcard(pattern: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL)
