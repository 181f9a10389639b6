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
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

from lisp_controller.openflow import wire
from lisp_controller.pipeline.actions import FIELD_TEXT, instructions_bytes, render_actions, value_text

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
