"""Proxy ARP, the gateway answer and TTL handling (the recipe's scenarios 2
and 3), walked through the fake pipeline."""
from __future__ import annotations

from pathlib import Path

import pytest

from lisp_controller.pipeline.compiler import compile_bridge, compile_overlay
from lisp_controller.config import ConfigError, load_config, parse_config
from lisp_controller.openflow.encode import encode_add_reference
from lisp_controller.pipeline.flows import encoded, render

from .fakeof import trace

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
VNET0, LISP0 = 1, 2
ASKER_MAC = "52:54:00:b8:27:75"


def arp_request(target: str, in_port: int = VNET0, src_mac: str = ASKER_MAC,
                src_ip: str = "10.1.1.20") -> dict:
    return {"in_port": in_port, "eth_type": 0x0806, "eth_src": src_mac, "eth_dst": "ff:ff:ff:ff:ff:ff",
            "arp_op": 1, "arp_sha": src_mac, "arp_spa": src_ip, "arp_tha": "00:00:00:00:00:00",
            "arp_tpa": target}


def assert_reply(result, target: str, mac: str, asker_mac: str = ASKER_MAC,
                 asker_ip: str = "10.1.1.20") -> None:
    """The request came back out of its port as the reply `mac` would send."""
    pkt = result.packet
    assert result.outputs == ["IN_PORT"], result
    assert (pkt["eth_src"], pkt["eth_dst"]) == (mac, asker_mac)
    assert pkt["arp_op"] == 2
    assert (pkt["arp_sha"], pkt["arp_spa"]) == (mac, target)
    assert (pkt["arp_tha"], pkt["arp_tpa"]) == (asker_mac, asker_ip)


def _bridge(site, bridges, ports):
    ov = site.overlay
    return compile_bridge(ov.bridges[bridges], ports, compile_overlay(ov)).flows, ov.bridges[bridges]


def test_proxy_arp_answers_remote_eids_with_the_router_mac():
    config = load_config(CONFIGS / "scenario2-routed-underlay.toml")
    flows, hv1 = _bridge(config, 0, {"vnet0": VNET0, "lisp0": LISP0})
    assert_reply(trace(flows, arp_request("10.1.1.30")), "10.1.1.30", hv1.router_mac)
    # Nobody else on the bridge sees the request: it is not flooded.
    assert trace(flows, arp_request("10.1.1.99")).dropped
    # A VM asking for its own address (gratuitous ARP) is not answered.
    assert trace(flows, arp_request("10.1.1.20")).dropped


def test_proxy_arp_off_leaves_arp_to_normal():
    """Scenario 1: the recipe's priority-2 rule, ARP goes NORMAL."""
    config = load_config(CONFIGS / "scenario1-shared-l2.toml")
    flows, _ = _bridge(config, 0, {"vnet0": VNET0, "lisp0": LISP0})
    assert trace(flows, arp_request("10.1.1.30")).outputs == ["NORMAL"]
    assert not any(f.table == 4 and f.priority > 0 for f in flows.values())


def _tenants(**bridge_extra):
    return parse_config({
        "bridge": [
            {"name": "hv1", "rloc": "192.0.2.1", "proxy_arp": True, **bridge_extra, "endpoint": [
                {"port": "red1", "mac": "52:54:00:00:00:01", "iid": 100, "eids": ["10.0.0.1"]},
                {"port": "red2", "mac": "52:54:00:00:00:02", "iid": 100, "eids": ["10.0.0.2"]},
                {"port": "blue1", "mac": "52:54:00:00:00:03", "iid": 200, "eids": ["10.0.0.1"]}]},
            {"name": "hv2", "rloc": "192.0.2.2", "endpoint": [
                {"port": "red3", "mac": "52:54:00:00:00:04", "iid": 100, "eids": ["10.0.0.3"]}]}],
        "mapping": [{"iid": 100, "eid": "10.8.0.0/16", "rlocs": ["198.51.100.1"]},
                    {"iid": 100, "eid": "10.8.9.0/24", "action": "drop"},
                    {"iid": 100, "eid": "10.9.0.0/16", "rlocs": ["192.0.2.1"]}]})


