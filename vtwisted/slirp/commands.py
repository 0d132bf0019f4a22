"""
The console's C{slirp/} menu: what each slirp port is doing, and port
forwards added and removed while the switch runs (QEMU's monitor has
C{hostfwd_add}/C{hostfwd_remove}; libslirp users of other front ends have
nothing of the kind).

A command names its slirp port by the switch port number it sits on
(C{slirp/hostfwd_add 3 tcp::2222-:22}); with one slirp port the number may
be left out.  Rules use QEMU's C{hostfwd} syntax, without the escaping a
spec needs.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from vtwisted import errors
from vtwisted.slirp.config import parseForward
from vtwisted.wire.ethernet import formatMac


def slirpServices(ops: Any) -> list[Any]:
    """
    The running slirp port services of the switch, in spec order.
    """
    from vtwisted.ports.slirp import SlirpService

    return [svc for svc in ops.service.specs.values()
            if isinstance(svc, SlirpService) and svc.router is not None]


def _pick(ops: Any, arg: str) -> tuple[Any, str]:
    services = slirpServices(ops)
    first, _, rest = arg.strip().partition(" ")
    if first.isdigit() and rest.strip():
        number = int(first)
        for svc in services:
            link = svc.link
            if link is not None and link.port is not None and link.port.number == number:
                return svc, rest.strip()
        raise errors.missing(f"port {number} has no slirp router")
    if not services:
        raise errors.missing("the switch has no slirp port")
    if len(services) > 1:
        raise errors.invalid("several slirp ports: name one by its port number first")
    return services[0], arg.strip()


def _forward(svc: Any, rule: str) -> Any:
    if not rule:
        raise errors.invalid("needs a rule like tcp:127.0.0.1:2222-10.0.2.15:22")
    try:
        return parseForward(rule, svc.config.poolStart)
    except ValueError as e:
        raise errors.invalid(str(e)) from None


def hostfwdAdd(ctx: Any, arg: str) -> list[str]:
    """
    C{slirp/hostfwd_add [PORT] RULE}: open a forward (the switch listens
    on the host, so only for a trusted session).
    """
    errors.requireTrusted(ctx.session, "slirp/hostfwd_add")
    svc, rule = _pick(ctx.ops, arg)
    forward = _forward(svc, rule)
    try:
        svc.addForward(forward)
    except OSError as e:
        raise errors.SwitchError(e.errno or errno.EINVAL, str(e.strerror or e)) from None
    return [f"Forward {forward}"]


def hostfwdRemove(ctx: Any, arg: str) -> list[str]:
    """
    C{slirp/hostfwd_remove [PORT] RULE}: close a forward.
    """
    svc, rule = _pick(ctx.ops, arg)
    forward = _forward(svc, rule)
    try:
        svc.removeForward(forward)
    except KeyError:
        raise errors.missing(f"no forward {forward}") from None
    return [f"Removed {forward}"]


def printSlirp(ctx: Any, arg: str) -> list[str]:
    """
    C{slirp/print}: each slirp port's plan, leases, forwards and flows.
    """
    lines: list[str] = []
    for svc in slirpServices(ctx.ops):
        lines.extend(describe(svc))
    return lines


def describe(svc: Any) -> list[str]:
    """
    The lines C{slirp/print} shows for one slirp service.
    """
    link, router = svc.link, svc.router
    number = link.port.number if link.port is not None else None
    where = f"port {number:04d}" if number is not None else "unplugged"
    resolver = router.resolver()
    lines = [f"Slirp {where}: {svc.spec}", f" {svc.config.describe()}, MTU {router.mtu}",
             " resolver " + (f"{resolver[0]}:{resolver[1]}" if resolver else "none")]
    lines += [" " + line for line in router.arp.describe()]
    if router.v6 is not None:
        lines += [" " + line for line in router.v6.describe()]
    for mac, address in router.dhcp.leases():
        mac = ":".join(f"{b:02x}" for b in mac)
        lines.append(f" lease {ipaddress.IPv4Address(address)} {mac}")
    for mac, address in router.dhcp.inUseElsewhere():
        lines.append(f" in use {ipaddress.IPv4Address(address)} {formatMac(mac)}: answered "
                     "an ARP probe, not offered")
    if router.dhcp.conflicts:
        lines.append(f" DHCP: {router.dhcp.conflicts} probed addresses found in use")
    lines += forwardLines(svc)
    for forward, target in svc.guestTargets.items():
        runs = getattr(target.endpoint, "runs", None)
        running = f", {len(runs)} commands running" if runs is not None else ""
        lines.append(f" guest forward {forward}{running}")
    tcp = svc.tcp
    lines.append(f" TCP: {tcp.opened} opened, {tcp.refused} refused, {tcp.unreachable} "
                 f"unreachable, {tcp.resets} reset by us, {tcp.guestResets} by guests, "
                 f"{tcp.timeouts} timed out, {tcp.unread} host sockets unread aborted, "
                 f"{tcp.tailProbes} tail loss probes; forwards "
                 f"{tcp.forwardsRefused} refused by guests, {tcp.forwardsUnanswered} "
                 f"unanswered, {tcp.forwardsFailed} failed on their ICMP errors; "
                 f"{tcp.errorsIgnored} ICMP errors from guests ignored")
    lines.append(" " + svc.udp.summary())
    lines += [" " + line for line in tcp.describe()]
    lines += [" " + line for line in svc.udp.describe()]
    if router.tftp is not None:
        lines += [" " + line for line in router.tftp.describe()]
    for engine in (svc.icmp, svc.icmp6):
        if engine is not None:
            lines += [" " + line for line in engine.describe()]
    return lines


def forwardLines(svc: Any) -> list[str]:
    """
    One line per host port forward of a slirp service, with the ICMP
    errors its guest sent about a UDP forward's datagrams.
    """
    lines = []
    for forward, port in svc.forwards.items():
        protocol: Any = getattr(port, "protocol", None)
        errors = getattr(protocol, "errors", 0)
        lines.append(f" forward {forward}" + (
            f": {errors} ICMP errors from the guest, last {protocol.lastError}"
            if errors else ""))
    return lines
