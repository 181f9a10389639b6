"""Validated scalar values of the LISP model: addresses, EID prefixes,
IIDs, MACs and actions.

Everything here is pure. Parsers raise `ModelError` naming the field, so the
config loader and the REST API report the same problems in the same words.
"""
from __future__ import annotations

import ipaddress
import operator
import re
import socket
from typing import Union

from lisp_controller.errors import LispControllerError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

IID_MAX = 2**24 - 1
PRIORITY_UNUSED = 255  # RFC 9300: an RLOC with priority 255 is never used

# Actions for negative map-cache entries and for a map-cache miss (RFC 9301).
ACTIONS = ("no-action", "native-forward", "send-map-request", "drop")

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class ModelError(LispControllerError, ValueError):
    """A value failed validation; `field` says which one (None: the input
    as a whole, e.g. a body that is not JSON). Also a ValueError, as any
    bad value is."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(problem, field)
        self.problem = problem


def parse_iid(value: object, field: str = "iid") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(field, f"must be an integer, got {value!r}")
    if not 0 <= value <= IID_MAX:
        raise ModelError(field, f"must be between 0 and {IID_MAX}, got {value}")
    return value


def _fast_ipv4(text: str) -> int | None:
    """A canonical dotted quad as an integer, or None for anything else
    (which then takes ipaddress's slower, authoritative path). A bulk
    request validates 100,000 of these; ipaddress alone costs 3 us each."""
    try:
        packed = _pton(_AF_INET, text)
    except (OSError, ValueError):  # ValueError: NUL or lone surrogates in the text
        return None
    return _from_bytes(packed, "big") if _ntop(_AF_INET, packed) == text else None


def _fast_ipv6(text: str) -> int | None:
    """An IPv6 address in the canonical form ipaddress prints, as an
    integer, or None (then ipaddress decides)."""
    try:
        packed = _pton(_AF_INET6, text)
    except (OSError, ValueError):
        return None
    return _from_bytes(packed, "big") if _ntop(_AF_INET6, packed) == text and "." not in text else None


_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_pton, _ntop = socket.inet_pton, socket.inet_ntop
_from_bytes = int.from_bytes


def parse_address(value: object, field: str) -> IPAddress:
    if not isinstance(value, str):
        raise ModelError(field, f"must be an IP address string, got {value!r}")
    number = _fast_ipv4(value)
    if number is not None:
        return ipaddress.IPv4Address(number)
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ModelError(field, f"{value!r} is not an IPv4 or IPv6 address") from None


# Host bits of each (version, prefix length), and each version's width.
_HOST_MASK = {(v, n): (1 << (bits - n)) - 1 for v, bits in ((4, 32), (6, 128)) for n in range(bits + 1)}
_BITS = {4: 32, 6: 128}


class Prefix(tuple):
    """An IP prefix (an EID) as (version, value, prefixlen): `value` is the
    network address as an integer.

    A tuple, so hashing, equality and ordering run in C, and about 100
    bytes where an ipaddress network takes 200 and more; a million of
    them are keyed, compared and sorted in a bulk request. It offers the
    part of ipaddress's network API this project uses, and str() is
    ipaddress's. Ordering is ipaddress's within a version, and IPv4 sorts
    before IPv6 (ipaddress refuses to compare them). Being a tuple, it
    iterates over its three numbers, not over addresses, and it never
    equals an ipaddress network: make one with `as_prefix`.

    `Prefix(version, value, prefixlen)` is the one constructor: it refuses
    anything but a prefix of IPv4 or IPv6 with no host bits set."""

    __slots__ = ()

    def __new__(cls, version: int, value: int, prefixlen: int) -> "Prefix":
        host = _HOST_MASK.get((version, prefixlen))
        if (host is None or type(value) is not int or type(prefixlen) is not int
                or type(version) is not int or value & host or value >> _BITS[version]):
            raise ValueError(f"not an IP prefix: version {version!r}, value {value!r}, "
                             f"prefixlen {prefixlen!r}")
        return _new_tuple(cls, (version, value, prefixlen))

    def __getnewargs__(self) -> tuple[int, int, int]:  # copy and pickle
        return tuple(self)

    version = property(operator.itemgetter(0))
    value = property(operator.itemgetter(1))
    prefixlen = property(operator.itemgetter(2))

    @property
    def max_prefixlen(self) -> int:
        return _BITS[self[0]]

    @property
    def network_address(self) -> IPAddress:
        return _ADDRESS[self[0]](self[1])

    @property
    def netmask(self) -> IPAddress:
        bits = _BITS[self[0]]
        return _ADDRESS[self[0]](((1 << bits) - 1) ^ _HOST_MASK[(self[0], self[2])])

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The same prefix as an ipaddress network."""
        return _NETWORK[self[0]]((self[1], self[2]))

    def subnet_of(self, other: "Prefix") -> bool:
        """True if `other` contains this prefix; TypeError for another
        IP version, as ipaddress does."""
        if self[0] != other[0]:
            raise TypeError(f"{self} and {other} are not of the same version")
        return other[2] <= self[2] and self[1] & ~_HOST_MASK[(other[0], other[2])] == other[1]

    def __contains__(self, address: object) -> bool:
        """`address in prefix`, for an ipaddress address, as ipaddress does."""
        if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise TypeError(f"'in <Prefix>' needs an IP address, not {type(address).__name__}")
        return address.version == self[0] and int(address) & ~_HOST_MASK[(self[0], self[2])] == self[1]

    def __str__(self) -> str:
        version, value, length = self
        if version == 4:  # a store write makes 100,000 of these: tables beat inet_ntoa
            return "".join((_DOTTED[value >> 24], _DOTTED[value >> 16 & 255], _DOTTED[value >> 8 & 255],
                            _DECIMAL[value & 255], _SLASHED[length]))
        text = _ntop(_AF_INET6, value.to_bytes(16, "big"))
        if "." in text:  # the C library writes some addresses with a dotted quad; ipaddress never
            text = str(ipaddress.IPv6Address(value))
        return f"{text}/{length}"

    def __repr__(self) -> str:
        return f"Prefix({str(self)!r})"


_new_tuple = tuple.__new__
_LENGTHS = {str(n): n for n in range(129)}  # prefix lengths as written canonically
_DECIMAL = tuple(str(n) for n in range(256))
_DOTTED = tuple(f"{n}." for n in range(256))
_SLASHED = tuple(f"/{n}" for n in range(129))
_ADDRESS = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}
_NETWORK = {4: ipaddress.IPv4Network, 6: ipaddress.IPv6Network}


