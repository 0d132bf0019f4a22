"""
Port specs: C{prefix:arg:key=value}, in Twisted's endpoint-string grammar.

Theory of operation
-------------------
A spec is split with the same tokenizer L{twisted.internet.endpoints} uses for
C{serverFromString}: C{:} separates arguments, the first C{=} in an argument
makes it a keyword, and a backslash escapes the next character (C{\\:}).
One rule is added: an argument is a keyword only if the text before its
first C{=} is an option name (ASCII letters, digits, C{_} and C{-}, as every
option of every port type and every keyword of Twisted's endpoints is).
Any other argument is positional text, its C{=} kept: a command line
(C{cmd:qemu-system-x86_64 -netdev stream,id=n,...}) or a path
(C{vde:/tmp/a=b}) needs no C{\\=}, which still works.  A spec that was
valid before means what it meant: a keyword whose name is not an option
name was refused by every port type (Twisted's endpoints take no such
keyword either).  C{cmd:FOO=bar} stays a keyword, so an unknown option.

The positional arguments keep their order (L{PortSpec.args}; the first is
the prefix that names the port type).  A port type that rides on an
ordinary Twisted endpoint (C{qemu:unix:/path}, C{cable:tcp:host=...}) asks
L{PortSpec.endpoint} for its description, escaped again for
C{clientFromString} or C{serverFromString}.

Every accessor raises L{SpecError}, whose message names the whole spec and what
is wrong with it, so a typo fails at start-up with a sentence a user can act on.
A keyword given twice is refused by every accessor but L{PortSpec.values},
which reads options that may repeat (QEMU's C{hostfwd=...,hostfwd=...}):
Twisted's parser keeps only the last, which would drop the others silently.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from twisted.internet.endpoints import _STRING, _tokenize


class SpecError(ValueError):
    """
    A port spec is malformed or names something that does not exist.
    """

    def __init__(self, spec: str, problem: str) -> None:
        self.spec = spec
        self.problem = problem
        super().__init__(f"port spec {quoted(spec)}: {problem}")


def quoted(text: str) -> str:
    """
    C{text} in quotes as written, its backslashes single (C{'a\\:b'}), or
    as Python would quote it if it holds a quote or something unprintable.
    """
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)


#: What an option's name is made of: a keyword whose name is not one is text.
OPTION_NAME = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)

_TRUE = {"1", "yes", "on", "true"}
_FALSE = {"0", "no", "off", "false"}


class PortSpec:
    """
    A parsed port spec.

    @ivar text: the spec as written.
    @ivar prefix: the port type's name.
    @ivar args: positional arguments after the prefix, in order (an
        argument C{text=...} whose C{text} is not an option name among
        them, C{=} and all).
    @ivar kwargs: C{key=value} arguments whose C{key} is an option name.
    @ivar rest: the text after C{prefix:}, escapes and all.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            words = _arguments(text)
        except (RuntimeError, StopIteration):
            raise SpecError(text, "ends with a lone backslash") from None
        args: list[str] = []
        given: dict[str, list[str]] = {}
        #: For each positional argument after the prefix, the keyword
        #: (and its value) written just before it, if one was.
        self._after: list[tuple[str, str] | None] = []
        last: tuple[str, str] | None = None
        for word in words:
            if len(word) == 2 and OPTION_NAME.fullmatch(word[0]):
                given.setdefault(word[0], []).append(word[1])
                last = (word[0], word[1])
            else:
                args.append("=".join(word))
                self._after.append(last)
                last = None
        if not args or not args[0]:
            raise SpecError(text, "has no port type prefix (expected PREFIX:ARGS)")
        self.prefix: str = args[0]
        self.args: list[str] = args[1:]
        #: The last value of each keyword, as Twisted's parser keeps.
        self.kwargs: dict[str, str] = {key: values[-1] for key, values in given.items()}
        self.rest: str = text.partition(":")[2]
        self._used: set[str] = set()
        #: The values of each keyword given more than once, in order.
        self.repeated: dict[str, list[str]] = {
            key: values for key, values in given.items() if len(values) > 1}

    def __repr__(self) -> str:
        return f"PortSpec({self.text!r})"

    def error(self, problem: str) -> SpecError:
        """
        A L{SpecError} about this spec.
        """
        return SpecError(self.text, problem)

    def positional(self, names: Sequence[str], required: int) -> list[str | None]:
        """
        The positional arguments, checked for count.

        @param names: what each position means, for error messages.
        @param required: how many must be given.
        @return: one entry per name, L{None} where not given.
        """
        if len(self.args) < required:
            raise self.error(f"missing {names[len(self.args)]}")
        if len(self.args) > len(names):
            raise self.unexpected(len(names))
        return [*self.args, *[None] * (len(names) - len(self.args))]

    def unexpected(self, first: int) -> SpecError:
        """
        The error for positional arguments from C{first} on (counted after
        the prefix) that nothing takes, with L{colonHint}.
        """
        extra = ":".join(self.args[first:])
        return self.error(f"unexpected argument {extra!r}{self.colonHint(first)}")

    def colonHint(self, first: int = 0) -> str:
        """
        What to say when positional arguments from C{first} on were not
        meant as such: most often a value written with bare colons (an IPv6
        address, QEMU's C{hostfwd=tcp::2222-:22}), which the grammar cut
        there.  Empty if nothing points to that.
        """
        start = first  # back to where the run of arguments begins
        while 0 < start < len(self.args) and self._after[start + 1] is None:
            start -= 1
        for n in range(start, len(self.args)):
            follows = self._after[n + 1]
            if follows is not None:
                key, value = follows
                end = n + 1
                while end < len(self.args) and self._after[end + 1] is None:
                    end += 1
                pieces = [value, *self.args[n:end]]
                if _colonned(pieces):
                    whole = ":".join(pieces).replace(":", "\\:")
                    return f" (if that belongs to {key}=, escape its colons: {key}={whole})"
        if "" in self.args[:-1]:
            return " (two colons in a row: escape the colons of an IPv6 address, as in fd00\\:\\:1)"
        return ""

    def _once(self, key: str) -> None:
        """
        Mark C{key} read; refuse it if it was given more than once.
        """
        self._used.add(key)
        if key in self.repeated:
            raise self.error(f"{key}= is given {len(self.repeated[key])} times; "
                             "give it once")

    def string(self, key: str, default: str | None = None) -> str | None:
        """
        A keyword argument as text.
        """
        self._once(key)
        return self.kwargs.get(key, default)

    def values(self, key: str) -> list[str]:
        """
        Every value of a keyword that may be given several times, in order.
        """
        self._used.add(key)
        if key in self.repeated:
            return list(self.repeated[key])
        return [self.kwargs[key]] if key in self.kwargs else []

    def integer(
        self,
        key: str,
        default: int | None = None,
        low: int | None = None,
        high: int | None = None,
        base: int = 10,
    ) -> int | None:
        """
        A keyword argument as an integer within C{[low, high]}.
        """
        self._once(key)
        if key not in self.kwargs:
            return default
        raw = self.kwargs[key]
        try:
            value = int(raw, base)
        except ValueError:
            kind = "an octal number" if base == 8 else "a whole number"
            raise self.error(f"{key}={raw!r} is not {kind}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.error(f"{key}={raw} is out of range ({low} to {high})")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """
        A keyword argument as on/off.
        """
        self._once(key)
        raw = self.kwargs.get(key)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise self.error(f"{key}={raw!r} is not on or off")

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        """
        A keyword argument as one of C{choices}; where they hold C{on} and
        C{off}, whatever L{boolean} takes for them is taken too.
        """
        self._once(key)
        raw = self.kwargs.get(key)
        if raw is None:
            return default
        value = raw.lower()
        if value in _TRUE and "on" in choices:
            return "on"
        if value in _FALSE and "off" in choices:
            return "off"
        if value in choices:
            return value
        raise self.error(f"{key}={raw!r} is not {', '.join(choices[:-1])} or {choices[-1]}")

    def integerList(self, key: str, low: int, high: int) -> list[int]:
        """
        A keyword argument as a comma-separated list of integers and
        inclusive ranges (C{10,20-29}), in order, each once.
        """
        self._once(key)
        raw = self.kwargs.get(key)
        if not raw:
            return []
        values: dict[int, None] = {}
        for item in raw.split(","):
            first, dash, last = item.partition("-")
            start = self._listed(key, item, first, low, high)
            end = self._listed(key, item, last, low, high) if dash else start
            if end < start:
                raise self.error(f"{key}: {item!r} is not a range (write the lower end first)")
            values.update(dict.fromkeys(range(start, end + 1)))
        return list(values)

    def _listed(self, key: str, item: str, text: str, low: int, high: int) -> int:
        """
        One number of L{integerList}, C{text} in C{item}, checked.
        """
        try:
            value = int(text)
        except ValueError:
            raise self.error(f"{key}: {item!r} is not a whole number or a range like "
                             "10-19") from None
        if not low <= value <= high:
            raise self.error(f"{key}: {value} is out of range ({low} to {high})")
        return value

    def endpoint(self, skip: int, reserved: Iterable[str],
                 replace: dict[int | str, str] | None = None) -> str:
        """
        The Twisted endpoint description this spec carries: the arguments
        after the prefix and C{skip} more, and every keyword not in
        C{reserved} (the switch's own options), escaped again.

        @param replace: values given in place of those written, by position
            among the endpoint's arguments (0 is its kind) or by keyword.
        @raise SpecError: if nothing is left.
        """
        reserved = set(reserved)
        replace = replace or {}
        for key in set(self.repeated) - reserved:
            self._once(key)
        parts = [escape(replace.get(n, arg)) for n, arg in enumerate(self.args[skip:])]
        parts += [f"{escape(k)}={escape(replace.get(k, v))}"
                  for k, v in self.kwargs.items() if k not in reserved]
        if not parts or not self.args[skip:]:
            raise self.error("names no endpoint (for example unix:/path or tcp:5555)")
        return ":".join(parts)

    def checkKeywords(self, extra: Iterable[str] = ()) -> None:
        """
        Fail if a keyword was given that no accessor asked for.
        """
        unknown = set(self.kwargs) - self._used - set(extra)
        if unknown:
            known = ", ".join(sorted(self._used | set(extra))) or "none"
            raise self.error(
                f"unknown option {', '.join(sorted(unknown))} (known: {known})"
            )


def _colonned(pieces: list[str]) -> bool:
    """
    Whether C{pieces}, joined by colons, look like a value that has them:
    with two in a row, an IPv6 address or network, or QEMU's C{tcp:...}
    and C{udp:...} forwarding rules.
    """
    if "" in pieces or pieces[0] in ("tcp", "udp"):
        return True
    try:
        ipaddress.ip_network(":".join(pieces).partition("%")[0], strict=False)
    except ValueError:
        return False
    return True


def _arguments(text: str) -> list[tuple[str, ...]]:
    """
    The arguments of C{text} in order, tokenized as Twisted's C{_parse}
    does: C{(word,)} for one without C{=}, C{(key, value)} for one with.

    @raise RuntimeError: C{text} ends with a lone backslash.
    """
    arguments: list[tuple[str, ...]] = []
    words: tuple[str, ...] = ()
    for kind, value in [*_tokenize(text), (None, ":")]:
        if kind is _STRING:
            words += (value,)
        elif value == ":":
            arguments.append(words)
            words = ()
    return arguments


def escape(text: str) -> str:
    """
    Quote C{text} for the endpoint grammar: every C{\\}, C{:} and C{=}, so
    that a path becomes one positional argument of a spec.
    """
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
