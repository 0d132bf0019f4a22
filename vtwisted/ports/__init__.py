"""
Port types: one module each, loaded on first use by their plugin declarations.
"""
