"""
Port types as plugins: the shipped ones load, a third-party one is found
without touching vtwisted, and the twistd plugin is found both from the
source tree and from a real installation.
"""

from __future__ import annotations

import errno
import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from helpers import REQUIRE, ROOT, sourceEnv, twistdArgv
from twisted.logger import ILogObserver, globalLogPublisher

import vtwisted.plugins
from vtwisted.app import Options
from vtwisted.porttype import PortType, portTypes
from vtwisted.spec import SpecError

THIRD_PARTY_DECLARATION = """
from vtwisted.porttype import PortType

acme = PortType("acme", "acme_reflector", "acme:NAME reflects every frame back, MACs swapped")
"""

THIRD_PARTY_MODULE = '''
"""A port type from another distribution: it answers every frame."""
from twisted.application.service import Service
from zope.interface import implementer
from vtwisted.interfaces import ILink


@implementer(ILink)
class Reflector(Service):
    module = "acme"
    vnetHeader = False
    uid = None
    linkId = 1

    def __init__(self, switch, name):
        self.switch = switch
        self.description = name

    def startService(self):
        Service.startService(self)
        self.port = self.switch.allocatePort(None)
        self.switch.attach(self.port, self)

    def stopService(self):
        Service.stopService(self)
        self.switch.detach(self.port, self)

    def sendFrame(self, frame):
        frame = bytes(frame)
        if frame[0] & 1:
            self.switch.frameReceived(self.port, frame[6:12] + frame[6:12] + frame[12:])

    def sendVnetPacket(self, packet):
        raise NotImplementedError()

    def close(self):
        self.stopService()


def makeService(switch, spec, reactor):
    (name,) = spec.positional(["name"], 1)
    spec.checkKeywords()
    return Reflector(switch, name)
'''


def test_everyShippedPortTypeImports() -> None:
    """Each declared port type's module imports and has makeService."""
    types = portTypes()
    assert "vde" in types
    for prefix, portType in types.items():
        assert isinstance(portType, PortType), prefix
        module = importlib.import_module(portType.module)
        assert callable(module.makeService), prefix
        assert portType.description, prefix


