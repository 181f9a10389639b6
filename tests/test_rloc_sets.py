"""RLOC sets in the data plane (RFC 9300): the lowest priority wins, RLOCs of
equal priority share traffic by weight through an OpenFlow select group,
priority 255 is never used. Compiling, content-addressed groups, their
ownership and reconciliation, without a switch (tests/test_e2e_rloc_sets.py
has the real OVS)."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser

from lisp_controller.config import parse_config
from lisp_controller.controller.reconcile import (GROUP_GONE, Plan, Stream, group_plan, owned_plan,
                                                  record_groups)
from lisp_controller.controller.state import Change, State
from lisp_controller.model import Mapping, parse_prefix, prefix_key
from lisp_controller.openflow import encode
from lisp_controller.openflow.switch import Switch
from lisp_controller.pipeline.actions import groups_in
from lisp_controller.pipeline.compiler import (T_EGRESS, compile_bridge, compile_overlay, groups_of,
                                               mapping_flow, mapping_flow_mod, mapping_group)
from lisp_controller.pipeline.flows import (GROUP_BASE, Bucket, Group, encoded, group_delete, group_mod,
                                            is_our_group, render, render_group, select_group)

from .fakeof import trace
from .test_switch import AnsweringDatapath

def mapping(eid: str, *rlocs, iid: int = 100, source: str = "api", **kw) -> Mapping:
    return Mapping.parse({"iid": iid, "eid": eid, "rlocs": list(rlocs), **kw}, source=source)


def rloc(address: str, priority: int = 1, weight: int = 100) -> dict:
    return {"address": address, "priority": priority, "weight": weight}


def tunnel_targets(group: Group) -> list[tuple[str, int]]:
    return [(str(b.actions[0][2]), b.weight) for b in group.buckets]


# -- compiling ---------------------------------------------------------------------

def test_equal_priority_rlocs_share_by_weight_through_one_select_group():
    m = mapping("10.2.0.0/16", rloc("192.0.2.2", weight=30), rloc("192.0.2.1", weight=70),
                rloc("192.0.2.9", priority=2))  # a worse priority: a backup, not in the group
    flow = mapping_flow(m)
    (group,) = groups_in(flow.actions)
    assert flow.actions == (("set_field", "tunnel_id", 100), ("group", group))
    assert tunnel_targets(group) == [("192.0.2.1", 70), ("192.0.2.2", 30)]
    # Each bucket sets the tunnel destination and continues in the egress
    # table, as the single-RLOC flow's goto does (own-RLOC check included).
    for b in group.buckets:
        assert b.actions[0][:2] == ("set_field", "tun_ipv4_dst") and b.actions[1] == ("resubmit", T_EGRESS)
    assert is_our_group(group.group_id) and group.group_id >> 24 == GROUP_BASE >> 24
    assert f"group:{group.group_id}" in render(flow)
    assert render_group(group) == (
        f"group_id={group.group_id},type=select,"
        "bucket=weight:70,actions=set_field:192.0.2.1->tun_dst,resubmit(,2),"
        "bucket=weight:30,actions=set_field:192.0.2.2->tun_dst,resubmit(,2)")


def test_the_lowest_priority_wins_and_255_is_never_used():
    # One usable RLOC of the best priority: a plain set_field, no group.
    m = mapping("10.2.0.0/16", rloc("192.0.2.1", priority=2), rloc("192.0.2.2", priority=1),
                rloc("192.0.2.3", priority=255, weight=100))
    assert mapping_group(m) is None
    assert mapping_flow(m).actions[0] == ("set_field", "tun_ipv4_dst", ipaddress.ip_address("192.0.2.2"))
    # 255 never joins a set, whatever its weight.
    m = mapping("10.2.0.0/16", rloc("192.0.2.1", priority=255), rloc("192.0.2.2", priority=255))
    assert mapping_group(m) is None and mapping_flow(m).actions == (("normal",),)  # no-action: negative
    m = mapping("10.2.0.0/16", rloc("192.0.2.1", weight=1), rloc("192.0.2.2", weight=1),
                rloc("192.0.2.3", priority=255))
    assert tunnel_targets(mapping_group(m)) == [("192.0.2.1", 1), ("192.0.2.2", 1)]
    # Weight 0 carries nothing while another RLOC of its priority has weight.
    m = mapping("10.2.0.0/16", rloc("192.0.2.1", weight=0), rloc("192.0.2.2", weight=50))
    assert mapping_group(m) is None
    assert mapping_flow(m).actions[0][2] == ipaddress.ip_address("192.0.2.2")


def test_identical_rloc_sets_share_one_group_and_a_changed_set_is_a_new_group():
    a = mapping("10.2.0.0/16", rloc("192.0.2.1", weight=70), rloc("192.0.2.2", weight=30))
    b = mapping("10.3.0.0/24", rloc("192.0.2.2", weight=30), rloc("192.0.2.1", weight=70), iid=200)
    c = mapping("2001:db8:9::/48", rloc("192.0.2.1", weight=70), rloc("192.0.2.2", weight=30))
    assert mapping_group(a) == mapping_group(b) == mapping_group(c)  # order, IID, EID family: one group
    reweighted = mapping("10.2.0.0/16", rloc("192.0.2.1", weight=60), rloc("192.0.2.2", weight=40))
    moved = mapping("10.2.0.0/16", rloc("192.0.2.1", weight=70), rloc("192.0.2.3", weight=30))
    ids = {mapping_group(x).group_id for x in (a, reweighted, moved)}
    assert len(ids) == 3
    # The flows differ (their cookies name their group), the group is the same value everywhere.
    assert encoded(mapping_flow(a))[0] != encoded(mapping_flow(reweighted))[0]


def test_ipv6_and_mixed_rlocs_set_their_own_tunnel_field():
    m = mapping("10.2.0.0/16", rloc("2001:db8::2", weight=25), rloc("192.0.2.1", weight=75),
                rloc("2001:db8::1", weight=25))
    group = mapping_group(m)
    assert [(b.actions[0][1], str(b.actions[0][2]), b.weight) for b in group.buckets] == [
        ("tun_ipv4_dst", "192.0.2.1", 75), ("tun_ipv6_dst", "2001:db8::1", 25),
        ("tun_ipv6_dst", "2001:db8::2", 25)]
    assert "set_field:2001:db8::1->tun_ipv6_dst,resubmit(,2)" in render_group(group)


def test_the_hot_path_template_equals_the_general_encoding_for_rloc_sets():
    for m in (mapping("10.2.0.0/16", rloc("192.0.2.1", weight=70), rloc("192.0.2.2", weight=30)),
              mapping("10.2.1.0/24", rloc("192.0.2.1", weight=70), rloc("192.0.2.2", weight=30)),
              mapping("2001:db8::/32", rloc("2001:db8::1"), rloc("192.0.2.2")),
              mapping("10.9.0.0/16", rloc("192.0.2.1"), rloc("192.0.2.2", priority=3))):
        assert mapping_flow_mod(m, prefix_key(m.iid, m.eid)) == encoded(mapping_flow(m)), m


def test_group_ids_never_collide_between_different_sets():
    """24 bits of hash: a collision is rare but must not merge two sets."""
    ids = {}
    for i in range(3000):
        g = select_group((Bucket(1, (("output", i),)), Bucket(2, (("output", i + 1),))))
        assert ids.setdefault(g.group_id, g.buckets) == g.buckets
        assert is_our_group(g.group_id)
    assert select_group((Bucket(1, (("output", 5),)), Bucket(2, (("output", 6),)))).group_id in ids


# -- encoding ---------------------------------------------------------------------

def _sample_group() -> Group:
    return mapping_group(mapping("10.2.0.0/16", rloc("192.0.2.1", weight=70), rloc("2001:db8::7", weight=30)))


@pytest.mark.parametrize("command", [ofp.OFPGC_ADD, ofp.OFPGC_MODIFY])
def test_group_mod_bytes_are_os_kens_and_read_back_as_the_same_group(command):
    group = _sample_group()
    data = group_mod(group, command)
    assert data == encode.group_mod_reference(group, command)
    assert struct.unpack_from("!BBHIHBxI", data) == (4, ofp.OFPT_GROUP_MOD, len(data), 0, command,
                                                     ofp.OFPGT_SELECT, group.group_id)
    # What a switch describes for it (OFPMP_GROUP_DESC: the same buckets)
    # is our value again...
    desc = _described(data)
    assert encode.group_of(desc) == group
    # ...and a group of another shape is not: reconcile replaces it.
    desc.buckets[0].actions.append(ofproto_v1_3_parser.OFPActionOutput(3))
    assert encode.group_of(desc) is None
    assert encode.group_of(_described(data, group_type=ofp.OFPGT_ALL)) is None


def _described(group_mod_bytes: bytes, group_type: int = ofp.OFPGT_SELECT):
    """The ofp_group_desc entry a switch returns for a group-mod we sent."""
    buckets = group_mod_bytes[16:]
    gid = struct.unpack_from("!I", group_mod_bytes, 12)[0]
    entry = struct.pack("!HBxI", 8 + len(buckets), group_type, gid) + buckets
    return ofproto_v1_3_parser.OFPGroupDescStats.parser(entry, 0)


def test_group_delete_names_only_the_group():
    delete = group_delete(0x4C000001)
    assert delete == encode.group_mod_reference(Group(0x4C000001, ()), ofp.OFPGC_DELETE)
    assert struct.unpack_from("!HBxI", delete, 8) == (ofp.OFPGC_DELETE, ofp.OFPGT_SELECT, 0x4C000001)
    assert len(delete) == 16


# -- the fake pipeline: where packets go ----------------------------------------------

SITES = parse_config({
    "controller": {"miss_action": "drop"},
    "bridge": [{"name": "hv1", "datapath_id": "01", "rloc": "192.168.1.1", "iid": 100,
                "endpoint": [{"port": "vm1", "mac": "52:54:00:00:00:01", "eids": ["10.0.0.1"]}]},
               {"name": "hv2", "datapath_id": "02", "rloc": "192.168.1.2", "iid": 100,
                "endpoint": [{"port": "vm2", "mac": "52:54:00:00:00:02", "eids": ["10.0.0.9"]}]}],
    "mapping": [{"iid": 100, "eid": "10.0.0.9/32",
                 "rlocs": [rloc("192.168.1.2", weight=70), rloc("192.168.1.3", weight=30)]}],
}, "sites")
PORTS = {"lisp0": 1, "vm1": 2, "vm2": 2}


def _udp(src_port: int) -> dict:
    return {"in_port": 2, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.9",
            "ip_proto": 17, "tp_src": src_port, "tp_dst": 7000}


def test_a_thousand_flows_split_by_weight_each_flow_on_one_rloc():
    hv1 = SITES.overlay.bridges[0]
    flows = compile_bridge(hv1, PORTS, compile_overlay(SITES.overlay)).flows
    where = {}
    for port in range(20000, 21000):
        r = trace(flows, _udp(port))
        assert r.outputs == [1], r  # into the tunnel, through the egress table
        where[port] = r.packet["tun_ipv4_dst"]
        assert trace(flows, _udp(port)).packet["tun_ipv4_dst"] == where[port]  # a connection stays put
    share = sum(1 for a in where.values() if a == "192.168.1.2") / len(where)
    assert abs(share - 0.70) < 0.05, share


def test_a_bucket_continues_as_the_single_rloc_flow_does_too_big_packets_included():
    """After the bucket, the egress table's work applies as to any flow:
    a packet too big for the tunnel goes to the controller (docs/mtu.rst)
    with the bucket's RLOC, over IPv4 and IPv6 RLOCs alike."""
    config = parse_config({
        "bridge": [{"name": "hv1", "rloc": "192.168.1.1", "iid": 100,
                    "endpoint": [{"port": "vm1", "mac": "52:54:00:00:00:01", "eids": ["10.0.0.1"]}]}],
        "mapping": [{"iid": 100, "eid": "10.0.9.0/24", "rlocs": ["192.168.1.3", "2001:db8::3"]}]}, "mtu")
    flows = compile_bridge(config.overlay.bridges[0], {"lisp0": 1, "vm1": 2}, compile_overlay(config.overlay)).flows
    seen = set()
    for port in range(20000, 20040):
        small = trace(flows, {**_udp(port), "ipv4_dst": "10.0.9.9", "frame_len": 200})
        big = trace(flows, {**_udp(port), "ipv4_dst": "10.0.9.9", "frame_len": 1514})
        rloc = small.packet.get("tun_ipv6_dst") or small.packet["tun_ipv4_dst"]
        assert small.outputs == [1] and big.outputs == ["CONTROLLER"], (small, big)
        assert (big.packet.get("tun_ipv6_dst") or big.packet["tun_ipv4_dst"]) == rloc
        seen.add(rloc)
    assert seen == {"192.168.1.3", "2001:db8::3"}


