"""
The port types that ship with vtwisted.  Keep this module import-light.
"""

from vtwisted.porttype import PortType

vde = PortType(
    "vde",
    "vtwisted.ports.vde",
    "vde:DIR[:mode=0600][:group=G][:dirmode=02700]  a VDE switch directory, "
    "for vde_plug, qemu -netdev vde, vde_plug2tap, slirpvde",
)

tap = PortType(
    "tap",
    "vtwisted.ports.tap",
    "tap:NAME[:offload=auto|on|off][:uso=on|off][:coalesce=on|off][:busypoll=USEC]  a Linux TAP "
    "device, opened "
    "(or created) by the switch, with virtio-net offloads",
)

qemu = PortType(
    "qemu",
    "vtwisted.ports.qemu",
    "qemu:[listen:]ENDPOINT or qemu:connect:ENDPOINT  QEMU's -netdev stream/socket "
    "(a Twisted endpoint: unix:/run/vm.sock, tcp:5555:interface=127.0.0.1); "
    "a port per guest",
)

dgram = PortType(
    "dgram",
    "vtwisted.ports.dgram",
    "dgram:udp:LHOST:LPORT:RHOST:RPORT or dgram:unix:LOCAL:REMOTE  QEMU's -netdev dgram "
    "and -netdev socket,udp=: one datagram per frame",
)

cable = PortType(
    "cable",
    "vtwisted.ports.cable",
    "cable:[connect:]ENDPOINT or cable:listen:ENDPOINT  a TLS cable to another vtwisted "
    "switch (cert=PEM, ca=PEM; tls=off), super-frames cross whole",
)

slirp = PortType(
    "slirp",
    "vtwisted.ports.slirp",
    "slirp[:net=10.0.2.0/24][:hostfwd=tcp\\:\\:2222-\\:22,...][:restrict=on][:mtu=1500]  "
    "user-mode NAT like qemu -netdev user, for every guest on the LAN: DHCP, DNS, TCP, UDP, "
    "ICMP, IPv6 (ipv6=off, net6=, dhcpv6=off), port forwards, guestfwd=ADDR\\:PORT-ENDPOINT",
)

mcast = PortType(
    "mcast",
    "vtwisted.ports.mcast",
    "mcast:GROUP:PORT[:localaddr=ADDR][:ttl=1]  QEMU's -netdev socket,mcast= (and "
    "User-Mode Linux's mcast): the multicast group is one port",
)

pcap = PortType(
    "pcap",
    "vtwisted.ports.pcap",
    "pcap:PATH[:snaplen=N][:maxsize=MB[:files=N]] or pcap:listen:ENDPOINT[:snaplen=N]  a "
    "capture port: every frame the other ports read, written to a libpcap file (tcpdump -r, "
    "Wireshark), a FIFO read live, or each reader connecting to ENDPOINT "
    "(unix:/run/capture, tcp:5556) as a stream of its own",
)

vxlan = PortType(
    "vxlan",
    "vtwisted.ports.vxlan",
    "vxlan[:GROUP|v6][:vni=1][:dstport=4789][:remote=ADDR,...][:if=NAME][:local=ADDR]  "
    "a VXLAN network as one port: Linux vxlan devices, vde_plug vxlan://, other switches",
)

packet = PortType(
    "packet",
    "vtwisted.ports.packet",
    "packet:IFACE[:coalesce=on|off]  any Ethernet interface (a veth, a bridge port, a NIC) "
    "through a packet socket, as vde_pcapplug does, with offloads",
)

vxvde = PortType(
    "vxvde",
    "vtwisted.ports.vxvde",
    "vxvde[:GROUP|v6][:vni=1][:dstport=14789][:if=NAME]  a member of vdeplug4's switchless "
    "vxvde:// network (vde_plug, qemu -netdev vde,sock=vxvde://)",
)

vhostuser = PortType(
    "vhostuser",
    "vtwisted.ports.vhostuser",
    "vhostuser:[connect:]unix:PATH  QEMU's -netdev vhost-user (guest RAM shared: "
    "memory-backend-memfd,share=on): virtio queues in shared memory, super-frames both ways; "
    "a port per guest",
)

cmd = PortType(
    "cmd",
    "vtwisted.ports.command",
    "cmd:COMMAND  a cable through a command speaking vde_plug's stream on stdin/stdout "
    "(cmd:ssh hostb vde_plug /tmp/sw; escape : as \\:, and = where the text before it could be "
    "an option: cmd:FOO\\=1 ...), restarted when it ends "
    "(restart=on|on-failure|off); socket=stream|dgram|seqpacket hands it a socket as {fd} "
    "(QEMU's -netdev stream,addr.type=fd,addr.str={fd})",
)
