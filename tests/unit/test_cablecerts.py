"""
A TLS cable's certificate, key and trust files are checked when the spec
is read: what the peers would refuse at every handshake (a certificate out
of its validity period), or what gives the switch's identity away (a key
others may read), stops the spec with one line naming the file and what is
wrong, not a retry for ever with the cause only in the far switch's log.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.testing import MemoryReactorClock

from vtwisted.ports import cable
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch

DAY = datetime.timedelta(days=1)


def certificate(directory: Path, prefix: str, before: datetime.timedelta,
                after: datetime.timedelta) -> None:
    """
    C{PREFIX.pem} valid from now+C{before} to now+C{after}, C{PREFIX.key}
    (0600).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    built = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now + before).not_valid_after(now + after)
             .sign(key, hashes.SHA256()))
    keyPath = directory / f"{prefix}.key"
    keyPath.touch(mode=0o600)
    keyPath.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    (directory / f"{prefix}.pem").write_bytes(built.public_bytes(serialization.Encoding.PEM))


def problemWith(directory: Path, options: str) -> str:
    text = f"cable:tcp:host=localhost:port=7443:{options}".format(d=directory)
    with pytest.raises(SpecError) as info:
        cable.makeService(Switch(), PortSpec(text), MemoryReactorClock())
    message = str(info.value)
    assert text in message  # the spec is named
    return message


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    certificate(tmp_path, "good", -DAY, DAY)
    certificate(tmp_path, "peer", -DAY, DAY)
    certificate(tmp_path, "expired", -3 * DAY, -DAY)
    certificate(tmp_path, "future", DAY, 3 * DAY)
    return tmp_path


def test_goodFilesMakeAService(pki: Path) -> None:
    spec = f"cable:tcp:host=localhost:port=7443:cert={pki}/good.pem:key={pki}/good.key:" \
           f"ca={pki}/peer.pem"
    assert isinstance(cable.makeService(Switch(), PortSpec(spec), MemoryReactorClock()),
                      cable.CableConnector)


def test_anExpiredCertificateIsRefused(pki: Path) -> None:
    message = problemWith(pki, "cert={d}/expired.pem:key={d}/expired.key:ca={d}/peer.pem")
    assert f"cert={pki}/expired.pem: expired on " in message


def test_aCertificateNotValidYetIsRefused(pki: Path) -> None:
    message = problemWith(pki, "cert={d}/future.pem:key={d}/future.key:ca={d}/peer.pem")
    assert f"cert={pki}/future.pem: not valid before " in message
    assert "clock" in message


def test_anExpiredPeerCertificateToTrustIsRefused(pki: Path) -> None:
    message = problemWith(pki, "cert={d}/good.pem:key={d}/good.key:ca={d}/expired.pem")
    assert f"ca={pki}/expired.pem: expired on " in message


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602])
def test_aKeyOthersMayReadIsRefused(pki: Path, mode: int) -> None:
    (pki / "good.key").chmod(mode)
    message = problemWith(pki, "cert={d}/good.pem:key={d}/good.key:ca={d}/peer.pem")
    assert f"key={pki}/good.key: other users may read or write it (mode {mode:04o})" \
        in message
    assert f"chmod o-rwx {pki}/good.key" in message


def test_aKeyItsGroupMayReadIsAccepted(pki: Path) -> None:
    (pki / "good.key").chmod(0o640)
    spec = f"cable:tcp:host=localhost:port=7443:cert={pki}/good.pem:key={pki}/good.key:" \
           f"ca={pki}/peer.pem"
    cable.makeService(Switch(), PortSpec(spec), MemoryReactorClock())


def test_aCertificateFileWithTheKeyInItMustBePrivate(pki: Path) -> None:
    both = pki / "both.pem"
    both.write_bytes((pki / "good.pem").read_bytes() + (pki / "good.key").read_bytes())
    both.chmod(0o644)
    message = problemWith(pki, "cert={d}/both.pem:ca={d}/peer.pem")
    assert f"key={pki}/both.pem: other users may read" in message


def test_filesSwappedAreNamedPlainly(pki: Path) -> None:
    assert f"cert={pki}/good.key: no PEM certificate in it" in problemWith(
        pki, "cert={d}/good.key:key={d}/good.key:ca={d}/peer.pem")
    assert f"key={pki}/good.pem: no PEM private key in it" in problemWith(
        pki, "cert={d}/good.pem:key={d}/good.pem:ca={d}/peer.pem")