@pytest.fixture
def thirdParty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution adding a port type, on sys.path, not inside vtwisted."""
    plugins = tmp_path / "vtwisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "acme_ports.py").write_text(THIRD_PARTY_DECLARATION)
    (tmp_path / "acme_reflector.py").write_text(textwrap.dedent(THIRD_PARTY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(vtwisted.plugins, "__path__", [*vtwisted.plugins.__path__, str(plugins)])
    yield tmp_path
    for name in list(sys.modules):
        if name == "acme_reflector" or name.startswith(("vtwisted.plugins.acme",
                                                        "twisted.plugins.acme")):
            del sys.modules[name]


def assertMirrors(spec: str) -> None:
    """
    A switch with the port C{spec} (the example plugin's reflector) sends a
    broadcast back to its source.
    """
    from twisted.internet.task import Clock

    from vtwisted.app import buildService
    from vtwisted.testing import FakeLink, frame, mac, plug

    service = buildService(Clock(), [spec], defaultSock=False)
    service.startService()
    try:
        listener = FakeLink()
        plug(service.switch, listener)
        listener.receive(frame(b"\xff" * 6, mac(1)))
        assert listener.sent == [frame(mac(1), mac(1))]
    finally:
        service.stopService()


def test_thirdPartyPortTypeWorksWithoutTouchingVtwisted(thirdParty: Path) -> None:
    """A plugin from another package is found and its port forwards frames."""
    assert "acme" in portTypes()
    assertMirrors("acme:mirror")


def test_thirdPartyPortTypeAppearsInHelp(thirdParty: Path) -> None:
    """twistd vswitch --help lists a port type added by another distribution."""
    env = sourceEnv()
    env["PYTHONPATH"] = os.pathsep.join([str(thirdParty), env["PYTHONPATH"]])
    result = subprocess.run(
        [*twistdArgv("--help")], capture_output=True, text=True, env=env, timeout=60
    )
    assert "acme" in result.stdout and "reflects every frame" in result.stdout, result.stderr


def declare(plugins: Path, name: str, declaration: str) -> None:
    """
    Add a declaration module to a plugin directory of C{thirdParty}.
    """
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / f"{name}.py").write_text(textwrap.dedent(declaration))


@pytest.fixture
def logEvents() -> Iterator[list[dict[str, Any]]]:
    """
    Every log event emitted during the test.
    """
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def test_aPortTypeWhoseModuleCannotLoadNamesTheSpec(thirdParty: Path) -> None:
    """
    A spec of a port type whose implementation cannot be imported (a
    dependency missing, a package half uninstalled) fails with the spec,
    the module and the import error, not a traceback; the others still work.
    """
    from vtwisted.app import buildService

    declare(thirdParty / "vtwisted" / "plugins", "acme_broken", """
        from vtwisted.porttype import PortType
        broken = PortType("broken", "acme_missing.port", "broken:X needs a missing module")
        """)
    with pytest.raises(SpecError) as e:
        buildService(None, ["broken:x"], defaultSock=False)
    assert str(e.value) == ("port spec 'broken:x': port type 'broken' cannot be loaded: module "
                            "acme_missing.port: ModuleNotFoundError: No module named "
                            "'acme_missing'")
    buildService(None, ["acme:x"], defaultSock=False)


def test_anUnwritablePluginCacheWarnsOncePerStart(
    thirdParty: Path, monkeypatch: pytest.MonkeyPatch, logEvents: list[dict[str, Any]]
) -> None:
    """
    Where Twisted cannot write a plugin directory's dropin.cache (a
    read-only site-packages), a start with several specs says so once, not
    once per spec.
    """
    from twisted.python.filepath import FilePath

    from vtwisted.app import buildService

    def readOnly(self: FilePath[str], content: bytes, ext: bytes = b".new") -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(FilePath, "setContent", readOnly)
    buildService(None, ["acme:a", "acme:b", "acme:c"], defaultSock=False)
    Options().parseOptions(["--port", "acme:d", "--port", "acme:e"])
    warnings = [event for event in logEvents
                if "Unable to write to plugin cache" in str(event.get("format"))
                and str(thirdParty) in str(event.get("path"))]
    assert len(warnings) == 1, warnings


def test_aBrokenDeclarationIsLoggedOncePerStart(
    thirdParty: Path, logEvents: list[dict[str, Any]]
) -> None:
    """
    A declaration module that fails to import is logged with its error once
    per start, not once per spec, and the other port types still work.
    """
    from vtwisted.app import buildService

    declare(thirdParty / "vtwisted" / "plugins", "acme_unimportable", """
        import acme_missing_dependency
        """)
    buildService(None, ["acme:a", "acme:b", "acme:c"], defaultSock=False)
    Options().parseOptions(["--port", "acme:d", "--port", "acme:e"])
    failures = [event for event in logEvents
                if "acme_missing_dependency" in str(getattr(event.get("failure"), "value", ""))]
    assert len(failures) == 1, failures


def test_aPluginInstalledLaterIsFound(thirdParty: Path) -> None:
    """A port type installed while the switch runs is found by the next port/add."""
    assert "late" not in portTypes()
    declare(thirdParty / "vtwisted" / "plugins", "acme_late", """
        from vtwisted.porttype import PortType
        late = PortType("late", "acme_reflector", "late:NAME installed later")
        """)
    assert "late" in portTypes()


def test_aDeclarationInTwistedPluginsIsFound(
    thirdParty: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A port type declared in a twisted/plugins/ directory (Twisted's own
    plugin package) is found too, and its port forwards frames.
    """
    import twisted.plugins

    plugins = thirdParty / "twisted" / "plugins"
    declare(plugins, "acme_twisted", """
        from vtwisted.porttype import PortType
        mirror = PortType("mirror", "acme_reflector", "mirror:NAME reflects every frame")
        """)
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])
    assertMirrors("mirror:m")


def test_aClashingPrefixKeepsTheShippedType(
    thirdParty: Path, logEvents: list[dict[str, Any]]
) -> None:
    """
    A plugin declaring a prefix vtwisted ships does not replace it at
    random: the shipped type is used and the clash is logged.
    """
    declare(thirdParty / "vtwisted" / "plugins", "acme_clash", """
        from vtwisted.porttype import PortType
        vde = PortType("vde", "acme_reflector", "vde:X another vde")
        """)
    assert portTypes()["vde"].module == "vtwisted.ports.vde"  # type: ignore[attr-defined]
    clashes = [event for event in logEvents if "declared twice" in str(event.get("log_format"))]
    assert len(clashes) == 1 and clashes[0]["prefix"] == "vde"
    assert "acme_reflector" in repr(clashes[0]["other"])


