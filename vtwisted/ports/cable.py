"""
Cables between vtwisted switches (C{cable:ENDPOINT}, C{cable:listen:ENDPOINT}).

Theory of operation
-------------------
A cable is a stream between two switches, TLS with certificates on both
ends unless C{tls=off}.  C{cable:listen:tcp:7443:...} listens (any number of
switches may connect, each on a port of its own); C{cable:tcp:host=H:port=P}
connects and reconnects with a backoff whenever the cable drops.

Each message is a 4-byte big-endian length and a virtio-net packet: the
10-byte header, then the frame (see L{vtwisted.wire.vnet}).  Plain frames
travel with an all-zero header; TCP and UDP super-frames from offload TAPs
cross whole, one message for up to 64 KB instead of one per 1500 bytes, and
the far switch hands them to its own offload TAPs untouched or cuts them for
its other ports.  The far switch validates every header as it does a TAP's,
so a peer cannot make it write a header a kernel would refuse.

The first message each way is a hello naming the protocol and its version.
A link is plugged into a port only once the peer's hello has arrived, so a
failed TLS handshake, or a peer that is not a vtwisted cable (a QEMU socket,
a typo in a port number), never gets a port: it is logged once per series
of failures with the reason and closed, and a connecting cable retries with
a growing delay.  So is a connection that has not brought the hello within
L{HELLO_TIMEOUT} seconds (a hung far switch, a client that never finishes
its TLS handshake), which would otherwise hold its descriptor for ever.

A far switch that vanishes without closing (its host crashed or lost
power, a cable pulled, a firewall or NAT that forgets the connection)
would otherwise leave the link up for ever on both sides: the connecting
switch never reconnecting, the listening one keeping a dead port.  So a
TCP cable's socket has keepalive probes and a C{TCP_USER_TIMEOUT}: the
kernel ends a connection whose peer acknowledged nothing (probes or
frames) for C{keepalive=} seconds (L{KEEPALIVE} by default; C{0} turns
it off), the link goes and a connecting cable dials again.  This costs
nothing per frame.  A far switch that lost the link without this side
seeing it (its host rebooted, the switch killed and started again) dials
again from the same address: then the listening switch has the kernel
probe that address's other links at once, and one the far kernel no
longer has is reset within a second, its port and the MACs learned on it
gone (L{vtwisted.ports.streamkeepalive}; nothing new on the wire).  A far
switch still alive but stuck half-way through a
message (its kernel acknowledging, so keepalive sees nothing wrong) would
hold the link's inbound side for ever: a message left incomplete for
C{keepalive=} seconds (twice that at most) drops the link too, counted as
malformed and logged with what came of it.  That costs one addition and one
test per read, not per frame: a timer is armed only when a read ends inside
a message and none is running; when it fires it looks at where the message
pending then began (by the count of bytes read): the same one is stuck,
another gets a deadline of its own, and with none the timer just ends.

TLS (C{cert=}, C{key=}, C{ca=}): each side presents its certificate and
checks the other's against the certificates in C{ca=} (the peer's own
self-signed certificate, or a CA's); the connecting side also checks that
the certificate names the host it connects to (or C{name=}).  A side that
refuses the other's certificate logs why (expired, not signed by C{ca=}...,
see L{vtwisted.ports.tlsverify}); the refused side logs the TLS alert it got.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from typing import Any

from twisted.internet import ssl
from twisted.internet.endpoints import wrapClientTLS
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from vtwisted.impair import ALL_KEYWORDS as IMPAIRMENTS
from vtwisted.interfaces import IPortService
from vtwisted.ports.streamconnector import StreamConnector
from vtwisted.ports.streamfailures import peerHost, whyLost
from vtwisted.ports.streamkeepalive import LinkKeepAlive, linkKeepAlive, probeRedialled
from vtwisted.ports.streamlinks import (
    READY_TIMEOUT,
    StreamLink,
    StreamPorts,
    packLength,
)
from vtwisted.ports.streamlistener import StreamListener
from vtwisted.ports.streamspec import readStreamSpec
from vtwisted.ports.tlsverify import RecordingCreator, rejection
from vtwisted.sockettools import socketOf
from vtwisted.spec import PortSpec
from vtwisted.wire import vnet

log = Logger()

#: The first message each way.
HELLO = b"vtwisted cable 1"
#: Seconds a new connection has to finish TLS and bring the far switch's
#: hello; then it is cut off (anyone may connect to a TLS listener).
HELLO_TIMEOUT = READY_TIMEOUT
#: The largest message: a header and the largest packet a switch forwards
#: (a 64 KB super-frame as a TAP reads it, with tags), with room to spare.
MAX_MESSAGE = vnet.HEADER_LENGTH + 65536 + 4096
#: Seconds without an acknowledgement from the far switch's kernel (to
#: keepalive probes on an idle cable, to frames on a busy one) before the
#: connection is declared dead (C{keepalive=}).
KEEPALIVE = 30
#: Keywords of a spec that are the cable's, not the endpoint's.
CABLE_KEYWORDS = ("vlan", "trunk", "mtu", "cert", "key", "ca", "name", "tls", "keepalive",
                  *IMPAIRMENTS)
_PLAIN = bytes(vnet.HEADER_LENGTH)
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class CableLink(StreamLink):
    """
    One switch at the other end of a cable.
    """

    MAX_LENGTH = MAX_MESSAGE
    module = "cable"
    vnetHeader = True
    waitsForTls = False  # the hello, which comes after TLS, is waited for

    def __init__(self, owner: StreamPorts) -> None:
        super().__init__(owner)
        self._plugged = False
        self._peerHost = ""
        #: C{keepalive=}: seconds a message begun may stay incomplete (0:
        #: no limit); bytes read so far; the timer for a message left
        #: incomplete, and where in the stream that message began.
        self.partialTimeout = 0
        self._bytesRead = 0
        self._stall: Any = None
        self._stallFrom = 0
        #: Its keepalive, if it is a TCP cable.
        self.keeper: LinkKeepAlive | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        seconds = getattr(self.owner, "keepalive", KEEPALIVE)
        self.keeper = linkKeepAlive(self.owner.reactor, socketOf(self.transport), seconds,
                                    userTimeout=True)
        self.partialTimeout = seconds

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self._bytesRead += len(data)
        if self._unprocessed and self._stall is None and self.partialTimeout:
            self._armStall()

    def _armStall(self) -> None:
        """
        A read ended inside a message: it has L{partialTimeout} seconds.
        """
        self._stallFrom = self._bytesRead - len(self._unprocessed)
        self._stall = self.owner.reactor.callLater(self.partialTimeout, self._stallCheck)

    def _stallCheck(self) -> None:
        """
        The deadline of a message left incomplete: drop the link if the
        same message is still pending, else watch the one that is, if any.
        """
        self._stall = None
        if self._broken or not self._unprocessed or self._receive is _ignore:
            return
        if self._bytesRead - len(self._unprocessed) != self._stallFrom:
            self._armStall()
            return
        self._broken = True  # ignores the rest; not noted again as it goes
        if self.port is not None:
            self.port.counters.drops["malformed"] += 1
        log.error("{spec}: {peer}: a message still incomplete after {seconds} s ({problem} "
                  "received; the far switch is stuck); dropping the link",
                  spec=self.owner.spec, peer=self.description, seconds=self.partialTimeout,
                  problem=self._pendingProblem())
        self.owner.linkDown(self)
        self._abort()  # a TLS close could wait on the stuck peer

    def linkReady(self) -> None:
        self.transport.write(packLength(len(HELLO)) + HELLO)  # type: ignore[union-attr]
        self._receive = self._hello
        self._peerHost = peerHost(self.transport, self.description)
        self.startDeadline()

    def notReadyInTime(self) -> None:
        """
        The far side did not finish TLS and its hello in time: note it (the
        connection is cut off).
        """
        self._receive = _ignore
        self._fail(f"no hello within {HELLO_TIMEOUT:g} s (TLS or the far switch stuck, or "
                   "not a cable); closing")

    def abandon(self) -> None:
        """
        The port goes before the hello came: cut the connection off, quietly
        (a TLS close would wait for the handshake).
        """
        self._receive = _ignore
        super().abandon()

    def _hello(self, port: Any, message: bytes) -> None:
        if message != HELLO:
            self._refuse(f"not a vtwisted cable (its first message: {message[:24]!r})",
                         "not a vtwisted cable")
            return
        self.stopDeadline()
        self._plugged = True
        self.description += peerName(self.transport)
        self.owner.linkUp(self)

    def lengthLimitExceeded(self, length: int) -> None:
        if self._plugged:
            super().lengthLimitExceeded(length)
        elif self._receive is not _ignore:
            self._broken = True
            if length >> 16 == 0x1603:  # a TLS record: a handshake, TLS 1.x
                self._refuse("a TLS client, and this cable has tls=off (on at the other side?)",
                             "a TLS client")
                return
            self._refuse(f"not a vtwisted cable (its first message would be {length} bytes)",
                         "not a vtwisted cable")

    def _refuse(self, problem: str, kind: str) -> None:
        self._receive = _ignore
        self._fail(f"{problem}; closing", kind)
        self.close()

    def _fail(self, problem: str, kind: str = "") -> None:
        """
        Note a failure before the hello: once per series for this peer's
        host (a listener's peers come from a new port each time) and this
        C{kind} of problem (by default, C{problem} itself).
        """
        self.owner.failures.note(problem, self.description,
                                 f"{self._peerHost}: {kind or problem}")

    def receiverFor(self, switch: Any) -> Any:
        return switch.vnetPacketReceived

    def _makeSender(self, writeSequence: Any, header: bytes = b"") -> Any:
        """
        Packets go as they are; plain frames with an all-zero header.
        """
        self.sendVnetPacket = super()._makeSender(writeSequence)  # type: ignore[method-assign]
        return super()._makeSender(writeSequence, _PLAIN)

    def sendVnetPacket(self, packet: bytes) -> None:
        """
        Queue a virtio-net packet for the far switch.  Replaced per link by
        a closure from L{_makeSender}.
        """

    def stopWatching(self) -> None:
        """
        Closed by the switch, or gone: its keepalive probe window and its
        stall timer stop.
        """
        if self.keeper is not None:
            self.keeper.stop()
        stall, self._stall = self._stall, None
        if stall is not None and stall.active():
            stall.cancel()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.stopDeadline()
        self.stopWatching()
        if not self._plugged:
            if self._receive is not _ignore:
                self._fail(rejection(self.transport) or whyLost(
                    reason, "its hello (a TLS or cable problem on the other side?)"))
            if isinstance(self.owner, CableConnector):
                self.owner.unready += 1
        super().connectionLost(reason)


def peerName(transport: Any) -> str:
    """
    C{" (CN=NAME)"}: the common name in the peer's certificate, if it
    showed one.
    """
    getPeerCertificate = getattr(transport, "getPeerCertificate", None)
    certificate = getPeerCertificate() if getPeerCertificate is not None else None
    if certificate is None:
        return ""
    from cryptography.x509.oid import NameOID

    names = certificate.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = names[0].value if names else None
    return f" (CN={name})" if name else ""


def _ignore(port: Any, message: bytes) -> None:
    """
    Messages after a refusal, until the connection is gone.
    """


@implementer(IPortService)
class CableListener(StreamListener):
    """
    The service of C{cable:listen:ENDPOINT}: other switches connect.
    """

    protocol = CableLink
    #: C{keepalive=}: seconds before a silent far switch counts as gone.
    keepalive = KEEPALIVE

    def linkUp(self, link: StreamLink) -> None:
        """
        Plug in a cable whose far switch said hello; if its address has
        other cables up, probe those now: one its far switch lost (a
        reboot, a restart, a NAT that forgot it) ends within a second.
        """
        super().linkUp(link)
        if link in self.links:
            probeRedialled(self.spec, self.links, link, "cable")


@implementer(IPortService)
class CableConnector(StreamConnector):
    """
    The service of C{cable:ENDPOINT}: this switch connects to another.

    Its L{ClientService} counts a connection as made as soon as the stream
    (TLS included) is up; one that ends before the far switch's hello
    (a TLS refusal, a peer that is not a cable) counts here as a failed
    attempt, so that such attempts back off as refused connections do.
    (Making the service wait for the hello instead is not an option: its
    state machine has no transition for a connection lost while it waits,
    and raised at every such attempt.)
    """

    protocol = CableLink
    #: C{keepalive=}: seconds before a silent far switch counts as gone.
    keepalive = KEEPALIVE


class TLSServerEndpoint:
    """
    A server endpoint whose connections speak TLS over C{endpoint}'s.
    """

    def __init__(self, endpoint: Any, options: Any) -> None:
        self.endpoint = endpoint
        self.options = options

    def listen(self, factory: Any) -> Any:
        return self.endpoint.listen(TLSMemoryBIOFactory(self.options, False, factory))


def _read(spec: PortSpec, key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
            if key == "key" and b"PRIVATE KEY-----" in data:
                _private(spec, path, os.fstat(f.fileno()).st_mode)
            return data
    except OSError as e:
        raise spec.error(f"{key}={path}: {e.strerror} (errno {e.errno})") from None


def _private(spec: PortSpec, path: str, mode: int) -> None:
    """
    Refuse a private key that every user of the host may read or change
    (as ssh does): whoever can read it can be this switch to its peers.
    A group may read it (Debian's C{ssl-cert} group, say).
    """
    if mode & 0o006:
        raise spec.error(f"key={path}: other users may read or write it (mode "
                         f"{stat.S_IMODE(mode):04o}); chmod o-rwx {path}")


def _valid(spec: PortSpec, what: str, certificate: Any, now: datetime.datetime) -> None:
    """
    Refuse a certificate outside its validity period: the peers would
    refuse it at every handshake.
    """
    x509 = certificate.original.to_cryptography()
    if now < x509.not_valid_before_utc:
        raise spec.error(f"{what}: not valid before {x509.not_valid_before_utc:%Y-%m-%d %H:%M} "
                         "UTC (is the clock right?)")
    if now > x509.not_valid_after_utc:
        raise spec.error(f"{what}: expired on {x509.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def tlsMaterial(spec: PortSpec) -> tuple[ssl.PrivateCertificate, Any]:
    """
    This switch's certificate with its key, and the trust roots for the
    peer, from C{cert=}, C{key=} (default: in the C{cert=} file) and C{ca=}.
    """
    certPath, caPath = spec.string("cert"), spec.string("ca")
    if not certPath or not caPath:
        raise spec.error("a cable needs cert=PEM and ca=PEM (or tls=off)")
    keyPath = spec.string("key") or certPath
    certPem, keyPem = _read(spec, "cert", certPath), _read(spec, "key", keyPath)
    if not _PEM.search(certPem):
        raise spec.error(f"cert={certPath}: no PEM certificate in it")
    if b"PRIVATE KEY-----" not in keyPem:
        hint = "" if spec.string("key") else " (give key=KEY.pem)"
        raise spec.error(f"key={keyPath}: no PEM private key in it{hint}")
    try:
        mine = ssl.PrivateCertificate.loadPEM(certPem + b"\n" + keyPem)
    except Exception as e:
        raise spec.error(f"cert={certPath}, key={keyPath}: not a certificate and key: {e}") \
            from None
    now = datetime.datetime.now(datetime.timezone.utc)
    _valid(spec, f"cert={certPath}", mine, now)
    roots = _PEM.findall(_read(spec, "ca", caPath))
    if not roots:
        raise spec.error(f"ca={caPath}: no PEM certificate in it")
    certificates = [ssl.Certificate.loadPEM(pem) for pem in roots]
    if len(certificates) == 1:
        _valid(spec, f"ca={caPath}", certificates[0], now)
    trust = ssl.trustRootFromCertificates(certificates)
    return mine, trust


def makeService(switch: Any, spec: PortSpec, reactor: Any) -> StreamPorts:
    """
    Build the service for C{cable:[connect:]CLIENT-ENDPOINT} or
    C{cable:listen:SERVER-ENDPOINT}, with C{cert=}, C{key=}, C{ca=},
    C{name=} (the name the listening side's certificate must carry, by
    default the host connected to), C{keepalive=} (seconds before a silent
    far switch counts as gone), C{tls=off} (then a TCP listener without
    C{interface=} takes only loopback connections) and the common options.
    """
    tls = spec.boolean("tls", True)
    keepalive = spec.integer("keepalive", KEEPALIVE, 0, 3600) or 0
    read = readStreamSpec(spec, reactor, CABLE_KEYWORDS, listenByDefault=False,
                          authenticated=tls)
    listen, endpoint = read.listen, read.endpoint
    if tls:
        mine, trust = tlsMaterial(spec)
        caPath = spec.string("ca") or ""
        if listen:
            options_ = ssl.CertificateOptions(
                privateKey=mine.privateKey.original, certificate=mine.original,
                trustRoot=trust,
            )
            endpoint = TLSServerEndpoint(endpoint, RecordingCreator(options_, caPath))
        else:
            name = spec.string("name") or _hostOf(spec, read.skip)
            creator = ssl.optionsForClientTLS(name, trustRoot=trust, clientCertificate=mine)
            endpoint = wrapClientTLS(RecordingCreator(creator, caPath, name), endpoint)
    service: CableListener | CableConnector
    if listen:
        service = CableListener(switch, reactor, endpoint, read.options, spec.text,
                                read.unixPath)
    else:
        service = CableConnector(switch, reactor, endpoint, read.options, spec.text)
        service.target = read.description
    service.keepalive = keepalive
    return service


def _hostOf(spec: PortSpec, skip: int) -> str:
    """
    The host a client endpoint connects to: C{host=} or its first argument.
    """
    host = ""
    if spec.args[skip] in ("tcp", "tcp6"):
        host = spec.kwargs.get("host") or (spec.args[skip + 1] if len(spec.args) > skip + 1 else "")
    if not host:
        raise spec.error("names no host to check the certificate of (give name=)")
    return host
