"""
A TAP port without a kernel: L{FakeTapSystem} extends Twisted's
L{MemoryIOSystem} with what a TAP with offloads needs (C{TUNSETOFFLOAD},
accepted or refused for chosen bits, C{writev}, and errors injected into
reads and writes), and a L{Rig} opens TAP services on a switch with it.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Sequence

from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, formatEvent
from twisted.pair.testing import MemoryIOSystem, Tunnel
from twisted.pair.tuntap import TunnelFlags

from vtwisted.portoptions import PortOptions
from vtwisted.ports import tap
from vtwisted.ports.tapdevice import TUNSETOFFLOAD
from vtwisted.spec import PortSpec
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, plug

BROADCAST = b"\xff" * 6
IFF_VNET_HDR = TunnelFlags.IFF_VNET_HDR.value
IFF_TAP = TunnelFlags.IFF_TAP.value
IFF_NO_PI = TunnelFlags.IFF_NO_PI.value
ALL_OFFLOADS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40
TSO_OFFLOADS = 0x01 | 0x02 | 0x04 | 0x08


class FakeTunnel(Tunnel):
    """
    A tunnel that takes 64 KB writes and can fail reads and writes on demand.
    """

    SEND_BUFFER_SIZE = 1 << 20

    def __init__(self, system: FakeTapSystem, openFlags: int, fileMode: object) -> None:
        super().__init__(system, openFlags, fileMode)
        self.offloads: int | None = None
        self.readError: int | None = None
        self.writeError: int | None = None

    def read(self, limit: int) -> bytes:
        if self.readError is not None:
            raise OSError(self.readError, errno.errorcode[self.readError])
        if self.readBuffer and isinstance(self.readBuffer[0], int):
            code = self.readBuffer.popleft()
            raise OSError(code, errno.errorcode[code])
        return super().read(limit)

    def write(self, datagram: bytes) -> int:
        if self.writeError is not None:
            raise OSError(self.writeError, errno.errorcode[self.writeError])
        return super().write(datagram)

    def inject(self, data: bytes) -> None:
        """
        Make C{data} the next thing the switch reads, as the kernel hands it.
        """
        self.readBuffer.append(data)

    def injectError(self, code: int) -> None:
        """
        Make the read after those injected so far fail once with C{code}.
        """
        self.readBuffer.append(code)

    def written(self) -> list[bytes]:
        """
        What the switch wrote, forgetting it.
        """
        out = list(self.writeBuffer)
        self.writeBuffer.clear()
        return out


class FakeTapSystem(MemoryIOSystem):
    """
    L{MemoryIOSystem} plus C{TUNSETOFFLOAD}, C{writev} and chosen errors.

    @ivar refusedOffloads: C{TUN_F_*} bits the fake kernel does not know
        (C{EINVAL}, as older kernels answer for USO).
    @ivar setiffError: an errno C{TUNSETIFF} fails with, if any.
    @ivar offloadCalls: every C{TUNSETOFFLOAD} argument, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.registerSpecialDevice(Tunnel._DEVICE_NAME, FakeTunnel)
        self.refusedOffloads = 0
        self.setiffError: int | None = None
        self.offloadCalls: list[int] = []

    def ioctl(self, fd: int, request: int, args: object) -> object:
        if request == TUNSETOFFLOAD:
            if "ioctl" not in self.permissions:
                raise OSError(errno.EPERM, "Operation not permitted")
            assert isinstance(args, int), "TUNSETOFFLOAD takes its argument by value"
            self.offloadCalls.append(args)
            if args & self.refusedOffloads:
                raise OSError(errno.EINVAL, "Invalid argument")
            self._openFiles[fd].offloads = args
            return 0
        if self.setiffError is not None and fd in self._openFiles:
            raise OSError(self.setiffError, errno.errorcode[self.setiffError])
        return super().ioctl(fd, request, args)

    def writev(self, fd: int, buffers: list[bytes]) -> int:
        return self.write(fd, b"".join(buffers))

    def tunnels(self) -> list[FakeTunnel]:
        return list(self._openFiles.values())


class Rig:
    """
    A switch with TAP ports on a fake system and a FakeLink for comparison.
    """

    def __init__(self) -> None:
        self.switch = Switch()
        self.reactor = MemoryReactor()
        self.system = FakeTapSystem()
        self.services: list[tap.TapService] = []

    def tap(
        self,
        name: str = "tap7",
        offload: bool | str = True,
        options: str = "",
        busyPoll: float = 0.0,
        uso: bool = True,
        coalesce: bool = True,
    ) -> tap.TapService:
        spec = PortSpec(f"tap:{name}" + (f":{options}" if options else ""))
        service = tap.TapService(self.switch, self.reactor, name, offload,
                                 PortOptions.fromSpec(spec), spec.text, self.system,
                                 busyPoll=busyPoll, uso=uso, coalesce=coalesce)
        service.privilegedStartService()
        service.startService()
        self.services.append(service)
        return service

    def link(self) -> FakeLink:
        link = FakeLink()
        plug(self.switch, link)
        return link


def tunnelOf(service: tap.TapService) -> FakeTunnel:
    assert service.link is not None and isinstance(service.system, FakeTapSystem)
    return service.system.getTunnel(service.link)


def rigged() -> Iterator[Rig]:
    """
    A L{Rig} whose running services stop afterwards: the body of a fixture.
    """
    made = Rig()
    yield made
    for service in made.services:
        if service.running:
            service.stopService()


def errorsLogged(events: Sequence[dict]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level") in (LogLevel.error,
                                                                      LogLevel.critical)]
