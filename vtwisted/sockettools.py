"""
What several port types do with their sockets: claim a Unix socket path a
crashed process may have left behind, listen on a server endpoint at once
(L{listenNow}) and stop at once (L{stopListeningNow}), grow a send buffer,
and turn a failed listen or bind into an L{OSError} that names the spec,
the address and the errno, and describe the peer of a connection.

Twisted's C{stopListening} closes the socket (and removes a Unix socket's
file) only on the reactor's next turn, which it does by scheduling the
port's C{connectionLost}; until then the address is still taken.  The
console runs the commands of one read (or of a C{load} script) in one turn,
so C{port/del SPEC} and C{port/add SPEC} sent together found the spec's
address in use.  L{stopListeningNow} does at once what that next turn would
do (stop reading, then C{connectionLost}), so that the address is free when
it returns.  Closing a descriptor in the middle of a turn is safe with the
reactors Twisted has on POSIX: the port was removed from the reactor first,
and the reactors look each ready descriptor up again before they dispatch
it (a new socket given the same number meanwhile gets a spurious wake-up,
which Twisted's ports read as "nothing yet").

Linux's abstract Unix socket names (a C{sun_path} whose first byte is NUL,
QEMU's C{abstract=on}) are carried as Twisted carries them, as a path
starting with C{"\\0"}: L{abstractAddress} makes one, L{isAbstract} tells
one, L{unixAddressText} shows it as C{ss -x} does (C{@NAME}).  Such a name
is no file: there is nothing to claim, stat, chmod or unlink.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import struct
import sys
from typing import Any

from twisted.internet import tcp, udp
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


#: The size of C{sun_path}: an abstract name is at most one byte shorter.
SUN_PATH_SIZE = 108


def isAbstract(path: str | bytes | None) -> bool:
    """
    Whether C{path} is a Linux abstract Unix socket name (its first byte is
    NUL), not a file.
    """
    return bool(path) and path[:1] in ("\0", b"\0")  # type: ignore[index]


def abstractAddress(name: str, tight: bool = True) -> str:
    """
    The address of the abstract Unix socket C{name}, as Python's sockets and
    Twisted's Unix endpoints take it: C{"\\0NAME"}, whose length is the
    name's (QEMU's C{tight=on}); or with C{tight} false padded with NULs to
    the whole C{sun_path} (QEMU's C{tight=off}, a different address).

    @raise ValueError: if C{name} is empty or longer than 107 bytes.
    """
    size = len(name.encode())
    if not name or size > SUN_PATH_SIZE - 1:
        raise ValueError(f"an abstract name is 1 to {SUN_PATH_SIZE - 1} bytes long, "
                         f"not {size}")
    return "\0" + name + ("" if tight else "\0" * (SUN_PATH_SIZE - 1 - size))


def unixAddressText(path: str | bytes | None) -> str:
    """
    A Unix socket address for people: a path as it is, an abstract name as
    C{ss -x} shows it, C{@NAME}, and C{@NAME (tight=off)} for one padded to
    the whole C{sun_path}.
    """
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    if not path:
        return ""
    if not isAbstract(path):
        return path
    name = path[1:].rstrip("\0")  # a name from a spec has no NUL: these pad it
    return f"@{name}" + (" (tight=off)" if len(name) < len(path) - 1 else "")


def claimSocketPath(path: str, label: str, owner: str, kind: int = socket.SOCK_STREAM) -> None:
    """
    Make way for a listening socket at C{path}: remove a stale socket nobody
    listens on; fail if a live one answers there or if C{path} is anything
    else than a socket (which is never removed).  An abstract name is no
    file: nothing to do (a name still held fails the bind, EADDRINUSE; the
    kernel frees a name with its last socket, so none is ever stale).

    @param label: what the path was given for (a port spec, C{--mgmt}), for
        messages.
    @param owner: who a live listener would be ("another switch").
    @param kind: the socket type to probe with, that of the socket to come.
    @raise OSError: naming C{label}, C{path} and the errno.
    """
    if isAbstract(path):
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{label} {path}: exists and is not a socket (File exists)")
    if listenedHere(path, kind):
        raise OSError(
            errno.EADDRINUSE,
            f"{label} {path}: this switch is listening there already (another of its port "
            "specs, or its console) (Address already in use)",
        )
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise OSError(e.errno, f"{label} {path}: cannot check it: {e.strerror}") from e
        log.info("{label}: replacing stale socket {path}", label=label, path=path)
        os.unlink(path)
    else:
        raise OSError(
            errno.EADDRINUSE,
            f"{label} {path}: {owner} is listening there (Address already in use)",
        )
    finally:
        probe.close()


def listenedHere(path: str, kind: int = socket.SOCK_STREAM) -> bool:
    """
    Whether this process has a socket of type C{kind} bound to C{path} that
    listens (or, for datagrams, is bound): found among its own descriptors,
    so nothing connects to it (a probe would be one of its clients, a
    capture reader or a failed guest in the log).
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return False
    wanted = os.path.abspath(path)
    for name in names:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        try:
            bound = sock.getsockname()
            if (sock.family != socket.AF_UNIX or sock.type != kind
                    or not isinstance(bound, str) or not bound or isAbstract(bound)
                    or os.path.abspath(bound) != wanted):
                continue
            if kind != socket.SOCK_STREAM or sock.getsockopt(socket.SOL_SOCKET,
                                                             socket.SO_ACCEPTCONN):
                return True
        except OSError:
            continue
        finally:
            sock.close()
    return False


def listenNow(endpoint: Any, factory: Any, label: str, unixPath: str | None) -> Any:
    """
    Listen on a Twisted server endpoint for C{factory}, at once: a stale
    Unix socket at C{unixPath} (a listening C{unix:} endpoint's path, or
    C{"\\0NAME"} for an abstract name) is replaced first, a live one
    refused (L{claimSocketPath}).

    @param label: the port spec, for messages.
    @return: the listening port (its C{getHost()} logged).
    @raise OSError: naming C{label}, the address and the errno.
    """
    abstract = isAbstract(unixPath)
    if unixPath is not None:
        claimSocketPath(unixPath, label, "another program")
    outcome: list[Any] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise OSError(f"{label}: the endpoint did not listen at once")
    if isinstance(outcome[0], Failure):
        error = outcome[0].value or Exception()
        if abstract and getattr(getattr(error, "socketError", error), "errno",
                                None) == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"{label}: cannot listen on the abstract "
                          f"name {unixAddressText(unixPath)}: another process holds "
                          "it (Address already in use)")
        raise listenError(f"{label}: cannot listen", error)
    port = outcome[0]
    log.info("{spec}: listening on {address}", spec=label, address=addressText(port.getHost()))
    return port


