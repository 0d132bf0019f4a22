"""
Tests for the address plan of slirp ports (L{vtwisted.slirp.config}): where
the router sends a guest's connections on the host, the resolver, the
options and their errors, SMB and port forwards, and the IPv6 prefix.
"""

from __future__ import annotations

from typing import Any

import pytest
from slirpfakes import DNS, GATEWAY, makeRouter

from vtwisted.slirp.config import ResolvConf, parseForward, readConfig
from vtwisted.spec import PortSpec, SpecError


def test_hostAddressesFollowQemusRules() -> None:
    """.2 is loopback, .3:53 the resolver, other .3 ports and LAN addresses nowhere."""
    router, _ = makeRouter(":resolver=127.0.0.53:resolverport=5300")
    assert router.hostAddress(GATEWAY, 80, 6) == ("127.0.0.1", 80)
    assert router.hostAddress(DNS, 53, 17) == ("127.0.0.53", 5300)
    assert router.hostAddress(DNS, 80, 6) is None
    assert router.hostAddress(bytes([10, 0, 2, 9]), 80, 6) is None
    assert router.hostAddress(bytes([192, 0, 2, 1]), 443, 6) == ("192.0.2.1", 443)
    assert router.guestAddress("127.0.0.1") == GATEWAY
    restricted, _ = makeRouter(":restrict=on")
    assert restricted.hostAddress(GATEWAY, 80, 6) is None


def test_resolverComesFromResolvConfAndFollowsChanges(tmp_path: Any) -> None:
    """The first nameserver line is used, and a changed file is read again."""
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\nsearch example\nnameserver 127.0.0.53\nnameserver 1.1.1.1\n")
    conf = ResolvConf(str(path))
    assert conf.nameserver(0.0) == "127.0.0.53"
    path.write_text("nameserver 127.0.0.54\n")
    assert conf.nameserver(0.5) == "127.0.0.53", "looked at no more than once a second"
    assert conf.nameserver(2.0) == "127.0.0.54"


@pytest.mark.parametrize("options, problem", [
    (":net=10.0.2.0/30", "at least 32 addresses"),
    (":net=banana", "not an IPv4 network"),
    (":host=10.0.3.2", "not a host address"),
    (":dns=10.0.2.2", "must differ"),
    (":dhcpstart=10.0.2.3", "must differ"),
    (":hostfwd=tcp\\:\\:99999-\\:22", "not a port number"),
    (":hostfwd=icmp\\:\\:22-\\:22", "not tcp or udp"),
    (":mtu=70000", "out of range"),
    (":colour=blue", "unknown option colour"),
    (":net6=fd00\\:\\:/48", "only in a /64"),
    (":net6=banana", "not an IPv6 prefix"),
    (":ipv6=maybe", "not on or off"),
    (":guestfwd=banana", "expected \\[tcp:\\]ADDR:PORT-ENDPOINT"),
    (":guestfwd=10.0.2.2\\:80-unix\\:/x", "must be a free host address"),
    (":guestfwd=10.0.2.100\\:80-nonsense\\:x", "is not a client endpoint"),
    (":guestfwd=10.0.2.100\\:80-cmd\\:no-such-program-here", "no command 'no-such-program"),
    (":guestfwd=10.0.2.100\\:80-cmd\\:", "names no command"),
    (":dhcpv6=sometimes", "not on or off"),
    (":domain=a:domainname=b", "domain= and domainname= are one option"),
    (":host6=fec0\\:\\:20", "outside its DHCPv6 pool"),
    (":ipv6-dns=fd00\\:\\:3", "must be an address of fec0::/64"),
    (":host6=fec0\\:\\:3", "dns6= must differ from host6="),
    (":dns6=banana", "not an IPv6 address"),
    (":ipv4=off:ipv6=off", "leave guests nothing"),
    (":smb=/nonexistent/share", "smb=/nonexistent/share: No such file or directory"),
    (":smb=/etc/hostname", "not a directory"),
    (":smb=/tmp:smbserver=10.0.2.3", "must be a free address"),
    (":smb=/tmp:smbserver=10.0.2.20", "must be a free address"),
    (":smbserver=10.0.2.9", "it needs smb=DIR"),
    (":smb=/tmp:guestfwd=10.0.2.4\\:80-unix\\:/x", "must be a free address"),
    (":smb=/tmp:ipv4=off", "forwards lead to IPv6 guests only"),
    (":ipv4=off:hostfwd=tcp\\:\\:2222-\\:22", "forwards lead to IPv6 guests only"),
    (":ipv4=off:guestfwd=10.0.2.100\\:80-unix\\:/x", "forwards lead to IPv6 guests only"),
    (":dnssearch=lab..test", "empty or overlong label"),
    (":hostname=caf\u00e9", "not ASCII"),
    (":domain=" + "x" * 64, "empty or overlong label"),
    (":tcpbuffers=0", "tcpbuffers"),
])
def test_badOptionsAreRefusedWithTheReason(options: str, problem: str) -> None:
    """A spec with a bad option fails at start-up, saying what is wrong."""
    from vtwisted.ports.slirp import makeService

    with pytest.raises(SpecError, match=problem):
        makeService(None, PortSpec("slirp" + options), None)


