"""
Port type plugins.

Other distributions add port types by shipping a module in a
C{vtwisted/plugins/} directory of their own (without C{__init__.py}); the
path extension below makes L{twisted.plugin.getPlugins} find it, as
Twisted's "Alternate Plugin Packages" describes, and also where an
editable install's import hook maps that directory (see
L{vtwisted.pluginpaths}).  (Declarations in Twisted's own
C{twisted/plugins/} are found too: see L{vtwisted.porttype}.)
"""

from twisted.plugin import pluginPackagePaths

from vtwisted.pluginpaths import importHookPaths

__path__.extend(pluginPackagePaths(__name__))
__path__.extend(path for path in importHookPaths(__name__) if path not in __path__)
__all__: list[str] = []
