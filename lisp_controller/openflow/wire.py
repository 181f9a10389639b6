"""The one home of the flow-mod byte layout: OXM fields, matches, the
OFPFC_ADD head, and the cuts and hashes made on its bytes; and of the
group-mod's, which carries buckets of the same actions.

os-ken's message objects cost 200-260 us per flow-mod; our flows use a
dozen fields, which pack in a few microseconds (each action kind packs
itself: pipeline/actions.py). The bytes are identical to os-ken's own
encoding (a test compares them for every flow shape the compiler makes),
and they are the flow's canonical form: its cookie is a hash of them.

Pure: no os-ken import, no I/O.
"""
from __future__ import annotations

import functools
import hashlib
import ipaddress
import struct

from lisp_controller.model import Prefix, as_prefix

OFP_VERSION = 4
OFPT_FLOW_MOD = 14
OFPFC_ADD = 0
OFP_NO_BUFFER = 0xFFFFFFFF
OFPP_IN_PORT, OFPP_NORMAL, OFPP_CONTROLLER = 0xFFFFFFF8, 0xFFFFFFFA, 0xFFFFFFFD
OFPCML_MAX, OFPCML_NO_BUFFER = 0xFFE5, 0xFFFF  # os-ken's default max_len is OFPCML_MAX
ALL_ONES_64 = 0xFFFFFFFFFFFFFFFF
NX_VENDOR, NXAST_REG_MOVE, NXAST_CHECK_PKT_LARGER = 0x00002320, 6, 49  # Nicira experimenter actions
NXAST_RESUBMIT_TABLE = 14

_BASIC, _NXM1 = 0x8000, 0x0001
# name -> (OXM class, field, width in bytes)
FIELDS: dict[str, tuple[int, int, int]] = {
    "in_port": (_BASIC, 0, 4), "metadata": (_BASIC, 2, 8), "eth_dst": (_BASIC, 3, 6),
    "eth_src": (_BASIC, 4, 6), "eth_type": (_BASIC, 5, 2), "vlan_vid": (_BASIC, 6, 2),
    "ip_proto": (_BASIC, 10, 1), "ipv4_dst": (_BASIC, 12, 4), "arp_op": (_BASIC, 21, 2),
    "arp_spa": (_BASIC, 22, 4), "arp_tpa": (_BASIC, 23, 4), "arp_sha": (_BASIC, 24, 6),
    "arp_tha": (_BASIC, 25, 6), "ipv6_dst": (_BASIC, 27, 16), "icmpv6_type": (_BASIC, 29, 1),
    "tunnel_id": (_BASIC, 38, 8), "reg0": (_NXM1, 0, 4), "tun_ipv4_dst": (_NXM1, 32, 4),
    "tun_ipv6_dst": (_NXM1, 110, 16),
}
_SORT = {name: (cls << 7) | fld for name, (cls, fld, _) in FIELDS.items()}  # os-ken's order

_FLOW_MOD_HEAD = struct.Struct("!BBHIQQBBHHHIIIH2x")

OFPT_GROUP_MOD = 15
OFPGC_ADD, OFPGC_MODIFY, OFPGC_DELETE = 0, 1, 2
OFPGT_SELECT = 1
OFPP_ANY = OFPG_ANY = 0xFFFFFFFF
_GROUP_MOD_HEAD = struct.Struct("!BBHIHBxI")
_BUCKET_HEAD = struct.Struct("!HHII4x")  # length, weight, watch port, watch group


