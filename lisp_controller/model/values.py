"""Validated scalar values of the LISP model: addresses, EID prefixes,
IIDs, MACs, interface names and actions.

Everything here is pure. Parsers raise `ModelError` naming the field, so the
config loader and the REST API report the same problems in the same words.
Values a router would refuse (an RLOC that is not a unicast destination, a
multicast MAC for a VM, ...) are refused here, at the edge, with the reason:
README.rst's configuration reference lists them.
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

_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")  # fullmatch: $ would let a newline in
IFNAMSIZ = 16  # Linux's interface name buffer, NUL included; OVS keeps to it
_IFNAME_RE = re.compile(r"[!-~]+")  # printable ASCII, no space (fullmatch)


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


def parse_decimal(text: str, field: str, low: int, high: int) -> int:
    """An integer written in a URL or a query string: ASCII digits only.
    int() alone would also take ' 5', '1_000' and other scripts' digits
    ('\u0665'), so one value would have many spellings."""
    if not (text.isascii() and text.isdigit()):
        raise ModelError(field, f"must be an integer in ASCII digits, got {text!r}")
    if len(text) > 30:  # int() refuses thousands of digits; say why here
        raise ModelError(field, f"must be between {low} and {high}, got {text[:20]}...")
    return parse_int(int(text), field, low, high)


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
_IPV4 = ipaddress.IPv4Address
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


# What a router refuses as a destination, as integer tests on the parsed
# address (a bulk request checks 100,000 RLOCs). RFC 6890 has the registry.
def _v4_problem(n: int, rloc: bool) -> str | None:
    if n == 0:
        return "the unspecified address"
    if n >> 24 == 0 and rloc:
        return "in 0.0.0.0/8 ('this network', RFC 1122: a source, never a destination)"
    if n >> 24 == 127:
        return "a loopback address"
    if n >> 28 == 14:
        return "a multicast address"
    if n == 0xFFFFFFFF:
        return "the broadcast address"
    return None


def _v6_problem(address: ipaddress.IPv6Address, rloc: bool) -> str | None:
    n = int(address)
    if address.scope_id:
        return "scoped (%zone): a flow cannot carry the zone, so it would be dropped"
    if n == 0:
        return "the unspecified address"
    if n == 1:
        return "the loopback address"
    if n >> 120 == 0xFF:
        return "a multicast address"
    if rloc and n >> 118 == 0x3FA:
        return "link-local (fe80::/10): it means nothing without its interface, which a tunnel cannot name"
    if rloc and n >> 32 == 0xFFFF:
        return f"IPv4-mapped: write {ipaddress.IPv4Address(n & 0xFFFFFFFF)}, or OVS would send it as tun_ipv6_dst"
    return None


def parse_rloc_address(value: object, field: str = "rloc") -> IPAddress:
    """An RLOC: an address tunnelled packets are sent to, so unicast and
    routable (not unspecified, loopback, multicast, broadcast, 0.0.0.0/8,
    IPv6 link-local or IPv4-mapped, and without a scope)."""
    if isinstance(value, str):
        number = _fast_ipv4(value)
        if number is not None:
            # 1.0.0.0 to 126.255.255.255, 128.0.0.0 to 223.255.255.255, 240.0.0.0 to
            # 255.255.255.254: _v4_problem's complement, in two comparisons for most RLOCs.
            if 0x01000000 <= number < 0x7F000000 or 0x80000000 <= number < 0xE0000000 or \
                    0xF0000000 <= number < 0xFFFFFFFF:
                return _IPV4(number)
            raise ModelError(field, f"{value!r} is {_v4_problem(number, True)}; an RLOC must be a unicast address")
    address = parse_address(value, field)
    problem = _v4_problem(int(address), True) if address.version == 4 else _v6_problem(address, True)
    if problem is not None:
        raise ModelError(field, f"{value!r} is {problem}; an RLOC must be a unicast address")
    return address


def parse_host_address(value: object, field: str) -> IPAddress:
    """A host's own address (an endpoint's EID, a gateway): not
    unspecified, loopback, multicast, broadcast, and without a scope."""
    address = parse_address(value, field)
    problem = _v4_problem(int(address), False) if address.version == 4 else _v6_problem(address, False)
    if problem is not None:
        raise ModelError(field, f"{value!r} is {problem}, not a host's address")
    return address


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
    written = value[len(address) + 1:]  # the length as written, if there is a slash
    if slash and len(written) > 1 and written[0] == "0" and written.isdigit():
        # ipaddress reads /08 as /8: one prefix, many spellings, and a typo hides
        raise ModelError(field, f"{value!r} is not a valid prefix (the prefix length has a leading zero)")
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
    """A station's MAC (a VM's, a bridge's router MAC): unicast and not all
    zeros, since a frame from a group or zero address is dropped by every
    switch and host."""
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value.lower()):
        raise ModelError(field, f"must be a MAC address like '52:54:00:b8:27:75', got {value!r}")
    mac = value.lower()
    if int(mac[:2], 16) & 1:  # the group bit of the first octet
        kind = "the broadcast address" if mac == "ff:ff:ff:ff:ff:ff" else "a multicast address"
        raise ModelError(field, f"{value!r} is {kind}; a station's MAC must be unicast")
    if mac == "00:00:00:00:00:00":
        raise ModelError(field, f"{value!r} is all zeros, not a station's MAC")
    return mac


def parse_interface_name(value: object, field: str) -> str:
    """A port or bridge name as OVS and Linux accept an interface name: 1
    to 15 bytes (IFNAMSIZ - 1) of printable ASCII without whitespace or
    '/', and not '.' or '..'. Such a name is also one path segment of the
    API's URLs, so every endpoint the API creates can be addressed and
    deleted by it."""
    if not isinstance(value, str) or not value:
        raise ModelError(field, f"must be an interface name, got {value!r}")
    shown = repr(value) if len(value) <= 40 else f"{value[:20]!r}... ({len(value)} characters)"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size >= IFNAMSIZ:
        raise ModelError(field, f"{shown} is {size} bytes; an interface name has at most {IFNAMSIZ - 1}")
    if "/" in value:
        raise ModelError(field, f"{shown} contains '/', which an interface name cannot")
    if not _IFNAME_RE.fullmatch(value):
        what = "whitespace" if any(c.isspace() for c in value) else "a character that is not printable ASCII"
        raise ModelError(field, f"{shown} contains {what}, which an interface name cannot")
    if value in (".", ".."):
        raise ModelError(field, f"{shown} is not an interface name")
    return value


def parse_int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(field, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ModelError(field, f"must be between {low} and {high}, got {value}")
    return value


def parse_gateway(value: object, field: str = "gateway") -> ipaddress.IPv4Address:
    """A VM's default router address. IPv4 only: the bridge answers ARP for
    it in flows; answering IPv6 neighbour solicitations is not done yet."""
    address = parse_host_address(value, field)
    if address.version != 4:
        raise ModelError(field, f"{address} is IPv6; only IPv4 gateways are answered "
                         "(ARP), IPv6 neighbour discovery is not")
    return address  # type: ignore[return-value]


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """`object_pairs_hook` for json: a key given twice in one object is an
    error. json keeps the last one silently, so {"eid": A, "eid": B} would
    act on B without a word."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ModelError(key, "is given twice in one JSON object")
            seen.add(key)
    return obj


def parse_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise ModelError(field, f"must be true or false, got {value!r}")
    return value


def parse_action(value: object, field: str = "action") -> str:
    if value not in ACTIONS:
        raise ModelError(field, f"must be one of {', '.join(ACTIONS)}, got {value!r}")
    return value  # type: ignore[return-value]
