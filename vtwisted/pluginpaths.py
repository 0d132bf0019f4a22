"""
Plugin directories that only an import hook knows.

Theory of operation
-------------------
Twisted's L{twisted.plugin.pluginPackagePaths} extends a plugin package's
C{__path__} with the C{vtwisted/plugins/} directory (one without
C{__init__.py}) of every C{sys.path} entry that is a directory.  An
editable install (C{pip install -e .}, setuptools' PEP 660 default mode)
puts no directory on C{sys.path}: it adds a placeholder entry and a path
hook that maps the project's packages, namespace portions included, to the
project's tree, so a port type declared there was never found.

L{importHookPaths} asks the import system itself: for each C{sys.path}
entry alone, L{importlib.machinery.PathFinder} looks up each level of the
package's name in turn, as an import from that entry would, and the
directories of the namespace portion it ends on are kept.  A regular
package (with C{__init__.py}) is the package itself, or another copy of
it, and is skipped, as Twisted skips it.  Only the standard finder
protocol is used, no installer's private names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from importlib.machinery import PathFinder


def importHookPaths(name: str, entries: Iterable[str] | None = None) -> list[str]:
    """
    The directories of the namespace portions of package C{name} found
    through each of C{entries} (default C{sys.path}), hooks included.
    """
    found: list[str] = []
    parts = name.split(".")
    for entry in list(sys.path if entries is None else entries):
        locations: list[str] = [entry]
        spec = None
        for depth in range(1, len(parts) + 1):
            try:
                spec = PathFinder.find_spec(".".join(parts[:depth]), locations)
            except (ImportError, OSError, ValueError):
                spec = None
            if spec is None or spec.submodule_search_locations is None:
                break
            locations = [str(path) for path in spec.submodule_search_locations]
        else:
            if spec is not None and spec.origin in (None, "namespace"):
                found.extend(path for path in locations
                             if os.path.isdir(path) and path not in found)
    return found
