"""
The console's C{debug/} and C{plugin/} menus, with vde_switch's replies.

C{debug/add PREFIX} makes the session receive the debug events of every
category starting with C{PREFIX} (L{vtwisted.debugevents}).  vtwisted's port
types are Python plugins found at start (see "Writing a port type"), not
shared objects loaded at run time, so C{plugin/list} lists none and
C{plugin/add} finds nothing to load, as vde_switch does for a missing file.
"""

from __future__ import annotations

import errno
from typing import Any

from vtwisted import errors

_DEBUG_HEADER = ["CATEGORY               TAG STATUS HELP",
                 "------------           --- ------ ----"]
_PLUGIN_HEADER = ["NAME                   HELP", "------------           ----"]


def _listener(ctx: Any) -> Any:
    if ctx.session is None:
        raise errors.invalid("debug events need a console session")
    return ctx.session


def debugList(ctx: Any, arg: str) -> list[str]:
    """
    C{debug/list [PREFIX]}: the categories and whether this session gets them.
    """
    rows = ctx.ops.debugCategories(ctx.session, arg.strip())
    if not rows:
        error = errors.SwitchError(errno.ENOENT, f"no debug category starts with {arg!r}")
        error.partial = tuple(_DEBUG_HEADER)
        raise error
    return [*_DEBUG_HEADER, *(f"{path:<22} {tag:03o} {'ON' if on else 'OFF':<6} {text}"
                               for path, tag, on, text in rows)]


def debugAdd(ctx: Any, arg: str) -> None:
    """
    C{debug/add [PREFIX]}.
    """
    ctx.ops.addDebugListener(_listener(ctx), arg.strip())


def debugDel(ctx: Any, arg: str) -> None:
    """
    C{debug/del [PREFIX]}.
    """
    ctx.ops.removeDebugListener(_listener(ctx), arg.strip())


def pluginList(ctx: Any, arg: str) -> list[str]:
    """
    C{plugin/list}: no shared-object plugins are loaded.
    """
    error = errors.SwitchError(errno.ENOENT, "no plugins are loaded")
    error.partial = tuple(_PLUGIN_HEADER)
    raise error


def pluginAdd(ctx: Any, arg: str) -> None:
    """
    C{plugin/add PATH}: vtwisted loads no shared objects.
    """
    if not arg.strip():
        raise errors.invalid("plugin/add needs a path")
    raise errors.SwitchError(errno.ENOENT, f"{arg.strip()}: vtwisted loads no shared objects; "
                                           f"port types are Python plugins")


def pluginDel(ctx: Any, arg: str) -> None:
    """
    C{plugin/del NAME}: nothing was loaded.
    """
    raise errors.SwitchError(errno.ENOENT, "no plugins are loaded")
