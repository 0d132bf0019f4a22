"""
The user-mode NAT behind slirp ports (L{vtwisted.ports.slirp}).

A slirp port's one link is a router (L{router}, with L{router6} for IPv6,
L{arpcache} and L{fragments}) that faces the guests and hands what they send
to protocol engines facing the host: L{tcp} (with L{tcpconnection},
L{tcpsend} and L{tcpstates}), L{udp}, L{icmp} and the DHCP server L{dhcp}.
The engines see the router only through
L{vtwisted.interfaces.IGuestNetwork}; L{config} reads a spec into the
address plan and forwards, L{packets} builds packets, L{commands} is the
console's C{slirp/} menu.
"""
