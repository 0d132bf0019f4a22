"""
DHCPv6 addresses from the slirp port, against ISC dhclient (C{dhclient -6})
and dhcpcd in network namespaces behind the switch's TAP ports: the first
guest gets C{fec0::15}, the next C{fec0::16}, a host forward to
C{[fec0::15]} reaches the first, a restarted client keeps its address, a
released address is handed to the next guest that asks, and dhcpcd asks
only when the router advertisements set the M flag.

The clients run in the foreground with scripts of ours that log what they
are told (dhclient's also sets the address, as Debian's would), so nothing
on the host (its resolv.conf) is touched.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import execIn, need, needRoot, run, uniqueName, waitFor
from taphelpers import console, moveTap

pytestmark = pytest.mark.integration

SCRIPT = r"""#!/bin/sh
echo "$reason ${new_ip6_address:-} ${new_dhcp6_name_servers:-} ${old_ip6_address:-}" \
    >> "$(dirname "$0")/events"
case "$reason" in
BOUND6|REBOOT6) ip -6 addr add "$new_ip6_address/128" dev "$interface" nodad ;;
RELEASE6|EXPIRE6) ip -6 addr del "$old_ip6_address/128" dev "$interface" ;;
esac
exit 0
"""

#: A TCP service in the guest saying hello with its own address.
HELLO = r"""
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(1)
print("ready", flush=True)
c, peer = s.accept()
c.sendall(f"hello from {c.getsockname()[0]}".encode())
c.close()
"""


@pytest.fixture(autouse=True)
def _needs() -> None:
    needRoot()
    need("dhclient")


class Guest:
    """
    A namespace behind one of the switch's TAPs, with a dhclient directory.
    """

    def __init__(self, namespaces, directory: Path, tap: str) -> None:
        self.tap = tap
        self.ns = namespaces.add("vtd6")
        run(*execIn(self.ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"))
        moveTap(tap, self.ns, None)
        self.dir = directory / tap
        self.dir.mkdir()
        script = self.dir / "script"
        script.write_text(SCRIPT)
        script.chmod(0o755)

    def argv(self, *extra: str) -> list[str]:
        return execIn(self.ns, "dhclient", "-6", "-v", "-sf", str(self.dir / "script"),
                      "-lf", str(self.dir / "leases"), "-pf", str(self.dir / "pid"), *extra,
                      self.tap)

    def start(self, processes) -> subprocess.Popen[bytes]:
        return processes.start(self.argv("-d"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    def events(self) -> list[list[str]]:
        path = self.dir / "events"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def waitFor(self, reason: str, count: int = 1, switch=None) -> list[str]:
        def found() -> bool:
            return sum(e[0] == reason for e in self.events()) >= count
        try:
            waitFor(found, timeout=30, what=f"dhclient's {reason}")
        except Exception:
            log = switch.logText() if switch is not None else ""
            raise AssertionError(f"{self.events()}\n{log}") from None
        return [e for e in self.events() if e[0] == reason][count - 1]

    def addresses(self) -> str:
        return run(*execIn(self.ns, "ip", "-6", "addr", "show", "dev", self.tap)).stdout


def test_guestsGetAddressesAForwardCanName(vswitch, processes, namespaces, shortdir) -> None:
    """
    The first guest is bound to fec0::15 with fec0::3 for DNS and is
    reached from the host through a forward to [fec0::15]; the second gets
    fec0::16; slirp/print lists both leases.
    """
    first, second = uniqueName("vd6"), uniqueName("vd6")
    mgmt = shortdir / "mgmt"
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    sw = vswitch("--port", f"tap:{first}", "--port", f"tap:{second}", "--mgmt", str(mgmt),
                 "--port", rf"slirp:hostfwd=tcp\:[\:\:1]\:{port}-[fec0\:\:15]\:8022")
    alice = Guest(namespaces, shortdir, first)
    alice.start(processes)
    bound = alice.waitFor("BOUND6", switch=sw)
    assert bound[1:3] == ["fec0::15", "fec0::3"], bound
    assert "inet6 fec0::15/128" in alice.addresses()
    bob = Guest(namespaces, shortdir, second)
    bob.start(processes)
    assert bob.waitFor("BOUND6", switch=sw)[1] == "fec0::16"
    shown = console(mgmt, "slirp/print")
    assert "DHCPv6 lease fec0::15" in shown and "DHCPv6 lease fec0::16" in shown, shown
    hello = processes.start(execIn(alice.ns, "python3", "-c", HELLO, "8022"),
                            stdout=subprocess.PIPE)
    assert hello.stdout.readline().strip() == b"ready"
    answer = run("python3", "-c", "import socket,sys; c=socket.create_connection(('::1', "
                 f"{port}), timeout=10); print(c.recv(100).decode())", timeout=30)
    assert answer.stdout.strip() == "hello from fec0::15"
    assert "Traceback" not in sw.logText(), sw.logText()


def test_restartedClientKeepsItsAddressAndReleasedOnesAreReused(vswitch, processes,
                                                                namespaces, shortdir) -> None:
    """
    dhclient started again (with its lease file, so the same DUID) is bound
    to fec0::15 again although another guest asked meanwhile; after it
    releases it, the next guest that asks is bound to fec0::15.
    """
    first, second, third = (uniqueName("vd6") for _ in range(3))
    mgmt = shortdir / "mgmt"
    sw = vswitch("--port", f"tap:{first}", "--port", f"tap:{second}", "--port", f"tap:{third}",
                 "--mgmt", str(mgmt), "--port", "slirp")
    alice = Guest(namespaces, shortdir, first)
    client = alice.start(processes)
    assert alice.waitFor("BOUND6", switch=sw)[1] == "fec0::15"
    processes.stop(client)
    run(*execIn(alice.ns, "ip", "-6", "addr", "del", "fec0::15/128", "dev", first))
    bob = Guest(namespaces, shortdir, second)
    bob.start(processes)
    assert bob.waitFor("BOUND6", switch=sw)[1] == "fec0::16"
    alice.start(processes)
    assert alice.waitFor("BOUND6", count=2, switch=sw)[1] == "fec0::15"
    released = run(*alice.argv("-r"), check=False, timeout=30)
    assert released.returncode == 0, released.stdout + released.stderr
    alice.waitFor("RELEASE6", switch=sw)
    waitFor(lambda: "DHCPv6 lease fec0::15" not in console(mgmt, "slirp/print"),
            what="the lease to go")
    assert "inet6 fec0::15" not in alice.addresses()
    carol = Guest(namespaces, shortdir, third)
    carol.start(processes)
    assert carol.waitFor("BOUND6", switch=sw)[1] == "fec0::15"
    assert "Traceback" not in sw.logText(), sw.logText()


DHCPCD_SCRIPT = r"""#!/bin/sh
echo "$reason ${new_dhcp6_ia_na1_ia_addr1:-} ${new_dhcp6_name_servers:-}" \
    >> "$(dirname "$0")/events"
