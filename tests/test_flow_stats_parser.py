"""Flow dumps are parsed on our side of the socket: our entry parser reads
what os-ken's reads, the tap hands our replies over as bytes and passes
everything else to os-ken's own receive loop unchanged, and os-ken's
parser table is left alone."""
import gc
import random
import socket
import struct
import threading
from types import SimpleNamespace

import pytest
from os_ken.ofproto import ofproto_parser, ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from lisp_controller.openflow import tap
from lisp_controller.openflow.errors import SwitchError
from lisp_controller.model.parted import PartedDict
from lisp_controller.openflow.flowstats import FlowCounts, FlowStat, flow_stats
from lisp_controller.openflow.switch import Switch

_PROTO = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)
OS_KENS_MULTIPART_PARSER = parser._MSG_PARSERS[ofp.OFPT_MULTIPART_REPLY]


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


def _reply(flags: int, xid: int = 77, entries=ENTRIES) -> bytes:
    body = b"".join(entries)
    return struct.pack("!BBHIHH4x", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), xid,
                       ofp.OFPMP_FLOW, flags) + body


def _port_status(no: int) -> bytes:
    desc = struct.pack("!I4x6s2x16sIIIIIIII", no, b"\x02" * 6, b"vnet%d".ljust(16, b"\0") % no,
                       0, 0, 0, 0, 0, 0, 0, 0)
    return struct.pack("!BBHIB7x", ofp.OFP_VERSION, ofp.OFPT_PORT_STATUS, 16 + len(desc), 0,
                       ofp.OFPPR_ADD) + desc


def _echo(xid: int) -> bytes:
    return struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_ECHO_REQUEST, 8, xid)


def test_our_parser_reads_what_os_kens_reads():
    buf = _reply(ofp.OFPMPF_REPLY_MORE)
    reference = []
    offset = 16
    while offset < len(buf):
        e = parser.OFPFlowStats.parser(bytearray(buf), offset)
        reference.append(FlowStat(e.length, e.table_id, e.priority, e.cookie, e.packet_count, e.byte_count))
        offset += e.length
    assert flow_stats(buf) == reference
    assert [s.cookie for s in flow_stats(buf)] == [0x4C00000000000001, 0x4CFFFFFFFFFFFFFF, 0x1234]
    with pytest.raises(ValueError):
        flow_stats(buf[:16] + b"\0\x10" + buf[18:])  # an entry shorter than its head


def test_os_kens_parsers_are_left_alone():
    import lisp_controller.controller.app  # noqa: F401 - everything of ours imported
    assert parser._MSG_PARSERS[ofp.OFPT_MULTIPART_REPLY] is OS_KENS_MULTIPART_PARSER
    buf = _reply(0)
    msg = ofproto_parser.msg(_PROTO, *ofproto_parser.header(buf), bytearray(buf))
    assert type(msg) is parser.OFPFlowStatsReply and type(msg.body[0]) is parser.OFPFlowStats


def os_ken_reads(sock, messages: int, started: bytes = b"") -> list[bytes]:
    """The contract os-ken's receive loop keeps with its socket: ask for a
    header, then for exactly the rest of the message, never past its end
    and never less than a header's worth. `started`: what it had read."""
    out, buf = [], bytearray(started)
    want = max(8, struct.unpack_from("!H", started, 2)[0] - len(started)) if started else 8
    while len(out) < messages:
        data = sock.recv(want)
        if not data:
            break
        buf += data
        while len(buf) >= 8:
            length = struct.unpack_from("!H", buf, 2)[0]
            if len(buf) < length:
                want = max(8, length - len(buf))
                break
            out.append(bytes(buf[:length]))
            del buf[:length]
            want = 8
    return out


class ChunkedSocket:
    """Gives its bytes back in pieces of random size, as TCP may."""

    def __init__(self, data: bytes, seed: int):
        self.data, self.rng = bytearray(data), random.Random(seed)
        self.reads = 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        n = min(size, self.rng.randint(1, 3000))
        out = bytes(self.data[:n])
        del self.data[:n]
        return out


