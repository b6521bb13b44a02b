"""The default of ``[DEFAULT] my_ip``: this host's IPv4 address.

The source address the kernel would pick for traffic to a public address
(RFC 5737 TEST-NET-1; nothing is sent), else the address of the interface
holding the default route, else 127.0.0.1: the rule of oslo.utils'
``netutils.get_my_ipv4``, without the psutil it imports for the second
step (a megabyte of the idle agent's memory, see bench/scale.py).
"""

import fcntl
import socket
import struct

LOCALHOST = '127.0.0.1'
_SIOCGIFADDR = 0x8915
_PROBE = ('192.0.2.0', 80)


def my_ipv4():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(_PROBE)
            return s.getsockname()[0]
    except OSError:
        return _default_route_address()


def _default_route_address(routes='/proc/net/route'):
    try:
        with open(routes) as f:
            for line in f:
                fields = line.strip().split('\t')
                if len(fields) > 1 and fields[1] == '00000000':
                    return _interface_ipv4(fields[0])
    except OSError:
        pass
    return LOCALHOST


def _interface_ipv4(name):
    """The interface's (first) IPv4 address, or 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack('256s', name.encode()[:15])
            return socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFADDR,
                                                req)[20:24])
    except (OSError, UnicodeError, ValueError):
        return LOCALHOST
