"""
What C{twistd vswitch} takes from C{vde_switch}'s command line beyond its own
options, so that a C{vde_switch} command line (a script's, an init file's)
works after C{twistd vswitch} unchanged.

Theory of operation
-------------------
C{vde_switch} parses with C{getopt_long_only}: a long option may follow a
single dash (C{-sock DIR}, C{-hub}, C{-daemon}, the spelling of its manual
page) and be shortened to a unique prefix (C{-mod}).  L{longOnly} rewrites
such words to double-dash ones before Twisted's C{getopt} (which already
takes unique prefixes) sees them; a word that is no long option's prefix is
left to be read as short options (C{-xF}), and option values are never
touched.

L{VdeSwitchCompatibility} adds the options whose meaning C{twistd} itself
has: C{-d/--daemon} (C{twistd} daemonises unless given C{-n}, so C{-d} is
accepted without it and refused, naming C{-n}, with it) and
C{-p/--pidfile} (C{twistd}'s C{--pidfile}, set from here); and the ones
accepted for their spelling: C{--vdesock}/C{--unix} (C{--sock}) and
C{-D/--debugclients} (no limit here: accepted and ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.python import usage

#: C{twistd}'s pid file when none is given (or an empty one: none).
_TWISTD_DEFAULT_PIDFILES = ("twistd.pid", "")


def _resolve(word: str, longNames: dict[str, bool]) -> str | None:
    """
    The long option C{word} names exactly or as a unique prefix, if any.
    """
    if word in longNames:
        return word
    matches = [name for name in longNames if name.startswith(word)]
    return matches[0] if len(matches) == 1 else None


def longOnly(args: Sequence[str], shortOpt: str, longOpt: Sequence[str]) -> list[str]:
    """
    C{args} with single-dash long options (C{-sock DIR}, C{-hub},
    C{-mode=0660}) written with two dashes, as C{getopt_long_only} reads
    them.

    @param shortOpt: the short options, in C{getopt}'s notation (C{"xs:"}).
    @param longOpt: the long options, in C{getopt}'s notation (C{"sock="}).
    """
    longNames = {name.rstrip("="): name.endswith("=") for name in longOpt}
    shortValues = {letter for letter, after in zip(shortOpt, shortOpt[1:] + " ")
                   if letter != ":" and after == ":"}
    result: list[str] = []
    value = False
    for i, arg in enumerate(args):
        if value:
            result.append(arg)
            value = False
            continue
        if arg == "--" or not arg.startswith("-") or arg == "-":
            result.extend(args[i:])
            break
        if arg.startswith("--"):
            word, equals, _ = arg[2:].partition("=")
            name = _resolve(word, longNames)
            value = not equals and name is not None and longNames[name]
        elif len(arg) > 2 and (name := _resolve(arg[1:].partition("=")[0], longNames)):
            arg = "-" + arg
            value = "=" not in arg and longNames[name]
        else:
            value = arg[1] in shortValues and len(arg) == 2
        result.append(arg)
    return result


class VdeSwitchCompatibility:
    """
    A mixin for C{twistd vswitch}'s options: C{vde_switch}'s options whose
    meaning C{twistd} has, or that are only other spellings.
    """

    parent: Any

    def opt_daemon(self) -> None:
        """
        vde_switch's -d: twistd already runs the switch as a daemon, unless
        given -n.
        """
        parent = getattr(self, "parent", None)
        if parent is not None and parent.get("nodaemon"):
            raise usage.UsageError(
                "-d/--daemon: twistd runs the switch as a daemon unless given -n "
                "(--nodaemon); drop twistd's -n, or vde_switch's -d")

    opt_d = opt_daemon

    def opt_pidfile(self, path: str) -> None:
        """
        vde_switch's -p: write the pid to this file (twistd's --pidfile).
        """
        parent = getattr(self, "parent", None)
        if parent is None:
            raise usage.UsageError(f"-p/--pidfile {path}: give the pid file to twistd "
                                   f"(twistd --pidfile {path})")
        current = parent.get("pidfile")
        if current not in _TWISTD_DEFAULT_PIDFILES and current != path:
            raise usage.UsageError(f"-p/--pidfile {path}: twistd's --pidfile already "
                                   f"names {current}; give one pid file")
        parent["pidfile"] = path

    opt_p = opt_pidfile

    def opt_debugclients(self, number: str) -> None:
        """
        vde_switch's limit of debug clients: accepted and ignored (any
        console session may use debug/add).
        """
        if not number.isdigit():
            raise usage.UsageError(f"--debugclients needs a whole number, not {number!r}")

    opt_D = opt_debugclients

    def opt_vdesock(self, directory: str) -> None:
        """
        vde_switch's other spelling of --sock.
        """
        options: Any = self
        options["sock"] = directory

    def opt_unix(self, directory: str) -> None:
        """
        vde_switch's other spelling of --sock.
        """
        self.opt_vdesock(directory)
