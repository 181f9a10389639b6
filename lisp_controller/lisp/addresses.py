"""Addresses as LISP writes them: an AFI, then the address (RFC 9301 section 5.1
and RFC 8060 LCAF).

An address is one of these immutable values:

* ``NoAddress`` -- AFI 0, no address at all (a Map-Request with no Source EID).
* ``ipaddress.IPv4Address`` / ``ipaddress.IPv6Address`` -- AFI 1 and AFI 2.
* ``InstanceIdAddress`` -- LCAF type 2: an address inside a virtual network
  (RFC 8060 section 4.1). Every EID we send is wrapped in one.
* ``AfiListAddress`` -- LCAF type 1: several addresses for one thing
  (RFC 8060 section 4.10).
* ``EncapsulationFormatAddress`` -- LCAF type 16: an RLOC plus the data-plane
  encapsulations it accepts (RFC 8060 section 5.6, "Multiple Data-Planes").
* ``UnknownLcafAddress`` -- any other LCAF type, kept as type + body bytes. We
  decode rather than reject it so a record that carries one (for example a
  geo-coordinate RLOC from another implementation) is still usable; the bytes
  re-encode unchanged.

Reserved bits and the flags byte of known LCAF types are ignored on decode and
written as zero.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import struct
from dataclasses import dataclass
from typing import TypeVar, Union

AFI_NONE, AFI_IPV4, AFI_IPV6, AFI_LCAF = 0, 1, 2, 16387
LCAF_AFI_LIST, LCAF_INSTANCE_ID, LCAF_ENCAPSULATION_FORMAT = 1, 2, 16

# LCAF type 16 flag bits (RFC 8060 section 5.6): the data planes an RLOC accepts.
ENCAP_LISP = 0x01        # L: LISP (RFC 9300), UDP port 4341
ENCAP_LISP_L2 = 0x02     # l: layer-2 LISP
ENCAP_VXLAN = 0x04       # V: VXLAN
ENCAP_VXLAN_GPE = 0x08   # v: VXLAN-GPE
ENCAP_NVGRE = 0x10       # N: NV-GRE
ENCAP_GENEVE = 0x20      # G: GENEVE
ENCAP_GUE = 0x40         # U: GUE

# LCAFs may nest (an Instance-ID around an AFI-list around ...). A bound keeps
# a hostile packet from recursing until Python's stack runs out.
MAX_LCAF_DEPTH = 8


class LispDecodeError(ValueError):
    """The one error decoding raises: the bytes are not a message we accept.

    Decoding is total: every byte string either decodes or raises this, so
    callers handling packets from the network need exactly one ``except``.
    """


class Reader:
    """A cursor over bytes that raises ``LispDecodeError`` instead of reading
    past its end, so no decoder can index out of range or trust a length field
    beyond what the packet holds."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise LispDecodeError(f"truncated: need {n} bytes at offset {self.pos}, have {self.end - self.pos}")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def sub(self, n: int) -> Reader:
        """A reader over the next ``n`` bytes (which this reader skips)."""
        start = self.pos
        self.take(n)
        return Reader(self.data, start, start + n)

    def require(self, count: int, min_size: int, what: str) -> None:
        """Reject a count field before looping over it: ``count`` items of at
        least ``min_size`` bytes each must fit in what is left."""
        if count * min_size > self.remaining:
            raise LispDecodeError(f"{count} {what} cannot fit in {self.remaining} bytes")


T = TypeVar("T")
_DEFAULTS: dict[type, dict[str, object]] = {}


def decoded(cls: type[T], **fields: object) -> T:
    """A value of the frozen dataclass ``cls`` made of fields a decoder read
    off the wire. Every check of the class's ``__post_init__`` holds there
    by construction (fixed-width fields, counts bounded by their bytes,
    addresses made by ``decode_address``, lengths bounded by the packet), so
    decoding skips them and the per-field ``object.__setattr__`` of a frozen
    dataclass's ``__init__``: half of what decoding a Map-Request cost
    (docs/control-plane.rst, "Performance"). The value is equal to, and
    hashes like, the one the checked constructor makes (a property test
    holds them equal). Fields not given take their defaults."""
    defaults = _DEFAULTS.get(cls)
    if defaults is None:
        defaults = _DEFAULTS[cls] = {f.name: f.default for f in dataclasses.fields(cls)
                                     if f.default is not dataclasses.MISSING}
    value = object.__new__(cls)
    state = value.__dict__
    state.update(defaults)
    state.update(fields)
    return value


