"""
The README's commands are the ones CI runs, and the code is lint-clean.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers import REQUIRE, ROOT


def readmeCommand(startswith: str) -> str:
    for line in (ROOT / "README.rst").read_text().splitlines():
        if line.strip().startswith(startswith):
            return line.strip()
    raise AssertionError(f"README.rst has no command starting with {startswith!r}")


def test_ciRunsTheReadmeTestCommand() -> None:
    """CI runs exactly the test command README.rst gives a new user."""
    command = readmeCommand("apt-get update &&")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci]


def test_readmeRunCommandStartsTheSwitch() -> None:
    """The README's first command installs the package and runs twistd vswitch."""
    command = readmeCommand("python3 -m pip install . &&")
    assert command.endswith("twistd -n vswitch")


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_lintIsClean(tool: str) -> None:
    """ruff and mypy report nothing on the tree."""
    if shutil.which(tool) is None:
        if REQUIRE:
            pytest.fail(f"{tool} is not installed")
        pytest.skip(f"{tool} is not installed")
    argv = [sys.executable, "-m", tool] + (["check", "."] if tool == "ruff" else [])
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_theReadmesSlirpExamplesAreValidSpecs() -> None:
    """Every slirp option line the README shows reads as a spec (paths aside)."""
    from vtwisted.slirp.config import readConfig
    from vtwisted.spec import PortSpec, SpecError

    examples = [line.split("#")[0].strip() for line in
                (ROOT / "README.rst").read_text().splitlines()
                if line.startswith("    slirp:")]
    assert len(examples) >= 10
    for example in examples:
        try:
            readConfig(PortSpec(example))
        except SpecError as e:
            assert "No such file or directory" in str(e), e  # tftp=/srv/tftp, smb=/srv/share
