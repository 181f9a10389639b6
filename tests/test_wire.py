"""wire.py packs flow-mods by hand: they must be os-ken's bytes exactly."""
import ipaddress
import subprocess
from pathlib import Path

import pytest
from os_ken.ofproto import ofproto_parser, ofproto_protocol

from lisp_controller.openflow import encode
from lisp_controller.pipeline.compiler import compile_bridge, compile_overlay
from lisp_controller.config import load_config, parse_config
from lisp_controller.pipeline.actions import render_actions
from lisp_controller.pipeline.flows import Bucket, COOKIE_TAG, encoded, flow_mod_add, render, select_group

ROOT = Path(__file__).resolve().parent.parent
_PROTO = ofproto_protocol.ProtocolDesc(4)

EXTRA = parse_config({
    "controller": {"miss_action": "send-map-request"},
    "bridge": [{"name": "v6", "rloc": "2001:db8:ff::1", "iid": 3, "proxy_arp": True, "gateway": "10.0.0.1",
                "underlay_mtu": 9000,
                "endpoint": [{"port": "p1", "mac": "52:54:00:00:00:01", "eids": ["10.0.0.5", "2001:db8::5"]}]}],
    "mapping": [
        {"iid": 3, "eid": "10.8.0.0/13", "rlocs": ["2001:db8:ff::2"]},
        {"iid": 3, "eid": "2001:db8:8::/48", "rlocs": [{"address": "192.0.2.7", "priority": 3}]},
        {"iid": 3, "eid": "10.8.1.0/24", "action": "drop"},
        {"iid": 3, "eid": "10.8.2.0/24", "action": "native-forward"},
        {"iid": 3, "eid": "0.0.0.0/0", "action": "send-map-request"},
        # RLOC sets: a select group, over IPv4 and IPv6 RLOCs alike
        {"iid": 3, "eid": "10.9.0.0/16", "rlocs": [{"address": "192.0.2.8", "weight": 70},
                                                   {"address": "2001:db8:ff::9", "weight": 30}]},
    ]}, "synthetic")


def _all_flows():
    configs = [load_config(p) for p in sorted((ROOT / "configs").glob("*.toml"))] + [EXTRA]
    for config in configs:
        shared = compile_overlay(config.overlay)
        for bridge in config.overlay.bridges:
            ports = {ep.port: i + 2 for i, ep in enumerate(bridge.endpoints)}
            ports[bridge.tunnel_port] = 1
            yield from compile_bridge(bridge, ports, shared).flows.items()


FLOWS = list(_all_flows())


def test_every_flow_shape_is_covered():
    kinds = {a[0] for _, f in FLOWS for a in f.actions}
    fields = {name for _, f in FLOWS for name, _ in f.match} | \
             {a[1] for _, f in FLOWS for a in f.actions if a[0] == "set_field"}
    assert kinds == {"output", "normal", "controller", "set_field", "goto", "write_metadata",
                     "in_port", "dec_ttl", "move", "check_pkt_larger", "meter", "group"}
    assert {"tun_ipv4_dst", "tun_ipv6_dst", "ipv6_dst", "arp_tpa", "metadata", "vlan_vid", "reg0"} <= fields
    assert len(FLOWS) > 300


@pytest.mark.parametrize("cookie,flow", FLOWS, ids=lambda x: hex(x) if isinstance(x, int) else "")
def test_bytes_equal_os_kens_and_decode_back(cookie, flow):
    fast = flow_mod_add(flow, cookie)
    assert fast == encode.encode_add_reference(flow, cookie), render(flow)
    version, msg_type, length, xid = ofproto_parser.header(fast)
    msg = ofproto_parser.msg(_PROTO, version, msg_type, length, xid, fast)
    assert (msg.cookie, msg.table_id, msg.priority) == (cookie, flow.table, flow.priority)


@pytest.mark.ovs  # needs ovs-ofctl, not root
def test_path_mtu_actions_read_back_by_ovs_ofctl_as_we_render_them():
    """os-ken 4.2 has no check_pkt_larger (its reference is our own bytes),
    so OVS's own decoder is the yardstick for the path MTU flows' bytes,
    and for the meter instruction's place."""
    shapes = {f for _, f in FLOWS if any(a[0] in ("check_pkt_larger", "meter") for a in f.actions)}
    assert len(shapes) >= 5  # v4 and v6 RLOC checks at two MTUs, the metered packet-in
    for flow in shapes:
        text = subprocess.run(["ovs-ofctl", "ofp-print", flow_mod_add(flow, 0).hex()],
                              capture_output=True, text=True, check=True).stdout
        assert text.split(" actions=", 1)[1].strip() == render_actions(flow.actions), text


