"""
Moving a TAP device the switch has just opened into another network
namespace (C{tap:NAME:netns=NS}), and bringing it up there.

Theory of operation
-------------------
A TAP device is created in the namespace where C{/dev/net/tun} was opened,
and its descriptor holds that namespace alive for as long as it is open.
So the switch opens the device in its own namespace, as for any TAP port,
and then moves it with one C{RTM_NEWLINK} request on a C{NETLINK_ROUTE}
socket: the device's index, the target namespace as a descriptor
(C{IFLA_NET_NS_FD}) and, unless C{up=off}, the C{IFF_UP} flag, which the
kernel applies in the new namespace.  Nothing then pins the target: when
it is deleted (C{ip netns del}, a container's end) the kernel destroys the
device, its descriptor fails with C{EBADFD} and the port goes down as for
any deleted TAP.

C{NS} is a name of C{ip netns} (a file under C{/run/netns}) or a path to
any namespace file (C{/proc/PID/ns/net}, a container runtime's bind
mount).  The namespace file is opened before the device, so a missing one
costs no device; it is closed again once the move is done.  Moving needs
C{CAP_NET_ADMIN} in both namespaces (the switch does it before C{twistd
--uid} drops privileges); the kernel refuses a name already taken in the
target with C{EEXIST}.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from vtwisted.ports.linkwatch import IFINFOMSG, NETLINK_ROUTE, NLMSGHDR, RTM_NEWLINK
from vtwisted.spec import PortSpec

T = TypeVar("T")

#: Where C{ip netns add NAME} puts its namespace files.
NETNS_RUN_DIR = "/run/netns"
_NLM_F_REQUEST = 0x01
_NLM_F_ACK = 0x04
_NLMSG_ERROR = 2
_IFLA_NET_NS_FD = 28
_IFF_UP = 0x1
_ATTRIBUTE = struct.Struct("=HHI")


@dataclass(frozen=True)
class Namespace:
    """
    Where a TAP port's device goes: C{netns=} as written, its file, and
    whether to bring the device up there.
    """

    text: str
    path: str
    up: bool = True

    @classmethod
    def fromSpec(cls, spec: PortSpec) -> Namespace | None:
        """
        The C{netns=} and C{up=} of a spec, if it has C{netns=}.
        """
        text = spec.string("netns")
        up = spec.boolean("up", True)
        if text is None:
            if "up" in spec.kwargs:
                raise spec.error("up= goes with netns= (a device in the switch's own "
                                 "namespace is left as it is)")
            return None
        return cls(text, namespacePath(spec, text), up)

    def openInto(self, spec: str, name: str, openDevice: Callable[[], T],
                 closeDevice: Callable[[T], Any], mover: Any = None) -> T:
        """
        Open the device with C{openDevice} and move it into this namespace
        (closing it with C{closeDevice} if that fails).

        @param mover: L{moveDevice}, or a replacement in tests.
        @raise OSError: saying what failed and what to do.
        """
        namespace = openNamespace(spec, self.text, self.path)
        try:
            device = openDevice()
            try:
                (mover or moveDevice)(name, namespace, self.up)
            except OSError as e:
                closeDevice(device)
                raise moveError(spec, name, self.text, self.path, e) from None
        finally:
            os.close(namespace)
        return device


def namespacePath(spec: PortSpec, text: str) -> str:
    """
    The file of the namespace C{text} names: an C{ip netns} name, or a path.
    """
    if "/" in text:
        return text
    if not text or text in (".", "..") or "\0" in text:
        raise spec.error(f"netns={text!r} is neither a name of 'ip netns' nor a path")
    return os.path.join(NETNS_RUN_DIR, text)


def describe(text: str, path: str) -> str:
    """
    How an error names the namespace: C{lab2 (/run/netns/lab2)}, or the path.
    """
    return path if text == path else f"{text} ({path})"


def openNamespace(spec: str, text: str, path: str) -> int:
    """
    A descriptor of the namespace file.

    @raise OSError: saying which namespace and what to do.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        advice = ""
        if e.errno == errno.ENOENT and path != text:
            advice = f"; create it with 'ip netns add {text}'"
        elif e.errno == errno.ENOENT:
            advice = "; is the process or container still there?"
        raise OSError(e.errno, f"{spec}: cannot open network namespace {describe(text, path)}: "
                               f"{e.strerror} (errno {e.errno}){advice}") from None
    return fd


def moveDevice(name: str, namespace: int, up: bool) -> None:
    """
    Move the interface C{name} (of the switch's namespace, just opened)
    into the namespace open as C{namespace}, and bring it up there if
    C{up}.

    @raise OSError: with the kernel's errno.
    """
    index = socket.if_nametoindex(name)
    flags = _IFF_UP if up else 0
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, flags)
    body += _ATTRIBUTE.pack(_ATTRIBUTE.size, _IFLA_NET_NS_FD, namespace)
    request = NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_NEWLINK,
                           _NLM_F_REQUEST | _NLM_F_ACK, 1, 0) + body
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_ROUTE)
    try:
        sock.sendto(request, (0, 0))
        reply = sock.recv(65536)
    finally:
        sock.close()
    if len(reply) < NLMSGHDR.size + 4 or NLMSGHDR.unpack_from(reply)[1] != _NLMSG_ERROR:
        raise OSError(errno.EPROTO, "unexpected answer from the kernel's netlink")
    (code,) = struct.unpack_from("=i", reply, NLMSGHDR.size)
    if code:
        raise OSError(-code, os.strerror(-code))


def moveError(spec: str, name: str, text: str, path: str, e: OSError) -> OSError:
    """
    The error for a device that could not be moved into the namespace.
    """
    advice = ""
    if e.errno == errno.EEXIST:
        advice = (f"; the namespace has an interface named {name} already (a device made "
                  "there beforehand cannot be opened through netns=: move it out, or "
                  "run the switch inside that namespace)")
    elif e.errno == errno.EPERM:
        advice = ("; moving a device needs CAP_NET_ADMIN in both namespaces (the switch "
                  "moves its TAP devices before twistd --uid drops privileges)")
    elif e.errno == errno.EINVAL:
        advice = "; is it a network namespace file?"
    return OSError(e.errno, f"{spec}: cannot move TAP device {name} into network namespace "
                            f"{describe(text, path)}: {e.strerror} (errno {e.errno}){advice}")
