"""Our flow-stats entry parser reads what os-ken's reads, for what we use,
when a reply goes through os-ken's own message parser."""
import struct

from os_ken.ofproto import ofproto_parser, ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from lisp_controller.openflow.switch import FlowStat, _FlowStatsReply

_PROTO = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)


def _entry(table, priority, cookie, packets, nbytes, match, instructions) -> bytes:
    """One ofp_flow_stats as a switch sends it."""
    mbuf = bytearray()
    match.serialize(mbuf, 0)
    ibuf = bytearray()
    for inst in instructions:
        inst.serialize(ibuf, len(ibuf))
    length = 48 + len(mbuf) + len(ibuf)
    head = struct.pack("!HBxIIHHHH4xQQQ", length, table, 12, 345, priority, 0, 0, 0, cookie, packets, nbytes)
    return head + bytes(mbuf) + bytes(ibuf)


ENTRIES = [
    _entry(1, 132, 0x4C00000000000001, 7, 700,
           parser.OFPMatch(eth_type=0x0800, metadata=1000, ipv4_dst="10.1.1.30"),
           [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS,
                                         [parser.OFPActionSetField(tun_ipv4_dst="192.168.1.252"),
                                          parser.OFPActionSetField(tunnel_id=1000)]),
            parser.OFPInstructionGotoTable(2)]),
    _entry(0, 0, 0x4CFFFFFFFFFFFFFF, 2**40, 2**50, parser.OFPMatch(), []),
    _entry(3, 10, 0x1234, 0, 0,
           parser.OFPMatch(eth_type=0x86DD, tunnel_id=5, ipv6_dst=("2001:db8::", "ffff:ffff::")),
           [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionOutput(3)])]),
]


def _reply(flags: int) -> bytes:
    body = b"".join(ENTRIES)
    return struct.pack("!BBHIHH4x", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), 77,
                       ofp.OFPMP_FLOW, flags) + body


def test_os_kens_message_parser_gives_our_entries():
    buf = _reply(ofp.OFPMPF_REPLY_MORE)
    version, msg_type, length, xid = ofproto_parser.header(buf)
    msg = ofproto_parser.msg(_PROTO, version, msg_type, length, xid, bytearray(buf))
    assert type(msg) is _FlowStatsReply
    assert (msg.xid, msg.flags) == (77, ofp.OFPMPF_REPLY_MORE)
    assert all(type(e) is FlowStat for e in msg.body)
    # The same entries as os-ken's own parser reads them.
    reference = []
    offset = 16
    while offset < len(buf):
        e = parser.OFPFlowStats.parser(bytearray(buf), offset)
        reference.append(FlowStat(e.length, e.table_id, e.priority, e.cookie, e.packet_count, e.byte_count))
        offset += e.length
    assert msg.body == reference
    assert [s.cookie for s in msg.body] == [0x4C00000000000001, 0x4CFFFFFFFFFFFFFF, 0x1234]


def test_our_reply_class_still_fires_os_kens_event():
    from os_ken.controller import ofp_event
    assert ofp_event.ofp_msg_to_ev_cls(_FlowStatsReply) is ofp_event.EventOFPFlowStatsReply


def test_other_multipart_replies_still_reach_os_kens_parser():
    port = struct.pack("!I4x6s2x16sIIIIIIII", 3, b"\x02" * 6, b"vnet0".ljust(16, b"\0"), 0, 0, 0, 0, 0, 0, 0, 0)
    buf = struct.pack("!BBHIHH4x", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(port), 5,
                      ofp.OFPMP_PORT_DESC, 0) + port
    msg = ofproto_parser.msg(_PROTO, *ofproto_parser.header(buf), bytearray(buf))
    assert type(msg) is parser.OFPPortDescStatsReply
    assert [(p.port_no, p.name) for p in msg.body] == [(3, b"vnet0")]
