"""Is the flow a bridge holds under one of our cookies still the flow that
cookie names? Pure: bytes in, verdicts out.

Cookies are content addresses (flows.py), so comparing cookie sets finds
missing, extra and duplicated flows. It cannot find a flow whose actions
somebody changed in place (`ovs-ofctl mod-flows` keeps the cookie). For
that the deep check reads whole flow-stats entries and compares each one's
match and instructions with the flow-mod its cookie was made from.

OVS does not hand flows back byte for byte: it orders match fields its own
way, may send a full mask where we sent none, and encodes a register move
with NXM headers where we used OXM ones. Both sides are therefore reduced
to one canonical form (`canonical`); the round-trip test against real OVS
(tests/test_reliability.py) proves an untouched bridge shows no difference.
"""
from __future__ import annotations

import struct
from typing import Iterable, Iterator, Mapping, NamedTuple

from lisp_controller.model.parted import PartedDict
from lisp_controller.openflow import wire

# ofp_flow_stats head: length, table, pad, duration (8), priority,
# idle_timeout, hard_timeout, flags, pad (4), cookie, packets and bytes (16).
_ENTRY_HEAD = struct.Struct("!HBx8xHHHH4xQ16x")
# The flow-mod head as wire.py packs it.
_FLOW_MOD_HEAD = struct.Struct("!4x4xQ8xBBHHHIIIH2x")
_MULTIPART_REPLY_SIZE = 16
_TLV = struct.Struct("!HBB")
_ACTION = struct.Struct("!HH")

OFPIT_GOTO_TABLE, OFPIT_WRITE_METADATA, OFPIT_APPLY_ACTIONS = 1, 2, 4
OFPAT_OUTPUT, OFPAT_SET_FIELD, OFPAT_EXPERIMENTER = 0, 25, 0xFFFF
NX_VENDOR, NXAST_REG_MOVE = wire.NX_VENDOR, wire.NXAST_REG_MOVE

# A register move names its fields by 32-bit header. We send OXM headers;
# OVS answers with the older NXM ones for the same fields. Both map to one
# field name. (class, field) pairs of NXM0/NXM1 from OVS's meta-flow.
_NXM_FIELDS = {(0x0000, 1): "eth_dst", (0x0000, 2): "eth_src", (0x0000, 16): "arp_spa",
               (0x0000, 17): "arp_tpa", (0x0001, 17): "arp_sha", (0x0001, 18): "arp_tha",
               (0x0001, 0): "reg0"}
_FIELD_BY_CLASS = {(cls, fld): name for name, (cls, fld, _) in wire.FIELDS.items()}
_FIELD_BY_CLASS.update(_NXM_FIELDS)


class Entry(NamedTuple):
    """One flow as the switch reports it."""

    cookie: int
    table: int
    priority: int
    idle_timeout: int
    hard_timeout: int
    flags: int
    body: bytes  # ofp_match (padded) followed by the instructions


def split_flow_stats(buf: bytes, msg_len: int | None = None) -> Iterator[Entry]:
    """The entries of one OFPMP_FLOW multipart reply message."""
    end = len(buf) if msg_len is None else msg_len
    offset = _MULTIPART_REPLY_SIZE
    while offset + _ENTRY_HEAD.size <= end:
        length, table, priority, idle, hard, flags, cookie = _ENTRY_HEAD.unpack_from(buf, offset)
        if length < _ENTRY_HEAD.size:
            raise ValueError(f"flow-stats entry of {length} bytes at offset {offset}")
        yield Entry(cookie, table, priority, idle, hard, flags,
                    bytes(buf[offset + _ENTRY_HEAD.size:offset + length]))
        offset += length


def flow_mod_entry(flow_mod: bytes) -> Entry:
    """The entry a switch should report for an OFPFC_ADD we packed."""
    cookie, table, _cmd, idle, hard, priority, _buf, _port, _group, flags = \
        _FLOW_MOD_HEAD.unpack_from(flow_mod, 0)
    return Entry(cookie, table, priority, idle, hard, flags, bytes(flow_mod[_FLOW_MOD_HEAD.size:]))


