"""Every kind of action a flow of ours may carry, each defined once.

An action is a small tuple, `(kind, *arguments)`: hashable, cheap, and
what a `Flow` holds. Everything the rest of the code needs to know about a
kind lives in its class here, side by side:

- `text`: how `ovs-ofctl` writes it (what users read, and `render`);
- `pack`: its OpenFlow 1.3 bytes (what the cookie hashes and the switch gets);
- `reference`: os-ken's object for the same action, the yardstick a test
  holds `pack` to, byte for byte;
- `trace`: what it does to a packet walking the tables (the fake pipeline
  of the unit tests, tests/fakeof.py).

Three kinds are instructions rather than apply-actions (`meter`,
`write_metadata` and `goto`); `instructions_bytes` puts them in the order
OpenFlow 1.3 requires. Adding a kind means adding one class here (docs/architecture.rst).
A `group` action carries its whole `Group` (flows.py), so a flow says
everything it does; the group's buckets hold actions of these same kinds.
"""
from __future__ import annotations

import functools
import hashlib
import ipaddress
import struct
from typing import ClassVar

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from lisp_controller.model import Prefix
from lisp_controller.openflow import wire

# Widths of the fields `move` may copy, and their NXM names (what
# ovs-ofctl prints for a move).
FIELD_BITS = {"eth_src": 48, "eth_dst": 48, "arp_sha": 48, "arp_tha": 48,
              "arp_spa": 32, "arp_tpa": 32, "reg0": 32}
_NXM_NAME = {"eth_src": "NXM_OF_ETH_SRC", "eth_dst": "NXM_OF_ETH_DST",
             "arp_sha": "NXM_NX_ARP_SHA", "arp_tha": "NXM_NX_ARP_THA",
             "arp_spa": "NXM_OF_ARP_SPA", "arp_tpa": "NXM_OF_ARP_TPA", "reg0": "NXM_NX_REG0"}

# OXM name -> ovs-ofctl name
FIELD_TEXT = {
    "in_port": "in_port", "eth_dst": "dl_dst", "eth_src": "dl_src", "metadata": "metadata",
    "tunnel_id": "tun_id", "ipv4_dst": "nw_dst", "ipv6_dst": "ipv6_dst", "icmpv6_type": "icmp_type",
    "tun_ipv4_dst": "tun_dst", "tun_ipv6_dst": "tun_ipv6_dst", "arp_tpa": "arp_tpa",
    "arp_spa": "arp_spa", "arp_sha": "arp_sha", "arp_op": "arp_op", "reg0": "reg0",
}
_HEX_FIELDS = {"metadata", "tunnel_id", "reg0"}

_OUTPUT = struct.Struct("!HHIH6x")
_NX_REG_MOVE = struct.Struct("!HHIHHHHII")
_GOTO = struct.Struct("!HHB3x")
_WRITE_META = struct.Struct("!HH4xQQ")
_DEC_NW_TTL = struct.pack("!HH4x", 24, 8)
# Nicira check_pkt_larger: subtype, length, result bit offset, result
# field header, padding to 24 bytes.
_NX_CHECK_PKT_LARGER = struct.Struct("!HHIHHHI6x")
_METER = struct.Struct("!HHI")
_GROUP = struct.Struct("!HHI")
_NX_RESUBMIT_TABLE = struct.Struct("!HHIHHB3x")
OFPAT_GROUP, NX_IN_PORT = 22, 0xFFF8  # resubmit keeps the packet's in_port