@pytest.mark.parametrize("seed", range(20))
def test_the_tap_takes_our_replies_and_passes_the_rest_unchanged(seed):
    ours = {101: [], 102: []}
    others = [_port_status(1), _echo(5), _reply(0, xid=999), _port_status(2)]
    stream = [others[0], _reply(ofp.OFPMPF_REPLY_MORE, 101), others[1], _reply(0, 101),
              others[2], _reply(0, 102, ENTRIES[:1]), others[3]]
    # The tap may come in while os-ken is inside a message: a first one
    # os-ken half read already.
    first = _port_status(9)
    sock = ChunkedSocket(first[20:] + b"".join(stream), seed)

    def claim(xid):
        return (lambda flags, buf: ours[xid].append((flags, buf))) if xid in ours else None
    tapped = tap.ReplyTap(sock, claim)
    # In order, untouched, xid 999 included.
    assert os_ken_reads(tapped, 1 + len(others), started=first[:20]) == [first] + others
    assert ours[101] == [(ofp.OFPMPF_REPLY_MORE, stream[1]), (0, stream[3])]
    assert ours[102] == [(0, stream[5])]
    assert tapped.taken == 3 and tapped.framing


def test_the_tap_hands_over_a_truncated_stream_then_eof():
    tapped = tap.ReplyTap(ChunkedSocket(b"", 0), lambda xid: None)
    tapped.framing = True
    tapped.sock = ChunkedSocket(_port_status(1) + _port_status(2)[:30], 1)
    assert os_ken_reads(tapped, 3) == [_port_status(1)]
    assert tapped.recv(8) == b""


def test_a_switch_gets_flow_dumps_through_the_tap_over_a_real_socket():
    """A Switch on a datapath whose socket is a real socket pair: the
    request goes out, the reply comes back through the tap as bytes,
    while os-ken's own reader sees only the other messages."""
    ours, theirs = socket.socketpair()
    dp = SimpleNamespace(id=1, socket=ours, address=("127.0.0.1", 1))
    sw = Switch(dp, "br-test", timeout=5)
    assert isinstance(dp.socket, tap.ReplyTap)
    dp.socket.framing = True  # a fresh connection: nothing half read
    dp.send = lambda buf: dp.socket.sendall(buf) is None
    seen: list[bytes] = []

    def switch_side():
        request = theirs.recv(1000)
        xid = struct.unpack_from("!I", request, 4)[0]
        theirs.sendall(_port_status(3) + _reply(ofp.OFPMPF_REPLY_MORE, xid) + _echo(6) + _reply(0, xid, ENTRIES[1:]))

    def os_ken_side():
        seen.extend(os_ken_reads(dp.socket, 2))
    threads = [threading.Thread(target=switch_side), threading.Thread(target=os_ken_side)]
    for t in threads:
        t.start()
    counts = sw.installed_cookies()
    for t in threads:
        t.join(5)
    assert counts == {0x4C00000000000001: 1, 0x4CFFFFFFFFFFFFFF: 2, 0x1234: 2}
    assert isinstance(counts, PartedDict)  # the session's `installed`: a bulk fills it up to a million
    assert seen == [_port_status(3), _echo(6)]
    ours.close()
    theirs.close()


def test_a_malformed_dump_fails_the_request_not_the_receive_loop():
    dp = SimpleNamespace(id=1, socket=ChunkedSocket(b"", 0), address=("127.0.0.1", 1))
    sw = Switch(dp, "br-test", timeout=5)
    tapped = dp.socket
    tapped.framing = True

    def send(buf: bytes) -> bool:
        xid = struct.unpack_from("!I", buf, 4)[0]
        bad = _reply(0, xid)
        tapped.sock = ChunkedSocket(bad[:16] + b"\0\x10" + bad[18:] + _echo(1), 0)
        assert os_ken_reads(tapped, 1) == [_echo(1)]  # the loop goes on
        return True
    dp.send = send
    with pytest.raises(SwitchError, match="malformed flow-stats reply"):
        sw.installed_cookies()


def test_counters_of_several_bridges_are_summed_as_their_replies_arrive():
    """The counters' refresh sums each bridge's replies straight into one
    total as they arrive (between the tap's yields), so no pass over a
    million summed counters holds the hub after the dumps. The total holds
    ints only: nothing the cyclic collector tracks (a tuple per cookie was
    a million tracked objects, and full collections of half a second)."""
    total = FlowCounts()
    for bridge in (1, 2):
        dp = SimpleNamespace(id=bridge, socket=ChunkedSocket(b"", 0), address=("127.0.0.1", 1))
        sw = Switch(dp, f"br{bridge}", timeout=5)

        def send(buf: bytes, sw=sw) -> bool:
            xid = struct.unpack_from("!I", buf, 4)[0]
            sw._claim(xid)(ofp.OFPMPF_REPLY_MORE, _reply(ofp.OFPMPF_REPLY_MORE, xid, ENTRIES[:2]))
            sw._claim(xid)(0, _reply(0, xid, ENTRIES[1:2]))
            return True
        dp.send = send
        assert sw.flow_counters(1, into=total) is total
    assert dict(total.items()) == {0x4C00000000000001: (2 * 7, 2 * 700), 0x4CFFFFFFFFFFFFFF: (4 * 2**40, 4 * 2**50)}
    assert not any(map(gc.is_tracked, total.parts)) and all(type(c) is int for part in total.parts
                                                            for c in part.values())


