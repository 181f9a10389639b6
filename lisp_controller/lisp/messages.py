"""LISP control messages as immutable values, and their codec (RFC 9301
section 5).

``decode(data)`` turns one UDP payload into a message value or raises
``LispDecodeError``; ``encode(message)`` is its inverse and deterministic.
Decoding keeps everything needed to re-encode byte for byte:

* bits of the first 32-bit word that we do not name go to ``reserved``
  (lispers.net puts values there: 0x3F00 in its RLOC-probe Map-Replies);
* bytes after the last field go to ``trailer`` (lispers.net appends the
  24-byte xTR-ID and site-ID to Map-Notify without setting the I bit, and
  the HMAC covers them);
* the nonce is 8 opaque bytes, echoed as received (lispers.net writes its
  nonces little-endian).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar, Union

from .addresses import (NO_ADDRESS, Address, LispDecodeError, Reader, _check_address, _check_range,
                        decode_address, decoded, encode_address)
from .headers import IPAddress, build_ip_udp, parse_ip_udp
from .records import (EidRecord, MapRequestRecord, decode_eid_record, decode_eid_records,
                      decode_map_request_record, encode_eid_record, encode_map_request_record)

MAP_REQUEST, MAP_REPLY, MAP_REGISTER, MAP_NOTIFY, MAP_NOTIFY_ACK, ECM = 1, 2, 3, 4, 5, 8
LISP_CONTROL_PORT = 4342
_COUNT = 0xFF


_FLAG_VALUES: dict[tuple[type, int], dict[str, bool]] = {}


def _bits(cls: type, word: int) -> dict[str, bool]:
    """The named flags of ``cls`` (its ``_FLAGS``) as set in ``word``; the
    few combinations seen are kept (at most 2**len(_FLAGS) per class)."""
    flags = cls._FLAGS
    key = (cls, word & sum(flags.values()))
    found = _FLAG_VALUES.get(key)
    if found is None:
        found = _FLAG_VALUES[key] = {name: bool(word & mask) for name, mask in flags.items()}
    return found


def _check_common(message: object, reserved_mask: int) -> None:
    nonce = getattr(message, "nonce", None)
    if nonce is not None and (not isinstance(nonce, bytes) or len(nonce) != 8):
        raise ValueError("nonce must be 8 bytes")
    if getattr(message, "reserved") & ~reserved_mask:
        raise ValueError(f"reserved bits outside {reserved_mask:#010x}")
    if not isinstance(getattr(message, "trailer"), bytes):
        raise TypeError("trailer must be bytes")


def _check_records(message: object, cls: type) -> None:
    """Freeze ``message.records`` into a tuple (a list would make the value
    unhashable and unequal to its decoded copy) and check what it holds."""
    records = tuple(message.records)
    object.__setattr__(message, "records", records)
    if len(records) > 255:
        raise ValueError("at most 255 records")
    for record in records:
        if not isinstance(record, cls):
            raise TypeError(f"{record!r} is not a {cls.__name__}")


@dataclass(frozen=True)
class MapRequest:
    """Asks for the mapping of ``records`` (RFC 9301 section 5.2).

    ``itr_rlocs`` are where the answer goes (1 to 32; sent as IRC = count-1).
    Flags: ``authoritative`` (A), ``probe`` (P, an RLOC-probe), ``smr`` (S,
    solicit a Map-Request), ``pitr`` (p, sent by a proxy ITR),
    ``smr_invoked`` (s). The M bit is set exactly when ``map_reply`` (the
    sender's own mapping) is present.
    """

    nonce: bytes
    records: tuple[MapRequestRecord, ...]
    itr_rlocs: tuple[Address, ...]
    source_eid: Address = NO_ADDRESS
    authoritative: bool = False
    probe: bool = False
    smr: bool = False
    pitr: bool = False
    smr_invoked: bool = False
    map_reply: EidRecord | None = None
    reserved: int = 0
    trailer: bytes = b""

    TYPE: ClassVar[int] = MAP_REQUEST
    _FLAGS: ClassVar[dict[str, int]] = dict(authoritative=0x08000000, probe=0x02000000, smr=0x01000000,
                                            pitr=0x00800000, smr_invoked=0x00400000)
    _MAP_DATA_PRESENT: ClassVar[int] = 0x04000000
    RESERVED_MASK: ClassVar[int] = 0x003FE000

    def __post_init__(self) -> None:
        _check_common(self, self.RESERVED_MASK)
        _check_records(self, MapRequestRecord)
        object.__setattr__(self, "itr_rlocs", tuple(self.itr_rlocs))
        if not 1 <= len(self.itr_rlocs) <= 32:
            raise ValueError("a Map-Request carries 1 to 32 ITR-RLOCs")
        for address in (self.source_eid, *self.itr_rlocs):
            _check_address(address)
        if self.map_reply is not None and not isinstance(self.map_reply, EidRecord):
            raise TypeError("map_reply must be an EidRecord")


@dataclass(frozen=True)
class MapReply:
    """Answers a Map-Request with ``records`` (RFC 9301 section 5.4).

    ``probe`` (P) answers an RLOC-probe, ``echo_nonce_capable`` (E),
    ``security`` (S, LISP-SEC data follows: kept in ``trailer``).
    """

    nonce: bytes
    records: tuple[EidRecord, ...]
    probe: bool = False
    echo_nonce_capable: bool = False
    security: bool = False
    reserved: int = 0
    trailer: bytes = b""

    TYPE: ClassVar[int] = MAP_REPLY
    _FLAGS: ClassVar[dict[str, int]] = dict(probe=0x08000000, echo_nonce_capable=0x04000000, security=0x02000000)
    RESERVED_MASK: ClassVar[int] = 0x01FFFF00

    def __post_init__(self) -> None:
        _check_common(self, self.RESERVED_MASK)
        _check_records(self, EidRecord)


@dataclass(frozen=True)
class _Registration:
    """The layout Map-Register, Map-Notify and Map-Notify-Ack share
    (RFC 9301 sections 5.6 and 5.7).

    ``key_id`` and ``alg_id`` are the high and low byte of the 16-bit Key ID
    field; ``auth_data`` is the HMAC (see ``auth.sign``). Flags:
    ``proxy_reply`` (P, the Map-Server answers Map-Requests for us),
    ``security`` (S), ``rtr`` (R, bit 0x01000000 of word 0, where tshark 4.0
    decodes the "built by an RTR" bit of LISP NAT traversal),
    ``use_ttl_for_timeout`` (bit 0x0800 of word 0, which lispers.net always
    sets and names so: time registrations out by the record TTL),
    ``want_map_notify`` (M). The I bit is set exactly when ``xtr_id``
    (16 bytes) is present; ``site_id`` (64 bits) follows it.
    """

    nonce: bytes
    records: tuple[EidRecord, ...]
    key_id: int = 0
    alg_id: int = 0
    auth_data: bytes = b""
    proxy_reply: bool = False
    security: bool = False
    rtr: bool = False
    use_ttl_for_timeout: bool = False
    want_map_notify: bool = False
    xtr_id: bytes | None = None
    site_id: int = 0
    reserved: int = 0
    trailer: bytes = b""

    _FLAGS: ClassVar[dict[str, int]] = dict(proxy_reply=0x08000000, security=0x04000000, rtr=0x01000000,
                                            use_ttl_for_timeout=0x00000800, want_map_notify=0x00000100)
    _XTR_ID_PRESENT: ClassVar[int] = 0x02000000
    RESERVED_MASK: ClassVar[int] = 0x00FFF600

    def __post_init__(self) -> None:
        _check_common(self, self.RESERVED_MASK)
        _check_records(self, EidRecord)
        _check_range("key_id", self.key_id, 8)
        _check_range("alg_id", self.alg_id, 8)
        _check_range("site_id", self.site_id, 64)
        if not isinstance(self.auth_data, bytes) or len(self.auth_data) > 0xFFFF:
            raise ValueError("auth_data must be at most 65535 bytes")
        if self.xtr_id is None and self.site_id:
            raise ValueError("site_id is only sent with an xtr_id")
        if self.xtr_id is not None and (not isinstance(self.xtr_id, bytes) or len(self.xtr_id) != 16):
            raise ValueError("xtr_id must be 16 bytes")


@dataclass(frozen=True)
class MapRegister(_Registration):
    """An ETR registering its EID records with a Map-Server (RFC 9301 section 5.6)."""

    TYPE: ClassVar[int] = MAP_REGISTER


@dataclass(frozen=True)
class MapNotify(_Registration):
    """A Map-Server confirming a registration (RFC 9301 section 5.7)."""

    TYPE: ClassVar[int] = MAP_NOTIFY


@dataclass(frozen=True)
class MapNotifyAck(_Registration):
    """An xTR acknowledging a Map-Notify (RFC 9301 section 5.7)."""

    TYPE: ClassVar[int] = MAP_NOTIFY_ACK


@dataclass(frozen=True)
class EncapsulatedControlMessage:
    """A control message inside IP and UDP headers of its own (RFC 9301
    section 5.8), how Map-Requests travel to a Map-Resolver and on to an ETR.

    The inner header usually carries EIDs: the requesting host (or, for lig,
    the target EID) as source, the EID looked up as destination.
    ``inner_udp_checksum=None`` means a correct checksum (computed on
    encode); an int is what goes on the wire (0 = none, as lispers.net sends).
    Flags: ``security`` (S), ``ddt_originated`` (D), ``to_etr`` (E),
    ``to_map_server`` (M).
    """

    message: Message
    inner_source: IPAddress
    inner_destination: IPAddress
    inner_source_port: int = LISP_CONTROL_PORT
    inner_destination_port: int = LISP_CONTROL_PORT
    inner_hop_limit: int = 128
    inner_udp_checksum: int | None = None
    security: bool = False
    ddt_originated: bool = False
    to_etr: bool = False
    to_map_server: bool = False
    reserved: int = 0
    trailer: bytes = b""

    TYPE: ClassVar[int] = ECM
    _FLAGS: ClassVar[dict[str, int]] = dict(security=0x08000000, ddt_originated=0x04000000,
                                            to_etr=0x02000000, to_map_server=0x01000000)
    RESERVED_MASK: ClassVar[int] = 0x00FFFFFF

    def __post_init__(self) -> None:
        _check_common(self, self.RESERVED_MASK)
        if isinstance(self.message, EncapsulatedControlMessage) or not isinstance(self.message, _MESSAGE_TYPES):
            raise TypeError("an ECM carries one non-ECM control message")
        for address in (self.inner_source, self.inner_destination):
            if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                raise TypeError(f"inner address {address!r} is not an IPv4Address or IPv6Address")
        if self.inner_source.version != self.inner_destination.version:
            raise ValueError("inner source and destination must be the same IP version")
        _check_range("inner_source_port", self.inner_source_port, 16)
        _check_range("inner_destination_port", self.inner_destination_port, 16)
        _check_range("inner_hop_limit", self.inner_hop_limit, 8)
        if self.inner_udp_checksum is not None:
            _check_range("inner_udp_checksum", self.inner_udp_checksum, 16)


Message = Union[MapRequest, MapReply, MapRegister, MapNotify, MapNotifyAck, EncapsulatedControlMessage]
_MESSAGE_TYPES = (MapRequest, MapReply, MapRegister, MapNotify, MapNotifyAck, EncapsulatedControlMessage)
_REGISTRATIONS = {MAP_REGISTER: MapRegister, MAP_NOTIFY: MapNotify, MAP_NOTIFY_ACK: MapNotifyAck}


def _word0(message: Message, count: int = 0, extra: int = 0) -> bytes:
    word = (message.TYPE << 28) | message.reserved | count | extra
    for name, mask in message._FLAGS.items():
        if getattr(message, name):
            word |= mask
    return word.to_bytes(4, "big")


def encode(message: Message) -> bytes:
    """The UDP payload for ``message``; the same value always gives the same bytes."""
    if isinstance(message, MapRequest):
        extra = ((len(message.itr_rlocs) - 1) << 8) | (message._MAP_DATA_PRESENT if message.map_reply is not None else 0)
        return b"".join([_word0(message, len(message.records), extra), message.nonce,
                         encode_address(message.source_eid), *map(encode_address, message.itr_rlocs),
                         *map(encode_map_request_record, message.records),
                         encode_eid_record(message.map_reply) if message.map_reply is not None else b"", message.trailer])
    if isinstance(message, MapReply):
        return b"".join([_word0(message, len(message.records)), message.nonce,
                         *map(encode_eid_record, message.records), message.trailer])
    if isinstance(message, _Registration):
        xtr = message.xtr_id is not None
        return b"".join([_word0(message, len(message.records), message._XTR_ID_PRESENT if xtr else 0),
                         message.nonce, bytes((message.key_id, message.alg_id)),
                         len(message.auth_data).to_bytes(2, "big"), message.auth_data,
                         *map(encode_eid_record, message.records),
                         message.xtr_id + message.site_id.to_bytes(8, "big") if xtr else b"", message.trailer])
    if isinstance(message, EncapsulatedControlMessage):
        inner = build_ip_udp(message.inner_source, message.inner_destination, message.inner_source_port,
                             message.inner_destination_port, encode(message.message), message.inner_hop_limit,
                             message.inner_udp_checksum)
        return _word0(message) + inner + message.trailer
    raise TypeError(f"{message!r} is not a LISP control message")


def encode_map_reply(nonce: bytes, records: list[bytes]) -> bytes:
    """A Map-Reply without flags around EID records already encoded
    (``encode_eid_record``): what a Map-Resolver sends from the answers it
    keeps encoded. The same bytes as ``encode(MapReply(nonce, decoded
    records))``."""
    if len(records) > 255:
        raise ValueError("at most 255 records")
    return b"".join([((MAP_REPLY << 28) | len(records)).to_bytes(4, "big"), nonce, *records])


def decode(data: bytes) -> Message:
    """Parse one LISP control message (a UDP payload). Raises
    ``LispDecodeError`` and nothing else for bytes we cannot accept."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LispDecodeError(f"expected bytes, got {type(data).__name__}")
    return _decode(bytes(data), inside_ecm=False)


def _decode(data: bytes, inside_ecm: bool) -> Message:
    reader = Reader(data)
    word = reader.uint(4)
    kind, count = word >> 28, word & _COUNT
    if kind == MAP_REQUEST:
        return _decode_map_request(reader, word, count)
    if kind == MAP_REPLY:
        nonce = reader.take(8)
        records = decode_eid_records(reader, count)
        return decoded(MapReply, nonce=nonce, records=records, reserved=word & MapReply.RESERVED_MASK,
                       trailer=_rest(reader), **_bits(MapReply, word))
    if kind in _REGISTRATIONS:
        return _decode_registration(_REGISTRATIONS[kind], reader, word, count)
    if kind == ECM:
        if inside_ecm:   # refused: nesting would let a packet recurse without bound
            raise LispDecodeError("an ECM inside an ECM")
        inner = parse_ip_udp(reader)
        return decoded(
            EncapsulatedControlMessage, message=_decode(inner.payload, inside_ecm=True), inner_source=inner.source,
            inner_destination=inner.destination, inner_source_port=inner.source_port,
            inner_destination_port=inner.destination_port, inner_hop_limit=inner.hop_limit,
            inner_udp_checksum=inner.udp_checksum, reserved=word & EncapsulatedControlMessage.RESERVED_MASK,
            trailer=_rest(reader), **_bits(EncapsulatedControlMessage, word))
    raise LispDecodeError(f"unsupported LISP message type {kind}")


def _rest(reader: Reader) -> bytes:
    return reader.take(reader.remaining)


def _decode_map_request(reader: Reader, word: int, count: int) -> MapRequest:
    nonce = reader.take(8)
    source_eid = decode_address(reader)
    itr_rlocs = tuple(decode_address(reader) for _ in range(((word >> 8) & 0x1F) + 1))
    reader.require(count, 4, "Map-Request records")
    records = tuple(decode_map_request_record(reader) for _ in range(count))
    map_reply = decode_eid_record(reader) if word & MapRequest._MAP_DATA_PRESENT else None
    return decoded(MapRequest, nonce=nonce, records=records, itr_rlocs=itr_rlocs, source_eid=source_eid,
                   map_reply=map_reply, reserved=word & MapRequest.RESERVED_MASK, trailer=_rest(reader),
                   **_bits(MapRequest, word))


def _decode_registration(cls: type[_Registration], reader: Reader, word: int, count: int) -> _Registration:
    nonce = reader.take(8)
    key_id, alg_id = reader.take(2)
    auth_data = reader.take(reader.uint(2))
    records = decode_eid_records(reader, count)
    xtr_id, site_id = None, 0
    if word & cls._XTR_ID_PRESENT:
        xtr_id, site_id = reader.take(16), reader.uint(8)
    return decoded(cls, nonce=nonce, records=records, key_id=key_id, alg_id=alg_id, auth_data=auth_data,
                   xtr_id=xtr_id, site_id=site_id, reserved=word & cls.RESERVED_MASK, trailer=_rest(reader),
                   **_bits(cls, word))


def wrap_in_ecm(message: Message, inner_source: IPAddress, inner_destination: IPAddress,
                inner_source_port: int = LISP_CONTROL_PORT, inner_destination_port: int = LISP_CONTROL_PORT,
                **options: object) -> EncapsulatedControlMessage:
    """An ECM carrying ``message`` (usually a Map-Request to a Map-Resolver,
    RFC 9301 section 5.3) with a correctly checksummed inner UDP header.
    ``options`` are the other ``EncapsulatedControlMessage`` fields."""
    return EncapsulatedControlMessage(message, inner_source, inner_destination, inner_source_port,
                                      inner_destination_port, **options)


def unwrap_ecm(data: bytes | EncapsulatedControlMessage) -> EncapsulatedControlMessage:
    """The ECM in ``data`` (decoding it if given bytes), whose ``inner_*``
    fields and ``message`` are what the encapsulating router sent. Raises
    ``LispDecodeError`` if ``data`` is not an ECM."""
    message = data if isinstance(data, EncapsulatedControlMessage) else decode(data)
    if not isinstance(message, EncapsulatedControlMessage):
        raise LispDecodeError(f"not an ECM but a {type(message).__name__}")
    return message
