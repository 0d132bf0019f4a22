"""
What a port type from another distribution meets: its start failures are
reported with its spec, its declaration is found through an editable
install's import hook, and README.rst's "Writing a port type" names only
what exists.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from helpers import ROOT, readmeExampleFiles, sourceEnv
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface.verify import verifyClass

import vtwisted
import vtwisted.plugins
from vtwisted.app import buildService
from vtwisted.errors import SwitchError
from vtwisted.interfaces import ILink
from vtwisted.pluginpaths import importHookPaths

DECLARATION = """
from vtwisted.porttype import PortType

replay = PortType("pareplay", "pa_replay", "pareplay:FILE replays a capture")
"""

#: A port type that reads its file when it starts, and raises what reading
#: it raised, as an author would write it.
MODULE = '''
from twisted.application.service import Service


class ReplayService(Service):
    def __init__(self, path):
        self.path = path

    def startService(self):
        with open(self.path, "rb") as f:
            if f.read(4) != b"\\xd4\\xc3\\xb2\\xa1":
                raise ValueError("not a pcap file")
        super().startService()


def makeService(switch, spec, reactor):
    (path,) = spec.positional(["file"], 1)
    spec.checkKeywords()
    return ReplayService(path)
'''


@pytest.fixture
def replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The port type above, declared in a directory of its own on sys.path."""
    plugins = tmp_path / "vtwisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "pa_replay_ports.py").write_text(DECLARATION)
    (tmp_path / "pa_replay.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(vtwisted.plugins, "__path__", [*vtwisted.plugins.__path__, str(plugins)])
    yield tmp_path
    for name in list(sys.modules):
        if name == "pa_replay" or name.startswith("vtwisted.plugins.pa_replay"):
            del sys.modules[name]


@pytest.fixture
def logEvents() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted during the test."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def startUnderTwistd(spec: str) -> str:
    """
    Start a switch with C{spec} as C{twistd vswitch} does; the line it
    stops with.
    """
    service = buildService(Clock(), [spec], defaultSock=False, rcfile=None)
    service.exitOnFailure = True
    with pytest.raises(SystemExit) as exited:
        service.privilegedStartService()
        service.startService()
    return str(exited.value.code)


def test_anOSErrorOfAnotherPortTypeNamesTheSpecAndTheFile(replay: Path) -> None:
    """
    A port type that lets open()'s error out stops the start with the spec,
    the file and the errno, not a bare "No such file or directory".
    """
    spec = f"pareplay:{replay}/missing.pcap"
    assert startUnderTwistd(spec) == (f"vswitch: {spec}: {replay}/missing.pcap: "
                                      "No such file or directory (errno 2)")


def test_anyOtherErrorOfAnotherPortTypeIsOneLineAndALoggedTraceback(
    replay: Path, logEvents: list[dict[str, Any]]
) -> None:
    """
    Another exception from a port type's startService ends twistd in one
    line naming the spec, not with a traceback on the terminal; the
    traceback is in the log.
    """
    (replay / "text.pcap").write_text("not a capture")
    spec = f"pareplay:{replay}/text.pcap"
    assert startUnderTwistd(spec) == f"vswitch: {spec}: ValueError: not a pcap file"
    [failure] = [event["log_failure"] for event in logEvents if "log_failure" in event]
    assert isinstance(failure.value, ValueError)


def test_withoutTwistdTheErrorIsRaisedUnchanged(replay: Path) -> None:
    """A service of one's own (a .tac file) still gets the exception itself."""
    service = buildService(Clock(), [f"pareplay:{replay}/missing.pcap"], defaultSock=False,
                           rcfile=None)
    with pytest.raises(FileNotFoundError):
        service.startService()


def test_portAddOfAnotherPortTypeNamesTheSpecAndTheFile(replay: Path) -> None:
    """port/add of a spec whose service cannot open its file says which."""
    service = buildService(Clock(), [], defaultSock=False, rcfile=None)
    service.startService()
    spec = f"pareplay:{replay}/missing.pcap"
    with pytest.raises(SwitchError) as e:
        service.operations.addPort(spec)
    assert e.value.message == f"{spec}: {replay}/missing.pcap: No such file or directory (errno 2)"
    service.stopService()


#: setuptools' editable installs (PEP 660) in short: a placeholder entry on
#: sys.path and a path hook that maps the project's namespace packages.
EDITABLE_HOOK = """
import sys
from importlib.machinery import ModuleSpec

PLACEHOLDER = "__editable__.pa_replay.finder.__path_hook__"
NAMESPACES = {{"vtwisted": [], "vtwisted.plugins": [{plugins!r}]}}


class Finder:
    @classmethod
    def hook(cls, path):
        if path == PLACEHOLDER:
            return cls
        raise ImportError

    @classmethod
    def find_spec(cls, fullname, target=None):
        if fullname not in NAMESPACES:
            return None
        spec = ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [*NAMESPACES[fullname], PLACEHOLDER]
        return spec


sys.path_hooks.append(Finder.hook)
sys.path.append(PLACEHOLDER)
sys.path.append({modules!r})  # pa_replay.py, which the real hook maps too
"""


def test_anEditableInstallsDeclarationIsFound(tmp_path: Path) -> None:
    """
    A port type installed with pip install -e (its plugin directory known
    only to the editable install's path hook) is found; plain directories
    are found as Twisted's pluginPackagePaths finds them.
    """
    plugins = tmp_path / "project" / "vtwisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "pa_replay_ports.py").write_text(DECLARATION)
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "pa_replay.py").write_text(MODULE)
    probe = EDITABLE_HOOK.format(plugins=str(plugins), modules=str(tmp_path / "modules")) + \
        textwrap.dedent("""
        from vtwisted.porttype import portTypes
        print(portTypes()["pareplay"].description)
        """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=sourceEnv(), cwd=tmp_path, timeout=60)
    assert result.stdout == "pareplay:FILE replays a capture\n", result.stderr


