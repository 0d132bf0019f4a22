"""
Port types: one module each (C{vde}, C{tap}), loaded on first use by their
plugin declarations in L{vtwisted.plugins}; C{vdelink} is the data side of
the C{vde} port type.
"""