def test_qemusOptionNamesAreTaken() -> None:
    """domainname=, ipv6-net=, ipv6-host= and ipv6-dns= as QEMU spells them."""
    import ipaddress

    config = readConfig(PortSpec(
        "slirp:domainname=lab:ipv6-net=fd00\\:1\\:\\:/64:ipv6-host=fd00\\:1\\:\\:1"
        ":ipv6-dns=fd00\\:1\\:\\:beef"))
    assert config.domain == "lab" and str(config.network6) == "fd00:1::/64"
    assert config.gateway6 == ipaddress.IPv6Address("fd00:1::1").packed
    assert config.nameserver6 == ipaddress.IPv6Address("fd00:1::beef").packed
    default = readConfig(PortSpec("slirp"))
    assert default.gateway6 == ipaddress.IPv6Address("fec0::2").packed
    assert default.nameserver6 == ipaddress.IPv6Address("fec0::3").packed


def test_smbIsQemusAtTheNetworksFourthAddress() -> None:
    """smb=DIR serves at .4 unless smbserver= says otherwise; a guest forward may use .4."""
    assert readConfig(PortSpec("slirp:smb=/tmp")).smbServer == bytes([10, 0, 2, 4])
    moved = readConfig(PortSpec("slirp:smb=/tmp:smbserver=10.0.2.9"))
    assert moved.smbRoot == "/tmp" and moved.smbServer == bytes([10, 0, 2, 9])
    assert readConfig(PortSpec("slirp:guestfwd=10.0.2.4\\:80-unix\\:/x")).smbRoot is None


def test_smbWithoutSambaSaysWhatToInstall(monkeypatch) -> None:
    """No smbd: the spec fails at start-up naming the package."""
    from vtwisted.ports.slirp import makeService
    from vtwisted.slirp import smb

    monkeypatch.setattr(smb, "findSmbd", lambda: None)
    with pytest.raises(SpecError, match=r"smb= needs Samba's smbd.*apt install samba"):
        makeService(None, PortSpec("slirp:smb=/tmp"), None)


def test_forwardsFollowQemusSyntax() -> None:
    """hostfwd rules read as QEMU's, defaulting to loopback and the first lease."""
    first = bytes([10, 0, 2, 15])
    assert str(parseForward("tcp::2222-:22", first)) == "tcp:127.0.0.1:2222-10.0.2.15:22"
    assert str(parseForward("udp:0.0.0.0:53-10.0.2.16:5353", first)) == \
        "udp:0.0.0.0:53-10.0.2.16:5353"
    assert str(parseForward(":8080-:80", first)) == "tcp:127.0.0.1:8080-10.0.2.15:80"


def test_repeatedForwardKeywordsAddUpAsInQemu() -> None:
    """
    C{hostfwd=} and C{guestfwd=} given several times, as a QEMU
    C{-netdev user} line has them, all count; any other option given twice
    is refused instead of the last one winning in silence.
    """
    config = readConfig(PortSpec(
        "slirp:hostfwd=tcp\\:\\:2222-\\:22:hostfwd=udp\\:\\:5353-\\:53,tcp\\:\\:8080-\\:80"
        ":guestfwd=10.0.2.100\\:80-unix\\:/a:guestfwd=10.0.2.101\\:80-unix\\:/b"))
    assert [str(f) for f in config.forwards] == [
        "tcp:127.0.0.1:2222-10.0.2.15:22", "udp:127.0.0.1:5353-10.0.2.15:53",
        "tcp:127.0.0.1:8080-10.0.2.15:80"]
    assert [str(f) for f in config.guestForwards] == [
        "tcp:10.0.2.100:80-unix:/a", "tcp:10.0.2.101:80-unix:/b"]
    with pytest.raises(SpecError, match="dns= is given 2 times"):
        readConfig(PortSpec("slirp:dns=10.0.2.3:dns=10.0.2.53"))


