"""
A host directory shared with guests over SMB, as QEMU's C{-netdev
user,smb=DIR}: C{slirp:smb=DIR}, seen by guests as C{\\\\10.0.2.4\\qemu}.

Theory of operation
-------------------
Like QEMU, the port runs Samba's C{smbd} once per guest connection to the
SMB server's address (C{smbserver=}, the network's C{.4} by default), ports
445 and 139, with that connection as its standard input (a socket: C{smbd} then
serves it and exits, its inetd mode).  L{SmbShare} writes the
configuration C{smbd} reads into a private directory made the first time a
guest connects: one share, C{qemu}, of the directory, writable, open to
guests without a password and acting as the user the switch runs as, and
Samba's state, locks and logs in that directory too, so no system
directory is needed and nothing of the host's own Samba is touched.  The
directory goes when the port stops.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from vtwisted.processes import CommandEndpoint

#: The ports guests reach the share on: SMB over TCP, and NetBIOS sessions.
SMB_PORTS = (445, 139)
#: Where smbd is looked for besides the PATH (Debian keeps it in /usr/sbin).
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def findSmbd() -> str | None:
    """
    The path of Samba's C{smbd}, or None if it is not installed.
    """
    found = shutil.which("smbd")
    if found is None:
        found = shutil.which("smbd", path=os.pathsep.join(SBIN))
    return found


def configuration(share: str, state: str, user: str | None) -> str:
    """
    The C{smb.conf} of a share of directory C{share}, Samba's files in
    C{state}, guests acting as C{user} (if named).
    """
    lines = [
        "[global]",
        f"  private dir = {state}",
        f"  lock directory = {state}",
        f"  state directory = {state}",
        f"  cache directory = {state}",
        f"  pid directory = {state}",
        f"  ncalrpc dir = {state}/ncalrpc",
        f"  log file = {state}/log.smbd",
        f"  smb passwd file = {state}/smbpasswd",
        "  interfaces = 127.0.0.1",
        "  bind interfaces only = yes",
        "  security = user",
        "  map to guest = Bad User",
        "  load printers = no",
        "  printing = bsd",
        "  disable spoolss = yes",
        "  usershare max shares = 0",
        "[qemu]",
        f"  path = {share}",
        "  read only = no",
        "  guest ok = yes",
    ]
    if user is not None:
        lines.append(f"  force user = {user}")
    return "\n".join(lines) + "\n"


@implementer(IStreamClientEndpoint)
class SmbShare:
    """
    The endpoint a guest's connection to the SMB server reaches: a run of
    C{smbd} for the share of C{directory}.
    """

    def __init__(self, reactor: Any, directory: str, smbd: str, spec: str) -> None:
        self.reactor = reactor
        self.directory = directory
        self.smbd = smbd
        self.spec = spec
        self.state: str | None = None
        self._endpoint: CommandEndpoint | None = None

    def __repr__(self) -> str:
        return f"smb:{self.directory}"

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        if self._endpoint is None:
            try:
                self._prepare()
            except OSError as e:
                return fail(e)
        assert self._endpoint is not None
        return self._endpoint.connect(protocolFactory)

    def _prepare(self) -> None:
        try:
            user: str | None = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:  # a uid with no name (a container's): smbd acts as itself
            user = None
        state = self.state = tempfile.mkdtemp(prefix="vtwisted-smb.")
        conf = os.path.join(state, "smb.conf")
        with open(conf, "w") as out:
            out.write(configuration(self.directory, state, user))
        self._endpoint = CommandEndpoint(self.reactor, [self.smbd, "-l", state, "-s", conf],
                                         self.spec, socket=True)

    def close(self) -> Deferred[Any]:
        """
        End the runs of C{smbd} still going, then remove Samba's private
        directory.

        @return: fires when that is done.
        """
        endpoint, state = self._endpoint, self.state
        self.state, self._endpoint = None, None
        ended = endpoint.stopAll() if endpoint is not None else succeed(None)
        if state is not None:
            ended.addCallback(lambda _: shutil.rmtree(state, ignore_errors=True))
        return ended
