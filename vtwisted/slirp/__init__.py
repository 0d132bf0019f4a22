"""
The user-mode NAT behind slirp ports.
"""
