"""
The read-only TFTP server of a slirp port (QEMU's C{tftp=DIR}), for network
boots (PXE) and for fetching files into guests that have nothing else.

Theory of operation
-------------------
Guests reach it at the gateway's port 69, as in libslirp; every packet of a
transfer is answered from that port, and a transfer is known by the
guest's address and port.  A read request names a file under the root
directory: leading slashes are dropped, C{..} and paths that leave the root
(through symbolic links too) are refused with an access violation, and
anything but a regular file is "file not found".  Write requests are
refused: the server is read-only.

Blocks go out in lockstep (RFC 1350): block I{n+1} once block I{n} is
acknowledged, block I{n} again after the timeout, up to L{RETRIES} times;
only the acknowledgement of the block in flight moves the transfer on, so
duplicated ACKs cannot double the traffic.  Options (RFC 2347) are
acknowledged with an OACK: C{blksize} (up to what fits the port's MTU
unfragmented), C{tsize} (the file's size) and C{timeout}.  Block numbers
wrap past 65535, so files larger than 32 MB (at 512-byte blocks) work with
clients that roll over too.  Files are read block by block, never whole.
"""

from __future__ import annotations

import os
from typing import IO, Any

from twisted.logger import Logger

from vtwisted.interfaces import IGuestNetwork
from vtwisted.slirp.addresses import guestEndpoint
from vtwisted.wire import tftp

log = Logger()

PORT = 69
#: Resends of a block before the transfer is given up.
RETRIES = 5
#: Seconds before a block is resent, unless the client asks otherwise.
TIMEOUT = 1.0
#: Transfers at once.
MAX_TRANSFERS = 64