def test_counters_are_kept_in_parts_that_never_grow_big():
    """A dict filling up to a million entries moves all of them at once
    when it doubles (tens of milliseconds of the hub, once per refresh):
    the counters go into parts by cookie, each a small share of them."""
    dp = SimpleNamespace(id=1, socket=ChunkedSocket(b"", 0), address=("127.0.0.1", 1))
    sw = Switch(dp, "br-test", timeout=5)
    rnd = random.Random(3)
    cookies = [0x4C00000000000000 | rnd.getrandbits(56) for _ in range(20_000)]
    one = _entry(1, 100, 0, 1, 100, parser.OFPMatch(), [])
    entries = [one[:24] + struct.pack("!Q", c) + one[32:] for c in cookies]  # the cookie at offset 24

    def send(buf: bytes) -> bool:
        xid = struct.unpack_from("!I", buf, 4)[0]
        for i in range(0, len(entries), 400):
            last = i + 400 >= len(entries)
            flags = 0 if last else ofp.OFPMPF_REPLY_MORE
            sw._claim(xid)(flags, _reply(flags, xid, entries[i:i + 400]))
        return True
    dp.send = send
    counts = sw.flow_counters(1)
    assert len(counts) == len(set(cookies)) and all(counts.get(c) == (1, 100) for c in cookies)
    assert max(len(part) for part in counts.parts) < 4 * len(cookies) // FlowCounts.PARTS
    assert cookies[0] in counts and 5 not in counts and counts.get(5) is None


def test_counters_add_as_pairs_even_at_the_largest_counts():
    """OpenFlow's counters have 64 bits; summed over many bridges the
    packets never carry into the bytes."""
    top = 2**64 - 1
    counts = FlowCounts()
    for _ in range(1000):
        counts.add(9, top, top)
    counts.add(10, 7, 0)
    counts.add(10, 0, 5)
    assert counts.get(9) == (1000 * top, 1000 * top) and counts.get(10) == (7, 5)
    assert counts.get(11) is None and counts.get(11, (0, 0)) == (0, 0) and len(counts) == 2


def test_the_rest_of_a_dump_given_up_on_is_dropped_not_handed_to_os_ken():
    """A dump given up on before its last part (timed out on a busy switch
    with a million flows, or failed on a bad part, as here) leaves parts
    of its reply on the way: they are still ours and dropped, never parsed
    by os-ken into objects for minutes while the hub waits."""
    dp = SimpleNamespace(id=1, socket=ChunkedSocket(b"", 0), address=("127.0.0.1", 1))
    sw = Switch(dp, "br-test", timeout=5)
    xids = []

    def send(buf: bytes) -> bool:
        xid = struct.unpack_from("!I", buf, 4)[0]
        xids.append(xid)
        bad = _reply(ofp.OFPMPF_REPLY_MORE, xid)
        sw._claim(xid)(ofp.OFPMPF_REPLY_MORE, bad[:16] + b"\0\x10" + bad[18:])  # more to come
        return True
    dp.send = send
    with pytest.raises(SwitchError, match="malformed"):
        sw.flow_counters(1)
    late = sw._claim(xids[0])
    assert late is not None  # the tap takes it, not os-ken
    late(ofp.OFPMPF_REPLY_MORE, _reply(ofp.OFPMPF_REPLY_MORE, xids[0]))
    assert sw.on_reply(SimpleNamespace(xid=xids[0], flags=ofp.OFPMPF_REPLY_MORE))  # parsed early: ours too
    sw._claim(xids[0])(0, _reply(0, xids[0]))  # the last part
    assert sw._claim(xids[0]) is None  # the xid is no longer ours
    assert not sw.on_reply(SimpleNamespace(xid=xids[0], flags=0))
