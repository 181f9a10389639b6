"""Flows as plain values, their `ovs-ofctl` text, and their cookies.

A `Flow` is a named tuple of tuples: hashable, cheap, comparable. Match
fields use OpenFlow 1.3 OXM names (as os-ken spells them); actions are small
tuples whose kinds are defined in actions.py. Nothing here knows about
sockets; openflow/wire.py packs the bytes.

Cookies are content addresses. The top byte marks the flow as ours; the
other 56 bits are a hash of the flow's OpenFlow encoding (wire.py). So a flow on a switch
is correct exactly when its cookie is one we want, a changed flow gets a new
cookie, and reconciling after a reconnect compares cookie sets instead of
re-normalizing OVS's rewritten matches (docs/datapath.rst explains why).

Select groups are content-addressed the same way: a group's ID is a hash
of its buckets under our tag, so one RLOC set is one group on every bridge,
however many mappings use it, and a changed set is a new group.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, NamedTuple

from lisp_controller.openflow import wire
from lisp_controller.pipeline.actions import (FIELD_TEXT, actions_bytes, instructions_bytes, render_actions,
                                              value_text)

COOKIE_TAG = 0x4C  # 'L'
COOKIE_TAG_SHIFT = 56
COOKIE_TAG_MASK = 0xFF << COOKIE_TAG_SHIFT
COOKIE_BASE = COOKIE_TAG << COOKIE_TAG_SHIFT  # every cookie of ours is this | a hash

ETH_IP, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
IPPROTO_ICMPV6 = 58
ND_SOLICIT, ND_ADVERT = 135, 136


class Flow(NamedTuple):
    table: int
    priority: int
    match: tuple[tuple[str, object], ...]
    actions: tuple[tuple, ...]


class Meter(NamedTuple):
    """An OpenFlow 1.3 meter that drops packets above `rate` packets per
    second (with a bucket of `burst` packets). Meters are reconciled like
    flows: on connect, only a meter that differs is sent."""

    meter_id: int
    rate: int
    burst: int


class Bucket(NamedTuple):
    weight: int
    actions: tuple[tuple, ...]  # apply-actions kinds only


class Group(NamedTuple):
    """An OpenFlow select group of ours. Built by `select_group`, which
    gives it its content-addressed ID."""

    group_id: int
    buckets: tuple[Bucket, ...]


# Our groups' IDs: the cookie tag in the top byte of the 32-bit ID, then
# 24 bits of hash. Groups outside this range are someone else's.
GROUP_TAG_SHIFT = 24
GROUP_BASE = COOKIE_TAG << GROUP_TAG_SHIFT
_GROUP_HASH_MASK = (1 << GROUP_TAG_SHIFT) - 1


def is_our_group(group_id: int) -> bool:
    return group_id >> GROUP_TAG_SHIFT == COOKIE_TAG


def buckets_bytes(buckets: tuple[Bucket, ...]) -> bytes:
    return b"".join(wire.bucket(b.weight, actions_bytes(b.actions)) for b in buckets)


# Bucket bytes -> group ID, and the reverse, for every set seen by this
# process: two sets whose hashes collide (24 bits: about one pair in
# 16 million) must not share an ID, so the second one seen takes the next
# free ID. A few bytes per distinct RLOC set, not per mapping.
_GROUP_IDS: dict[bytes, int] = {}
_GROUP_OWNERS: dict[int, bytes] = {}


def select_group(buckets: tuple[Bucket, ...]) -> Group:
    """The select group with these buckets, named by a hash of them."""
    body = buckets_bytes(buckets)
    group_id = _GROUP_IDS.get(body)
    if group_id is None:
        h = int.from_bytes(hashlib.blake2b(body, digest_size=3).digest(), "big")
        while GROUP_BASE | h in _GROUP_OWNERS:
            h = (h + 1) & _GROUP_HASH_MASK
        group_id = _GROUP_IDS[body] = GROUP_BASE | h
        _GROUP_OWNERS[group_id] = body
    return Group(group_id, buckets)


def group_mod(group: Group, command: int = wire.OFPGC_ADD) -> bytes:
    """The group's OFPT_GROUP_MOD (add or modify), xid 0."""
    return wire.group_mod(command, wire.OFPGT_SELECT, group.group_id, buckets_bytes(group.buckets))


def group_delete(group_id: int) -> bytes:
    return wire.group_mod(wire.OFPGC_DELETE, wire.OFPGT_SELECT, group_id)


def render_group(group: Group) -> str:
    """The group as `ovs-ofctl add-group` accepts it (and dump-groups shows it)."""
    buckets = ",".join(f"bucket=weight:{b.weight},actions={render_actions(b.actions)}" for b in group.buckets)
    return f"group_id={group.group_id},type=select,{buckets}"


def _protocol(match: dict) -> str | None:
    eth_type = match.get("eth_type")
    if eth_type == ETH_IP:
        return "ip"
    if eth_type == ETH_ARP:
        return "arp"
    if eth_type == ETH_IPV6:
        return "icmp6" if match.get("ip_proto") == IPPROTO_ICMPV6 else "ipv6"
    return None if eth_type is None else f"dl_type=0x{eth_type:04x}"


def render_match(flow: Flow) -> str:
    match = dict(flow.match)
    parts = [f"table={flow.table}", f"priority={flow.priority}"]
    proto = _protocol(match)
    if proto:
        parts.append(proto)
    for name, value in flow.match:
        if name in ("eth_type", "ip_proto"):
            continue
        if name == "vlan_vid":
            # OXM VLAN_VID=0 (OFPVID_NONE) is "no 802.1Q header": VID and CFI
            # bits zero, PCP unconstrained.
            parts.append(f"vlan_tci=0x{value:04x}/0x1fff")
            continue
        parts.append(f"{FIELD_TEXT[name]}={value_text(name, value)}")
    return ",".join(parts)


def render(flow: Flow, cookie: bool = True) -> str:
    """The flow as `ovs-ofctl add-flow` accepts it (and as users read it)."""
    body = f"{render_match(flow)} actions={render_actions(flow.actions)}"
    return f"cookie={flow_cookie(flow):#x},{body}" if cookie else body


def flow_mod_add(flow: Flow, cookie: int) -> bytes:
    """The flow's OFPFC_ADD bytes with `cookie`, xid 0 (stamped when sent)."""
    return wire.flow_mod_add(flow.table, flow.priority, flow.match, instructions_bytes(flow.actions), cookie)


def encoded(flow: Flow) -> tuple[int, bytes]:
    """The flow's cookie and its OFPFC_ADD bytes (xid 0). The cookie hashes
    the encoding, which is the flow's canonical form."""
    body = flow_mod_add(flow, 0)
    cookie = COOKIE_BASE | wire.content_hash(body)
    return cookie, wire.with_cookie(body, cookie)


def flow_mods(flows: Mapping[int, Flow]) -> dict[int, bytes]:
    """OFPFC_ADD bytes by cookie, for flows keyed by their cookies."""
    return {c: flow_mod_add(f, c) for c, f in flows.items()}


def flow_cookie(flow: Flow) -> int:
    return encoded(flow)[0]


def keyed(flows: list[Flow]) -> dict[int, Flow]:
    """Flows by cookie. Two different flows with one cookie would make a
    delete-by-cookie take both: that is a 1-in-10^5 event at a million
    flows, and it is an error rather than a silent loss."""
    out: dict[int, Flow] = {}
    for f in flows:
        c = flow_cookie(f)
        other = out.get(c)
        if other is not None and other != f:
            raise ValueError(f"cookie collision {c:#x}: {render(f, False)} / {render(other, False)}")
        out[c] = f
    return out
