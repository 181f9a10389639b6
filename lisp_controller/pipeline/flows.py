"""Flows as plain values, their `ovs-ofctl` text, and their cookies.

A `Flow` is a named tuple of tuples: hashable, cheap, comparable. Match
fields use OpenFlow 1.3 OXM names (as os-ken spells them); actions are small
tuples. Nothing here knows about sockets or os-ken objects: `encode.py`
turns flows into bytes at the last step.

Cookies are content addresses. The top byte marks the flow as ours; the
other 56 bits are a hash of the flow's OpenFlow encoding (wire.py). So a flow on a switch
is correct exactly when its cookie is one we want, a changed flow gets a new
cookie, and reconciling after a reconnect compares cookie sets instead of
re-normalizing OVS's rewritten matches (docs/datapath.rst explains why).
"""
from __future__ import annotations

import ipaddress
from typing import Mapping, NamedTuple

from lisp_controller.openflow import wire
from lisp_controller.model import Prefix

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


# Actions, as values.
def output(port: int) -> tuple:
    return ("output", port)


NORMAL = ("normal",)
TO_CONTROLLER = ("controller",)
IN_PORT = ("in_port",)  # back out of the port the packet came in on (ARP replies)
DEC_TTL = ("dec_ttl",)  # IPv4 TTL / IPv6 hop limit - 1: this xTR routed the packet


def set_field(name: str, value: object) -> tuple:
    return ("set_field", name, value)


def goto(table: int) -> tuple:
    return ("goto", table)


def write_metadata(value: int) -> tuple:
    return ("write_metadata", value)


def move(src: str, dst: str) -> tuple:
    """Copy a whole field into another of the same width (Nicira reg_move:
    OpenFlow 1.3 has no copy-field action)."""
    if FIELD_BITS[src] != FIELD_BITS[dst]:
        raise ValueError(f"move {src} -> {dst}: widths differ")
    return ("move", src, dst)


# Widths of the fields `move` may copy, and their NXM names (what
# ovs-ofctl prints for a move).
FIELD_BITS = {"eth_src": 48, "eth_dst": 48, "arp_sha": 48, "arp_tha": 48,
              "arp_spa": 32, "arp_tpa": 32, "reg0": 32}
_NXM_NAME = {"eth_src": "NXM_OF_ETH_SRC", "eth_dst": "NXM_OF_ETH_DST",
             "arp_sha": "NXM_NX_ARP_SHA", "arp_tha": "NXM_NX_ARP_THA",
             "arp_spa": "NXM_OF_ARP_SPA", "arp_tpa": "NXM_OF_ARP_TPA", "reg0": "NXM_NX_REG0"}


# Rendering -----------------------------------------------------------------

# OXM name -> ovs-ofctl name
_FIELD_TEXT = {
    "in_port": "in_port",
    "eth_dst": "dl_dst",
    "eth_src": "dl_src",
    "metadata": "metadata",
    "tunnel_id": "tun_id",
    "ipv4_dst": "nw_dst",
    "ipv6_dst": "ipv6_dst",
    "icmpv6_type": "icmp_type",
    "tun_ipv4_dst": "tun_dst",
    "tun_ipv6_dst": "tun_ipv6_dst",
    "arp_tpa": "arp_tpa",
    "arp_spa": "arp_spa",
    "arp_sha": "arp_sha",
    "arp_op": "arp_op",
}
_HEX_FIELDS = {"metadata", "tunnel_id"}


def _protocol(match: dict) -> str | None:
    eth_type = match.get("eth_type")
    if eth_type == ETH_IP:
        return "ip"
    if eth_type == ETH_ARP:
        return "arp"
    if eth_type == ETH_IPV6:
        return "icmp6" if match.get("ip_proto") == IPPROTO_ICMPV6 else "ipv6"
    return None if eth_type is None else f"dl_type=0x{eth_type:04x}"


def _value_text(name: str, value: object) -> str:
    if isinstance(value, (Prefix, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value.network_address) if value.prefixlen == value.max_prefixlen else str(value)
    if name in _HEX_FIELDS:
        return hex(value)  # type: ignore[arg-type]
    return str(value)


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
        parts.append(f"{_FIELD_TEXT[name]}={_value_text(name, value)}")
    return ",".join(parts)


def render_actions(flow: Flow) -> str:
    out = []
    for action in flow.actions:
        kind = action[0]
        if kind == "output":
            out.append(f"output:{action[1]}")
        elif kind == "normal":
            out.append("NORMAL")
        elif kind == "controller":
            out.append("CONTROLLER:65535")
        elif kind == "set_field":
            out.append(f"set_field:{_value_text(action[1], action[2])}->{_FIELD_TEXT[action[1]]}")
        elif kind == "goto":
            out.append(f"goto_table:{action[1]}")
        elif kind == "write_metadata":
            out.append(f"write_metadata:{hex(action[1])}")
        elif kind == "move":
            out.append(f"move:{_NXM_NAME[action[1]]}[]->{_NXM_NAME[action[2]]}[]")
        elif kind == "in_port":
            out.append("IN_PORT")
        elif kind == "dec_ttl":
            out.append("dec_ttl")
        else:
            raise ValueError(f"unknown action {action!r}")
    return ",".join(out) or "drop"


def render(flow: Flow, cookie: bool = True) -> str:
    """The flow as `ovs-ofctl add-flow` accepts it (and as users read it)."""
    body = f"{render_match(flow)} actions={render_actions(flow)}"
    return f"cookie={flow_cookie(flow):#x},{body}" if cookie else body


def encoded(flow: Flow) -> tuple[int, bytes]:
    """The flow's cookie and its OFPFC_ADD bytes (xid 0). The cookie hashes
    the encoding, which is the flow's canonical form."""
    body = wire.flow_mod_add(flow, 0)
    cookie = COOKIE_BASE | wire.content_hash(body)
    return cookie, wire.with_cookie(body, cookie)


def flow_mods(flows: Mapping[int, Flow]) -> dict[int, bytes]:
    """OFPFC_ADD bytes by cookie, for flows keyed by their cookies."""
    return {c: wire.flow_mod_add(f, c) for c, f in flows.items()}


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