def test_a_bucket_towards_our_own_rloc_never_enters_the_tunnel():
    """The group's buckets resubmit to the egress table, whose own-RLOC
    check (docs/datapath.rst) turns our own RLOC into local delivery (the
    decap table) instead of a packet to ourselves."""
    config = parse_config({
        "bridge": [{"name": "hv2", "rloc": "192.168.1.2", "iid": 100,
                    "endpoint": [{"port": "vm2", "mac": "52:54:00:00:00:02", "eids": ["10.0.0.9"]}]}],
        "mapping": [{"iid": 100, "eid": "10.0.0.0/24", "rlocs": ["192.168.1.2", "192.168.1.3"]}]}, "own")
    flows = compile_bridge(config.overlay.bridges[0], PORTS, compile_overlay(config.overlay)).flows
    local = tunnelled = 0
    for port in range(20000, 20200):
        r = trace(flows, {**_udp(port), "in_port": 9, "ipv4_dst": "10.0.0.77", "metadata": 100}, table=1)
        if (3, 0) in r.path:  # the decap table: not a local EID, so dropped there
            assert r.outputs == [] and (2, 10) in r.path, r
            local += 1
        else:
            assert r.outputs == [1] and r.packet["tun_ipv4_dst"] == "192.168.1.3", r
            tunnelled += 1
    assert local and tunnelled