class Refusal(Exception):
    """
    A request the server answers with an ERROR packet.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve(root: str, filename: str) -> str:
    """
    The path of the regular file C{filename} names under C{root}.

    @raise Refusal: the name leaves the root, or there is no such file.
    """
    name = filename.replace("\\", "/").lstrip("/")
    if not name or ".." in name.split("/") or "\0" in name:
        raise Refusal(tftp.ACCESS_VIOLATION, "access violation")
    path = os.path.realpath(os.path.join(root, name))
    if not path.startswith(root.rstrip("/") + "/"):
        raise Refusal(tftp.ACCESS_VIOLATION, "access violation")
    if not os.path.isfile(path):
        raise Refusal(tftp.FILE_NOT_FOUND, "file not found")
    return path


class Transfer:
    """
    One file being sent to one guest.
    """

    def __init__(self, server: TftpServer, key: tuple[bytes, int], handle: IO[bytes],
                 name: str, blockSize: int, timeout: float) -> None:
        self.server = server
        self.key = key
        self.handle = handle
        self.name = name
        self.blockSize = blockSize
        self.timeout = timeout
        self.block = 0
        self.done = False
        self.sent = 0
        self.current = b""
        self.retries = 0
        self._timer: Any = None

    def start(self, accepted: dict[str, str]) -> None:
        """
        Acknowledge the options, or send the first block.
        """
        if accepted:
            self._send(tftp.oack(accepted))
        else:
            self._next()

    def ackReceived(self, block: int) -> None:
        """
        The guest acknowledged C{block}: if it is the one in flight, go on.
        """
        if block != self.block & 0xFFFF:
            return
        if self.done:
            self.server.finished(self, None)
            return
        self._next()

    def _next(self) -> None:
        self.block += 1
        self.handle.seek((self.block - 1) * self.blockSize)
        chunk = self.handle.read(self.blockSize)
        self.sent += len(chunk)
        self.done = len(chunk) < self.blockSize
        self._send(tftp.data(self.block, chunk))

    def _send(self, packet: bytes) -> None:
        self.current = packet
        self.retries = 0
        self.server.send(self.key, packet)
        self._arm()

    def _arm(self) -> None:
        self.cancel()
        self._timer = self.server.reactor.callLater(self.timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.retries >= RETRIES:
            self.server.finished(self, f"no answer after {RETRIES} resends of block {self.block}")
            return
        self.retries += 1
        self.server.send(self.key, self.current)
        self._arm()

    def cancel(self) -> None:
        """
        Stop the resend timer.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class TftpServer:
    """
    The TFTP server of one slirp port.

    @ivar root: the directory served (its real path).
    @ivar transfers: (guest address, guest port) to its L{Transfer}.
    """

    def __init__(self, network: IGuestNetwork, root: str, reactor: Any) -> None:
        self.network = network
        self.root = os.path.realpath(root)
        self.reactor = reactor
        self.transfers: dict[tuple[bytes, int], Transfer] = {}
        self.served = 0

    def send(self, key: tuple[bytes, int], packet: bytes) -> None:
        """
        Send a TFTP packet to a guest, from the gateway's port 69.
        """
        self.network.sendUdp(self.network.gateway, key[0], PORT, key[1], packet)

    def datagramReceived(self, guest: bytes, guestPort: int, packet: bytes) -> None:
        """
        A guest sent C{packet} to the gateway's port 69.
        """
        key = (guest, guestPort)
        try:
            opcode = tftp.opcodeOf(packet)
            if opcode == tftp.ACK:
                transfer = self.transfers.get(key)
                if transfer is not None:
                    transfer.ackReceived(tftp.parseBlock(packet))
            elif opcode == tftp.ERROR:
                transfer = self.transfers.get(key)
                if transfer is not None:
                    self.finished(transfer, f"the guest gave up: {tftp.parseError(packet)[1]}")
            elif opcode in (tftp.RRQ, tftp.WRQ):
                self._requested(key, tftp.parseRequest(packet))
            else:
                self.send(key, tftp.error(tftp.ILLEGAL_OPERATION, "illegal TFTP operation"))
        except tftp.TftpError as e:
            self.network.dropped("malformed", f"TFTP from {guestEndpoint(guest, guestPort)}: {e}")

    def _requested(self, key: tuple[bytes, int], request: tftp.Request) -> None:
        old = self.transfers.pop(key, None)
        if old is not None:
            self.finished(old, "replaced by a new request")
        try:
            transfer = self._open(key, request)
        except Refusal as e:
            self.send(key, tftp.error(e.code, e.message))
            return
        self.transfers[key] = transfer
        transfer.start(self._accepted(request, transfer))

    def _open(self, key: tuple[bytes, int], request: tftp.Request) -> Transfer:
        if request.opcode == tftp.WRQ:
            raise Refusal(tftp.ACCESS_VIOLATION, "this TFTP server is read-only")
        if request.mode != "octet":
            raise Refusal(tftp.ILLEGAL_OPERATION, "only octet mode is served")
        if len(self.transfers) >= MAX_TRANSFERS:
            raise Refusal(tftp.NOT_DEFINED, "too many transfers")
        path = resolve(self.root, request.filename)
        try:
            handle = open(path, "rb")  # closed when the transfer ends
        except OSError as e:
            raise Refusal(tftp.ACCESS_VIOLATION, e.strerror or "cannot read") from None
        blockSize = tftp.DEFAULT_BLOCK
        wanted = request.options.get("blksize", "")
        if wanted.isdigit() and 8 <= int(wanted):
            blockSize = min(int(wanted), self.network.mtu - 32)
        timeout = TIMEOUT
        asked = request.options.get("timeout", "")
        if asked.isdigit() and 1 <= int(asked) <= 255:
            timeout = float(asked)
        return Transfer(self, key, handle, request.filename, blockSize, timeout)

    def _accepted(self, request: tftp.Request, transfer: Transfer) -> dict[str, str]:
        """
        The options to acknowledge, in the order they were asked.
        """
        accepted = {}
        for name, value in request.options.items():
            if name == "blksize" and value.isdigit() and int(value) >= 8:
                accepted[name] = str(transfer.blockSize)
            elif name == "tsize":
                accepted[name] = str(os.fstat(transfer.handle.fileno()).st_size)
            elif name == "timeout" and value.isdigit() and 1 <= int(value) <= 255:
                accepted[name] = value
        return accepted

    def finished(self, transfer: Transfer, problem: str | None) -> None:
        """
        End C{transfer}: done if C{problem} is L{None}, given up otherwise.
        """
        transfer.cancel()
        transfer.handle.close()
        if self.transfers.get(transfer.key) is transfer:
            del self.transfers[transfer.key]
        where = guestEndpoint(*transfer.key)
        if problem is None:
            self.served += 1
            log.info("slirp TFTP: sent {name} ({size} bytes) to {guest}", name=transfer.name,
                     size=transfer.sent, guest=where)
        else:
            log.info("slirp TFTP: {name} to {guest} stopped: {problem}", name=transfer.name,
                     guest=where, problem=problem)

    def describe(self) -> list[str]:
        """
        Lines for C{slirp/print}.
        """
        lines = [f"TFTP {self.root}: {self.served} files sent"]
        for (guest, port), transfer in sorted(self.transfers.items()):
            lines.append(f"TFTP {transfer.name} to {guestEndpoint(guest, port)}: "
                         f"block {transfer.block}, {transfer.sent} bytes")
        return lines

    def close(self) -> None:
        """
        Stop every transfer.
        """
        for transfer in list(self.transfers.values()):
            transfer.cancel()
            transfer.handle.close()
        self.transfers.clear()
