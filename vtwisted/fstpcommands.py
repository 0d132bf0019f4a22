"""
The console's C{fstp/} menu, with vde_switch's syntax and replies.
"""

from __future__ import annotations

from typing import Any

from vtwisted import consoleformat as fmt
from vtwisted.consoleargs import atoi, scanIntegers


def showInfo(ctx: Any, arg: str) -> list[str]:
    """
    C{fstp/showinfo}: the switch's address, priority and whether FSTP runs.
    """
    ops = ctx.ops
    return fmt.fstpInfoLines(ops.info().mac, ops.fstpPriority(), ops.fstpEnabled())


def setFstp(ctx: Any, arg: str) -> list[str]:
    """
    C{fstp/setfstp 0/1}; in hub mode it says so and does nothing, as
    vde_switch does.
    """
    if ctx.ops.info().hub:
        return ["Can't use fstp in hub mode"]
    ctx.ops.setFstp(atoi(arg) != 0)
    return []


def setEdge(ctx: Any, arg: str) -> None:
    """
    C{fstp/setedge VLAN PORT 1/0}.
    """
    vid, port, value = scanIntegers(arg, 3)
    ctx.ops.setFstpEdge(vid, port, value != 0)


def setBonus(ctx: Any, arg: str) -> None:
    """
    C{fstp/bonus VLAN PORT COST}.
    """
    vid, port, cost = scanIntegers(arg, 3)
    ctx.ops.setFstpBonus(vid, port, cost)


def printTrees(ctx: Any, arg: str) -> list[str]:
    """
    C{fstp/print [N]}.
    """
    vid = atoi(arg) if arg.strip() else None
    lines: list[str] = []
    for tree in ctx.ops.fstpTrees(vid):
        lines.extend(fmt.fstpTreeLines(tree))
    return lines