def test_importHookPathsAgreesWithTwistedOnDirectories(tmp_path: Path) -> None:
    """
    For ordinary sys.path directories, the portions found are those of
    Twisted's pluginPackagePaths that exist: namespace directories, not
    packages.
    """
    from twisted.plugin import pluginPackagePaths

    portion, package, neither = (tmp_path / name for name in ("portion", "package", "neither"))
    (portion / "vtwisted" / "plugins").mkdir(parents=True)
    (package / "vtwisted" / "plugins").mkdir(parents=True)
    (package / "vtwisted" / "plugins" / "__init__.py").write_text("")
    (package / "vtwisted" / "__init__.py").write_text("")
    neither.mkdir()
    entries = [str(portion), str(package), str(neither), str(tmp_path / "gone")]
    assert importHookPaths("vtwisted.plugins", entries) == [str(portion / "vtwisted" / "plugins")]
    saved = sys.path[:]
    try:
        sys.path[:] = entries
        twisted = [path for path in pluginPackagePaths("vtwisted.plugins") if os.path.isdir(path)]
        assert twisted == importHookPaths("vtwisted.plugins")
    finally:
        sys.path[:] = saved


def writingAPortType() -> str:
    """README.rst's "Writing a port type" section."""
    text = (ROOT / "README.rst").read_text()
    return text[text.index("Writing a port type\n===="):text.index("\nLayout\n====")]


def resolve(dotted: str) -> tuple[Any, Any]:
    """
    The longest importable module of C{dotted} and the object it names.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        target = module
        for name in parts[cut:]:
            target = getattr(target, name)
        return module, target
    raise ImportError(dotted)


def test_theSectionForPortTypeAuthorsNamesOnlyWhatExists() -> None:
    """
    Every vtwisted name "Writing a port type" gives resolves: dotted names,
    the names listed in brackets after a module, and every class name,
    which must live in a module the section names or its examples import.
    """
    section = writingAPortType()
    modules: set[Any] = {builtins}
    for dotted in re.findall(r"``(vtwisted(?:\.\w+)+)``", section):
        modules.add(resolve(dotted)[0])
    for path in re.findall(r"``(vtwisted/[\w/]+)\.py``", section):
        modules.add(importlib.import_module(path.replace("/", ".")))
    for block in re.findall(r"::\n\n((?:    .*\n|\n)+)", section):
        for node in ast.walk(ast.parse(textwrap.dedent(block))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vtwisted"):
                modules.add(importlib.import_module(cast(str, node.module)))
    for module, listed in re.findall(r"``(vtwisted(?:\.\w+)+)``\s+\(([^)]*)\)", section):
        for name in re.findall(r"``(\w+)``", listed):
            assert hasattr(resolve(module)[1], name), f"{module} has no {name}"
    for name in set(re.findall(r"``([A-Z]\w*[a-z]\w*)``", section)):
        assert any(hasattr(module, name) for module in modules), \
            f"{name} is in none of the modules the section names"


def inTreeLinkClasses() -> list[type]:
    """
    Every class of vtwisted (port type declarations aside) that says it
    implements L{ILink}, subclasses too.
    """
    found = []
    for info in pkgutil.walk_packages(vtwisted.__path__, "vtwisted."):
        if info.name.startswith("vtwisted.plugins."):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and value.__module__ == module.__name__
                    and ILink.implementedBy(value)):
                found.append(value)
    return found


def test_iLinkDeclaresPlug() -> None:
    """
    C{ILink} declares C{plug(switch, port)}, which
    C{PortOptions.plugIn} calls on the links it is given.
    """
    assert "plug" in ILink
    assert ILink["plug"].getSignatureInfo()["required"] == ("switch", "port")


@pytest.mark.parametrize("cls", inTreeLinkClasses(), ids=lambda cls: cls.__qualname__)
def test_everyInTreeLinkProvidesILink(cls: type) -> None:
    """
    Each link class of vtwisted has every method C{ILink} declares,
    C{plug} included, with a signature that fits.
    """
    verifyClass(ILink, cls)


def test_everyKindOfInTreeLinkIsChecked() -> None:
    """
    The classes checked above include the links of every kind of service:
    single-link ones, VDE directories' clients, stream peers and
    vhost-user guests, and the public fake.
    """
    names = {cls.__name__ for cls in inTreeLinkClasses()}
    assert {"TapLink", "PacketLink", "PcapLink", "FifoLink", "DgramLink", "McastLink",
            "VxlanLink", "SlirpLink", "VdeDataLink", "StreamLink", "VhostUserLink",
            "FakeLink"} <= names


def test_theReadmesExampleLinkProvidesILink() -> None:
    """
    The link README.rst's "Writing a port type" shows has every method
    C{ILink} declares, and the text names C{plug(switch, port)}.
    """
    namespace: dict[str, Any] = {}
    exec(compile(readmeExampleFiles()["echo/port.py"], "echo/port.py", "exec"), namespace)
    verifyClass(ILink, namespace["EchoLink"])
    assert "``plug(switch, port)``" in writingAPortType()