@dataclass(frozen=True)
class NoAddress:
    """AFI 0: "no address" (for example a Map-Request with no Source EID)."""


NO_ADDRESS = NoAddress()


@dataclass(frozen=True)
class InstanceIdAddress:
    """An address inside virtual network ``instance_id`` (LCAF type 2,
    RFC 8060 section 4.1). ``iid_mask_len`` is the LCAF's IID mask-len byte
    (0 = this exact instance)."""

    instance_id: int
    address: Address
    iid_mask_len: int = 0

    def __post_init__(self) -> None:
        _check_range("instance_id", self.instance_id, 32)
        _check_range("iid_mask_len", self.iid_mask_len, 8)
        _check_address(self.address)


@dataclass(frozen=True)
class AfiListAddress:
    """Several AFI-encoded addresses in one (LCAF type 1, RFC 8060 section
    4.10), for example an IPv4 and an IPv6 RLOC of one router."""

    addresses: tuple[Address, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))   # a list would be unhashable
        for address in self.addresses:
            _check_address(address)


@dataclass(frozen=True)
class EncapsulationFormatAddress:
    """An RLOC with the encapsulations it accepts (LCAF type 16, RFC 8060
    section 5.6). ``flags`` is the 32-bit word of ``ENCAP_*`` bits; all 32 bits
    round-trip, so bits defined after RFC 8060 survive too."""

    flags: int
    address: Address

    def __post_init__(self) -> None:
        _check_range("flags", self.flags, 32)
        _check_address(self.address)

    def accepts(self, encapsulation: int) -> bool:
        """Whether the RLOC advertises the ``ENCAP_*`` bit ``encapsulation``."""
        return bool(self.flags & encapsulation)


@dataclass(frozen=True)
class UnknownLcafAddress:
    """An LCAF type this codec does not model, kept whole so the record that
    carries it still decodes and re-encodes byte for byte."""

    lcaf_type: int
    body: bytes
    flags: int = 0
    reserved1: int = 0
    reserved2: int = 0

    def __post_init__(self) -> None:
        for name in ("lcaf_type", "flags", "reserved1", "reserved2"):
            _check_range(name, getattr(self, name), 8)
        if self.lcaf_type in (LCAF_AFI_LIST, LCAF_INSTANCE_ID, LCAF_ENCAPSULATION_FORMAT):
            raise ValueError(f"LCAF type {self.lcaf_type} has its own value class")
        if len(self.body) > 0xFFFF:
            raise ValueError("LCAF body longer than 65535 bytes")


Address = Union[NoAddress, ipaddress.IPv4Address, ipaddress.IPv6Address, InstanceIdAddress,
                AfiListAddress, EncapsulationFormatAddress, UnknownLcafAddress]
_ADDRESS_TYPES = (NoAddress, ipaddress.IPv4Address, ipaddress.IPv6Address, InstanceIdAddress,
                  AfiListAddress, EncapsulationFormatAddress, UnknownLcafAddress)


def _check_range(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value!r} is not a {bits}-bit unsigned integer")


def _check_address(address: object) -> None:
    if not isinstance(address, _ADDRESS_TYPES):
        raise TypeError(f"{address!r} is not a LISP address value")


def encode_address(address: Address, depth: int = 0) -> bytes:
    """AFI (2 bytes) followed by the address, as every LISP message writes it.
    Raises ``ValueError`` for LCAFs nested deeper than decoding accepts."""
    if isinstance(address, NoAddress):
        return b"\x00\x00"
    if isinstance(address, ipaddress.IPv4Address):
        return b"\x00\x01" + address.packed
    if isinstance(address, ipaddress.IPv6Address):
        return b"\x00\x02" + address.packed
    if depth >= MAX_LCAF_DEPTH:
        raise ValueError(f"LCAF nested deeper than {MAX_LCAF_DEPTH}")
    if isinstance(address, InstanceIdAddress):
        return _lcaf(LCAF_INSTANCE_ID, address.instance_id.to_bytes(4, "big")
                     + encode_address(address.address, depth + 1), reserved2=address.iid_mask_len)
    if isinstance(address, AfiListAddress):
        return _lcaf(LCAF_AFI_LIST, b"".join(encode_address(a, depth + 1) for a in address.addresses))
    if isinstance(address, EncapsulationFormatAddress):
        return _lcaf(LCAF_ENCAPSULATION_FORMAT,
                     address.flags.to_bytes(4, "big") + encode_address(address.address, depth + 1))
    if isinstance(address, UnknownLcafAddress):
        return _lcaf(address.lcaf_type, address.body, address.flags, address.reserved1, address.reserved2)
    raise TypeError(f"{address!r} is not a LISP address value")


