"""What the xTR relies on when it sends learned flows during a big change,
checked against a real ovs-vswitchd (lab/rawof.py drives openflow/switch.py
over the bridge's own OpenFlow socket; docs/control-plane.rst, "During a
big change"):

- a flow-mod sent outside an open bundle takes effect at once, and the
  bundle still commits whole afterwards, leaving that flow alone unless the
  bundle itself replaces it;
- OVS takes one connection's messages in order, so a packet-out sent right
  after a flow-mod, without waiting for a barrier, already meets the flow;
- a flow-mod it refuses is reported before the reply to the barrier behind
  it, and a packet sent behind it meets no flow (Switch.send_flow_mods).
"""
from __future__ import annotations

import ipaddress
import struct

from lab import rawof
from lisp_controller.model import Mapping, prefix_key
from lisp_controller.openflow import encode
from lisp_controller.pipeline.compiler import mapping_flow_mod
from lisp_controller.pipeline.flows import COOKIE_BASE, Flow

LOCAL = 0xFFFFFFFE


def _mapping_flows(first: str, n: int, rloc: str = "192.0.2.1") -> list[tuple[int, bytes]]:
    start = int(ipaddress.IPv4Address(first))
    out = []
    for i in range(n):
        m = Mapping.parse({"iid": 7, "eid": f"{ipaddress.IPv4Address(start + i)}/32", "rlocs": [rloc]},
                          source="api")
        out.append(mapping_flow_mod(m, prefix_key(m.iid, m.eid)))
    return out


def _switch(testbed, name: str):
    return _hypervisor_switch(testbed, name)[:2]


def _hypervisor_switch(testbed, name: str):
    segment = testbed.add_segment("u", "192.168.1.0/24")
    hv = testbed.add_hypervisor(name, "192.168.1.249", 24, segment, datapath_id="000000000000a1a1")
    return (*rawof.connect(hv.rundir, hv.bridge), hv)


def test_a_flow_sent_during_an_open_bundle_takes_effect_at_once_and_survives_its_commit(testbed):
    sw, dp = _switch(testbed, "hv1")
    try:
        bulk = _mapping_flows("10.0.0.0", 20000)
        learned = _mapping_flows("11.0.0.0", 50)
        # The bulk brings its own mapping for one learned key: it must win.
        contested = _mapping_flows("11.0.0.7", 1, rloc="192.0.2.99")[0]
        bundle = sw.open_bundle()
        try:
            bundle.add_many(bulk[:10000], batch=True)
            for _, data in learned:
                sw.send(data)
            sw.barrier()
            held = sw.installed_cookies()
            assert all(held.get(cookie) == 1 for cookie, _ in learned), "a learned flow waited for the bundle"
            assert not any(cookie in held for cookie, _ in bulk), "the bundle took effect before its commit"
            bundle.add_many(bulk[10000:] + [contested], batch=True)
            committed, refused = bundle.commit()
        finally:
            bundle.close()
        assert committed and not refused and not dp.errors, (committed, refused, dp.errors)
        held = sw.installed_cookies()
        assert all(held.get(cookie) == 1 for cookie, _ in bulk)
        assert held.get(contested[0]) == 1 and learned[7][0] not in held  # same match: the bundle's flow
        assert all(held.get(cookie) == 1 for cookie, _ in learned[:7] + learned[8:])
        assert not sw._pending  # the pacing barriers were all answered and forgotten
    finally:
        dp.close()


def _frame(destination: ipaddress.IPv4Address) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 253, 0, bytes([10, 1, 1, 1]), destination.packed)
    return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip


def test_a_packet_out_right_after_a_flow_mod_meets_the_flow(testbed):
    sw, dp = _switch(testbed, "hv2")
    try:
        cookies = []
        for i in range(300):
            destination = ipaddress.IPv4Address("10.99.0.0") + i
            cookie = COOKIE_BASE | (0x7700 + i)
            flow = Flow(0, 100, (("eth_type", 0x0800), ("ipv4_dst", destination)), ())
            sw.send(encode.encode_add_reference(flow, cookie))
            sw.send(encode.packet_out_to_table(LOCAL, _frame(destination)))  # no barrier in between
            cookies.append(cookie)
        sw.barrier()
        counters = sw.flow_counters(0)
        assert not dp.errors, dp.errors
        missed = [c for c in cookies if counters.get(c, (0, 0))[0] != 1]
        assert not missed, f"{len(missed)} of {len(cookies)} packet-outs did not meet their flow"
    finally:
        dp.close()


def test_a_refused_flow_mod_is_told_before_its_barrier_and_the_packet_behind_it_misses(testbed):
    sw, dp, hv = _hypervisor_switch(testbed, "hv3")
    try:
        rest = Flow(0, 1, (), ())  # whatever no other flow takes: counted, dropped
        sw.send_confirmed(encode.encode_add_reference(rest, COOKIE_BASE | 0x7600), "catch-all flow")
        # Table 0 takes one more flow, then refuses (as a full table does).
        hv.vsctl("--", "--id=@ft", "create", "Flow_Table", "flow_limit=2", "overflow_policy=refuse",
                 "--", "set", "Bridge", hv.bridge, "flow_tables:0=@ft")
        taken, refused = (ipaddress.IPv4Address("10.98.0.1"), ipaddress.IPv4Address("10.98.0.2"))
        flows = [encode.encode_add_reference(Flow(0, 100, (("eth_type", 0x0800), ("ipv4_dst", d)), ()),
                                             COOKIE_BASE | (0x7700 + i)) for i, d in enumerate((taken, refused))]
        told = []
        sent = sw.send_flow_mods(flows, [encode.packet_out_to_table(LOCAL, _frame(d)) for d in (taken, refused)],
                                 refused=lambda index, error: told.append((index, error.type, error.code)))
        sent.wait()
        assert told == [(1, 5, 1)]  # the second: OFPET_FLOW_MOD_FAILED, OFPFMFC_TABLE_FULL
        counters = sw.flow_counters(0)
        assert counters.get(COOKIE_BASE | 0x7700)[0] == 1 and COOKIE_BASE | 0x7701 not in counters
        assert counters.get(COOKIE_BASE | 0x7600)[0] == 1  # the refused flow's packet met none of its own
        assert not dp.errors and not sw._pending and not sw._refusals
    finally:
        dp.close()