def test_proxy_arp_answers_for_an_rloc_set():
    config = parse_config({
        "bridge": [{"name": "hv1", "rloc": "192.168.1.1", "iid": 100, "proxy_arp": True,
                    "endpoint": [{"port": "vm1", "mac": "52:54:00:00:00:01", "eids": ["10.0.0.1"]}]}],
        "mapping": [{"iid": 100, "eid": "10.0.7.0/24", "rlocs": ["192.168.1.2", "192.168.1.3"]}]}, "arp")
    flows = compile_bridge(config.overlay.bridges[0], {"lisp0": 1, "vm1": 2}, compile_overlay(config.overlay)).flows
    r = trace(flows, {"in_port": 2, "eth_type": 0x0806, "arp_op": 1, "arp_tpa": "10.0.7.5", "arp_spa": "10.0.0.1",
                      "eth_src": "52:54:00:00:00:01", "arp_sha": "52:54:00:00:00:01"})
    assert r.outputs == ["IN_PORT"] and r.packet["arp_op"] == 2


# -- the shared state: which groups every bridge needs --------------------------------------

BLOG = parse_config({"controller": {}, "bridge": [{"name": "hv1", "rloc": "192.168.1.249", "iid": 1000}],
                     "mapping": [{"iid": 1000, "eid": "10.7.0.0/16",
                                  "rlocs": [rloc("192.0.2.1", weight=70), rloc("192.0.2.2", weight=30)]}]},
                    "blog")