_INSTANCE_ID_HEADER = struct.Struct("!HBBBBHIH")   # AFI 16387, Rsvd1, Flags, Type 2, IID mask-len, Length, IID, AFI
_IP_AFI = {4: (AFI_IPV4, 4), 6: (AFI_IPV6, 16)}


def eid_address_bytes(iid: int, version: int, network: int, wrap: bool) -> bytes:
    """The AFI-encoded EID of a record for an IPv4/IPv6 network (an
    integer): inside an Instance-ID LCAF (IID mask-len 0) when ``wrap`` or
    ``iid``, else bare. The bytes ``encode_address`` writes for that value,
    without making the value: what a Map-Resolver writes for every answer
    it has not answered before (docs/control-plane.rst, "Performance")."""
    afi, size = _IP_AFI[version]
    address = network.to_bytes(size, "big")
    if wrap or iid:
        return _INSTANCE_ID_HEADER.pack(AFI_LCAF, 0, 0, LCAF_INSTANCE_ID, 0, 6 + size, iid, afi) + address
    return afi.to_bytes(2, "big") + address


def _lcaf(lcaf_type: int, body: bytes, flags: int = 0, reserved1: int = 0, reserved2: int = 0) -> bytes:
    """The LCAF header (RFC 8060 section 3): AFI 16387, Rsvd1, Flags, Type,
    Rsvd2, Length (of the body), then the body."""
    if len(body) > 0xFFFF:
        raise ValueError("LCAF body longer than 65535 bytes")
    return (AFI_LCAF.to_bytes(2, "big") + bytes((reserved1, flags, lcaf_type, reserved2))
            + len(body).to_bytes(2, "big") + body)


def decode_address(reader: Reader, depth: int = 0) -> Address:
    """Read one AFI-encoded address. Raises ``LispDecodeError`` for an AFI we
    do not know (its length is unknowable, so nothing after it can be read)."""
    afi = reader.uint(2)
    if afi == AFI_NONE:
        return NO_ADDRESS
    if afi == AFI_IPV4:
        return ipaddress.IPv4Address(reader.take(4))
    if afi == AFI_IPV6:
        return ipaddress.IPv6Address(reader.take(16))
    if afi == AFI_LCAF:
        return _decode_lcaf(reader, depth)
    raise LispDecodeError(f"unsupported AFI {afi}")


def _decode_lcaf(reader: Reader, depth: int) -> Address:
    if depth >= MAX_LCAF_DEPTH:
        raise LispDecodeError(f"LCAF nested deeper than {MAX_LCAF_DEPTH}")
    reserved1, flags, lcaf_type, reserved2 = reader.take(4)
    body = reader.sub(reader.uint(2))
    if lcaf_type == LCAF_INSTANCE_ID:
        instance_id = body.uint(4)
        address = decode_address(body, depth + 1)
        _expect_consumed(body, "Instance-ID LCAF")
        return decoded(InstanceIdAddress, instance_id=instance_id, address=address, iid_mask_len=reserved2)
    if lcaf_type == LCAF_AFI_LIST:
        addresses = []
        while body.remaining:  # each address consumes at least its 2-byte AFI
            addresses.append(decode_address(body, depth + 1))
        return decoded(AfiListAddress, addresses=tuple(addresses))
    if lcaf_type == LCAF_ENCAPSULATION_FORMAT:
        encap_flags = body.uint(4)
        address = decode_address(body, depth + 1)
        _expect_consumed(body, "Encapsulation Format LCAF")
        return decoded(EncapsulationFormatAddress, flags=encap_flags, address=address)
    return decoded(UnknownLcafAddress, lcaf_type=lcaf_type, body=body.take(body.remaining), flags=flags,
                   reserved1=reserved1, reserved2=reserved2)


def _expect_consumed(body: Reader, what: str) -> None:
    if body.remaining:
        raise LispDecodeError(f"{what}: {body.remaining} bytes beyond its address")
