"""
Fakes for C{cmd:} ports without processes.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport


class PipesTransport(StringTransport):
    """
    A command's process transport that records which of its pipes the
    switch closed (C{closeStdin}, C{closeStdout}, C{closeStderr}), in order,
    each once.
    """

    def __init__(self, pid: int | None) -> None:
        super().__init__()
        self.pid: int | None = pid
        #: The child descriptors whose pipes the switch closed, in order.
        self.closed: list[int] = []

    def closeChildFD(self, childFD: int) -> None:
        if childFD not in self.closed:
            self.closed.append(childFD)

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)
