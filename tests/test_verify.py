"""The deep check's canonical comparison, without a switch (the round trip
against real OVS is in test_reliability.py)."""
from __future__ import annotations

import ipaddress
import struct

import pytest

from lisp_controller.openflow import verify

from lisp_controller.openflow import wire
from lisp_controller.config import ConfigError, parse_config
from lisp_controller.pipeline.actions import goto, instructions_bytes, move, set_field
from lisp_controller.pipeline.flows import Flow, encoded, flow_mod_add

FLOW = Flow(1, 116, (("eth_type", 0x0800), ("metadata", 1000), ("ipv4_dst", ipaddress.ip_network("10.9.0.0/16"))),
            (set_field("tun_ipv4_dst", ipaddress.ip_address("192.168.50.2")), set_field("tunnel_id", 1000),
             goto(2)))


def stats_reply(*entries: verify.Entry) -> bytes:
    body = b""
    for e in entries:
        head = struct.pack("!HBx8xHHHH4xQ16x", 48 + len(e.body), e.table, e.priority, e.idle_timeout,
                           e.hard_timeout, e.flags, e.cookie)
        body += head + e.body
    return struct.pack("!BBHIHH4x", 4, 19, 16 + len(body), 1, 1, 0) + body


def oxm(cls, field, value: bytes, mask: bytes | None = None) -> bytes:
    if mask is None:
        return struct.pack("!HBB", cls, field << 1, len(value)) + value
    return struct.pack("!HBB", cls, field << 1 | 1, 2 * len(value)) + value + mask


def match(*tlvs: bytes) -> bytes:
    body = b"".join(tlvs)
    data = struct.pack("!HH", 1, 4 + len(body)) + body
    return data + b"\0" * (-len(data) % 8)


def test_entries_split_and_the_same_flow_in_other_field_order_is_equal():
    cookie, flow_mod = encoded(FLOW)
    # OVS's order and an explicit all-ones mask on the metadata.
    m = match(oxm(0x8000, 2, (1000).to_bytes(8, "big"), b"\xff" * 8), oxm(0x8000, 5, b"\x08\x00"),
              oxm(0x8000, 12, bytes([10, 9, 0, 0]), bytes([255, 255, 0, 0])))
    entry = verify.Entry(cookie, 1, 116, 0, 0, 0, m + instructions_bytes(FLOW.actions))
    (parsed,) = verify.split_flow_stats(stats_reply(entry))
    assert parsed == entry
    assert parsed.body != verify.flow_mod_entry(flow_mod).body
    assert verify.same_flow(parsed, flow_mod)
    verdict = verify.installed_counts([parsed], {cookie: flow_mod})
    assert verdict == verify.Verdict({cookie: 1}, (), 0)


def test_changed_actions_priority_or_duplicates_are_found():
    cookie, flow_mod = encoded(FLOW)
    right = verify.flow_mod_entry(flow_mod)
    other_rloc = FLOW._replace(actions=(set_field("tun_ipv4_dst", ipaddress.ip_address("192.168.66.6")),
                                        *FLOW.actions[1:]))
    wrong = right._replace(body=flow_mod_add(other_rloc, 0)[48:])
    assert not verify.same_flow(wrong, flow_mod)
    assert not verify.same_flow(right._replace(priority=117), flow_mod)
    assert not verify.same_flow(right._replace(idle_timeout=5), flow_mod)
    assert not verify.same_flow(right._replace(body=b"\0\0"), flow_mod)  # malformed: not ours
    verdict = verify.installed_counts([wrong], {cookie: flow_mod})
    assert verdict.counts == {cookie: 2} and verdict.changed == (cookie,)
    verdict = verify.installed_counts([right, right, verify.Entry(5, 0, 0, 0, 0, 0, b"")], {cookie: flow_mod})
    assert verdict == verify.Verdict({cookie: 2, 5: 1}, (), 1)