"""
DHCPCD_STATE = Path("/var/lib/dhcpcd")


@pytest.fixture
def dhcpcdState():
    """
    Remove what dhcpcd leaves in its state directory (lease files of the
    test's interfaces; its DUID if it made one).
    """
    need("dhcpcd")
    hadDuid = (DHCPCD_STATE / "duid").exists()
    made: list[str] = []
    yield made
    for name in made:
        (DHCPCD_STATE / f"{name}.lease6").unlink(missing_ok=True)
    if not hadDuid:
        (DHCPCD_STATE / "duid").unlink(missing_ok=True)


@pytest.mark.parametrize("dhcpv6", ["on", "off"])
def test_dhcpcdAsksForAnAddressOnlyWhenAdvertisementsSaySo(vswitch, processes, namespaces,
                                                          shortdir, dhcpcdState,
                                                          dhcpv6: str) -> None:
    """
    dhcpcd, which runs DHCPv6 when router advertisements set the M flag, is
    bound to fec0::15 with fec0::3 for DNS; with dhcpv6=off (as libslirp)
    it configures itself from the advertisement alone and never solicits.
    """
    tap = uniqueName("vd6")
    dhcpcdState.append(tap)
    sw = vswitch("--port", f"tap:{tap}", "--port", f"slirp:dhcpv6={dhcpv6}")
    guest = Guest(namespaces, shortdir, tap)
    (guest.dir / "script").write_text(DHCPCD_SCRIPT)
    log = guest.dir / "dhcpcd.log"
    processes.start(execIn(guest.ns, "dhcpcd", "-6", "-B", "-d", "-f", "/dev/null",
                           "-c", str(guest.dir / "script"), "-j", str(log), tap),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    guest.waitFor("ROUTERADVERT", switch=sw)
    if dhcpv6 == "on":
        assert guest.waitFor("BOUND6", switch=sw)[1:] == ["fec0::15", "fec0::3"]
        waitFor(lambda: "inet6 fec0::15/128" in guest.addresses(), what="fec0::15 set")
    else:
        time.sleep(3)
        assert "SOLICIT6" not in log.read_text() and "BOUND6" not in str(guest.events())
        assert "inet6 fec0::15" not in guest.addresses()
    assert "Traceback" not in sw.logText(), sw.logText()


#: dhclient -P's script: log the delegated prefix.
PD_SCRIPT = r"""#!/bin/sh
echo "$reason ${new_ip6_prefix:-}" >> "$(dirname "$0")/events"
exit 0
"""


def test_aRoutingGuestGetsAPrefixAndTheHostReachesTheNetworkBehindIt(
        vswitch, processes, namespaces, shortdir) -> None:
    """
    slirp:pd=fec0:0:0:100::/56: a guest that routes (dhclient -P) is
    delegated fec0:0:0:100::/64; a namespace behind it, numbered from that
    prefix and never heard on the slirp side, is reached from the host
    through a forward, the switch sending its packets to the router guest.
    """
    tap, mgmt = uniqueName("vd6"), shortdir / "mgmt"
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    sw = vswitch("--port", f"tap:{tap}", "--mgmt", str(mgmt), "--port",
                 rf"slirp:pd=fec0\:0\:0\:100\:\:/56:hostfwd=tcp\:[\:\:1]\:{port}"
                 rf"-[fec0\:0\:0\:100\:\:2]\:8022")
    router = Guest(namespaces, shortdir, tap)
    (router.dir / "script").write_text(PD_SCRIPT)
    processes.start(router.argv("-d", "-P"), stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    assert router.waitFor("BOUND6", switch=sw)[1] == "fec0:0:0:100::/64"
    lan, veth = namespaces.add("vtd6"), uniqueName("vdv")
    run("ip", "link", "add", veth, "netns", router.ns, "type", "veth", "peer", "name", veth,
        "netns", lan)
    for ns, address in ((router.ns, "fec0:0:0:100::1/64"), (lan, "fec0:0:0:100::2/64")):
        run("ip", "-n", ns, "addr", "add", address, "dev", veth, "nodad")
        run("ip", "-n", ns, "link", "set", veth, "up")
    run("ip", "-n", lan, "link", "set", "lo", "up")
    run("ip", "-n", lan, "-6", "route", "add", "default", "via", "fec0:0:0:100::1")
    run("ip", "-n", router.ns, "-6", "route", "add", "fec0::/64", "dev", tap)
    run(*execIn(router.ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"))
    hello = processes.start(execIn(lan, "python3", "-c", HELLO, "8022"), stdout=subprocess.PIPE)
    assert hello.stdout is not None and hello.stdout.readline().strip() == b"ready"
    answer = run("python3", "-c", "import socket,sys; c=socket.create_connection(('::1', "
                 f"{port}), timeout=10); print(c.recv(100).decode())", timeout=30, check=False)
    assert answer.stdout.strip() == "hello from fec0:0:0:100::2", answer.stderr + sw.logText()
    shown = console(mgmt, "slirp/print")
    assert "DHCPv6 prefix fec0:0:0:100::/64 via fe80::" in shown, shown
    assert "Traceback" not in sw.logText(), sw.logText()


def test_temporaryAddressIsRandomAndReachable(vswitch, processes, namespaces,
                                              shortdir) -> None:
    """
    dhclient -T asks for a temporary address (IA_TA) and is bound to a
    random one of fec0::/64, not the pool's fec0::15; slirp/print lists it
    as temporary, and a forward added at run time to it reaches the guest.
    """
    tap, mgmt = uniqueName("vd6"), shortdir / "mgmt"
    sw = vswitch("--port", f"tap:{tap}", "--mgmt", str(mgmt), "--port", "slirp")
    guest = Guest(namespaces, shortdir, tap)
    processes.start(guest.argv("-d", "-T"), stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    address = ipaddress.IPv6Address(guest.waitFor("BOUND6", switch=sw)[1])
    assert address in ipaddress.IPv6Network("fec0::/64") and str(address) != "fec0::15"
    shown = console(mgmt, "slirp/print")
    assert f"DHCPv6 lease {address} client " in shown and " IA_TA " in shown, shown
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    console(mgmt, f"slirp/hostfwd_add tcp:[::1]:{port}-[{address}]:8022")
    hello = processes.start(execIn(guest.ns, "python3", "-c", HELLO, "8022"),
                            stdout=subprocess.PIPE)
    assert hello.stdout is not None and hello.stdout.readline().strip() == b"ready"
    answer = run("python3", "-c", "import socket,sys; c=socket.create_connection(('::1', "
                 f"{port}), timeout=10); print(c.recv(100).decode())", timeout=30, check=False)
    assert answer.stdout.strip() == f"hello from {address}", answer.stderr + sw.logText()