def test_twoThirdPartyTypesOfOnePrefixTakeTheFirstModule(
    thirdParty: Path, logEvents: list[dict[str, Any]]
) -> None:
    """
    Two other distributions declaring one prefix: the one whose module
    sorts first is used, whatever the order they are found in, and the
    clash is logged.
    """
    for name, module in [("acme_one", "zz_reflector"), ("acme_two", "aa_reflector")]:
        declare(thirdParty / "vtwisted" / "plugins", name, f"""
            from vtwisted.porttype import PortType
            zeta = PortType("zeta", "{module}", "zeta:X from {module}")
            """)
    assert portTypes()["zeta"].module == "aa_reflector"  # type: ignore[attr-defined]
    clashes = [event for event in logEvents if "declared twice" in str(event.get("log_format"))]
    assert len(clashes) == 1 and clashes[0]["prefix"] == "zeta"
    assert "zz_reflector" in repr(clashes[0]["other"])


def test_unknownPrefixNamesTheSpec() -> None:
    """An unknown prefix fails with the spec and the known types in the message."""
    from vtwisted.app import buildService

    with pytest.raises(SpecError) as e:
        buildService(None, ["nosuch:x"], defaultSock=False)
    assert "'nosuch:x'" in str(e.value) and "vde" in str(e.value)


def test_badArgumentNamesTheSpec() -> None:
    """A bad keyword value fails with the spec and what is wrong with it."""
    from vtwisted.app import buildService

    with pytest.raises(SpecError) as e:
        buildService(None, ["vde:/tmp/x:mode=999"], defaultSock=False)
    assert "vde:/tmp/x:mode=999" in str(e.value) and "octal" in str(e.value)
    with pytest.raises(SpecError) as e:
        buildService(None, ["vde:/tmp/x:colour=blue"], defaultSock=False)
    assert "unknown option colour" in str(e.value)


@pytest.mark.parametrize("spec", [
    "vde:/tmp/x:mode=0600:mode=0644", "tap:t0:vlan=1:vlan=2",
    "qemu:unix:/tmp/q.sock:mtu=1500:mtu=1400", "pcap:/tmp/p.pcap:snaplen=64:snaplen=96",
    "cable:listen:tcp:0:tls=off:delay=5:delay=6",
])
def test_anOptionGivenTwiceNamesTheSpec(spec: str) -> None:
    """A keyword given twice stops the start with the spec and the keyword."""
    from vtwisted.app import buildService

    with pytest.raises(SpecError) as e:
        buildService(None, [spec], defaultSock=False)
    key = spec.rsplit(":", 1)[1].split("=")[0]
    assert f"port spec {spec!r}: {key}= is given 2 times; give it once" in str(e.value)


def test_helpListsEveryPortType() -> None:
    """twistd vswitch --help shows each installed port type with its description."""
    result = subprocess.run(
        twistdArgv("--help"), capture_output=True, text=True, env=sourceEnv(), timeout=60
    )
    for prefix, portType in portTypes().items():
        assert f"  {prefix} " in result.stdout
        assert portType.description.split()[0] in result.stdout


def test_consoleListsEveryPortTypeAThirdPartyOneToo(thirdParty: Path) -> None:
    """
    port/types on the console lists each installed port type, one from
    another distribution included, with its description, in a table as
    plugin/list's.
    """
    from twisted.internet.task import Clock

    from vtwisted.app import buildService
    from vtwisted.console import CommandInterpreter

    service = buildService(Clock(), [], defaultSock=False, rcfile=None)
    reply = CommandInterpreter(service.operations).execute("port/types").text.split("\n")
    assert reply[:3] == ["0000 DATA END WITH '.'", "PREFIX                 DESCRIPTION",
                         "------------           -----------"]
    assert reply[-3:] == [".", "1000 Success", ""]
    rows = reply[3:-3]
    types = portTypes()
    assert "acme" in types
    assert rows == [f"{prefix:<22} {types[prefix].description}" for prefix in sorted(types)]