SET = [rloc("192.0.2.1", weight=70), rloc("192.0.2.2", weight=30)]


def test_groups_are_wanted_while_a_mapping_of_any_source_uses_them():
    state = State(BLOG)  # the config's mapping uses the set
    (gid,) = state.shared.groups
    assert state.shared.users(gid) == 1
    state.apply(Change(put=[mapping("10.8.0.0/16", *SET, iid=1000)]))  # the API's
    state.apply(Change(learn=[mapping("10.9.0.0/16", *reversed(SET), iid=1000, source="map-resolver"),
                              mapping("10.11.0.0/16", *SET, iid=1000, source="registered:site-a")]))
    assert list(state.shared.groups) == [gid] and state.shared.users(gid) == 4
    other = mapping("10.8.0.0/16", rloc("192.0.2.1"), rloc("192.0.2.3"), iid=1000)
    state.apply(Change(put=[other]))  # the API's mapping moves to another set
    assert state.shared.users(gid) == 3 and len(state.shared.groups) == 2  # config, map-resolver, site
    state.apply(Change(forget=[(1000, parse_prefix("10.9.0.0/16")), (1000, parse_prefix("10.11.0.0/16"))]))
    state.apply(Change(delete=[(1000, parse_prefix("10.8.0.0/16"))]))
    assert list(state.shared.groups) == [gid] and state.shared.users(gid) == 1
    assert state.mapping_group((1000, parse_prefix("10.7.0.0/16"))).group_id == gid
    assert groups_of(state.shared.values()) == state.shared.groups