def stopListeningNow(port: Any) -> Deferred[None]:
    """
    Stop a listening port (stream or datagram) so that its address is free
    when this returns: its socket is closed and a Unix socket's file
    removed now, not on the reactor's next turn as C{stopListening} would.
    Anything else than a Twisted TCP, Unix, UDP or Unix datagram port (a
    test's fake) is left to its own C{stopListening}.

    @return: a L{Deferred} that has fired, or C{stopListening}'s.
    """
    if not isinstance(port, (tcp.Port, udp.Port)):
        return maybeDeferred(port.stopListening)
    if port.connected:
        port.disconnecting = True
        port.stopReading()
        port.connectionLost(Failure(ConnectionDone("stopped listening")))
    return succeed(None)


def removeStaleDatagramSockets(directory: str, names: re.Pattern[str]) -> list[str]:
    """
    Remove the datagram sockets in C{directory} whose names match C{names}
    and that nothing holds any more (connecting is refused): what a process
    killed before it could clean up left behind.  A socket still held (by a
    process that lost its directory's other files) stays.

    @return: the names removed.
    """
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for name in sorted(entries):
        path = os.path.join(directory, name)
        try:
            if not (names.match(name) and stat.S_ISSOCK(os.lstat(path).st_mode)):
                continue
        except OSError:
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(path)
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                try:
                    os.unlink(path)
                    removed.append(name)
                except OSError:
                    pass
        finally:
            probe.close()
    return removed


def growSendBuffer(sock: socket.socket, size: int) -> None:
    """
    Make C{sock}'s send buffer C{size} bytes: past the system's limit when
    privileged (C{SO_SNDBUFFORCE}), else as far as the limit allows.
    """
    for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:
            continue


def listenError(what: str, error: BaseException) -> OSError:
    """
    An L{OSError} for a failed listen or bind (Twisted's
    C{CannotListenError} or an L{OSError}): C{"WHAT: ERROR"}, with the errno,
    and why a port below the first unprivileged one was refused
    (L{privilegedPortAdvice}).
    """
    socketError = getattr(error, "socketError", None)
    cause = socketError if isinstance(socketError, OSError) else error
    number = getattr(cause, "errno", None) or getattr(error, "errno", None)
    if isinstance(cause, OSError) and cause.strerror and number:
        advice = privilegedPortAdvice(getattr(error, "port", None), number)
        return OSError(number, f"{what}: {cause.strerror} (errno {number}){advice}")
    return OSError(number, f"{what}: {error}")


