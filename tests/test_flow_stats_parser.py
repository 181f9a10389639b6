"""Our flow-stats body parser reads what os-ken's reads, for what we use."""
import struct

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from lisp_controller.switch import FlowStat, _FlowStatsReply


def _entry(table, priority, cookie, packets, nbytes, match, instructions) -> bytes:
    """One ofp_flow_stats as a switch sends it."""
    mbuf = bytearray()
    match.serialize(mbuf, 0)
    ibuf = bytearray()
    for inst in instructions:
        inst.serialize(ibuf, len(ibuf))
    head_len = 48
    length = head_len + len(mbuf) + len(ibuf)
    head = struct.pack("!HBxIIHHHH4xQQQ", length, table, 12, 345, priority, 0, 0, 0, cookie, packets, nbytes)
    return head + bytes(mbuf) + bytes(ibuf)


def test_fast_parser_matches_os_kens_parser():
    entries = [
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
    buf = b"\x00" * 16 + b"".join(entries)
    ours = _FlowStatsReply.parser_stats_body(buf, len(buf), 16)
    reference = parser.OFPFlowStatsReply.parser_stats_body(bytearray(buf), len(buf), 16)
    assert ours == [FlowStat(e.table_id, e.priority, e.cookie, e.packet_count, e.byte_count) for e in reference]
    assert [s.cookie for s in ours] == [0x4C00000000000001, 0x4CFFFFFFFFFFFFFF, 0x1234]


def test_os_ken_dispatches_flow_stats_replies_to_our_parser():
    from os_ken.controller import ofp_event
    assert parser.OFPMultipartReply._STATS_MSG_TYPES[ofp.OFPMP_FLOW] is _FlowStatsReply
    assert ofp_event.ofp_msg_to_ev_cls(_FlowStatsReply) is ofp_event.EventOFPFlowStatsReply