def test_a_streamed_change_brings_groups_before_flows_and_drops_them_after():
    state = State(BLOG)
    old = state.mapping_group((1000, parse_prefix("10.7.0.0/16")))
    installed = {c: 1 for c in state.encoded}
    held = dict(state.shared.groups)
    batches: list = []
    stream = Stream(installed, held)
    sent: list = []
    new_set = [rloc("192.0.2.5", weight=1), rloc("192.0.2.6", weight=3)]
    change = Change(put=[mapping(f"10.{i}.0.0/16", *new_set, iid=1000) for i in range(20, 25)])
    state.apply(change, stream=lambda batch: (batches.append(list(batch)), sent.extend(stream.step(batch))))
    (new,) = set(state.shared.groups) - {old.group_id}
    kinds = [_kind(data) for _, data in sent]
    assert kinds[0] == ("group", ofp.OFPGC_ADD) and kinds.count(("group", ofp.OFPGC_ADD)) == 1
    assert kinds[1:] == [("flow", ofp.OFPFC_ADD)] * 5
    stream.record()
    assert held == state.shared.groups and installed == {c: 1 for c in state.encoded}
    # Now every user of both sets goes: flows are deleted first, groups last.
    sent.clear()
    stream = Stream(installed, held)
    gone = [(1000, parse_prefix(f"10.{i}.0.0/16")) for i in range(20, 25)]
    state.apply(Change(delete=gone), stream=lambda batch: sent.extend(stream.step(batch)))
    kinds = [_kind(data) for _, data in sent]
    assert kinds == [("flow", ofp.OFPFC_DELETE)] * 5 + [("group", ofp.OFPGC_DELETE)]
    assert sent[-1][0] == new
    stream.record()
    assert held == state.shared.groups == {old.group_id: old}
    # A group the bridge already holds is not sent; one it holds wrong is modified.
    assert Stream({}, {old.group_id: old}).step([(old.group_id, old)]) == []
    wrong = Group(old.group_id, old.buckets[:1])
    assert [_kind(d) for _, d in Stream({}, {old.group_id: wrong}).step([(old.group_id, old)])] == \
        [("group", ofp.OFPGC_MODIFY)]
    assert Stream({}, {}).step([(old.group_id, GROUP_GONE)]) == []