def descriptionColumns(usage: str, width: int) -> set[int]:
    """
    Where each line of C{usage}'s port type listing puts its description,
    checking that a name is followed by two spaces at least and that a
    line longer than C{width} is one unbreakable word.
    """
    listing = usage.split("Port types (--port PREFIX:ARGS):\n")[1].split("\n\n")[0]
    columns = set()
    for line in listing.splitlines():
        description = line.lstrip()
        if not line.startswith("   "):
            name, description = description.split(" ", 1)
            assert description.startswith(" "), f"{name} runs into its description: {line!r}"
            description = description.lstrip()
        columns.add(len(line) - len(description))
        assert len(line) <= width or " " not in description, line
    return columns


def test_helpAlignsEveryPortTypesDescription() -> None:
    """
    twistd vswitch --help starts every port type's description, and each
    line it wraps to, in one column past the longest name (vhostuser).
    """
    [column] = descriptionColumns(Options().getUsage(width=80), 80)
    assert column == 2 + len("vhostuser") + 2


def test_helpMakesRoomForALongThirdPartyName(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A port type from another distribution with a long name moves every
    description's column past it, at any terminal width.
    """
    long = PortType("acme-reflector-port", "acme_reflector",
                    "acme-reflector-port:NAME[:mode=mirror|swap]  reflects every frame "
                    "back, MACs swapped, on its own port")
    monkeypatch.setattr("vtwisted.app.portTypes", lambda: {**portTypes(), long.prefix: long})
    for width in (60, 80, 200):
        [column] = descriptionColumns(Options().getUsage(width=width), width)
        assert column == 2 + len(long.prefix) + 2


def test_pluginFoundFromSourceTree() -> None:
    """With the source root on sys.path, twistd finds the vswitch plugin."""
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "--help"],
        capture_output=True, text=True, env=sourceEnv(), cwd=ROOT, timeout=60,
    )
    assert "vswitch" in result.stdout, result.stdout + result.stderr


def test_pluginFoundFromInstallation(tmp_path: Path) -> None:
    """After pip install ., twistd finds vswitch with no source tree on sys.path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [sys.executable, "-c", "import vtwisted, sys; print(vtwisted.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    if probe.returncode != 0:
        message = "vtwisted is not installed (pip install .)"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    assert not probe.stdout.startswith(str(ROOT)), "the installed copy, not the tree"
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "vswitch", "--help"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "vde" in result.stdout and "--sock" in result.stdout


@pytest.mark.parametrize("runner", ["twistd -n", "twist"])
def test_aPortThatCannotStartEndsTwistdInOneLine(tmp_path: Path, runner: str) -> None:
    """
    twistd -n vswitch (and twist vswitch, Twisted's other runner) exits with
    status 1 and the port's error, no traceback.
    """
    switchArgs = ("--sock", str(tmp_path / "sw"), "--port", f"qemu:unix:{tmp_path}/no/vm.sock")
    argv = twistdArgv(*switchArgs) if runner == "twistd -n" else [
        sys.executable, "-m", "twisted", "vswitch", *switchArgs]
    result = subprocess.run(argv, capture_output=True, text=True, env=sourceEnv(), timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"vswitch: qemu:unix:{tmp_path}/no/vm.sock: cannot listen: No such file or " \
           "directory (errno 2)" in output
    assert "Traceback" not in output


def test_thePortALinkGetsIsADocumentedInterface() -> None:
    """
    The port a port type's link is given provides ISwitchPort, whose
    counters and dropped() a plugin uses to count what its link drops.
    """
    from zope.interface.verify import verifyObject

    from vtwisted.interfaces import ISwitchPort
    from vtwisted.switch import Switch

    port = Switch().allocatePort()
    assert verifyObject(ISwitchPort, port)
    port.dropped("busy", "echo:x: the peer is not reading")
    assert port.counters.drops["busy"] == 1 and port.number == 1


def test_pipBuildsAWheelThroughPep517() -> None:
    """
    pip builds vtwisted with setuptools' PEP 517 backend (so an older pip in
    a fresh virtualenv, without the wheel package, does not fall back to the
    deprecated setup.py install).
    """
    tomllib = pytest.importorskip("tomllib")
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert any(requirement.startswith("setuptools") for requirement in build["requires"])
