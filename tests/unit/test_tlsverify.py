"""
How a refused certificate's X.509 error reads (L{vtwisted.ports.tlsverify}):
the common ones in plain words with the C{ca=} file named, the others by
their code.  Real handshakes: tests/integration/test_cable_refusals.py.
"""

from __future__ import annotations

from vtwisted.ports.tlsverify import describeError

CA = "/etc/vtwisted/peers.pem"


def test_anExpiredCaCertificateSaysWhichDepth() -> None:
    assert describeError(10, 1, CA) == ("a CA certificate of the peer's chain has expired "
                                        f"(depth 1; checked against ca={CA})")


def test_aCertificateNotValidYetPointsAtTheClocks() -> None:
    assert describeError(9, 0, CA) == ("the peer's certificate is not valid yet (check the "
                                       f"clocks; depth 0; checked against ca={CA})")


def test_anUncommonErrorIsNamedByItsCode() -> None:
    text = describeError(4242, 0, CA)
    assert text == f"the peer's certificate was refused (X.509 error 4242; depth 0; " \
                   f"checked against ca={CA})"