def _oxm_tlvs(data: bytes) -> Iterator[tuple[int, int, bytes, bytes | None]]:
    """(class, field, value, mask or None) of each OXM TLV. An all-ones
    mask says the same as no mask; an all-zeros mask matches anything, so
    the field says nothing and is left out (OVS drops it: a `/0` prefix
    reads back without its address field)."""
    offset = 0
    while offset + _TLV.size <= len(data):
        cls, fh, length = _TLV.unpack_from(data, offset)
        payload = data[offset + _TLV.size:offset + _TLV.size + length]
        if len(payload) != length:
            raise ValueError("truncated OXM field")
        if fh & 1:
            value, mask = payload[:length // 2], payload[length // 2:]
            if mask == b"\xff" * len(mask):
                mask = None
            elif not any(mask):
                offset += _TLV.size + length
                continue
            yield cls, fh >> 1, value, mask
        else:
            yield cls, fh >> 1, payload, None
        offset += _TLV.size + length


def _match(body: bytes) -> tuple[tuple, int]:
    """The canonical match (sorted fields) and the padded size it used."""
    mtype, length = struct.unpack_from("!HH", body, 0)
    if mtype != 1 or length < 4:
        raise ValueError(f"not an OXM match (type {mtype}, length {length})")
    fields = tuple(sorted(_oxm_tlvs(body[4:length])))
    return fields, length + (-length % 8)


def _field_name(header: int) -> object:
    return _FIELD_BY_CLASS.get((header >> 16, (header >> 9) & 0x7F), header)


def _action(data: bytes) -> tuple:
    atype = struct.unpack_from("!H", data, 0)[0]
    if atype == OFPAT_OUTPUT:
        return ("output",) + struct.unpack_from("!IH", data, 4)
    if atype == OFPAT_SET_FIELD:
        (cls, fld, value, mask), = _oxm_tlvs(data[4:4 + 4 + data[7]])
        return ("set_field", cls, fld, value, mask)
    if atype == OFPAT_EXPERIMENTER and len(data) >= 24:
        vendor, subtype, n_bits, src_ofs, dst_ofs, src, dst = struct.unpack_from("!IHHHHII", data, 4)
        if vendor == NX_VENDOR and subtype == NXAST_REG_MOVE:
            return ("move", n_bits, src_ofs, dst_ofs, _field_name(src), _field_name(dst))
    return ("raw", bytes(data))


def _actions(data: bytes) -> tuple:
    out, offset = [], 0
    while offset + _ACTION.size <= len(data):
        length = _ACTION.unpack_from(data, offset)[1]
        if length < _ACTION.size:
            raise ValueError(f"action of {length} bytes")
        out.append(_action(data[offset:offset + length]))
        offset += length
    return tuple(out)


def _instructions(data: bytes) -> tuple:
    out, offset = [], 0
    while offset + 4 <= len(data):
        itype, length = struct.unpack_from("!HH", data, offset)
        if length < 4:
            raise ValueError(f"instruction of {length} bytes")
        chunk = data[offset:offset + length]
        if itype == OFPIT_APPLY_ACTIONS:
            out.append(("apply", _actions(chunk[8:])))
        elif itype == OFPIT_GOTO_TABLE:
            out.append(("goto", chunk[4]))
        elif itype == OFPIT_WRITE_METADATA:
            out.append(("write_metadata",) + struct.unpack_from("!QQ", chunk, 8))
        else:
            out.append(("raw", bytes(chunk)))
        offset += length
    return tuple(out)


def _raw_tlvs(body: bytes) -> tuple[list[bytes], int]:
    """The match's TLVs as byte strings, and the padded size of the match."""
    length = struct.unpack_from("!H", body, 2)[0]
    out, offset = [], 4
    while offset + 4 <= length:
        end = offset + 4 + body[offset + 3]
        out.append(body[offset:end])
        offset = end
    return out, length + (-length % 8)


def _same_reordered(a: bytes, b: bytes) -> bool:
    """Same instructions byte for byte and the same match fields in any
    order: ten times cheaper than the canonical forms, and what a
    map-cache flow read back from OVS needs (metadata comes last there)."""
    tlvs_a, used_a = _raw_tlvs(a)
    tlvs_b, used_b = _raw_tlvs(b)
    return a[used_a:] == b[used_b:] and sorted(tlvs_a) == sorted(tlvs_b)


def canonical(entry: Entry) -> tuple:
    """What the entry means, without the encoding freedom OVS takes: match
    fields sorted, all-ones masks dropped, register-move headers as names."""
    match, used = _match(entry.body)
    return (entry.table, entry.priority, entry.idle_timeout, entry.hard_timeout, entry.flags,
            match, _instructions(entry.body[used:]))


def same_flow(entry: Entry, flow_mod: bytes) -> bool:
    """Does the switch's entry hold exactly the flow-mod we sent? Equal
    bytes answer at once; otherwise both are compared canonically."""
    expected = flow_mod_entry(flow_mod)
    if entry[1:] == expected[1:]:
        return True
    try:
        if entry[1:6] == expected[1:6] and _same_reordered(entry.body, expected.body):
            return True  # OVS's field order, the rest byte for byte: the common case
        return canonical(entry) == canonical(expected)
    except (ValueError, struct.error, IndexError):  # a malformed entry is not ours
        return False


class Verdict(NamedTuple):
    counts: PartedDict  # flows per cookie as reconcile.py should see them
    changed: tuple[int, ...]  # cookies with a flow whose content is not the cookie's flow
    duplicates: int  # flows beyond the first under one cookie


def installed_counts(entries: Iterable[Entry], expected: Mapping[int, bytes]) -> Verdict:
    """Flows per cookie as reconcile.py counts them, except that a cookie
    holding a flow whose content differs from what the cookie names counts
    once more, so that reconcile replaces it (delete by cookie, add, in one
    ordered bundle). `expected` holds our flow-mod bytes by cookie for the
    flows we want; other cookies are removed anyway. One pass over
    `entries`, so a caller that slices them (controller/slices.py) slices
    all of the work. The counts are a `PartedDict` (model/parted.py): one
    dict filling up to a million counts doubled its table in one step of
    up to 77 ms."""
    counts = PartedDict()
    parts, size = counts.parts, counts.PARTS
    # The parts' lookups inlined: a million times, a method call each is 0.6 s.
    wanted = expected.parts if isinstance(expected, PartedDict) else None
    changed: dict[int, None] = {}
    duplicates = 0  # counted as they come: no second pass over a million counts
    for entry in entries:
        cookie = entry.cookie
        part = parts[cookie % size]
        seen = part.get(cookie, 0)
        part[cookie] = seen + 1
        if seen:
            duplicates += 1
        flow_mod = expected.get(cookie) if wanted is None else wanted[cookie % size].get(cookie)
        if flow_mod is not None and cookie not in changed and not same_flow(entry, flow_mod):
            changed[cookie] = None
    for cookie in changed:
        counts[cookie] += 1
    return Verdict(counts, tuple(changed), duplicates)