def test_register_move_with_nxm_headers_is_the_same_move():
    flow = Flow(4, 200, (("eth_type", 0x0806),), (move("eth_src", "eth_dst"), ("in_port",)))
    cookie, flow_mod = encoded(flow)
    entry = verify.flow_mod_entry(flow_mod)
    nxm_src, nxm_dst = (0x0000 << 16) | (2 << 9) | 6, (0x0000 << 16) | (1 << 9) | 6
    oxm_src, oxm_dst = wire.oxm_header("eth_src"), wire.oxm_header("eth_dst")
    body = entry.body.replace(struct.pack("!II", oxm_src, oxm_dst), struct.pack("!II", nxm_src, nxm_dst))
    assert body != entry.body
    assert verify.same_flow(entry._replace(body=body), flow_mod)


ONE_BRIDGE = {"bridge": [{"name": "br0", "rloc": "192.0.2.1"}]}  # a config needs one


@pytest.mark.parametrize("value, ok", [(0, True), (1, True), (2.5, True), (86400, True), (0.5, False),
                                       (-1, False), (86401, False), ("60", False), (True, False)])
def test_reconcile_interval_is_validated(value, ok):
    data = {"controller": {"reconcile_interval": value}, **ONE_BRIDGE}
    if ok:
        assert parse_config(data).reconcile_interval == value
    else:
        with pytest.raises(ConfigError, match="controller.reconcile_interval: must be 0"):
            parse_config(data)


def test_reconcile_interval_default():
    assert parse_config(ONE_BRIDGE).reconcile_interval == 60.0


def test_fields_in_ovs_order_take_the_quick_path_and_changes_are_still_seen():
    """OVS puts metadata last; the rest of a map-cache flow comes back byte
    for byte, which the quick path (sorted raw fields) accepts."""
    cookie, flow_mod = encoded(FLOW)
    entry = verify.flow_mod_entry(flow_mod)

    def ovs_order(body: bytes) -> bytes:
        length = struct.unpack_from("!H", body, 2)[0]
        tlvs = body[4:length]
        meta, rest = tlvs[:12], tlvs[12:]  # wire.py sorts metadata first
        match = body[:4] + rest + meta
        return match + b"\0" * (-len(match) % 8) + body[length + (-length % 8):]

    reordered = entry._replace(body=ovs_order(entry.body))
    assert reordered.body != entry.body and verify._same_reordered(reordered.body, entry.body)
    assert verify.same_flow(reordered, flow_mod)
    other = FLOW._replace(actions=(set_field("tun_ipv4_dst", ipaddress.ip_address("192.168.66.6")),
                                   *FLOW.actions[1:]))
    changed = entry._replace(body=ovs_order(flow_mod_add(other, 0)[48:]))
    assert not verify.same_flow(changed, flow_mod)


@pytest.mark.parametrize("eid", ["0.0.0.0/0", "::/0"])
def test_a_zero_length_prefix_read_back_without_its_field_is_the_same_flow(eid):
    """OVS drops a match field whose mask is all zeros: 0.0.0.0/0 comes
    back as `ip,metadata=...` (the round trip with real OVS, for every
    length, is in test_session_ovs.py)."""
    from lisp_controller.model import Mapping
    from lisp_controller.pipeline.compiler import mapping_flow

    flow = mapping_flow(Mapping.parse({"iid": 1000, "eid": eid, "rlocs": ["192.0.2.1"]}, source="api"))
    cookie, flow_mod = encoded(flow)
    sent = verify.flow_mod_entry(flow_mod)
    without = flow._replace(match=tuple((k, v) for k, v in flow.match if k not in ("ipv4_dst", "ipv6_dst")))
    read_back = sent._replace(body=flow_mod_add(without, 0)[48:])
    assert read_back.body != sent.body
    assert verify.same_flow(read_back, flow_mod)
    other = without._replace(match=without.match + ((flow.match[-1][0], ipaddress.ip_network(
        "10.0.0.0/8" if "." in eid else "fd00::/8")),))
    assert not verify.same_flow(sent._replace(body=flow_mod_add(other, 0)[48:]), flow_mod)
