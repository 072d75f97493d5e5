"""
Small facts about textual IP addresses, shared by the data-connection
checks, the backend connections and the TLS name checks.
"""

from __future__ import annotations

import ipaddress


def isIPAddress(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 literal (not a name).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _unmapped(host: str):
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def sameHost(a: str, b: str) -> bool:
    """
    Whether two textual addresses name the same host, IPv4-mapped IPv6
    addresses included.
    """
    try:
        return _unmapped(a) == _unmapped(b)
    except ValueError:
        return a == b