def test_cookie_is_a_hash_of_the_encoding():
    cookie, data = encoded(FLOWS[0][1])
    assert cookie >> 56 == COOKIE_TAG
    assert data == flow_mod_add(FLOWS[0][1], cookie)
    # Same content, same cookie; any change to the flow changes it.
    flow = FLOWS[0][1]
    assert encoded(flow._replace(priority=flow.priority + 1))[0] != cookie
    assert len({c for c, _ in FLOWS}) == len({f for _, f in FLOWS})


def test_mapping_template_path_equals_the_general_path():
    """State builds map-cache flow-mods from templates; every shape a
    mapping can take must give the bytes and cookie the general path
    gives, including a second mapping that reuses the first's template."""
    from lisp_controller.pipeline.compiler import mapping_flow, mapping_flow_mod
    from lisp_controller.model import Mapping, prefix_key
    raw = [
        {"iid": 3, "eid": "10.8.0.0/13", "rlocs": ["2001:db8:ff::2"]},
        {"iid": 3, "eid": "10.16.0.0/13", "rlocs": ["2001:db8:ff::2"]},
        {"iid": 3, "eid": "10.8.0.7", "rlocs": ["192.0.2.1"]},
        {"iid": 3, "eid": "10.8.0.9/32", "rlocs": ["192.0.2.1"]},
        {"iid": 4, "eid": "10.8.0.9/32", "rlocs": ["192.0.2.1"]},
        {"iid": 3, "eid": "2001:db8:8::/48", "rlocs": [{"address": "192.0.2.7", "priority": 3},
                                                        {"address": "192.0.2.8", "priority": 1}]},
        {"iid": 3, "eid": "2001:db8:9::/48", "rlocs": ["192.0.2.8"]},
        {"iid": 3, "eid": "2001:db8::1", "rlocs": ["2001:db8:ff::2"]},
        {"iid": 3, "eid": "10.8.1.0/24", "action": "drop"},
        {"iid": 3, "eid": "10.8.2.0/24", "action": "native-forward"},
        {"iid": 3, "eid": "10.8.3.0/24", "rlocs": [{"address": "192.0.2.1", "priority": 255}],
         "action": "send-map-request"},
        {"iid": 16777215, "eid": "0.0.0.0/0", "action": "send-map-request"},
        {"iid": 0, "eid": "::/0", "rlocs": ["192.0.2.1"]},
    ]
    seen = set()
    for item in raw:
        m = Mapping.parse(item, source="api")
        cookie, data = mapping_flow_mod(m, prefix_key(m.iid, m.eid))
        assert (cookie, data) == encoded(mapping_flow(m)), item
        seen.add(cookie)
    assert len(seen) == len(raw)


@pytest.mark.parametrize("cookie", [0x4C00000000000001, 0x4CFFFFFFFFFFFFFF, 0x4C123456789ABCDE])
def test_delete_by_cookie_is_os_kens_message(cookie):
    assert encode.encode_delete(cookie) == encode.encode_delete_reference(cookie)
    msg = ofproto_parser.msg(_PROTO, *ofproto_parser.header(encode.encode_delete(cookie)),
                             encode.encode_delete(cookie))
    assert (msg.cookie, msg.cookie_mask, msg.command, msg.table_id) == (cookie, 2**64 - 1, 3, 0xFF)


def test_every_action_kind_packs_renders_and_traces():
    """Each kind of pipeline/actions.py, alone in a flow: its bytes are
    os-ken's, it has ovs-ofctl text, and the fake pipeline can walk it. A
    kind added without a sample here fails the first assertion."""
    from lisp_controller.pipeline import actions
    from lisp_controller.pipeline.flows import Flow

    samples = {
        "output": actions.output(7), "normal": actions.NORMAL, "controller": actions.TO_CONTROLLER,
        "in_port": actions.IN_PORT, "dec_ttl": actions.DEC_TTL,
        "set_field": actions.set_field("tun_ipv4_dst", ipaddress.ip_address("192.0.2.1")),
        "move": actions.move("eth_src", "eth_dst"), "write_metadata": actions.write_metadata(5),
        "goto": actions.goto(3), "check_pkt_larger": actions.check_pkt_larger(1478),
        "meter": actions.meter(76), "resubmit": actions.resubmit(2),
        "group": actions.group(select_group((Bucket(1, (actions.output(7),)),))),
    }
    assert set(samples) == set(actions.KINDS)
    texts = set()
    for name, action in samples.items():
        flow = Flow(0, 1, (("in_port", 1),), (action,))
        assert flow_mod_add(flow, 9) == encode.encode_add_reference(flow, 9), name
        texts.add(actions.kind(action).text(action))
        packet, outputs = {"in_port": 1, "eth_src": "52:54:00:00:00:01", "_walk": lambda *_: None}, []
        assert actions.kind(action).trace(action, packet, outputs) is True, name
    assert len(texts) == len(samples)  # no two kinds read alike
    with pytest.raises(ValueError, match="unknown action"):
        actions.kind(("teleport", 1))
