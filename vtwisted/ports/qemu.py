"""
QEMU's stream transport (C{qemu:ENDPOINT}, C{qemu:connect:ENDPOINT}): the
peer of C{qemu -netdev stream} and C{-netdev socket,connect=|listen=}.

Theory of operation
-------------------
On the wire each frame is a 4-byte big-endian length and the frame, in both
directions, for TCP and Unix sockets alike (the machinery is
L{vtwisted.ports.streamlinks}).  Lengths above QEMU's own limit (69632
bytes) cannot be resynchronised: such a connection is counted, logged and
closed, as QEMU closes it.

C{qemu:ENDPOINT} listens on a Twisted server endpoint (C{unix:/run/vm.sock},
C{tcp:5555:interface=127.0.0.1}); a guest started with C{-netdev
stream,addr.type=unix,addr.path=...} or C{-netdev socket,connect=...}
connects to it.  Unlike QEMU's listening sockets, which serve one peer at a
time, any number of guests may connect, each on a port of its own, which is
freed when the guest goes.  A guest's link is announced once it has lasted
a second; one that ends sooner, or is closed for what it sent (a port
scanner, a client of another protocol), is a failure logged once per
series (L{vtwisted.ports.streamlistener}).  Over TLS (C{ssl:}) a guest gets its port once
the handshake is done; a connection whose handshake fails, or is not done
within 10 s (a client that connects and sends nothing, or half a
ClientHello, to hold descriptors), is closed and logged with its peer and
cause, once per series of failures (the others are counted, and their
number logged when a link works again).  A Unix socket is made 0600 unless C{mode=}
says otherwise, and a stale one left by a crash is replaced (with
C{abstract=on}, QEMU's C{addr.abstract=on}, the path is a Linux abstract
name: no file, no mode, anyone in the network namespace may connect; see
L{vtwisted.ports.streamspec}); a TCP port
listens on the loopback address unless C{interface=} says otherwise, since
anyone who can connect joins the LAN.

C{qemu:connect:ENDPOINT} connects to a guest that listens (C{-netdev
stream,server=on}, C{-netdev socket,listen=}) through a L{ClientService}:
the link comes back when QEMU is restarted, which QEMU 7.2's own clients
cannot do.  The first failure of a series is logged with its reason, and
the waits between attempts grow from 0.2 s to 5 s.  A connection works
once it has lasted a second (L{StreamConnector.SHORT_LINK}): only then is
it announced ("on port N", and "left port N" when it goes) and a series of
failures ended.  One the peer ends sooner (a peer that accepts and closes
at once) is such a failure: logged once, however often it happens, with
how long it lasted, and counted; when a connection finally works, how
many failures the series had is logged.  Its port is the guest's from the
start meanwhile: frames flow at once, only the line waits.

Sending never blocks: past 2 MB queued for a guest, frames to it are
dropped and counted until it has drained.

A TCP guest link has keepalive (C{keepalive=} seconds, L{KEEPALIVE} by
default, C{0} for none; nothing changes on the wire, QEMU's kernel answers
the probes): a QEMU whose host crashed, lost power or network, or whose
connection a NAT forgot is noticed and its port freed, and a
C{qemu:connect:} dials again.  A guest that merely stops reading (its VM
stopped, or its NIC not up yet) stays: no C{TCP_USER_TIMEOUT}, which
would end it, but a watch on acknowledgements that have stopped coming
(L{vtwisted.ports.streamkeepalive}).  A listener that plugs in a guest
from an address with other guest links up has the kernel probe those at
once: the ghost a QEMU restarted after its host rebooted left behind is
reset within a second, a live guest from the same host stays.  Unix
sockets need none of this: their peer is on this host, and its going is
always seen.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from vtwisted.impair import ALL_KEYWORDS as IMPAIRMENTS
from vtwisted.interfaces import IPortService
from vtwisted.ports.streamconnector import StreamConnector
from vtwisted.ports.streamkeepalive import LinkKeepAlive, linkKeepAlive, probeRedialled
from vtwisted.ports.streamlinks import StreamLink, StreamPorts
from vtwisted.ports.streamlistener import StreamListener
from vtwisted.ports.streamspec import readStreamSpec
from vtwisted.sockettools import socketOf
from vtwisted.spec import PortSpec

log = Logger()

#: The largest frame QEMU accepts (its C{NET_BUFSIZE}).
MAX_FRAME = 4096 + 65536
#: Seconds without an acknowledgement from a TCP guest's kernel (to
#: keepalive probes on an idle link, to frames on a busy one) before it
#: counts as gone (C{keepalive=}), as for cables.
KEEPALIVE = 30
#: Keywords of a spec that configure the switch port, not the endpoint.
PORT_KEYWORDS = ("vlan", "trunk", "mtu", "keepalive", *IMPAIRMENTS)


class QemuStreamLink(StreamLink):
    """
    One guest's connection: each message is one plain frame.
    """

    MAX_LENGTH = MAX_FRAME
    module = "qemu stream"
    #: Its keepalive, if it is a TCP link.
    keeper: LinkKeepAlive | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.keeper = linkKeepAlive(self.owner.reactor, socketOf(self.transport),
                                    getattr(self.owner, "keepalive", KEEPALIVE),
                                    userTimeout=False, onSilence=self._silent)

    def _silent(self, seconds: float) -> None:
        """
        Frames sent and nothing acknowledged for C{seconds}: the guest's
        host is gone (not just its reader); drop the link.
        """
        log.warn("{spec}: {peer}: nothing acknowledged for {seconds:.0f} s (its host "
                 "crashed, or its network or a NAT dropped the connection); dropping the "
                 "link", spec=self.owner.spec, peer=self.description, seconds=seconds)
        self.owner.linkDown(self)
        self._abort()

    def stopWatching(self) -> None:
        """
        Closed by the switch, or gone: its keepalive watch stops.
        """
        if self.keeper is not None:
            self.keeper.stop()


@implementer(IPortService)
class QemuListener(StreamListener):
    """
    The service of C{qemu:ENDPOINT}: guests connect to the switch.
    """

    protocol = QemuStreamLink
    upMeansWorking = False  # a guest connecting says nothing: a link must last
    #: C{keepalive=}: seconds before a silent TCP guest counts as gone.
    keepalive = KEEPALIVE

    def linkUp(self, link: StreamLink) -> None:
        """
        Plug in a guest; if its address has other guest links up, probe
        those now: one whose QEMU lost it unseen (its host rebooted, a NAT
        that forgot it) ends within a second.
        """
        super().linkUp(link)
        if link in self.links:
            probeRedialled(self.spec, self.links, link, "guest link")


@implementer(IPortService)
class QemuConnector(StreamConnector):
    """
    The service of C{qemu:connect:ENDPOINT}: the switch connects to a
    listening guest.
    """

    protocol = QemuStreamLink
    upMeansWorking = False  # a peer accepting says nothing: a link must last
    #: C{keepalive=}: seconds before a silent TCP guest counts as gone.
    keepalive = KEEPALIVE


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> StreamPorts:
    """
    Build the service for C{qemu:[listen:]SERVER-ENDPOINT} or
    C{qemu:connect:CLIENT-ENDPOINT}, with the options C{vlan=}, C{trunk=}
    and C{mtu=} for each guest's port and C{keepalive=} (seconds before a
    TCP guest that acknowledges nothing counts as gone; not for C{unix:});
    every other keyword is the endpoint's.
    """
    keepalive = spec.integer("keepalive", KEEPALIVE, 0, 3600) or 0
    read = readStreamSpec(spec, reactor, PORT_KEYWORDS, listenByDefault=True)
    if "keepalive" in spec.kwargs and spec.args[read.skip] == "unix":
        raise spec.error("keepalive= is for TCP: a unix: endpoint's guest is on this host, "
                         "and the switch sees it go")
    service: QemuListener | QemuConnector
    if read.listen:
        service = QemuListener(switch, reactor, read.endpoint, read.options, spec.text,
                               read.unixPath)
    else:
        service = QemuConnector(switch, reactor, read.endpoint, read.options, spec.text)
        service.target = read.description
    service.keepalive = keepalive
    return service
