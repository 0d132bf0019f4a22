"""
The reference point for a Python switch: a bare two-TAP hub with virtio-net
offloads, no features, no framework.  C{python reference_hub.py TAP1 TAP2}.
"""

import fcntl
import os
import select
import struct
import sys

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
OFFLOADS = 0x01 | 0x02 | 0x04 | 0x08  # csum, tso4, tso6, tso_ecn


def openTap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    return fd


def main() -> None:
    a, b = openTap(sys.argv[1]), openTap(sys.argv[2])
    peer = {a: b, b: a}
    poller = select.epoll()
    poller.register(a, select.EPOLLIN)
    poller.register(b, select.EPOLLIN)
    while True:
        for fd, _ in poller.poll():
            while True:
                try:
                    data = os.read(fd, 65600)
                except BlockingIOError:
                    break
                try:
                    os.write(peer[fd], data)
                except OSError:  # queue full, or the other device not up yet
                    pass


if __name__ == "__main__":
    main()
