"""
vtwisted: Virtual Distributed Ethernet as a Twisted service.
"""

__version__ = "0.1.0"
