"""EID records and their locator records, shared by Map-Reply, Map-Register,
Map-Notify and the Map-Reply record inside a Map-Request (RFC 9301 sections
5.4 and 5.6), plus the short EID-prefix record of a Map-Request (section 5.2).

Unused and reserved bits inside records are ignored on decode and written as
zero; none of the implementations we have captured set them.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .addresses import (Address, Reader, _check_address, _check_range,
                        decode_address, decoded, encode_address)


class Action(enum.IntEnum):
    """What an ITR does with packets for an EID record without locators
    (RFC 9301 section 5.4, "ACT"; names as in the IANA "LISP ACT Values")."""

    NO_ACTION = 0
    NATIVELY_FORWARD = 1
    SEND_MAP_REQUEST = 2
    DROP_NO_REASON = 3
    DROP_POLICY_DENIED = 4
    DROP_AUTHENTICATION_FAILURE = 5


_LOCAL, _PROBED, _REACHABLE = 0x4, 0x2, 0x1
_ACTION_SHIFT, _AUTHORITATIVE = 13, 0x1000
_EID_RECORD_HEADER = 12   # TTL, counts, ACT/A, version, EID-prefix AFI
_LOCATOR_HEADER = 8       # priorities/weights, flags, locator AFI
_EID_RECORD = struct.Struct("!IBBHH")   # TTL, locator count, mask-len, ACT/A, Map-Version
_LOCATOR = struct.Struct("!BBBBH")      # priority, weight, multicast priority and weight, flags


@dataclass(frozen=True)
class LocatorRecord:
    """One RLOC of an EID record (RFC 9301 section 5.4, "Loc").

    ``priority``/``weight`` pick unicast RLOCs (lower priority wins, weight
    splits traffic); ``multicast_*`` do the same for multicast (255 = unused).
    ``local`` (L) marks the RLOC of the router sending the message, ``probed``
    (p) answers an RLOC-probe, ``reachable`` (R) says the RLOC is up.
    """

    address: Address
    priority: int = 1
    weight: int = 100
    multicast_priority: int = 255
    multicast_weight: int = 0
    local: bool = False
    probed: bool = False
    reachable: bool = True

    def __post_init__(self) -> None:
        _check_address(self.address)
        for name in ("priority", "weight", "multicast_priority", "multicast_weight"):
            _check_range(name, getattr(self, name), 8)


@dataclass(frozen=True)
class EidRecord:
    """An EID-prefix with its locators (RFC 9301 section 5.4, "Record").

    ``ttl`` is in minutes. ``authoritative`` (A) is set when the sender is the
    ETR of the site rather than a Map-Server answering on its behalf.
    ``map_version`` is the 12-bit Map-Version (0 = none). ``action`` matters
    for a negative record (no locators).
    """

    eid: Address
    mask_len: int
    locators: tuple[LocatorRecord, ...] = ()
    ttl: int = 1440
    action: int = Action.NO_ACTION
    authoritative: bool = False
    map_version: int = 0

    def __post_init__(self) -> None:
        _check_address(self.eid)
        _check_range("mask_len", self.mask_len, 8)
        _check_range("ttl", self.ttl, 32)
        _check_range("action", self.action, 3)
        _check_range("map_version", self.map_version, 12)
        object.__setattr__(self, "locators", tuple(self.locators))   # a list would be unhashable
        if len(self.locators) > 255:
            raise ValueError("an EID record holds at most 255 locators")
        for locator in self.locators:
            if not isinstance(locator, LocatorRecord):
                raise TypeError(f"{locator!r} is not a LocatorRecord")


@dataclass(frozen=True)
class MapRequestRecord:
    """The EID-prefix a Map-Request asks about (RFC 9301 section 5.2, "Rec")."""

    eid: Address
    mask_len: int

    def __post_init__(self) -> None:
        _check_address(self.eid)
        _check_range("mask_len", self.mask_len, 8)


def encode_locator(locator: LocatorRecord) -> bytes:
    flags = (_LOCAL if locator.local else 0) | (_PROBED if locator.probed else 0) \
        | (_REACHABLE if locator.reachable else 0)
    return _LOCATOR.pack(locator.priority, locator.weight, locator.multicast_priority, locator.multicast_weight,
                         flags) + encode_address(locator.address)


def decode_locator(reader: Reader) -> LocatorRecord:
    priority, weight, multicast_priority, multicast_weight = reader.take(4)
    flags = reader.uint(2)
    return decoded(LocatorRecord, address=decode_address(reader), priority=priority, weight=weight,
                   multicast_priority=multicast_priority, multicast_weight=multicast_weight,
                   local=bool(flags & _LOCAL), probed=bool(flags & _PROBED), reachable=bool(flags & _REACHABLE))


def encode_eid_record(record: EidRecord) -> bytes:
    return eid_record_bytes(encode_address(record.eid), record.mask_len, b"".join(map(encode_locator, record.locators)),
                            len(record.locators), record.ttl, record.action, record.authoritative, record.map_version)


def eid_record_bytes(eid: bytes, mask_len: int, locators: bytes, locator_count: int, ttl: int, action: int,
                     authoritative: bool = False, map_version: int = 0) -> bytes:
    """An EID record around its EID and locator records already encoded
    (``encode_address``, ``encode_locator``): how a Map-Resolver writes an
    answer whose RLOC set it encoded before (docs/control-plane.rst)."""
    act_a = (action << _ACTION_SHIFT) | (_AUTHORITATIVE if authoritative else 0)
    return _EID_RECORD.pack(ttl, locator_count, mask_len, act_a, map_version) + eid + locators


def decode_eid_record(reader: Reader) -> EidRecord:
    ttl = reader.uint(4)
    locator_count, mask_len = reader.take(2)
    act_a = reader.uint(2)
    map_version = reader.uint(2) & 0x0FFF
    eid = decode_address(reader)
    reader.require(locator_count, _LOCATOR_HEADER, "locator records")
    locators = tuple(decode_locator(reader) for _ in range(locator_count))
    action = act_a >> _ACTION_SHIFT
    return decoded(EidRecord, eid=eid, mask_len=mask_len, locators=locators, ttl=ttl,
                   action=_ACTION_OF_BITS[action],
                   authoritative=bool(act_a & _AUTHORITATIVE), map_version=map_version)


def decode_eid_records(reader: Reader, count: int) -> tuple[EidRecord, ...]:
    reader.require(count, _EID_RECORD_HEADER, "EID records")
    return tuple(decode_eid_record(reader) for _ in range(count))


def encode_map_request_record(record: MapRequestRecord) -> bytes:
    return bytes((0, record.mask_len)) + encode_address(record.eid)


def decode_map_request_record(reader: Reader) -> MapRequestRecord:
    _reserved, mask_len = reader.take(2)
    return decoded(MapRequestRecord, eid=decode_address(reader), mask_len=mask_len)


_ACTIONS = frozenset(a.value for a in Action)
# The 3-bit ACT field as decoded: an Action where one is named, else the number.
_ACTION_OF_BITS = tuple(Action(v) if v in _ACTIONS else v for v in range(8))
