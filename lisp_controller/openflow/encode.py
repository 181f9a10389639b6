"""Flow values -> OpenFlow 1.3 bytes. The last step before the socket.

Messages are encoded without a connection and with xid 0; `with_xid`
stamps the xid when a message is sent, so the same bytes can serve every
bridge. Flow-mods are packed by wire.py; `encode_add_reference` builds the
same message with os-ken's classes, and a test holds the two identical.
"""
from __future__ import annotations

import ipaddress
import struct

from os_ken.ofproto import ofproto_common, ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from lisp_controller.openflow import wire
from lisp_controller.pipeline.actions import kind, reference_instructions, reference_value, resubmit, set_field
from lisp_controller.pipeline.flows import Bucket, Flow, Group, Meter

_PROTO = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)
_HEADER = struct.Struct("!BBHI")


def _serialize(msg) -> bytes:
    msg.set_xid(0)
    msg.serialize()
    return bytes(msg.buf)


def encode_add_reference(flow: Flow, cookie: int) -> bytes:
    """os-ken's encoding of the same flow-mod: the yardstick for wire.py."""
    match = parser.OFPMatch(**{k: reference_value(v) for k, v in flow.match})
    return _serialize(parser.OFPFlowMod(
        _PROTO, cookie=cookie, table_id=flow.table, command=ofp.OFPFC_ADD,
        priority=flow.priority, buffer_id=ofp.OFP_NO_BUFFER, match=match,
        instructions=reference_instructions(flow.actions)))


def encode_delete_reference(cookie: int) -> bytes:
    """Delete by exact cookie in every table: flows are content-addressed,
    so the cookie alone names the flow. os-ken's encoding (9 us); the bytes
    differ only in the cookie, so `encode_delete` splices it into these."""
    return _serialize(parser.OFPFlowMod(
        _PROTO, cookie=cookie, cookie_mask=wire.ALL_ONES_64, table_id=ofp.OFPTT_ALL,
        command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch()))


_DELETE = encode_delete_reference(0)


def encode_delete(cookie: int) -> bytes:
    """`encode_delete_reference(cookie)`, for a bulk delete of 100,000 flows."""
    return wire.with_cookie(_DELETE, cookie)


def with_xid(msg: bytes, xid: int) -> bytes:
    return msg[:4] + struct.pack("!I", xid) + msg[8:]


def _header(msg_type: int, length: int, xid: int) -> bytes:
    return _HEADER.pack(ofp.OFP_VERSION, msg_type, length, xid)


def barrier(xid: int) -> bytes:
    return _header(ofp.OFPT_BARRIER_REQUEST, 8, xid)


def role_request(xid: int, role: int, generation: int) -> bytes:
    """OFPT_ROLE_REQUEST: become `role` (OFPCR_ROLE_*), with the
    generation ID a MASTER or SLAVE request is checked against; NOCHANGE
    only asks for the current role and generation."""
    return _header(ofp.OFPT_ROLE_REQUEST, 24, xid) + struct.pack("!I4xQ", role, generation & (2**64 - 1))


def port_desc_request(xid: int) -> bytes:
    return _header(ofp.OFPT_MULTIPART_REQUEST, 16, xid) + struct.pack(
        "!HH4x", ofp.OFPMP_PORT_DESC, 0)


def flow_stats_request(xid: int, cookie: int, cookie_mask: int, table: int = ofp.OFPTT_ALL) -> bytes:
    """Flows of `table` (default: every table) whose cookie matches under the mask."""
    body = struct.pack("!B3xII4xQQ", table, ofp.OFPP_ANY, ofp.OFPG_ANY,
                       cookie, cookie_mask) + struct.pack("!HH4x", ofp.OFPMT_OXM, 4)
    length = 16 + len(body)
    return _header(ofp.OFPT_MULTIPART_REQUEST, length, xid) + struct.pack(
        "!HH4x", ofp.OFPMP_FLOW, 0) + body


_EXP = struct.Struct("!II")  # experimenter id, exp_type


def bundle_ctrl(xid: int, bundle_id: int, ctrl_type: int, flags: int) -> bytes:
    body = _EXP.pack(ofproto_common.ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_CONTROL) + \
        struct.pack("!IHH", bundle_id, ctrl_type, flags)
    return _header(ofp.OFPT_EXPERIMENTER, 8 + len(body), xid) + body


def bundle_add(xid: int, bundle_id: int, flags: int, inner: bytes) -> bytes:
    """Wrap a message in a bundle; the inner xid must equal the outer one
    (ONF bundle extension), which is how OVS's errors name the flow."""
    inner = with_xid(inner, xid)
    body = _EXP.pack(ofproto_common.ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_ADD_MESSAGE) + \
        struct.pack("!I2xH", bundle_id, flags) + inner
    return _header(ofp.OFPT_EXPERIMENTER, 8 + len(body), xid) + body