def test_proxy_arp_is_per_iid_and_follows_the_map_cache():
    config = _tenants()
    flows, hv1 = _bridge(config, 0, {"red1": 1, "red2": 2, "blue1": 3, "lisp0": 4})
    red = dict(src_mac="52:54:00:00:00:01", src_ip="10.0.0.1")
    blue = dict(in_port=3, src_mac="52:54:00:00:00:03", src_ip="10.0.0.1")
    reply = dict(asker_mac="52:54:00:00:00:01", asker_ip="10.0.0.1")
    # A remote host EID of red, and any address of a remote red prefix.
    assert_reply(trace(flows, arp_request("10.0.0.3", **red)), "10.0.0.3", hv1.router_mac, **reply)
    assert_reply(trace(flows, arp_request("10.8.1.2", **red)), "10.8.1.2", hv1.router_mac, **reply)
    # A negative entry and a prefix mapped to our own RLOC are not promised.
    assert trace(flows, arp_request("10.8.9.1", **red)).dropped
    assert trace(flows, arp_request("10.9.0.1", **red)).dropped
    # A local EID is answered with that VM's own MAC.
    assert_reply(trace(flows, arp_request("10.0.0.2", **red)), "10.0.0.2", "52:54:00:00:00:02", **reply)
    # Blue shares red's addresses but none of its mappings: never answered,
    # never flooded to red's VMs.
    for target in ("10.0.0.2", "10.0.0.3", "10.8.1.2"):
        assert trace(flows, arp_request(target, **blue)).dropped, target


def test_gateway_is_answered_and_routed_packets_lose_one_ttl_per_xtr():
    config = load_config(CONFIGS / "scenario3-routed-vms.toml")
    ov = config.overlay
    hv1, hv2 = ov.bridges
    flows1 = compile_bridge(hv1, {"vnet0": VNET0, "lisp0": LISP0}, compile_overlay(ov)).flows
    flows2 = compile_bridge(hv2, {"vnet0": VNET0, "lisp0": LISP0}, compile_overlay(ov)).flows
    # The bridge-level gateway and the per-endpoint one, proxy ARP off.
    assert_reply(trace(flows1, arp_request("10.1.1.1")), "10.1.1.1", hv1.router_mac)
    assert_reply(trace(flows2, arp_request("10.1.2.1", src_mac="52:54:00:1b:ea:d5", src_ip="10.1.2.30")),
                 "10.1.2.1", hv2.router_mac, asker_mac="52:54:00:1b:ea:d5", asker_ip="10.1.2.30")
    # Other ARP still goes NORMAL (no proxy ARP on these bridges).
    assert trace(flows1, arp_request("10.1.1.7")).outputs == ["NORMAL"]
    # vm1 -> vm2: the ITR routes (TTL 64 -> 63) and encapsulates...
    out = trace(flows1, {"in_port": VNET0, "eth_type": 0x0800, "vlan_vid": 0, "eth_dst": hv1.router_mac,
                         "ipv4_dst": "10.1.2.30", "nw_ttl": 64})
    assert out.outputs == [LISP0] and out.packet["nw_ttl"] == 63
    # ...the ETR routes again (63 -> 62) and rewrites the MACs.
    back = trace(flows2, {"in_port": LISP0, "eth_dst": "00:00:00:00:00:00", "eth_type": 0x0800,
                          "tunnel_id": 1000, "ipv4_dst": "10.1.2.30", "nw_ttl": 63})
    assert back.outputs == [VNET0] and back.packet["nw_ttl"] == 62
    assert (back.packet["eth_src"], back.packet["eth_dst"]) == (hv2.router_mac, "52:54:00:1b:ea:d5")
    # A packet whose TTL runs out at the xTR is not forwarded.
    assert trace(flows1, {"in_port": VNET0, "eth_type": 0x0800, "vlan_vid": 0,
                          "ipv4_dst": "10.1.2.30", "nw_ttl": 1}).dropped