@pytest.mark.parametrize(
    ("rule", "shown"),
    [("tcp:[::1]:8080-[fec0::99]:80", "tcp:[::1]:8080-[fec0::99]:80"),
     ("udp:[::]:5353-[FEC0::0:5]:53", "udp:[::]:5353-[fec0::5]:53"),
     ("[::1]:2222-:22", "tcp:[::1]:2222-10.0.2.15:22")],
)
def test_forwardsTakeBracketedIpv6Addresses(rule: str, shown: str) -> None:
    """IPv6 addresses are written in brackets on either side."""
    assert str(parseForward(rule, bytes([10, 0, 2, 15]))) == shown


def test_oneForwardWrittenTwoWaysIsTheSame() -> None:
    """
    Host addresses are read as addresses, not kept as written: a forward
    added as C{[0:0::1]} is removed as C{[::1]}, and shown that way.
    """
    first = bytes([10, 0, 2, 15])
    added = parseForward("tcp:[0:0::0001]:8080-[fec0::99]:80", first)
    assert added == parseForward("tcp:[::1]:8080-[fec0::99]:80", first)
    assert str(added) == "tcp:[::1]:8080-[fec0::99]:80"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [("tcp:[::1:8080-:80", "expected"), ("tcp::8080-[10.0.2.15]:80", "bracketed IPv6"),
     ("tcp::8080-fec0::99:80", "expected"), ("tcp:[nohost]:1-:2", "not an IP address")],
)
def test_badForwardsSayWhatIsWrong(rule: str, problem: str) -> None:
    """A malformed rule is refused with the rule and the reason."""
    with pytest.raises(ValueError, match=problem):
        parseForward(rule, bytes([10, 0, 2, 15]))


def test_ipv6PlanFollowsThePrefix() -> None:
    """IPv6 is on by default with fec0::/64; net6= moves it and ipv6=off removes it."""
    import ipaddress

    config = readConfig(PortSpec("slirp"))
    assert config.network6 == ipaddress.IPv6Network("fec0::/64")
    assert config.gateway6 == ipaddress.IPv6Address("fec0::2").packed
    assert config.nameserver6 == ipaddress.IPv6Address("fec0::3").packed
    moved = readConfig(PortSpec("slirp:net6=fd00\\:1\\:\\:/64"))
    assert moved.gateway6 == ipaddress.IPv6Address("fd00:1::2").packed
    assert readConfig(PortSpec("slirp:ipv6=off")).gateway6 is None


def test_hostLoopbackCanBeClosedToGuests() -> None:
    """With hostloopback=off the gateway leads nowhere; DNS still works; 127/8 never leaves."""
    router, _ = makeRouter(":hostloopback=off:resolver=127.0.0.53")
    assert router.hostAddress(GATEWAY, 80, 6) is None
    assert router.hostAddress(DNS, 53, 17) == ("127.0.0.53", 53)
    assert router.hostAddress(bytes([192, 0, 2, 1]), 80, 6) == ("192.0.2.1", 80)
    opened, _ = makeRouter()
    assert opened.hostAddress(bytes([127, 0, 0, 1]), 80, 6) is None, "a guest's own loopback"


@pytest.mark.parametrize(("options", "network"), [
    (":ipv6-prefix=fd00\\:2\\:\\::ipv6-prefixlen=64", "fd00:2::/64"),
    (":ipv6-prefix=fd00\\:3\\:\\:", "fd00:3::/64"),
    (":ipv6-prefixlen=64", "fec0::/64"),
])
def test_qemusPrefixAndLengthAreTaken(options: str, network: str) -> None:
    """QEMU's ipv6-prefix= and ipv6-prefixlen= (its QAPI names) give the prefix."""
    assert str(readConfig(PortSpec("slirp" + options)).network6) == network


@pytest.mark.parametrize(("options", "problem"), [
    (":ipv6-prefix=fd00\\:\\::ipv6-prefixlen=48", "only in a /64"),
    (":ipv6-prefix=fd00\\:\\::net6=fd01\\:\\:/64", "are one option"),
])
def test_qemusPrefixMustBeASingleSlash64(options: str, problem: str) -> None:
    """A prefix other than a /64, or given twice, is refused saying why."""
    with pytest.raises(SpecError, match=problem):
        readConfig(PortSpec("slirp" + options))