# Meters and packet-outs are rare (one meter per bridge, packet-outs paced
# by that meter): os-ken's classes encode them.
METER_FLAGS = ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS
METER_ADD, METER_MODIFY = ofp.OFPMC_ADD, ofp.OFPMC_MODIFY


def meter_mod(meter: Meter, command: int) -> bytes:
    """Add or modify `meter`: drop packets above its rate (packets per
    second, with a bucket of `burst` packets), and keep statistics."""
    band = parser.OFPMeterBandDrop(rate=meter.rate, burst_size=meter.burst)
    return _serialize(parser.OFPMeterMod(_PROTO, command=command, flags=METER_FLAGS,
                                         meter_id=meter.meter_id, bands=[band]))


def meter_of(config) -> Meter | None:
    """A meter as a switch reports it (OFPMeterConfigStats), as our value;
    None if it is not a meter of the shape we make (packets per second,
    burst, one drop band)."""
    bands = config.bands
    if config.flags != METER_FLAGS or len(bands) != 1 or bands[0].type != ofp.OFPMBT_DROP:
        return None
    return Meter(config.meter_id, bands[0].rate, bands[0].burst_size)


def meter_config_request(xid: int) -> bytes:
    return with_xid(_serialize(parser.OFPMeterConfigStatsRequest(_PROTO, 0, ofp.OFPM_ALL)), xid)


def meter_stats_request(xid: int, meter_id: int) -> bytes:
    return with_xid(_serialize(parser.OFPMeterStatsRequest(_PROTO, 0, meter_id)), xid)


def packet_out(actions: tuple, data: bytes) -> bytes:
    """Send `data` (an Ethernet frame) through `actions` (apply-actions
    only), as if it came from the controller."""
    return _serialize(parser.OFPPacketOut(_PROTO, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                          actions=[kind(a).reference(a) for a in actions], data=data))


# Groups: a few per distinct RLOC set, so os-ken's classes encode them for
# reading and the tests; the bytes we send are flows.group_mod's, which a
# test holds equal to `group_mod_reference`.
def group_mod_reference(group: Group, command: int = ofp.OFPGC_ADD) -> bytes:
    buckets = [parser.OFPBucket(weight=b.weight, watch_port=ofp.OFPP_ANY, watch_group=ofp.OFPG_ANY,
                                actions=[kind(a).reference(a) for a in b.actions]) for b in group.buckets]
    return _serialize(parser.OFPGroupMod(_PROTO, command=command, type_=ofp.OFPGT_SELECT,
                                         group_id=group.group_id, buckets=buckets))


def group_desc_request(xid: int) -> bytes:
    return with_xid(_serialize(parser.OFPGroupDescStatsRequest(_PROTO, 0)), xid)


def group_stats_request(xid: int) -> bytes:
    return with_xid(_serialize(parser.OFPGroupStatsRequest(_PROTO, 0, ofp.OFPG_ALL)), xid)


def group_of(desc) -> Group | None:
    """A group as a switch describes it (OFPGroupDescStats), as our value;
    None if it is not a group of the shape we make (select, buckets that
    set a tunnel destination and resubmit), which reconcile then replaces."""
    if desc.type != ofp.OFPGT_SELECT or not desc.buckets:
        return None
    buckets = []
    for b in desc.buckets:
        actions = tuple(_action_of(a) for a in b.actions)
        if None in actions:
            return None
        buckets.append(Bucket(b.weight, actions))
    return Group(desc.group_id, tuple(buckets))


def _action_of(action) -> tuple | None:
    if isinstance(action, parser.OFPActionSetField) and action.key in ("tun_ipv4_dst", "tun_ipv6_dst"):
        return set_field(action.key, ipaddress.ip_address(action.value))
    if isinstance(action, parser.NXActionResubmitTable) and action.in_port == 0xFFF8:
        return resubmit(action.table_id)
    return None


def packet_out_to_table_reference(in_port: int, data: bytes) -> bytes:
    """os-ken's encoding of `packet_out_to_table` (a test holds them equal)."""
    return _serialize(parser.OFPPacketOut(_PROTO, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port,
                                          actions=[parser.OFPActionOutput(ofp.OFPP_TABLE)], data=data))


_PACKET_OUT = struct.Struct("!BBHIIIH6x")
_OUTPUT_TO_TABLE = struct.pack("!HHIH6x", ofp.OFPAT_OUTPUT, 16, ofp.OFPP_TABLE, ofp.OFPCML_MAX)


def packet_out_to_table(in_port: int, data: bytes) -> bytes:
    """Send `data` (an Ethernet frame) through the bridge's flow tables
    from table 0, as if it had just arrived on `in_port`: a packet held
    while its mapping was resolved takes the flow now installed. Packed by
    hand: a burst of resolutions sends thousands."""
    head = _PACKET_OUT.pack(ofp.OFP_VERSION, ofp.OFPT_PACKET_OUT, 40 + len(data), 0, ofp.OFP_NO_BUFFER,
                            in_port, len(_OUTPUT_TO_TABLE))
    return head + _OUTPUT_TO_TABLE + data
