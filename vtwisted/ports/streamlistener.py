"""
Stream ports whose peers connect to the switch (C{qemu:}, C{vhostuser:},
C{cable:listen:}): a port for each connection, on a Twisted server endpoint.

Theory of operation
-------------------
A TCP endpoint listens in C{privilegedStartService}, so that a port below
1024 is taken before C{twistd} drops privileges; a Unix socket is made in
C{startService}, after, as the VDE directory and the console's socket are:
it belongs to the switch's user (C{twistd --uid}), whose guests can then
connect, and who can remove it when the switch stops (a Unix socket left
by a crash is replaced first).  A Linux abstract name (C{abstract=on}) is
bound there too, but has no file to own, replace or remove: the kernel
frees it with the socket, and a name another process holds fails with
C{EADDRINUSE}, said in those words.  Each connection is a
L{vtwisted.ports.streamlinks.StreamLink} plugged into a port of its own.
C{port/specs} shows where the spec listens, so that one given C{tcp:0}
tells its guests' owner the port the system chose.

A port type whose peers say nothing when they connect (C{qemu:},
C{vhostuser:}) sets L{StreamPorts.upMeansWorking} false: a link works once
it has lasted L{StreamPorts.SHORT_LINK} seconds, and only then is it
announced ("on port N", "left port N").  One that ends sooner (a port
scanner, a client of another protocol that sends something unusable or
closes at once) is a failure of the series, logged once for its peer and
kind and counted after that (L{vtwisted.ports.streamfailures.FailureLog}),
so a client retrying for ever cannot fill the log.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from vtwisted.interfaces import IPortService
from vtwisted.portoptions import PortOptions
from vtwisted.ports.streamlinks import StreamPorts
from vtwisted.sockettools import addressText, listenNow, stopListeningNow


@implementer(IPortService)
class StreamListener(StreamPorts):
    """
    A spec whose peers connect to the switch.
    """

    listening = True

    def __init__(
        self,
        switch: Any,
        reactor: Any,
        endpoint: Any,
        options: PortOptions,
        spec: str,
        unixPath: str | None = None,
    ) -> None:
        super().__init__(switch, reactor, options, spec)
        self.endpoint = endpoint
        self.unixPath = unixPath
        self.listeningPort: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.unixPath is None:  # a TCP port below 1024 needs root
            self._listen()

    def startService(self) -> None:
        if self.listeningPort is None:
            self._listen()
        super().startService()

    def _listen(self) -> None:
        self.listeningPort = listenNow(self.endpoint, self.factory, self.spec, self.unixPath)

    def listeningAddress(self) -> str:
        """
        Where it listens, while it does, for C{port/specs}: C{tcp
        127.0.0.1:43211} (the port the system chose for C{tcp:0}), a Unix
        path or C{@NAME}.
        """
        port = self.listeningPort
        return addressText(port.getHost()) if port is not None else ""

    def stopService(self) -> Any:
        super().stopService()
        self._closeLinks()
        port, self.listeningPort = self.listeningPort, None
        if port is not None:
            return stopListeningNow(port)  # free for a port/add in the same batch
        return None