def parse_prefix(value: object, field: str = "eid") -> Prefix:
    """An EID prefix; a bare address means a host prefix (/32 or /128).

    Host bits set (10.1.1.1/24) are an error: such a typo would otherwise
    silently widen or move a mapping."""
    if not isinstance(value, str):
        raise ModelError(field, f"must be a prefix string like '10.1.0.0/16', got {value!r}")
    # The fast path takes canonical text; anything else, and every error,
    # goes to ipaddress, which decides and words the message.
    address, slash, length = value.partition("/")
    length = _LENGTHS.get(length) if slash else -1
    if length is not None:
        number = _fast_ipv4(address)
        version = 4
        if number is None:
            number = _fast_ipv6(address)
            version = 6
        if number is not None:
            try:
                return Prefix(version, number, _BITS[version] if length < 0 else length)
            except ValueError:
                pass
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ModelError(field, f"{value!r} is not a valid prefix ({exc})") from None
    if getattr(network.network_address, "scope_id", None):  # fe80::1%eth0: no scope on the wire
        raise ModelError(field, f"{value!r} is not a valid prefix (an EID prefix has no scope ID)")
    return as_prefix(network)


def as_prefix(value: object) -> Prefix:
    """A Prefix from an ipaddress network or address (a host prefix)."""
    if type(value) is Prefix:
        return value
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return Prefix(value.version, int(value.network_address), value.prefixlen)
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return Prefix(value.version, int(value), value.max_prefixlen)
    raise TypeError(f"not an IP prefix or address: {value!r}")


def parse_mac(value: object, field: str = "mac") -> str:
    if not isinstance(value, str) or not _MAC_RE.match(value.lower()):
        raise ModelError(field, f"must be a MAC address like '52:54:00:b8:27:75', got {value!r}")
    return value.lower()


def parse_int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(field, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ModelError(field, f"must be between {low} and {high}, got {value}")
    return value


def parse_gateway(value: object, field: str = "gateway") -> ipaddress.IPv4Address:
    """A VM's default router address. IPv4 only: the bridge answers ARP for
    it in flows; answering IPv6 neighbour solicitations is not done yet."""
    address = parse_address(value, field)
    if address.version != 4:
        raise ModelError(field, f"{address} is IPv6; only IPv4 gateways are answered "
                         "(ARP), IPv6 neighbour discovery is not")
    return address  # type: ignore[return-value]


def parse_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise ModelError(field, f"must be true or false, got {value!r}")
    return value


def parse_action(value: object, field: str = "action") -> str:
    if value not in ACTIONS:
        raise ModelError(field, f"must be one of {', '.join(ACTIONS)}, got {value!r}")
    return value  # type: ignore[return-value]
