"""
Certificates for tests of TLS links, made with C{cryptography}.
"""

from __future__ import annotations

import datetime
from pathlib import Path


def selfSignedCertificate(
    directory: Path, name: str = "localhost", prefix: str = ""
) -> tuple[Path, Path]:
    """
    A key and a self-signed certificate for C{name}, as PEM files named
    C{PREFIXkey.pem} and C{PREFIXcert.pem} in C{directory}; the certificate
    alone in C{directory/PREFIXroots} to trust it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyPath, certPath = directory / f"{prefix}key.pem", directory / f"{prefix}cert.pem"
    keyPath.touch(mode=0o600)
    keyPath.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    certPath.write_bytes(pem)
    (directory / f"{prefix}roots").mkdir()
    (directory / f"{prefix}roots" / "switch.pem").write_bytes(pem)
    return keyPath, certPath


class Authority:
    """
    A test CA: its certificate in C{directory/NAME-ca.pem}; L{issue} signs
    certificates for switches.
    """

    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=10))
            .not_valid_after(now + datetime.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name}-ca.pem"
        self.path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, prefix: str, name: str = "localhost", days: tuple[int, int] = (-1, 1)
              ) -> str:
        """
        A key and a certificate for C{name} signed by this CA, valid from
        now + C{days[0]} to now + C{days[1]} days, as C{PREFIXkey.pem} and
        C{PREFIXcert.pem}.

        @return: a cable's C{cert=...:key=...} options for them.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days[0]))
            .not_valid_after(now + datetime.timedelta(days=days[1]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        keyPath = self.directory / f"{prefix}key.pem"
        certPath = self.directory / f"{prefix}cert.pem"
        keyPath.touch(mode=0o600)
        keyPath.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        certPath.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return f"cert={certPath}:key={keyPath}"
