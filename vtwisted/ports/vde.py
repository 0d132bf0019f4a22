"""
The VDE switch directory (C{vde:DIR}): what C{vde_plug}, C{qemu -netdev
vde}, C{vde_plug2tap} and C{slirpvde} connect to.

Theory of operation
-------------------
L{VdeSwitchDirectory} makes C{DIR}, listens on C{DIR/ctl} and removes
everything it made when it stops; at start it removes the data sockets a
switch killed there left behind (nothing holds them), so that C{DIR} goes
at the stop (which files it makes, with what modes, and which it removes:
L{vtwisted.ports.vdefiles}).  Each accepted stream gets a
L{VdeControlProtocol}, which waits for one request (see
L{vtwisted.wire.vdecontrol}), checks the client's socket, connects a
datagram socket to it I{before} replying (the client unlinks its path as soon
as it has the reply), asks the switch for a port, binds the datagram socket
as C{DIR/NNN.F}, writes the 110-byte reply in one write, and never writes to
the stream again: a byte there makes C{vde_plug} exit.  A bad request closes
the stream without a reply, which is what clients expect; the reason is
counted and logged once.

Frames travel as one datagram each through a L{VdeDataLink} (in
L{vtwisted.ports.vdelink}), which reads in batches and never blocks.  The
link goes when its control stream closes, which is how a client that
vanishes (even killed) is noticed.

Clients asking for the same port number share it, as vde_switch's endpoints
do.  The spec's options (C{vlan=}, impairments, ...) configure the port when
its first client comes; a client joining an active port takes it as it is,
so a C{port/setvlan} or C{port/impair} made meanwhile stays.
"""

from __future__ import annotations

import grp
import os
import re
import socket
import stat
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted import errors
from vtwisted.interfaces import ILink, IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.vdefiles import (
    DATA_SOCKET_NAME,
    DEFAULT_DIRMODE,
    DEFAULT_MODE,
    DirectoryFiles,
    defaultDirectory,
    deriveModes,
)
from vtwisted.ports.vdelink import VdeDataLink
from vtwisted.sockettools import (
    claimSocketPath,
    growSendBuffer,
    listenError,
    peerCredentials,
    stopListeningNow,
)
from vtwisted.spec import PortSpec
from vtwisted.wire import vdecontrol

#: What this module offered before the directory's files moved to
#: L{vtwisted.ports.vdefiles}, still importable from here.
__all__ = [
    "DATA_SOCKET_NAME", "DEFAULT_DIRMODE", "DEFAULT_MODE", "REQUEST_TIMEOUT", "SEND_BUFFER",
    "VdeControlProtocol", "VdeSwitchDirectory", "defaultDirectory", "deriveModes",
    "makeService",
]

log = Logger()

#: Seconds a client may take to send its request.
REQUEST_TIMEOUT = 10.0
#: Send buffer of each data socket: room for bursts to a slow client.
SEND_BUFFER = 2 * 1024 * 1024


