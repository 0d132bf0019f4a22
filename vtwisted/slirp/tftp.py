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

Blocks go out a window at a time: by default a window of one block, in
lockstep (RFC 1350), or as many as the guest asks for with C{windowsize}
(RFC 7440, up to L{MAX_WINDOW}).  An acknowledgement of the window's last
block sends the next window; one of an earlier block (the guest missed the
one after it) sends the window again from there; after the timeout the
window goes out again, up to L{RETRIES} times.  Duplicated ACKs, and ACKs
of blocks not sent, move nothing, so they cannot double the traffic
(the Sorcerer's Apprentice), however a guest acknowledges.  The file's size
is taken when it is opened and blocks are read up to it: a file that
shrinks meanwhile ends the transfer with an error rather than a short
block in the middle, and one that grows is sent up to its old size.  Options (RFC
2347) are acknowledged with an OACK: C{blksize} (up to what fits the
port's MTU unfragmented), C{tsize} (the file's size), C{timeout} and
C{windowsize}.  Block numbers
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
#: The most blocks in flight a guest may ask for (RFC 7440's C{windowsize}).
MAX_WINDOW = 64


class Refusal(Exception):
    """
    A request the server answers with an ERROR packet.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: The values RFC 2348, 2349 and 7440 allow for each option.
_RANGES = {"blksize": (8, 65464), "timeout": (1, 255), "windowsize": (1, 65535)}


def _asked(options: dict[str, str], name: str) -> int | None:
    """
    The value a request gives option C{name}, if it is a decimal number
    (in ASCII digits: values are Latin-1, whose superscripts are digits to
    Python) in the option's range; else L{None}.
    """
    text = options.get(name, "")
    if not (text.isascii() and text.isdigit()):
        return None
    low, high = _RANGES[name]
    return int(text) if low <= int(text) <= high else None


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
    One file being sent to one guest, a window of blocks at a time.

    @ivar acked: the blocks the guest has acknowledged (counting from 1,
        never wrapping).
    @ivar block: the highest block sent so far.
    @ivar size: the file's size when it was opened: what is sent.
    @ivar last: the final block (shorter than a block, maybe empty).
    """

    def __init__(self, server: TftpServer, key: tuple[bytes, int], handle: IO[bytes],
                 name: str, blockSize: int, timeout: float, window: int = 1) -> None:
        self.server = server
        self.key = key
        self.handle = handle
        self.name = name
        self.blockSize = blockSize
        self.timeout = timeout
        self.window = window
        self.acked = 0
        self.block = 0
        self.inFlight = 0
        self.size = os.fstat(handle.fileno()).st_size
        self.last = self.size // blockSize + 1
        self.sent = 0
        self.retries = 0
        self._oack: bytes | None = None
        self._timer: Any = None

    def start(self, accepted: dict[str, str]) -> None:
        """
        Acknowledge the options, or send the first window.
        """
        if accepted:
            self._oack = tftp.oack(accepted)
            self.server.send(self.key, self._oack)
            self._arm()
        else:
            self._sendWindow()

    def ackReceived(self, block: int) -> None:
        """
        The guest acknowledged C{block}: all blocks up to it arrived.

        An acknowledgement of the window's last block moves the transfer on
        by a window; one of an earlier block (the guest lost the next) sends
        the window again from there (RFC 7440).  Duplicates, and blocks not
        sent, are ignored: a guest that lost a window's first block gets the
        window again after the timeout.
        """
        if self._oack is not None:
            if block == 0:
                self._oack = None
                self._sendWindow()
            return
        ahead = (block - self.acked) & 0xFFFF
        if ahead == 0 or ahead > self.inFlight:
            return
        self.acked += ahead
        if self.acked >= self.last:
            self.server.finished(self, None)
            return
        self._sendWindow()

    def _sendWindow(self) -> None:
        self.retries = 0
        self._resendWindow()

    def _resendWindow(self) -> None:
        number = self.acked
        end = self.acked + self.window
        while number < min(end, self.last):
            number += 1
            packet = self._data(number)
            if packet is None:
                self.server.send(self.key, tftp.error(tftp.NOT_DEFINED, "file changed"))
                self.server.finished(self, f"{self.name} shrank during the transfer")
                return
            self.server.send(self.key, packet)
        self.inFlight = number - self.acked
        self._arm()

    def _data(self, number: int) -> bytes | None:
        """
        DATA for block C{number}, or L{None} if the file is now too short.
        """
        start = (number - 1) * self.blockSize
        want = min(self.blockSize, self.size - start)
        chunk = os.pread(self.handle.fileno(), want, start)
        if len(chunk) < want:
            return None
        if number > self.block:
            self.block = number
            self.sent += len(chunk)
        return tftp.data(number, chunk)

    def _arm(self) -> None:
        self.cancel()
        self._timer = self.server.reactor.callLater(self.timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.retries >= RETRIES:
            self.server.finished(self, f"no answer after {RETRIES} resends of block "
                                       f"{self.acked + 1}")
            return
        self.retries += 1
        if self._oack is not None:
            self.server.send(self.key, self._oack)
            self._arm()
        else:
            self._resendWindow()

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
        Send a TFTP packet to a guest, from the gateway's port 69 (its IPv6
        address for a guest that asked over IPv6).
        """
        guest = key[0]
        gateway = self.network.gateway if len(guest) == 4 else self.network.gateway6
        if gateway is not None:
            self.network.sendUdp(gateway, guest, PORT, key[1], packet)

    def datagramReceived(self, guest: bytes, guestPort: int, packet: bytes) -> None:
        """
        A guest sent C{packet} to the gateway's port 69 (over IPv4 or IPv6:
        C{guest} is 4 or 16 bytes).
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
            handle = open(path, "rb", buffering=0)  # closed when the transfer ends
        except OSError as e:
            raise Refusal(tftp.ACCESS_VIOLATION, e.strerror or "cannot read") from None
        options = request.options
        blockSize = _asked(options, "blksize")
        blockSize = tftp.DEFAULT_BLOCK if blockSize is None else \
            min(blockSize, self.network.mtu - 32)
        timeout = _asked(options, "timeout")
        window = _asked(options, "windowsize")
        return Transfer(self, key, handle, request.filename, blockSize,
                        TIMEOUT if timeout is None else float(timeout),
                        1 if window is None else min(window, MAX_WINDOW))

    def _accepted(self, request: tftp.Request, transfer: Transfer) -> dict[str, str]:
        """
        The options to acknowledge, in the order they were asked.
        """
        granted = {"blksize": str(transfer.blockSize), "timeout": f"{transfer.timeout:.0f}",
                   "windowsize": str(transfer.window)}
        accepted = {}
        for name in request.options:
            if name == "tsize":
                accepted[name] = str(transfer.size)
            elif name in granted and _asked(request.options, name) is not None:
                accepted[name] = granted[name]
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
            windows = f", in windows of {transfer.window}" if transfer.window > 1 else ""
            log.info("slirp TFTP: sent {name} ({size} bytes{windows}) to {guest}",
                     name=transfer.name, size=transfer.sent, windows=windows, guest=where)
        else:
            log.info("slirp TFTP: {name} to {guest} stopped: {problem}", name=transfer.name,
                     guest=where, problem=problem)

    def describe(self) -> list[str]:
        """
        Lines for C{slirp/print}.
        """
        lines = [f"TFTP {self.root}: {self.served} files sent"]
        for (guest, port), transfer in sorted(self.transfers.items()):
            window = f", window {transfer.window}" if transfer.window > 1 else ""
            lines.append(f"TFTP {transfer.name} to {guestEndpoint(guest, port)}: "
                         f"block {transfer.block}, {transfer.sent} bytes{window}")
        return lines

    def close(self) -> None:
        """
        Stop every transfer.
        """
        for transfer in list(self.transfers.values()):
            transfer.cancel()
            transfer.handle.close()
        self.transfers.clear()