def test_local_routed_delivery_decrements_once():
    config = parse_config({"bridge": [{"name": "hv1", "rloc": "192.0.2.1", "iid": 7, "endpoint": [
        {"port": "a", "mac": "52:54:00:00:00:01", "eids": ["10.1.1.5"], "gateway": "10.1.1.1"},
        {"port": "b", "mac": "52:54:00:00:00:02", "eids": ["10.1.2.5"], "gateway": "10.1.2.1"}]}]})
    flows = compile_bridge(config.overlay.bridges[0], {"a": 1, "b": 2, "lisp0": 3}, compile_overlay(config.overlay)).flows
    r = trace(flows, {"in_port": 1, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": "10.1.2.5", "nw_ttl": 64})
    assert r.outputs == [2] and r.packet["nw_ttl"] == 63


def test_same_subnet_endpoints_are_not_routed():
    """Scenarios 1 and 2: the VMs think they share a link; TTL untouched."""
    for name in ("scenario1-shared-l2.toml", "scenario2-routed-underlay.toml"):
        flows, _ = _bridge(load_config(CONFIGS / name), 0, {"vnet0": VNET0, "lisp0": LISP0})
        assert not any(a == ("dec_ttl",) for f in flows.values() for a in f.actions), name


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_every_example_config_compiles_and_encodes(name):
    """Each flow of each example config encodes to the OpenFlow 1.3 flow-mod
    os-ken builds for it (reg_move, IN_PORT and dec_ttl actions included),
    and its cookie is the hash of those bytes."""
    config = load_config(CONFIGS / name)
    for bridge in config.overlay.bridges:
        ports = {ep.port: i for i, ep in enumerate(bridge.endpoints, 1)}
        ports[bridge.tunnel_port] = len(ports) + 1
        for cookie, flow in compile_bridge(bridge, ports, compile_overlay(config.overlay)).flows.items():
            assert encoded(flow) == (cookie, encode_add_reference(flow, cookie)), render(flow)


def test_gateway_and_proxy_arp_are_validated():
    with pytest.raises(ConfigError) as info:
        parse_config({"bridge": [
            {"name": "hv1", "rloc": "192.0.2.1", "iid": 1, "proxy_arp": "yes", "endpoint": [
                {"port": "a", "mac": "52:54:00:00:00:01", "eids": ["10.0.0.1"], "gateway": "fd00::1"},
                {"port": "b", "mac": "52:54:00:00:00:02", "eids": ["10.0.0.2"], "gateway": "10.0.0.2"}]}]},
            "x.toml")
    problems = info.value.problems
    assert "x.toml: bridge[0].proxy_arp: must be true or false, got 'yes'" in problems
    assert any(p.startswith("x.toml: bridge[0].endpoint[0].gateway: fd00::1 is IPv6") for p in problems)
    assert "x.toml: bridge[0].endpoint[1].gateway: 10.0.0.2 is also one of the endpoint's EIDs" in problems
    # A gateway that is another VM's EID in the same IID would steal its ARP.
    with pytest.raises(ConfigError) as info:
        parse_config({"bridge": [
            {"name": "hv1", "rloc": "192.0.2.1", "iid": 1, "endpoint": [
                {"port": "b", "mac": "52:54:00:00:00:02", "eids": ["10.0.0.2"]}]},
            {"name": "hv2", "rloc": "192.0.2.2", "iid": 1, "gateway": "10.0.0.2", "endpoint": [
                {"port": "c", "mac": "52:54:00:00:00:03", "eids": ["10.0.0.3"]}]}]}, "x.toml")
    problems = info.value.problems
    assert any(p.startswith("x.toml: bridge hv2: endpoint c: gateway 10.0.0.2 in IID 1 is the EID of")
               for p in problems), problems