def _value_bytes(name: str, value: object) -> tuple[bytes, bytes | None]:
    """The field's value, and its mask unless the value is exact."""
    width = FIELDS[name][2]
    if isinstance(value, int):
        return value.to_bytes(width, "big"), None
    if isinstance(value, str):  # a MAC address
        return bytes.fromhex(value.replace(":", "")), None
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        value = as_prefix(value)
    if type(value) is Prefix:
        version, number, length = value
        bits = 32 if version == 4 else 128
        data = number.to_bytes(bits // 8, "big")
        if length == bits:
            return data, None
        return data, (((1 << length) - 1) << (bits - length)).to_bytes(bits // 8, "big")
    return value.packed, None  # an IPv4Address or IPv6Address


@functools.lru_cache(maxsize=8192)  # eth_type, IIDs, RLOCs repeat across flows
def oxm(name: str, value: object) -> bytes:
    cls, fld, _ = FIELDS[name]
    data, mask = _value_bytes(name, value)
    if mask is None:
        return struct.pack("!HBB", cls, fld << 1, len(data)) + data
    return struct.pack("!HBB", cls, (fld << 1) | 1, 2 * len(data)) + data + mask


def oxm_header(name: str) -> int:
    """The 32-bit OXM header of a field (as a register move names it)."""
    cls, fld, width = FIELDS[name]
    return (cls << 16) | (fld << 9) | width


def pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


_ORDER: dict[tuple[str, ...], tuple[int, ...]] = {}


def match_bytes(match: tuple) -> bytes:
    names = tuple(name for name, _ in match)
    order = _ORDER.get(names)
    if order is None:  # once per match shape
        order = _ORDER[names] = tuple(sorted(range(len(names)), key=lambda i: _SORT[names[i]]))
    body = b"".join([oxm(*match[i]) for i in order])
    return pad8(struct.pack("!HH", 1, 4 + len(body)) + body)


def round8(n: int) -> int:
    return n + (-n % 8)


def flow_mod_add(table: int, priority: int, match: tuple, instructions: bytes, cookie: int) -> bytes:
    """OFPFC_ADD with `cookie` and xid 0 (stamped when sent); `instructions`
    are already packed (pipeline/actions.py)."""
    body = match_bytes(match) + instructions
    head = _FLOW_MOD_HEAD.pack(OFP_VERSION, OFPT_FLOW_MOD, 48 + len(body), 0, cookie, 0, table,
                               OFPFC_ADD, 0, 0, priority, OFP_NO_BUFFER, 0, 0, 0)
    return head + body


def value_slot(data: bytes, match: tuple, name: str) -> tuple[bytes, bytes]:
    """A flow-mod (`data`, made with `match`) cut around the value of its
    match field `name`: flows that differ only in that value (a map-cache of
    100,000 prefixes with one length, IID and RLOC) are then made by
    concatenation, `before + value + after`, a fraction of packing each."""
    names = tuple(n for n, _ in match)
    match_bytes(match)  # fills _ORDER for this shape
    offset = _FLOW_MOD_HEAD.size + 4  # the match's type and length
    for i in _ORDER[names]:
        if names[i] == name:
            start = offset + 4  # the OXM header
            return data[:start], data[start + FIELDS[name][2]:]
        offset += len(oxm(*match[i]))
    raise ValueError(f"{name} is not in the match")


def with_cookie(flow_mod: bytes, cookie: int) -> bytes:
    return flow_mod[:8] + cookie.to_bytes(8, "big") + flow_mod[16:]


def content_hash(flow_mod: bytes) -> int:
    """56 bits of hash over a flow-mod's bytes without its xid and cookie."""
    return int.from_bytes(content_hasher(flow_mod).digest(), "big")


def content_hasher(head: bytes):
    """The content hash fed with `head`, the start of a flow-mod (at least
    its 16-byte header and cookie); feed it the rest to finish."""
    digest = hashlib.blake2b(head[:4], digest_size=7)
    digest.update(head[16:])
    return digest


def bucket(weight: int, actions: bytes) -> bytes:
    """One ofp_bucket of a select group: `actions` already packed."""
    return _BUCKET_HEAD.pack(_BUCKET_HEAD.size + len(actions), weight, OFPP_ANY, OFPG_ANY) + actions


def group_mod(command: int, group_type: int, group_id: int, buckets: bytes = b"") -> bytes:
    """OFPT_GROUP_MOD with xid 0 (stamped when sent); `buckets` packed by `bucket`."""
    return _GROUP_MOD_HEAD.pack(OFP_VERSION, OFPT_GROUP_MOD, _GROUP_MOD_HEAD.size + len(buckets), 0,
                                command, group_type, group_id) + buckets