class _Rejected(Exception):
    """
    A request the switch will not serve; the message says why.

    @ivar kind: why, without the client's path or the values it chose.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _withoutNumbers(text: str) -> str:
    """
    C{text} with its numbers as C{N}: the kind of a switch error whose
    message names ports or users.
    """
    return re.sub(r"\d+", "N", text.split(" (")[0])


class VdeControlProtocol(Protocol):
    """
    One client's control stream: a request, a reply, then silence.
    """

    def __init__(self, directory: VdeSwitchDirectory) -> None:
        self.directory = directory
        self.link: VdeDataLink | None = None
        self._buffer = b""
        self._timeout: Any = None
        self._done = False

    def connectionMade(self) -> None:
        self._timeout = self.directory.reactor.callLater(REQUEST_TIMEOUT, self._timedOut)

    def _timedOut(self) -> None:
        self._timeout = None
        reason = f"no request within {REQUEST_TIMEOUT:g} seconds"
        self._reject(reason, reason)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            if self.link is not None:
                reason = "client wrote to its control stream after the reply"
                self.directory.noteRejection(reason, reason)
            return
        self._buffer += data
        buffer = self._buffer
        try:
            if len(buffer) >= 4 and buffer[:4] != vdecontrol.MAGIC.to_bytes(4, "little"):
                vdecontrol.parseRequest(buffer)
            if len(buffer) < vdecontrol.minimumLength(buffer):
                return
            request = vdecontrol.parseRequest(buffer)
        except vdecontrol.MalformedRequest as e:
            self._reject(str(e), e.kind)
            return
        self._done = True
        self._cancelTimeout()
        try:
            self.link = self.directory.connect(self, request)
        except _Rejected as e:
            self._reject(str(e), e.kind)

    def _reject(self, reason: str, kind: str) -> None:
        self._done = True
        self._cancelTimeout()
        self.directory.noteRejection(reason, kind)
        if self.transport is not None:
            self.transport.loseConnection()

    def _cancelTimeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancelTimeout()
        if not self._done and self._buffer:
            self._done = True
            self.directory.noteRejection(
                f"client left after an incomplete request ({len(self._buffer)} bytes)",
                "client left after an incomplete request",
            )
        if self.link is not None:
            self.link.close()


@implementer(IPortService)
class VdeSwitchDirectory(Service):
    """
    A vde_switch-compatible directory with its control socket.
    """

    listening = True

    def __init__(
        self,
        switch: Any,
        reactor: Any,
        directory: str,
        mode: int | None = None,
        dirmode: int | None = None,
        group: int | None = None,
        options: PortOptions | None = None,
        spec: str = "",
    ) -> None:
        self.switch = switch
        self.reactor = reactor
        self.directory = os.path.abspath(directory)
        self.ctlPath = os.path.join(self.directory, "ctl")
        self.mode, self.dirmode = deriveModes(mode, dirmode)
        self.group = group
        self.options = options or PortOptions()
        self.spec = spec or f"vde:{directory}"
        self.files = DirectoryFiles(self.directory, self.mode, self.dirmode, group, self.spec)
        self.links: list[VdeDataLink] = []
        self.rejections: dict[str, int] = {}
        self._listening: Any = None
        if len(os.fsencode(self.directory)) + 12 >= vdecontrol.SUN_PATH_LENGTH:
            raise ValueError(f"{self.spec}: directory path {self.directory!r} is too long")

    # Start and stop

    def startService(self) -> None:
        try:
            self._startListening()
        except BaseException:
            self._undoStart()
            raise
        super().startService()
        log.info("{spec}: listening on {path}", spec=self.spec, path=self.ctlPath)

    def _startListening(self) -> None:
        self.files.prepare()
        claimSocketPath(self.ctlPath, self.spec, "another switch")
        self.files.removeStale()
        factory = Factory.forProtocol(lambda: VdeControlProtocol(self))
        try:
            self._listening = self.reactor.listenUNIX(
                self.ctlPath, factory, backlog=15, mode=self.mode, wantPID=False
            )
        except Exception as e:
            raise listenError(f"{self.spec}: cannot listen on {self.ctlPath}", e) from e
        self.files.chgrp(self.ctlPath)

    def _undoStart(self) -> None:
        """
        After a failed start, stop listening if the control socket listens
        (its file removed at once) and then remove the directory if this
        start made it.
        """
        listening, self._listening = self._listening, None
        made, self.files.made = self.files.made, False
        stopped = stopListeningNow(listening) if listening is not None else succeed(None)
        if made:
            stopped.addBoth(self._removeDirectory)
        stopped.addErrback(lambda failure: None)

    def stopService(self) -> Any:
        super().stopService()
        for link in list(self.links):
            link.close()
        listening, self._listening = self._listening, None
        if listening is None:
            self._removeDirectory()
            return None
        # Twisted removes DIR/ctl as the port stops, at once here: a port/add
        # of the same directory in the same console batch finds it free.
        return stopListeningNow(listening).addBoth(self._removeDirectory)

    def _removeDirectory(self, result: Any = None) -> Any:
        self.files.remove()
        return result

    # Clients

    def noteRejection(self, reason: str, kind: str) -> None:
        """
        Count a refused client; log the first refusal of each kind.

        @param reason: what was wrong, naming what the client sent.
        @param kind: the same without the client's path or the values it
            chose, so that the kinds are few whatever the clients send.
        """
        count = self.rejections.get(kind, 0) + 1
        self.rejections[kind] = count
        if count == 1:
            log.warn(
                "{spec}: refused a client: {reason}; further refusals of this "
                "kind are only counted",
                spec=self.spec,
                reason=reason,
            )

    def connect(self, control: VdeControlProtocol, request: vdecontrol.Request) -> VdeDataLink:
        """
        Serve a valid request: connect, allocate, bind, reply.

        @raise _Rejected: the client cannot be served.
        """
        path = os.fsdecode(request.path)
        uid = self._checkClientSocket(path, control)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            growSendBuffer(sock, SEND_BUFFER)
            try:
                sock.connect(request.path)
            except OSError as e:
                raise _Rejected(
                    f"cannot connect to {path}: {e.strerror} (errno {e.errno})",
                    f"cannot connect to the client's socket: {e.strerror}",
                ) from None
            try:
                port = self.switch.allocatePort(request.port, uid)
            except errors.SwitchError as e:
                raise _Rejected(
                    f"no port for {path}: {e.message}", f"no port: {_withoutNumbers(e.message)}"
                ) from None
            self._checkSharing(port, path)
            dataPath = os.path.join(self.directory, f"{port.number:03d}.{sock.fileno()}")
            self._bindDataSocket(sock, dataPath, uid, port.number == 0)
        except BaseException:
            sock.close()
            raise
        link = VdeDataLink(self, control, sock, dataPath, port, request.description, uid)
        if not port.links:  # a client joining an active port keeps its settings
            self.options.apply(self.switch, port, self.spec)
        self.links.append(link)
        link.plug(self.switch, port)
        transport: Any = control.transport
        transport.write(vdecontrol.packReply(os.fsencode(dataPath)))
        self.reactor.addReader(link)
        return link

    def _checkSharing(self, port: Any, path: str) -> None:
        """
        Let a client join an active port only if the port serves clients of
        this directory alone, as vde_switch's endpoints share ports: joining
        a TAP's, a guest's or another spec's port would give the client a
        copy of its traffic.

        @raise _Rejected: the port serves something else.
        """
        for link in port.links:
            if not (isinstance(link, VdeDataLink) and link.directory is self):
                raise _Rejected(
                    f"no port for {path}: port {port.number} is in use by "
                    f"{link.module} {link.description}",
                    "no port: the port asked for is in use by another port type",
                )

    def _checkClientSocket(self, path: str, control: VdeControlProtocol) -> int:
        """
        Check the socket a client named: a socket it may use, and its own
        unless it is root, so that no client points the switch (root, often)
        at another user's socket, such as the system log's, to deliver the
        LAN's frames there.

        @return: its owner, the endpoint's user.
        @raise _Rejected: the client may not have it.
        """
        try:
            st = os.stat(path)
        except OSError as e:
            raise _Rejected(
                f"client socket {path}: {e.strerror} (errno {e.errno})",
                f"client socket: {e.strerror}",
            ) from None
        if not stat.S_ISSOCK(st.st_mode):
            raise _Rejected(f"client path {path} is not a socket",
                            "client path is not a socket")
        getHandle = getattr(control.transport, "getHandle", None)
        peer = peerCredentials(getHandle()) if getHandle is not None else None
        if peer is not None and peer[1] not in (0, st.st_uid):
            raise _Rejected(
                f"client socket {path} belongs to uid {st.st_uid}, not to the client "
                f"(uid {peer[1]}, pid {peer[0]})",
                "client socket belongs to another user",
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise _Rejected(f"client socket {path}: permission denied",
                            "client socket: permission denied")
        return st.st_uid

    def _bindDataSocket(self, sock: socket.socket, path: str, uid: int, portZero: bool) -> None:
        """
        Bind a client's data socket (L{DirectoryFiles.bindDataSocket}); port
        0's takes the console's mode and group.

        @raise _Rejected: it cannot be bound or set up.
        """
        console = None
        if portZero:
            console = (getattr(self.parent, "consoleMode", DEFAULT_MODE),
                       getattr(self.parent, "consoleGroup", None))
        try:
            self.files.bindDataSocket(sock, path, uid, console)
        except OSError as e:
            raise _Rejected(
                f"cannot bind {path}: {e.strerror} (errno {e.errno})",
                f"cannot bind a data socket: {e.strerror}",
            ) from None

    def currentLinks(self) -> list[ILink]:
        """
        The clients connected now.
        """
        return list(self.links)

    def linkClosed(self, link: VdeDataLink) -> None:
        """
        A link went: stop reading it and unplug it.
        """
        if link in self.links:
            self.links.remove(link)
        self.reactor.removeReader(link)
        self.switch.detach(link.port, link)


def _groupId(spec: PortSpec, name: str | None) -> int | None:
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise spec.error(f"group={name!r}: no such group") from None


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> VdeSwitchDirectory:
    """
    Build the service for C{vde:DIR[:mode=..][:dirmode=..][:group=..]}.
    """
    (directory,) = spec.positional(["directory"], 0)
    mode = spec.integer("mode", None, 0, 0o7777, base=8)
    dirmode = spec.integer("dirmode", None, 0, 0o7777, base=8)
    group = _groupId(spec, spec.string("group"))
    options = PortOptions.fromSpec(spec, numbered=False)
    spec.checkKeywords()
    try:
        return VdeSwitchDirectory(
            switch,
            reactor,
            directory or defaultDirectory(),
            mode,
            dirmode,
            group,
            options,
            spec.text,
        )
    except ValueError as e:
        raise spec.error(str(e)) from None
