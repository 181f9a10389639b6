import re
from pathlib import Path


from lisp_controller.pipeline.compiler import T_CLASSIFY, T_DECAP, T_EGRESS, T_MAPCACHE, compile_bridge, compile_overlay
from lisp_controller.config import load_config, parse_config
from lisp_controller.pipeline.flows import encoded, flow_mods, render
from lisp_controller.controller.reconcile import reconcile, record

from .fakeof import trace

ROOT = Path(__file__).resolve().parent.parent
BLOG = ROOT / "configs" / "blog-two-hypervisors.toml"
VNET0, LISP0 = 1, 2


def table0(flows):
    return sorted(render(f, cookie=False) for f in flows.values() if f.table == 0)


def test_blog_table0_has_the_recipes_rule_shapes():
    config = load_config(BLOG)
    hv1 = config.overlay.bridges[0]
    flows = compile_bridge(hv1, {"vnet0": VNET0, "lisp0": LISP0}, compile_overlay(config.overlay)).flows
    # The recipe: priority 3 decap by dl_dst, 2 ARP from the VM port,
    # 1 IP from the VM port without VLAN, 0 NORMAL. The L3 tunnel profiles
    # deliver dl_dst=00:00:00:00:00:00 (docs/datapath.rst), and IPv6
    # neighbour discovery is treated like ARP.
    assert table0(flows) == [
        "table=0,priority=0 actions=NORMAL",
        "table=0,priority=1,ip,in_port=1,vlan_tci=0x0000/0x1fff actions=write_metadata:0x3e8,goto_table:1",
        "table=0,priority=1,ipv6,in_port=1,vlan_tci=0x0000/0x1fff actions=write_metadata:0x3e8,goto_table:1",
        "table=0,priority=2,arp,in_port=1 actions=write_metadata:0x3e8,goto_table:4",
        "table=0,priority=2,icmp6,in_port=1,icmp_type=135 actions=write_metadata:0x3e8,goto_table:4",
        "table=0,priority=2,icmp6,in_port=1,icmp_type=136 actions=write_metadata:0x3e8,goto_table:4",
        "table=0,priority=3,in_port=2,dl_dst=00:00:00:00:00:00 actions=goto_table:3",
    ]
    # The recipe's map-cache rule: the remote EID goes to the remote RLOC,
    # with the Instance ID as tunnel key.
    out = trace(flows, {"in_port": VNET0, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": "10.1.1.30"})
    assert out.outputs == [LISP0]
    assert out.packet["tun_ipv4_dst"] == "192.168.1.252" and out.packet["tunnel_id"] == 1000
    # Decap: a packet from the tunnel for VM1 gets VM1's MAC and leaves on vnet0.
    back = trace(flows, {"in_port": LISP0, "eth_dst": "00:00:00:00:00:00", "eth_type": 0x0800,
                         "tunnel_id": 1000, "ipv4_dst": "10.1.1.20"})
    assert back.outputs == [VNET0] and back.packet["eth_dst"] == "52:54:00:b8:27:75"
    # ARP goes NORMAL, as in the recipe.
    assert trace(flows, {"in_port": VNET0, "eth_type": 0x0806}).outputs == ["NORMAL"]


def test_lisp_profile_decaps_the_kernel_vport_mac():
    config = parse_config({"bridge": [{"name": "br0", "rloc": "192.0.2.1", "tunnel_profile": "lisp", "iid": 1,
                                       "endpoint": [{"port": "tap0", "mac": "52:54:00:00:00:01",
                                                     "eids": ["10.0.0.1"]}]}]})
    flows = compile_bridge(config.overlay.bridges[0], {"tap0": 1, "lisp0": 3}, compile_overlay(config.overlay)).flows
    assert "table=0,priority=3,in_port=3,dl_dst=02:00:00:00:00:00 actions=goto_table:3" in table0(flows)


def _site(name, rloc, iid, *eps):
    return {"name": name, "rloc": rloc, "iid": iid,
            "endpoint": [{"port": p, "mac": mac, "eids": eids} for p, mac, eids in eps]}


def test_overlapping_prefixes_resolve_longest_first():
    config = parse_config({
        "bridge": [_site("br-a", "192.0.2.1", 5, ("vm1", "52:54:00:00:00:01", ["10.9.0.1"]))],
        "mapping": [
            {"iid": 5, "eid": "10.0.0.0/8", "rlocs": ["198.51.100.8"]},
            {"iid": 5, "eid": "10.2.0.0/16", "rlocs": ["198.51.100.16"]},
            {"iid": 5, "eid": "10.2.3.0/24", "rlocs": ["198.51.100.24"]},
            {"iid": 5, "eid": "10.2.3.128/25", "action": "drop"},
        ]})
    flows = compile_bridge(config.overlay.bridges[0], {"vm1": 1, "lisp0": 2}, compile_overlay(config.overlay)).flows

    def where(dst):
        r = trace(flows, {"in_port": 1, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": dst})
        return r.packet.get("tun_ipv4_dst") if r.outputs == [2] else r.outputs

    assert where("10.2.3.4") == "198.51.100.24"
    assert where("10.2.4.4") == "198.51.100.16"
    assert where("10.77.0.1") == "198.51.100.8"
    assert where("10.2.3.200") == []  # negative entry, action drop
    assert where("172.16.0.1") == []  # miss, default action drop


def test_same_eid_in_two_iids_goes_to_different_rlocs_and_keys():
    config = parse_config({
        "bridge": [{"name": "hv1", "rloc": "192.0.2.1", "endpoint": [
            {"port": "red1", "mac": "52:54:00:00:00:01", "iid": 100, "eids": ["10.0.0.1"]},
            {"port": "blue1", "mac": "52:54:00:00:00:02", "iid": 200, "eids": ["10.0.0.1"]}]},
            {"name": "hv2", "rloc": "192.0.2.2", "endpoint": [
                {"port": "red2", "mac": "52:54:00:00:00:03", "iid": 100, "eids": ["10.0.0.2"]}]},
            {"name": "hv3", "rloc": "192.0.2.3", "endpoint": [
                {"port": "blue2", "mac": "52:54:00:00:00:04", "iid": 200, "eids": ["10.0.0.2"]}]}]})
    hv1 = config.overlay.bridges[0]
    flows = compile_bridge(hv1, {"red1": 1, "blue1": 2, "lisp0": 3}, compile_overlay(config.overlay)).flows
    red = trace(flows, {"in_port": 1, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": "10.0.0.2"})
    blue = trace(flows, {"in_port": 2, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": "10.0.0.2"})
    assert (red.packet["tun_ipv4_dst"], red.packet["tunnel_id"]) == ("192.0.2.2", 100)
    assert (blue.packet["tun_ipv4_dst"], blue.packet["tunnel_id"]) == ("192.0.2.3", 200)
    # Arriving from the tunnel, the key decides which tenant's VM gets it.
    for key, port in ((100, 1), (200, 2)):
        r = trace(flows, {"in_port": 3, "eth_dst": "00:00:00:00:00:00", "eth_type": 0x0800,
                          "tunnel_id": key, "ipv4_dst": "10.0.0.1"})
        assert r.outputs == [port]
    # A key nobody uses here is dropped, not delivered to a tenant.
    assert trace(flows, {"in_port": 3, "eth_dst": "00:00:00:00:00:00", "eth_type": 0x0800,
                         "tunnel_id": 300, "ipv4_dst": "10.0.0.1"}).dropped


def test_two_vms_per_hypervisor_and_local_delivery():
    config = parse_config({"bridge": [
        _site("hv1", "192.0.2.1", 9, ("vm1", "52:54:00:00:00:01", ["10.0.0.1", "2001:db8::1"]),
              ("vm2", "52:54:00:00:00:02", ["10.0.0.2"])),
        _site("hv2", "192.0.2.2", 9, ("vm3", "52:54:00:00:00:03", ["10.0.0.3", "2001:db8::3"]))]})
    ov = config.overlay
    ports = {"vm1": 1, "vm2": 2, "lisp0": 3}
    flows = compile_bridge(ov.bridges[0], ports, compile_overlay(ov)).flows
    # vm1 -> vm2 stays on the bridge, with vm2's MAC.
    r = trace(flows, {"in_port": 1, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": "10.0.0.2"})
    assert r.outputs == [2] and r.packet["eth_dst"] == "52:54:00:00:00:02"
    # Both VMs reach vm3 through the tunnel, over IPv4 and IPv6.
    for src in (1, 2):
        r = trace(flows, {"in_port": src, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": "10.0.0.3"})
        assert r.outputs == [3] and r.packet["tun_ipv4_dst"] == "192.0.2.2"
    r = trace(flows, {"in_port": 1, "eth_type": 0x86DD, "vlan_vid": 0, "ipv6_dst": "2001:db8::3"})
    assert r.outputs == [3] and r.packet["tun_ipv4_dst"] == "192.0.2.2"
    # Decap delivers each EID to its own VM.
    for dst, port, mac in (("10.0.0.1", 1, "52:54:00:00:00:01"), ("10.0.0.2", 2, "52:54:00:00:00:02")):
        r = trace(flows, {"in_port": 3, "eth_dst": "00:00:00:00:00:00", "eth_type": 0x0800,
                          "tunnel_id": 9, "ipv4_dst": dst})
        assert r.outputs == [port] and r.packet["eth_dst"] == mac
    # A VLAN-tagged packet is not tunnelled (recipe: vlan_tci=0).
    tagged = trace(flows, {"in_port": 1, "eth_type": 0x0800, "vlan_vid": 0x1005, "ipv4_dst": "10.0.0.3"})
    assert tagged.outputs == ["NORMAL"]


def test_own_rloc_is_never_a_tunnel_target():
    config = parse_config({
        "bridge": [_site("hv1", "192.0.2.1", 9, ("vm1", "52:54:00:00:00:01", ["10.0.0.1"]))],
        "mapping": [{"iid": 9, "eid": "10.0.0.0/24", "rlocs": ["192.0.2.1"]}]})
    flows = compile_bridge(config.overlay.bridges[0], {"vm1": 1, "lisp0": 3}, compile_overlay(config.overlay)).flows
    r = trace(flows, {"in_port": 1, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": "10.0.0.77"})
    # The egress table sends it to decap (not to the tunnel port), where no
    # endpoint has that address: decap's miss rule drops it.
    assert r.path == [(T_CLASSIFY, 1), (T_MAPCACHE, r.path[1][1]), (T_EGRESS, 10), (T_DECAP, 0)], r.path
    assert r.dropped and r.packet["tun_ipv4_dst"] == "192.0.2.1"


def test_port_renumbering_changes_only_the_affected_flows():
    config = parse_config({"bridge": [
        _site("hv1", "192.0.2.1", 9, ("vm1", "52:54:00:00:00:01", ["10.0.0.1"]),
              ("vm2", "52:54:00:00:00:02", ["10.0.0.2"])),
        _site("hv2", "192.0.2.2", 9, ("vm3", "52:54:00:00:00:03", ["10.0.0.3"]))]})
    ov = config.overlay
    before = compile_bridge(ov.bridges[0], {"vm1": 1, "vm2": 2, "lisp0": 3}, compile_overlay(ov)).flows
    after = compile_bridge(ov.bridges[0], {"vm1": 1, "vm2": 7, "lisp0": 3}, compile_overlay(ov)).flows
    plan = reconcile({c: 1 for c in before}, flow_mods(after))
    removed = [render(before[c], cookie=False) for c in plan.delete]
    added = [render(after[c], cookie=False) for c, _ in plan.add]
    assert all(data == encoded(after[c])[1] for c, data in plan.add)  # the bytes to send
    assert removed and len(removed) == len(added)
    assert all(re.search(r"in_port=2[, ]|output:2$", t) for t in removed), removed
    assert all(re.search(r"in_port=7[, ]|output:7$", t) for t in added), added
    # vm2 has ARP + 2 ND + IPv4 + IPv6 classify flows and one decap flow.
    assert len(added) == 6
    installed = {c: 1 for c in before}
    assert record(installed, plan) == len(after) - len(before)
    assert installed == {c: 1 for c in after}


def test_missing_port_leaves_its_flows_out_and_says_so():
    config = load_config(BLOG)
    compiled = compile_bridge(config.overlay.bridges[0], {"lisp0": 2}, compile_overlay(config.overlay))
    assert compiled.missing_ports == ("vnet0",)
    assert not any("in_port=1" in render(f) for f in compiled.flows.values())


def test_miss_action_send_map_request_and_native_forward():
    for action, expected in (("send-map-request", ["CONTROLLER"]), ("native-forward", ["NORMAL"]),
                             ("drop", [])):
        config = parse_config({"controller": {"miss_action": action},
                               "bridge": [_site("hv1", "192.0.2.1", 9, ("vm1", "52:54:00:00:00:01", ["10.0.0.1"]))]})
        flows = compile_bridge(config.overlay.bridges[0], {"vm1": 1, "lisp0": 3}, compile_overlay(config.overlay)).flows
        r = trace(flows, {"in_port": 1, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": "10.5.5.5"})
        assert r.outputs == expected, action


def test_every_table_ends_in_a_miss_rule():
    config = load_config(BLOG)
    flows = compile_bridge(config.overlay.bridges[0], {"vnet0": 1, "lisp0": 2}, compile_overlay(config.overlay)).flows
    tables = {f.table for f in flows.values()}
    assert tables == {0, 1, 2, 3, 4, 5}
    for t in tables:
        assert any(f.table == t and f.priority == 0 and f.match == () for f in flows.values()), t


def test_reconcile_deletes_strays_and_duplicates_then_adds():
    config = load_config(BLOG)
    desired = compile_bridge(config.overlay.bridges[0], {"vnet0": 1, "lisp0": 2}, compile_overlay(config.overlay)).flows
    cookies = list(desired)
    cookies_and_flows = list(desired.items())
    installed = {c: 1 for c in cookies[2:]}
    installed[cookies[2]] = 2  # a stray copy under one of our cookies
    installed[0x4C00000000000001] = 1  # a flow of ours nobody wants any more
    plan = reconcile(installed, flow_mods(desired))
    assert set(plan.delete) == {cookies[2], 0x4C00000000000001}
    assert {c for c, _ in plan.add} == {cookies[0], cookies[1], cookies[2]}
    assert not reconcile({c: 1 for c in desired}, flow_mods(desired))
    # Desired flows in parts (shared and local) plan like one dict.
    parts = flow_mods(dict(cookies_and_flows[:4])), flow_mods(dict(cookies_and_flows[3:]))
    assert reconcile(installed, *parts) == plan
