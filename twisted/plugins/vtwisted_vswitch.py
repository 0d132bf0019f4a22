"""
The C{twistd vswitch} plugin.  The service itself lives in L{vtwisted.app}
and is imported only when C{vswitch} is used.
"""

from twisted.application.service import ServiceMaker

vswitch = ServiceMaker(
    "vswitch",
    "vtwisted.app",
    "A Virtual Distributed Ethernet switch (vde_switch compatible)",
    "vswitch",
)