def _kind(data: bytes | None) -> tuple[str, int]:
    if data is None:
        return ("flow", ofp.OFPFC_DELETE)
    msg_type = data[1]
    if msg_type == ofp.OFPT_GROUP_MOD:
        return ("group", struct.unpack_from("!H", data, 8)[0])
    return ("flow", data[25])  # OFPFC command after cookie, cookie mask and table


# -- reconciling a bridge ------------------------------------------------------------------

def test_group_plan_sends_nothing_for_right_groups_and_never_touches_others():
    right, wrong_now, missing = (_sample_group(),
                                 mapping_group(mapping("10.3.0.0/16", rloc("192.0.2.8"), rloc("192.0.2.9"))),
                                 mapping_group(mapping("10.4.0.0/16", rloc("192.0.2.4"), rloc("192.0.2.5"))))
    stale = 0x4C00ABCD
    foreign = 7  # someone else's group ID
    installed = {right.group_id: right, wrong_now.group_id: None, stale: None, foreign: None}
    desired = {g.group_id: g for g in (right, wrong_now, missing)}
    plan = group_plan(installed, desired)
    assert plan.add == (missing,) and plan.modify == (wrong_now,) and plan.delete == (stale,)
    assert len(group_plan({**desired, foreign: None}, desired)) == 0  # a reconnect: 0 group-mods
    # The same mechanism for any owned object (meters): never deletes what `ours` refuses.
    assert owned_plan({1: "a", 2: "x"}, {1: "a", 3: "c"}, ours=lambda _: False) == (("c",), (), ())
    record_groups(installed, plan, failed={missing.group_id})
    assert installed == {right.group_id: right, wrong_now.group_id: wrong_now, foreign: None}


def test_one_bundle_adds_groups_first_and_deletes_them_last(monkeypatch):
    from lisp_controller.openflow import switch as switch_module
    monkeypatch.setattr(switch_module.hub, "sleep", lambda s: None)
    dp = AnsweringDatapath()
    sw = dp.switch = Switch(dp, "br-test")
    new, old = _sample_group(), mapping_group(mapping("10.3.0.0/16", rloc("192.0.2.8"), rloc("192.0.2.9")))
    uses_new = mapping_flow_mod(*_keyed(mapping("10.2.0.0/16", rloc("192.0.2.1", weight=70),
                                                rloc("2001:db8::7", weight=30))))
    plan = Plan(delete=(0x4C00000000000042,), add=(uses_new,),
                groups=group_plan({old.group_id: old}, {new.group_id: new}))
    result = sw.apply(plan)
    assert result.committed and result.sent == 2 and result.groups_sent == 2
    inner = [_kind(m) for m in _bundled(b"".join(dp.writes))]
    assert inner == [("group", ofp.OFPGC_ADD), ("flow", ofp.OFPFC_DELETE), ("flow", ofp.OFPFC_ADD),
                     ("group", ofp.OFPGC_DELETE)]


def _keyed(m: Mapping) -> tuple:
    return m, prefix_key(m.iid, m.eid)


def _bundled(stream: bytes) -> list[bytes]:
    """The messages inside the ONF bundle-add messages of a byte stream."""
    out, offset = [], 0
    while offset < len(stream):
        _, msg_type, length, _ = struct.unpack_from("!BBHI", stream, offset)
        msg = stream[offset:offset + length]
        if msg_type == ofp.OFPT_EXPERIMENTER and struct.unpack_from("!I", msg, 12)[0] == ofp.ONF_ET_BUNDLE_ADD_MESSAGE:
            out.append(msg[24:])
        offset += length
    return out
