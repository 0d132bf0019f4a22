"""
TLS cables that refuse each other's certificate, over real TLS on loopback
in this process's reactor: the side that refuses says why (expired, not
signed by its C{ca=} file, which it names), the refused side names the TLS
alert it got, both ways, and the refusal itself is as strict as ever.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from certs import Authority
from reactortools import until
from test_cable import listenerOf, ports
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol

from vtwisted.ports import cable


@pytest.fixture
def authorities(shortdir: Path) -> tuple[Authority, Authority]:
    """
    The switches' CA, and another one.
    """
    return Authority(shortdir, "ours"), Authority(shortdir, "other")


def listening(switch: Any, options: str, ca: Path) -> tuple[Any, int]:
    service = switch(f"cable:listen:tcp:0:interface=127.0.0.1:{options}:ca={ca}")
    return service, listenerOf(service).listeningPort.getHost().port


def withoutDateChecks(monkeypatch: pytest.MonkeyPatch, start: Any, *args: Any) -> Any:
    """
    Start a switch whose certificate expired while it ran: the check made
    when a spec is read would refuse it.
    """
    with monkeypatch.context() as patched:
        patched.setattr(cable, "_valid", lambda *a: None)
        return start(*args)


async def bothNoted(listener: Any, connector: Any) -> tuple[str, str]:
    await until(lambda: ports(listener).failures.last and ports(connector).failures.last,
                what="both sides to note the refusal")
    assert not ports(listener).links and not ports(connector).links
    return ports(listener).failures.last or "", ports(connector).failures.last or ""


@pytest_twisted.ensureDeferred
async def test_connectorSaysTheListenersCertificateExpired(switch, authorities,
                                                           monkeypatch) -> None:
    ours, _ = authorities
    a, number = withoutDateChecks(monkeypatch, listening, switch,
                                  ours.issue("a", days=(-3, -1)), ours.path)
    b = switch(f"cable:tcp:host=localhost:port={number}:{ours.issue('b', 'switch-b')}:"
               f"ca={ours.path}")
    atA, atB = await bothNoted(a, b)
    assert (f"TLS handshake failed: the peer's certificate has expired (depth 0; checked "
            f"against ca={ours.path})") in atB
    assert "the peer refused our certificate (TLS alert: certificate expired)" in atA


@pytest_twisted.ensureDeferred
async def test_listenerSaysTheConnectorsCertificateExpired(switch, authorities,
                                                           monkeypatch) -> None:
    ours, _ = authorities
    a, number = listening(switch, ours.issue("a"), ours.path)
    b = withoutDateChecks(
        monkeypatch, switch,
        f"cable:tcp:host=localhost:port={number}:{ours.issue('b', 'switch-b', (-3, -1))}:"
        f"ca={ours.path}")
    atA, atB = await bothNoted(a, b)
    assert (f"TLS handshake failed: the peer's certificate has expired (depth 0; checked "
            f"against ca={ours.path})") in atA
    assert "the peer refused our certificate (TLS alert: certificate expired)" in atB


@pytest.mark.parametrize("refusing", ["connector", "listener"])
@pytest_twisted.ensureDeferred
async def test_aSideSaysThePeersCaIsNotItsOwn(switch, authorities, refusing: str) -> None:
    """
    Each side's certificate is checked against ca=: the side whose peer's
    certificate another CA signed says so, and the refused side names the
    TLS alert.
    """
    ours, other = authorities
    listenerCa, connectorCa = (other, ours) if refusing == "connector" else (ours, other)
    a, number = listening(switch, listenerCa.issue("a"), ours.path)
    b = switch(f"cable:tcp:host=localhost:port={number}:{connectorCa.issue('b', 'switch-b')}:"
               f"ca={ours.path}")
    atA, atB = await bothNoted(a, b)
    refuser, refused = (atB, atA) if refusing == "connector" else (atA, atB)
    assert (f"the peer's certificate is not signed by ca={ours.path} (unable to get local "
            "issuer certificate; depth 0)") in refuser
    assert "the peer refused our certificate (TLS alert: unknown ca)" in refused


@pytest_twisted.ensureDeferred
async def test_aWrongNameIsRefusedAndTheListenerHearsOfIt(switch, authorities) -> None:
    """
    The listener's certificate names localhost; a cable dialling 127.0.0.1
    refuses it (an address is checked as an address), and the listener
    hears why it may have been refused instead of a connection cut off.
    """
    ours, _ = authorities
    a, number = listening(switch, ours.issue("a"), ours.path)
    b = switch(f"cable:tcp:host=127.0.0.1:port={number}:{ours.issue('b', 'switch-b')}:"
               f"ca={ours.path}")
    atA, atB = await bothNoted(a, b)
    assert "the peer's certificate does not name 127.0.0.1 (name= checks another name)" in atB
    assert "the peer gave up (TLS alert: internal error; a cable sends it when our " \
           "certificate does not name the host it dialled" in atA
    assert "non-clean" not in atA


@pytest_twisted.ensureDeferred
async def test_aClientWithoutACertificateIsStillRefused(switch, authorities) -> None:
    """
    The listener's verify callback keeps Twisted's mode: a TLS client that
    shows no certificate never gets a port.
    """
    ours, _ = authorities
    a, number = listening(switch, ours.issue("a"), ours.path)
    trust = ssl.Certificate.loadPEM(ours.path.read_bytes())
    lost: list[object] = []

    class Client(Protocol):
        def connectionLost(self, reason: object = None) -> None:
            lost.append(reason)

    endpoint = wrapClientTLS(ssl.optionsForClientTLS("localhost", trustRoot=trust),
                             TCP4ClientEndpoint(reactor, "127.0.0.1", number))
    await endpoint.connect(Factory.forProtocol(Client))
    await until(lambda: lost and ports(a).failures.last, what="the client refused")
    assert "TLS handshake failed" in (ports(a).failures.last or "")
    assert not ports(a).links
