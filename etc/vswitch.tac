"""
A vswitch built in Python: run with C{twistd -ny etc/vswitch.tac}.

This is the way to script bigger set-ups than command-line options allow:
any number of port specs, settings computed at start, several switches in
one process (give each its own directory).  Edit and copy freely.
"""

import os

from twisted.application.service import Application
from twisted.internet import reactor

from vtwisted.app import buildService, ignoreHangups
from vtwisted.spec import escape

directory = os.environ.get("VSWITCH_SOCK", "/tmp/vde.ctl")

application = Application("vswitch")
switchService = buildService(
    reactor,
    ports=[
        "vde:" + escape(directory) + ":mode=0660",  # escape: \\, : and = in a path
        # "tap:tap0",
        # "tap:lab1:netns=lab1",  # moved into ip netns lab1 and brought up there
        # "vde:/tmp/lab-vlan10:vlan=10",
        # "qemu:unix:/tmp/vms.sock",  # -netdev stream,addr.type=unix,addr.path=/tmp/vms.sock
        # "qemu:connect:unix:/tmp/vm2.sock",  # -netdev stream,server=on,...
        # "vhostuser:unix:/tmp/vms.vhost",  # -netdev vhost-user (guest RAM share=on)
        # "dgram:udp:127.0.0.1:5555:127.0.0.1:5556",  # -netdev socket,udp=127.0.0.1:5555,...
        # "slirp:hostfwd=tcp\\:\\:2222-\\:22",  # NAT like -netdev user, host port 2222 to guest 22
        # "cable:listen:tcp:7443:cert=a.pem:key=a.key:ca=b.pem",  # TLS cable from another switch
        # "cmd:ssh hostb vde_plug /tmp/lab",  # any VDE switch a command can reach, restarted
        # "tap:wan0:delay=40:indelay=40:rate=10000",  # a slow link, 40 ms each way
        # "vxlan:remote=192.0.2.7:vni=42",  # a Linux vxlan device or switch on another host
        # "vxvde:vni=9",  # vdeplug4's vxvde:// network (qemu -netdev vde,sock=vxvde://...)
        # "packet:veth0:delay=20",  # an interface through a packet socket, 20 ms slower
        # "pcap:/tmp/lan.pcap:maxsize=100:files=5",  # a ring of captures, 100 MB each
    ],
    numPorts=64,
    # fstp=True,  # spanning tree (vde_switch -F), for loops of cables
)
switchService.setServiceParent(application)
ignoreHangups(reactor)  # as twistd vswitch: SIGHUP would kill it, leaving its sockets
