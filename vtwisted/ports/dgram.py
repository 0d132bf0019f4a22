"""
QEMU's datagram transports (C{dgram:udp:...}, C{dgram:unix:...}): the peer
of C{qemu -netdev dgram} and C{-netdev socket,udp=...,localaddr=...}.

Theory of operation
-------------------
One datagram is one frame, with no header, both ways.  The switch binds
its own address and sends every frame to the guest's address; QEMU does the
same the other way round, so both sides name both addresses:

  - C{dgram:udp:LOCALHOST:LOCALPORT:REMOTEHOST:REMOTEPORT} (an IPv6 host is
    written with its colons escaped, C{\\:\\:1});
  - C{dgram:unix:LOCALPATH:REMOTEPATH}.

The socket is one of Twisted's datagram ports (C{listenUDP},
C{listenUNIXDatagram}), which drains it in batches per wake-up.  Unlike
QEMU, which takes datagrams from anyone, the switch takes them only from
the remote address: any other sender is counted as a C{peer} drop and
logged once, since on a shared host anyone could otherwise inject frames
into the LAN.  There is no connection: a guest that is not there yet, or
restarts, just loses frames meanwhile (counted as C{peer} drops); one that
cannot take them now (C{EAGAIN}) has them dropped and counted as C{busy}.
A stale Unix socket left at the local path is replaced, as QEMU does.
Abstract names (C{abstract=on}) are refused: QEMU's C{-netdev dgram} takes
C{local.abstract=on} but binds and sends to files all the same.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from vtwisted.interfaces import ILink, IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.datagrams import (
    PlainDatagramLink,
    ReadErrors,
    listenUDP,
    listenUNIXDatagram,
    udpPort,
)
from vtwisted.ports.singlelink import SingleLinkService
from vtwisted.sockettools import claimSocketPath, growSendBuffer, listenError, stopListeningNow
from vtwisted.spec import PortSpec

#: The largest datagram read: QEMU's own limit (its C{NET_BUFSIZE}).
MAX_DATAGRAM = 4096 + 65536
#: Send buffer of the socket: room for bursts to a slow guest.
SEND_BUFFER = 2 * 1024 * 1024


@implementer(ILink)
class DgramLink(PlainDatagramLink, DatagramProtocol):
    """
    The guest at the other end of one datagram socket.
    """

    noisy = False
    vnetHeader = False
    uid = None
    linkId = 0
    transportName = "QEMU's datagram transport"

    def __init__(self, service: DgramService) -> None:
        self.service = service
        self.remote: Any = service.remote
        self.module = f"qemu {service.family}"
        self.what = f"{service.family} {service.localText} to {service.remoteText}"
        self.port: Any = None

    def startProtocol(self) -> None:
        sock = self.transport.socket  # type: ignore[union-attr]
        growSendBuffer(sock, SEND_BUFFER)
        self.linkId = sock.fileno()
        self.sendFrame = self._makeSender(sock.sendto)  # type: ignore[method-assign]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if addr != self.remote:
            self._foreign(addr)
            return
        self.deliver(datagram)

    def _foreign(self, addr: Any) -> None:
        if self.port is not None:
            self.port.dropped(
                "peer", f"{self.service.spec}: a datagram from {addr!r}, "
                f"not from the remote {self.service.remoteText}",
            )

    # ILink

    def sendFrame(self, frame: bytes) -> None:
        """
        Send one frame to the guest.  Replaced per link by a closure from
        L{_makeSender}.
        """

    def _makeSender(self, sendto: Any) -> Any:
        remote = self.remote
        failed = self._sendFailed

        def sendFrame(frame: bytes) -> None:
            try:
                sendto(frame, remote)
            except OSError as e:
                failed(e)

        return sendFrame

    def _sendFailed(self, e: OSError) -> None:
        self.sendFailed(e, self.service.remoteText, "is the guest there?")


@implementer(IPortService)
class DgramService(SingleLinkService):
    """
    The service of one C{dgram:} spec: one socket, one guest, one port.
    """

    def __init__(
        self,
        switch: Any,
        reactor: Any,
        family: str,
        local: Any,
        remote: Any,
        options: PortOptions,
        spec: str,
    ) -> None:
        super().__init__(switch, reactor, options, spec)
        self.family = family
        self.local = local
        self.remote = remote
        self.localText = addressText(local)
        self.remoteText = addressText(remote)
        self.link: DgramLink | None = None
        self.listeningPort: Any = None
        self.readErrors = ReadErrors()

    def bound(self) -> bool:
        return self.listeningPort is not None

    def bind(self) -> None:
        link = DgramLink(self)
        try:
            if self.family == "unix":
                claimSocketPath(self.local, self.spec, "another program", socket.SOCK_DGRAM)
                self.listeningPort = listenUNIXDatagram(
                    self.reactor, self.local, link, MAX_DATAGRAM, 0o600
                )
            else:
                host, number = self.local
                self.listeningPort = listenUDP(self.reactor, number, link, host, MAX_DATAGRAM)
        except OSError:
            raise
        except Exception as e:
            raise listenError(f"{self.spec}: cannot bind {self.localText}", e) from e
        self.link = link

    def stopService(self) -> Any:
        super().stopService()
        self.unplug()
        port, self.listeningPort = self.listeningPort, None
        self.link = None
        if port is None:
            return None
        result = stopListeningNow(port)  # free for a port/add in the same batch
        if self.family == "unix":
            try:
                os.unlink(self.local)
            except OSError:
                pass
        return result


def addressText(address: Any) -> str:
    """
    C{127.0.0.1:5555}, C{[::1]:5555} or a path.
    """
    if isinstance(address, tuple):
        host, number = address
        return f"[{host}]:{number}" if ":" in host else f"{host}:{number}"
    return str(address)


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> DgramService:
    """
    Build the service for C{dgram:udp:LHOST:LPORT:RHOST:RPORT} or
    C{dgram:unix:LOCAL:REMOTE}, with the common options.
    """
    family = spec.args[0] if spec.args else None
    local: Any
    remote: Any
    if family == "unix":
        _, local, remote = spec.positional(["family", "local path", "remote path"], 3)
        if not local or not remote:
            raise spec.error("needs a local and a remote path")
        for key in ("abstract", "tight"):
            if key in spec.kwargs:
                raise spec.error(
                    f"{key}=: dgram:unix: takes no abstract names, as QEMU's -netdev dgram "
                    "binds and sends to files even with local.abstract=on or "
                    "remote.abstract=on (QEMU 7.2): give QEMU and the switch file paths")
    elif family == "udp":
        _, lhost, lport, rhost, rport = spec.positional(
            ["family", "local host", "local port", "remote host", "remote port"], 5
        )
        local = (_literalHost(spec, lhost, "local"), udpPort(spec, lport))
        remote = (_literalHost(spec, rhost, "remote"), udpPort(spec, rport))
    else:
        raise spec.error("expected dgram:udp:LHOST:LPORT:RHOST:RPORT or dgram:unix:LOCAL:REMOTE")
    options = PortOptions.fromSpec(spec)
    spec.checkKeywords()
    return DgramService(switch, reactor, family, local, remote, options, spec.text)


def _literalHost(spec: PortSpec, text: str | None, which: str) -> str:
    """
    An IP literal in the form the kernel reports senders in.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, text or ""))
        except OSError:
            continue
    raise spec.error(f"{which} host {text!r} is not an IPv4 or IPv6 address")