def value_text(name: str, value: object) -> str:
    """A match or set-field value as ovs-ofctl writes it."""
    if isinstance(value, (Prefix, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value.network_address) if value.prefixlen == value.max_prefixlen else str(value)
    if name in _HEX_FIELDS:
        return hex(value)  # type: ignore[arg-type]
    return str(value)


def reference_value(value: object) -> object:
    """A match or set-field value as os-ken's OXM classes take it."""
    if isinstance(value, (Prefix, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        if value.prefixlen == value.max_prefixlen:
            return str(value.network_address)
        return (str(value.network_address), str(value.netmask))
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    return value


class Kind:
    """One action kind. `instruction` says where OpenFlow 1.3 wants it:
    in the apply-actions list, or as an instruction of its own."""

    name: ClassVar[str]
    instruction: ClassVar[str] = "apply"

    @staticmethod
    def text(a: tuple) -> str:
        raise NotImplementedError

    @staticmethod
    def pack(a: tuple) -> bytes:
        raise NotImplementedError

    @staticmethod
    def reference(a: tuple) -> object:
        raise NotImplementedError

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        """Apply the action to `packet` (a dict of fields), appending where
        it went to `outputs`; False stops the packet (OVS drops it)."""
        raise NotImplementedError


class Output(Kind):
    name = "output"
    text = staticmethod(lambda a: f"output:{a[1]}")
    pack = staticmethod(lambda a: _OUTPUT.pack(0, 16, a[1], wire.OFPCML_MAX))
    reference = staticmethod(lambda a: parser.OFPActionOutput(a[1]))

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        outputs.append(a[1])
        return True


class _Reserved(Kind):
    """Output to a reserved port: NORMAL, CONTROLLER or IN_PORT."""

    port: ClassVar[int]
    max_len: ClassVar[int] = wire.OFPCML_MAX
    label: ClassVar[str]

    @classmethod
    def text(cls, a: tuple) -> str:
        return cls.label

    @classmethod
    def pack(cls, a: tuple) -> bytes:
        return _OUTPUT.pack(0, 16, cls.port, cls.max_len)

    @classmethod
    def reference(cls, a: tuple) -> object:
        return parser.OFPActionOutput(cls.port, cls.max_len)

    @classmethod
    def trace(cls, a: tuple, packet: dict, outputs: list) -> bool:
        outputs.append(cls.name.upper())
        return True


class Normal(_Reserved):
    name, port, label = "normal", wire.OFPP_NORMAL, "NORMAL"


class ToController(_Reserved):
    name, port, label = "controller", wire.OFPP_CONTROLLER, "CONTROLLER:65535"
    max_len = wire.OFPCML_NO_BUFFER


class InPort(_Reserved):
    """Back out of the port the packet came in on (ARP replies)."""

    name, port, label = "in_port", wire.OFPP_IN_PORT, "IN_PORT"


class DecTtl(Kind):
    """IPv4 TTL / IPv6 hop limit - 1: this xTR routed the packet."""

    name = "dec_ttl"
    text = staticmethod(lambda a: "dec_ttl")
    pack = staticmethod(lambda a: _DEC_NW_TTL)
    reference = staticmethod(lambda a: parser.OFPActionDecNwTtl())

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        # OVS drops a packet whose TTL would reach 0 and runs no more actions.
        if packet.get("nw_ttl", 64) <= 1:
            return False
        packet["nw_ttl"] = packet.get("nw_ttl", 64) - 1
        return True


class SetField(Kind):
    name = "set_field"
    text = staticmethod(lambda a: f"set_field:{value_text(a[1], a[2])}->{FIELD_TEXT[a[1]]}")
    reference = staticmethod(lambda a: parser.OFPActionSetField(**{a[1]: reference_value(a[2])}))

    @staticmethod
    def pack(a: tuple) -> bytes:
        tlv = wire.oxm(a[1], a[2])
        return wire.pad8(struct.pack("!HH", 25, wire.round8(4 + len(tlv))) + tlv)

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        packet[a[1]] = a[2] if isinstance(a[2], int) else str(a[2])
        return True


class Move(Kind):
    """Copy a whole field into another of the same width (Nicira reg_move:
    OpenFlow 1.3 has no copy-field action)."""

    name = "move"
    text = staticmethod(lambda a: f"move:{_NXM_NAME[a[1]]}[]->{_NXM_NAME[a[2]]}[]")
    reference = staticmethod(lambda a: parser.NXActionRegMove(src_field=a[1], dst_field=a[2],
                                                              n_bits=FIELD_BITS[a[1]]))

    @staticmethod
    def pack(a: tuple) -> bytes:
        bits = wire.FIELDS[a[1]][2] * 8
        return _NX_REG_MOVE.pack(0xFFFF, 24, wire.NX_VENDOR, wire.NXAST_REG_MOVE, bits, 0, 0,
                                 wire.oxm_header(a[1]), wire.oxm_header(a[2]))

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        packet[a[2]] = packet.get(a[1])
        return True


class CheckPktLarger(Kind):
    """reg0[0] = 1 if the packet (its whole Ethernet frame) is longer than
    `a[1]` bytes, else 0 (OVS's check_pkt_len; docs/mtu.rst). A later table
    matches reg0 to tell the two apart."""

    name = "check_pkt_larger"
    text = staticmethod(lambda a: f"check_pkt_larger({a[1]})->NXM_NX_REG0[0]")
    pack = staticmethod(lambda a: _NX_CHECK_PKT_LARGER.pack(0xFFFF, 24, wire.NX_VENDOR, wire.NXAST_CHECK_PKT_LARGER,
                                                            a[1], 0, wire.oxm_header("reg0")))
    # os-ken 4.2 has no class for it: its body as OVS defines it (the bytes
    # are also checked with `ovs-ofctl ofp-print`, OVS's own decoder).
    reference = staticmethod(lambda a: parser.OFPActionExperimenterUnknown(
        wire.NX_VENDOR, struct.pack("!HHHI6x", wire.NXAST_CHECK_PKT_LARGER, a[1], 0, wire.oxm_header("reg0"))))

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        packet["reg0"] = int(packet.get("frame_len", 64) > a[1])
        return True


class MeterAction(Kind):
    """Pass the packet through OpenFlow 1.3 meter `a[1]` first; a packet
    the meter drops goes no further."""

    name, instruction = "meter", "meter"
    text = staticmethod(lambda a: f"meter:{a[1]}")
    pack = staticmethod(lambda a: _METER.pack(ofp.OFPIT_METER, 8, a[1]))
    reference = staticmethod(lambda a: parser.OFPInstructionMeter(a[1]))

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        packet["meter"] = a[1]  # the fake pipeline never runs out of rate
        return True


class Resubmit(Kind):
    """Run the packet through table `a[1]` from here (Nicira resubmit). An
    OpenFlow bucket cannot goto_table, so a group's bucket resubmits to the
    egress table, which the single-RLOC flow reaches by goto
    (docs/datapath.rst, "The pipeline")."""

    name = "resubmit"
    text = staticmethod(lambda a: f"resubmit(,{a[1]})")
    pack = staticmethod(lambda a: _NX_RESUBMIT_TABLE.pack(0xFFFF, 16, wire.NX_VENDOR, wire.NXAST_RESUBMIT_TABLE,
                                                          NX_IN_PORT, a[1]))
    reference = staticmethod(lambda a: parser.NXActionResubmitTable(in_port=NX_IN_PORT, table_id=a[1]))

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        packet["_walk"](a[1], packet, outputs)  # the fake pipeline's table walk (tests/fakeof.py)
        return True


class GroupAction(Kind):
    """Hand the packet to a select group: one bucket, chosen by a hash of
    the packet's flow weighted by the buckets' weights, acts on a copy of
    it (OVS rolls back what a bucket changed)."""

    name = "group"
    text = staticmethod(lambda a: f"group:{a[1].group_id}")
    pack = staticmethod(lambda a: _GROUP.pack(OFPAT_GROUP, 8, a[1].group_id))
    reference = staticmethod(lambda a: parser.OFPActionGroup(a[1].group_id))

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        buckets = a[1].buckets
        key = repr(tuple(packet.get(f) for f in _FLOW_FIELDS)).encode()
        point = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big") % \
            sum(b.weight for b in buckets)
        for bucket in buckets:
            if point < bucket.weight:
                copy = dict(packet)
                for action in bucket.actions:
                    if not kind(action).trace(action, copy, outputs):
                        break
                return True
            point -= bucket.weight
        return True


# What the fake pipeline hashes to choose a bucket: a connection's fields.
_FLOW_FIELDS = ("ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst", "ip_proto", "tp_src", "tp_dst")


class WriteMetadata(Kind):
    name, instruction = "write_metadata", "write_metadata"
    text = staticmethod(lambda a: f"write_metadata:{hex(a[1])}")
    pack = staticmethod(lambda a: _WRITE_META.pack(ofp.OFPIT_WRITE_METADATA, 24, a[1], wire.ALL_ONES_64))
    reference = staticmethod(lambda a: parser.OFPInstructionWriteMetadata(a[1], wire.ALL_ONES_64))

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        packet["metadata"] = a[1]
        return True


class Goto(Kind):
    name, instruction = "goto", "goto"
    text = staticmethod(lambda a: f"goto_table:{a[1]}")
    pack = staticmethod(lambda a: _GOTO.pack(ofp.OFPIT_GOTO_TABLE, 8, a[1]))
    reference = staticmethod(lambda a: parser.OFPInstructionGotoTable(a[1]))

    @staticmethod
    def trace(a: tuple, packet: dict, outputs: list) -> bool:
        return True  # the walk follows it: see next_table


KINDS: dict[str, type[Kind]] = {k.name: k for k in (Output, Normal, ToController, InPort, DecTtl,
                                                     SetField, Move, CheckPktLarger, MeterAction,
                                                     Resubmit, GroupAction, WriteMetadata, Goto)}


def kind(a: tuple) -> type[Kind]:
    try:
        return KINDS[a[0]]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"unknown action {a!r}") from None


# The action values the compiler builds flows from.
def output(port: int) -> tuple:
    return ("output", port)


NORMAL = ("normal",)
TO_CONTROLLER = ("controller",)
IN_PORT = ("in_port",)
DEC_TTL = ("dec_ttl",)


def set_field(name: str, value: object) -> tuple:
    return ("set_field", name, value)


def goto(table: int) -> tuple:
    return ("goto", table)


def write_metadata(value: int) -> tuple:
    return ("write_metadata", value)


def move(src: str, dst: str) -> tuple:
    if FIELD_BITS[src] != FIELD_BITS[dst]:
        raise ValueError(f"move {src} -> {dst}: widths differ")
    return ("move", src, dst)


def check_pkt_larger(length: int) -> tuple:
    return ("check_pkt_larger", length)


def meter(meter_id: int) -> tuple:
    return ("meter", meter_id)


def resubmit(table: int) -> tuple:
    return ("resubmit", table)


def group(g: tuple) -> tuple:
    """Send to the select group `g` (a flows.Group)."""
    return ("group", g)


def groups_in(actions: tuple) -> tuple:
    """The groups a flow's actions send to."""
    return tuple(a[1] for a in actions if a[0] == "group")


def next_table(actions: tuple) -> int | None:
    """The table a flow's goto sends the packet to, if any."""
    return next((a[1] for a in actions if a[0] == "goto"), None)


def render_actions(actions: tuple) -> str:
    return ",".join(kind(a).text(a) for a in actions) or "drop"


def actions_bytes(actions: tuple) -> bytes:
    """An action list (a group's bucket) packed: apply-actions kinds only."""
    for a in actions:
        if kind(a).instruction != "apply":
            raise ValueError(f"{a[0]} is an instruction, not an action")
    return b"".join(kind(a).pack(a) for a in actions)


@functools.lru_cache(maxsize=65536)  # thousands of mappings share one action list
def instructions_bytes(actions: tuple) -> bytes:
    """Meter, apply-actions, write-metadata, goto: OpenFlow 1.3's order."""
    parts: dict[str, list[bytes]] = {"meter": [], "apply": [], "write_metadata": [], "goto": []}
    for a in actions:
        k = kind(a)
        parts[k.instruction].append(k.pack(a))
    out = b"".join(parts["meter"])
    if parts["apply"]:
        body = b"".join(parts["apply"])
        out += struct.pack("!HH4x", ofp.OFPIT_APPLY_ACTIONS, 8 + len(body)) + body
    return out + b"".join(parts["write_metadata"]) + b"".join(parts["goto"])


def reference_instructions(actions: tuple) -> list:
    """os-ken's instructions for the same actions, in the same order."""
    parts: dict[str, list] = {"meter": [], "apply": [], "write_metadata": [], "goto": []}
    for a in actions:
        k = kind(a)
        parts[k.instruction].append(k.reference(a))
    head = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, parts["apply"])] if parts["apply"] else []
    return parts["meter"] + head + parts["write_metadata"] + parts["goto"]
