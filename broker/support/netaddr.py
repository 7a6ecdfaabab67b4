"""IP addresses and rules (addresses or CIDRs, v4 and v6), one parsing for the broker."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> Address | None:
    """The address in ``text``; an IPv4-mapped IPv6 address is its IPv4 address."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=65536)
def plain(text: str) -> str:
    """Canonical text of an address (``::ffff:10.0.0.1`` → ``10.0.0.1``); other text as is.
    Memoized: it runs on every request, for a bounded set of client addresses."""
    ip = parse_ip(text)
    return str(ip) if ip is not None else text


def normalize_rule(item: str) -> str:
    """Canonical text of an address (``127.0.0.1``) or network (``10.0.0.0/8``); raises
    ``ValueError`` for anything else."""
    if "/" in item:
        return str(ipaddress.ip_network(item, strict=False))
    return str(ipaddress.ip_address(item))


def matches(ip: str, rules: Iterable[str]) -> bool:
    """Whether ``ip`` is one of ``rules`` (normalized addresses or CIDRs)."""
    addr = parse_ip(ip)
    if addr is None:
        return False
    for rule in rules:
        if "/" in rule:
            if addr in ipaddress.ip_network(rule, strict=False):
                return True
        elif parse_ip(rule) == addr:
            return True
    return False