#: Where Linux keeps the first port an unprivileged process may bind.
UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def privilegedPortAdvice(port: object, number: int | None, sysctl: str | None = None) -> str:
    """
    Why binding C{port} failed with C{number} when it is a privileged port
    (below C{net.ipv4.ip_unprivileged_port_start}, 1024 by default) and the
    error is C{EACCES}, and what would allow it; else nothing.
    """
    if number != errno.EACCES or not isinstance(port, int) or port <= 0:
        return ""
    try:
        with open(sysctl or UNPRIVILEGED_PORT_START) as f:
            start = int(f.read())
    except (OSError, ValueError):
        start = 1024
    if port >= start:
        return ""
    return (
        f"; ports below {start} need root or CAP_NET_BIND_SERVICE: start the switch as root "
        f"with twistd --uid USER (it binds its command line's ports before dropping "
        f"privileges) or use a port of {start} or more"
    )


#: The most descriptors L{descriptorLimit} asks for.
DESCRIPTORS_WANTED = 1 << 16


def descriptorLimit(reactor: Any) -> int:
    """
    How many descriptors the process may have open: the soft C{RLIMIT_NOFILE},
    first raised to the hard limit (at most L{DESCRIPTORS_WANTED}) unless the
    reactor is C{select()}-based, which cannot watch descriptors past 1023.
    Many systems start processes with a soft limit of 1024.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    wanted = DESCRIPTORS_WANTED if hard == infinity else min(hard, DESCRIPTORS_WANTED)
    if soft != infinity and soft < wanted and "select" not in type(reactor).__module__:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return DESCRIPTORS_WANTED if soft == infinity else soft


def linuxAtLeast(major: int, minor: int, release: str | None = None) -> bool:
    """
    Whether the running kernel (or C{release}) is Linux C{major.minor} or later.
    """
    release = release if release is not None else os.uname().release
    try:
        numbers = tuple(int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return sys.platform.startswith("linux") and numbers >= (major, minor)


#: C{struct ucred}: pid, uid, gid.
_PEERCRED = struct.Struct("3i")


def peerCredentials(handle: Any) -> tuple[int, int] | None:
    """
    The pid and user id of the process at the other end of the Unix socket
    C{handle} (C{SO_PEERCRED}), or None if it has none (or is no socket).
    """
    try:
        raw = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except (AttributeError, OSError):
        return None
    pid, uid, _ = _PEERCRED.unpack(raw)
    return pid, uid


def socketOf(transport: Any) -> Any:
    """
    The socket under a transport, or under the TLS layer over it.
    """
    handle = transport.getHandle()
    while not hasattr(handle, "family") and hasattr(transport, "transport"):
        transport = transport.transport
        handle = transport.getHandle()
    return handle


def addressText(address: Any) -> str:
    """
    Where a socket listens or a peer is, for people: C{tcp 127.0.0.1:40000},
    C{tcp [::1]:40000} (not Twisted's C{IPv6Address(type='TCP', host='::1',
    port=40000, flowInfo=0, scopeID=0)}), or a Unix path or abstract name.
    """
    if isinstance(address, UNIXAddress):
        return unixAddressText(address.name)
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    shown = f"[{host}]" if ":" in host else host
    return f"{address.type.lower()} {shown}:{address.port}"


def describePeer(peer: Any, handle: Any) -> tuple[int | None, str]:
    """
    The user owning a connection's peer (Unix sockets only) and a line for
    C{port/print}: C{qemu-system-x86 pid 1234 on /run/vm.sock} (C{on @NAME}
    for an abstract name), or C{tcp 127.0.0.1:40000}, C{tcp [::1]:40000}.
    """
    if not isinstance(peer, UNIXAddress):
        return None, addressText(peer)
    where = f" on {unixAddressText(peer.name or handle.getsockname())}"
    credentials = peerCredentials(handle)
    if credentials is None:
        return None, f"unix peer{where}"
    pid, uid = credentials
    try:
        with open(f"/proc/{pid}/comm") as comm:
            name = comm.read().strip()
    except OSError:
        name = "process"
    return uid, f"{name} pid {pid}{where}"
