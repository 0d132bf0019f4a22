"""
The Linux TUN/TAP device interface a TAP port uses: the ioctls and offload
flags, the system calls (replaceable in tests), interface names, and the
errors that say what to do when a device cannot be opened.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import re

from vtwisted.spec import PortSpec

TUNSETIFF = 0x400454CA
IFNAMSIZ = 16
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
#: What we ask for, best first; older kernels reject the USO bits (EINVAL).
OFFLOAD_CHOICES = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
)
_OFFLOAD_NAMES = (
    (TUN_F_CSUM, "csum"),
    (TUN_F_TSO4, "tso4"),
    (TUN_F_TSO6, "tso6"),
    (TUN_F_TSO_ECN, "ecn"),
    (TUN_F_USO4, "uso4"),
    (TUN_F_USO6, "uso6"),
)
_NAME = re.compile(r"^[^/:%\s]{1,15}$")
#: Bytes Linux's isspace() takes for white space: ASCII's and 0xA0, which
#: the UTF-8 of some letters holds ("à" is C3 A0).
_KERNEL_SPACE = re.compile(rb"[\t\n\v\f\r \xa0]")


def offloadNames(flags: int) -> str:
    """
    C{csum,tso4,...} for a set of C{TUN_F_*} flags.
    """
    return ",".join(name for bit, name in _OFFLOAD_NAMES if flags & bit) or "none"


class RealTapSystem:
    """
    The system calls a TAP port makes (the shape of
    L{twisted.pair.testing.MemoryIOSystem}, plus C{writev}).
    """

    O_RDWR = os.O_RDWR
    O_NONBLOCK = os.O_NONBLOCK
    O_CLOEXEC = os.O_CLOEXEC
    open = staticmethod(os.open)
    read = staticmethod(os.read)
    write = staticmethod(os.write)
    writev = staticmethod(os.writev)
    close = staticmethod(os.close)
    ioctl = staticmethod(fcntl.ioctl)


def checkName(spec: PortSpec, name: str | None, what: str = "TAP name") -> str:
    """
    The interface name, if Linux would accept it.
    """
    if (name is None or not _NAME.match(name) or name in (".", "..") or "\0" in name
            or len(name.encode()) >= IFNAMSIZ or _KERNEL_SPACE.search(name.encode())):
        raise spec.error(
            f"{what} {name!r} is not a valid interface name "
            "(1 to 15 bytes, no '/', ':', '%', NUL or white space, which for Linux includes "
            "the byte 0xA0, as in the UTF-8 of 'à')"
        )
    return name


def openError(spec: str, name: str, e: Exception) -> OSError:
    """
    The error for a device that could not be opened: the spec, the device,
    the errno, and what to do about it.
    """
    cause = getattr(e, "socketError", e)
    code = getattr(cause, "errno", None) or errno.EIO
    text = getattr(cause, "strerror", None) or str(cause)
    advice = ""
    if code == errno.EPERM:
        advice = _permissionAdvice(name)
    elif code == errno.EBUSY:
        advice = "; another program holds it (a TAP device has one user)"
    elif code == errno.ENOENT:
        advice = "; /dev/net/tun is missing (modprobe tun)"
    elif code == errno.EACCES:
        advice = (
            "; /dev/net/tun is not readable and writable by you "
            "(most systems make it 0666: chmod 0666 /dev/net/tun)"
        )
    elif code == errno.EINVAL:
        advice = (
            f"; an interface {name} may exist that is not a single-queue TAP device "
            f"(ip -d link show {name})"
        )
    return OSError(
        code,
        f"{spec}: cannot open TAP device {name} through /dev/net/tun: {text} (errno {code})"
        f"{advice}",
    )


def _permissionAdvice(name: str, sysfs: str = "/sys/class/net") -> str:
    """
    What to do when opening C{name} is not permitted: make a device that is
    yours, or if one exists, say whose it is (its C{owner} and C{group} in
    sysfs, -1 for none) and how to make it yours.  The commands need
    C{CAP_NET_ADMIN} and name the switch's user, not C{$USER}, which would
    be root's own name in the root shell that runs them.
    """
    uid = os.geteuid()
    me = _userName(uid)
    make = f"ip tuntap add {name} mode tap user {me}"
    device = os.path.join(sysfs, name)
    if not os.path.isdir(device):
        return f"; without CAP_NET_ADMIN the device must exist and belong to you: as root, {make}"
    owned = []
    for what, kind, lookup in (("owner", "user", _userName), ("group", "group", _groupName)):
        try:
            with open(os.path.join(device, what)) as f:
                value = int(f.read())
        except (OSError, ValueError):
            continue
        if value != -1:
            known = lookup(value)
            owned.append(f"{kind} {value}" + (f" ({known})" if known != str(value) else ""))
    whose = " and ".join(owned) or "no user"
    mine = f"uid {uid}" + (f", {me}" if me != str(uid) else "")
    return (
        f"; the device exists and belongs to {whose}, not to you ({mine}): run as its "
        f"user, or as root make it yours: ip tuntap del {name} mode tap; {make}"
    )


def _userName(uid: int) -> str:
    """The name of user C{uid}, or the number where it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _groupName(gid: int) -> str:
    """The name of group C{gid}, or the number where it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
