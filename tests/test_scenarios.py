"""End to end: the OVS LISP recipe's three scenarios, several sites and
tenants, and IPv6, each from an example config in configs/ through the real
controller process and real OVS (docs/scenario-*.rst describe them).

ARP is never faked here: in scenarios 1 and 3 and in scenario 2 with proxy
ARP the VMs start with empty neighbour tables and the tests check whose
MAC they learned.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.scenario import ControllerProcess, build, wait_programmed

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
PINGS = 10


def start(testbed, config: Path, **build_kw):
    ov = build(testbed, config, **build_kw)
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    return ov, ctl


def ping_both_ways(a, b, addr_a: str | None = None, addr_b: str | None = None, count: int = PINGS):
    addr_a, addr_b = addr_a or a.ip, addr_b or b.ip
    a.wait_reachable(addr_b)
    b.wait_reachable(addr_a)
    assert a.ping(addr_b, count=count, interval=0.05) == (count, count)
    assert b.ping(addr_a, count=count, interval=0.05) == (count, count)


def neighbour(vm, ip: str) -> tuple[str, str]:
    """(MAC, state) of the VM's neighbour entry for `ip`."""
    out = vm.run("ip", "neigh", "show", ip, "dev", vm.iface).stdout
    m = re.search(r"lladdr (\S+) .*?(\w+)\s*$", out.strip())
    assert m, f"{vm.name} has no neighbour entry for {ip}: {out!r}"
    return m.group(1), m.group(2)


def no_neighbours(vm) -> None:
    assert vm.run("ip", "neigh", "show", "dev", vm.iface).stdout.strip() == "", vm.name


def router_mac(ov, hv_index: int) -> str:
    return ov.config.overlay.bridges[hv_index].router_mac


def test_scenario1_same_subnets_arp_over_l2_ip_over_lisp(testbed):
    ov, ctl = start(testbed, CONFIGS / "scenario1-shared-l2.toml", static_neighbours=False, vm_lan=True)
    vm1, vm2 = ov.vms
    hv1 = ov.hypervisors[0]
    for vm in ov.vms:
        no_neighbours(vm)
    lan = testbed.capture(hv1.ns, "eth0", "vmlan")
    wan = testbed.capture(hv1.ns, hv1.underlay_iface, "wan")
    with lan, wan:
        ping_both_ways(vm1, vm2)
    # ARP was answered by the other VM itself, across the L2 segment...
    assert neighbour(vm1, vm2.ip)[0] == vm2.mac
    assert neighbour(vm2, vm1.ip)[0] == vm1.mac
    assert lan.decode(["arp.src.proto_ipv4"], display_filter=f"arp.opcode == 2 && arp.src.hw_mac == {vm2.mac}")
    # ...while IP went through the tunnel, never over the L2 segment.
    assert lan.decode(["ip.dst"], display_filter="icmp") == []
    rows = wan.decode(["lisp-data.iid"], display_filter="lisp-data && icmp")
    assert len(rows) >= 4 * PINGS and set(rows) == {"1000"}
    assert "Traceback" not in ctl.log()


@pytest.mark.parametrize("arp", ["proxy", "static"])
def test_scenario2_routed_underlay(testbed, tmp_path, arp):
    config = CONFIGS / "scenario2-routed-underlay.toml"
    if arp == "static":  # the blog's `arp -f /etc/ethers` instead of proxy ARP
        config = tmp_path / "static.toml"
        config.write_text((CONFIGS / "scenario2-routed-underlay.toml").read_text()
                          .replace("proxy_arp = true", "proxy_arp = false"))
    ov, ctl = start(testbed, config, static_neighbours=arp == "static", routed_underlay=True)
    vm1, vm2 = ov.vms
    hv1, hv2 = ov.hypervisors
    assert ov.router is not None and len(ov.segments) == 2
    assert hv1.rloc.startswith("192.168.1.") and hv2.rloc.startswith("192.168.2.")
    if arp == "proxy":
        for vm in ov.vms:
            no_neighbours(vm)
    capture = testbed.capture(ov.router.ns, ov.router.interfaces["wan2"], "routed")
    with capture:
        ping_both_ways(vm1, vm2)
    if arp == "proxy":
        # Each VM learned the other's address at its own hypervisor's
        # router MAC, from the flows' ARP responder.
        assert neighbour(vm1, vm2.ip) == (router_mac(ov, 0), "REACHABLE")
        assert neighbour(vm2, vm1.ip) == (router_mac(ov, 1), "REACHABLE")
        assert any("arp_op=1" in f and "IN_PORT" in f for f in hv1.dump_flows(table=4))
    else:
        assert neighbour(vm1, vm2.ip) == (vm2.mac, "PERMANENT")
    # The packets crossed the router: outer TTL 63 after it, IID 1000.
    rows = capture.decode(["ip.ttl", "lisp-data.iid"], display_filter="lisp-data && icmp")
    assert len(rows) >= 4 * PINGS and {r.split("\t")[1] for r in rows} == {"1000"}
    assert any(r.startswith("63,") for r in rows) and any(r.startswith("64,") for r in rows), rows
    assert "Traceback" not in ctl.log()


def test_scenario3_hypervisor_is_the_default_router(testbed):
    ov, ctl = start(testbed, CONFIGS / "scenario3-routed-vms.toml", static_neighbours=False)
    vm1, vm2 = ov.vms
    for vm in ov.vms:
        no_neighbours(vm)
    ping_both_ways(vm1, vm2)
    # Only the gateway was ARPed for, and the hypervisor answered it.
    assert neighbour(vm1, "10.1.1.1") == (router_mac(ov, 0), "REACHABLE")
    assert neighbour(vm2, "10.1.2.1") == (router_mac(ov, 1), "REACHABLE")
    assert "10.1.2.30" not in vm1.run("ip", "neigh", "show").stdout
    # Two routers on the way (the two xTRs): a reply sent with TTL 64
    # arrives with 62, in both directions.
    for src, dst in ((vm1, vm2), (vm2, vm1)):
        testbed.assert_ours(src.ns)
        out = src.run("ping", "-n", "-c", "3", "-i", "0.05", "-W", "2", dst.ip).stdout
        assert re.findall(r"ttl=(\d+)", out) == ["62"] * 3, out
    # The packet delivered to the VM carries the router MAC as source.
    capture = testbed.capture(ov.hypervisors[1].ns, "vnet0", "vm2port")
    with capture:
        assert vm1.ping(vm2.ip, count=3, interval=0.05) == (3, 3)
    rows = capture.decode(["eth.src", "eth.dst", "ip.ttl"], display_filter="icmp.type == 8")
    assert rows == [f"{router_mac(ov, 1)}\t{vm2.mac}\t62"] * 3, rows
    assert "Traceback" not in ctl.log()


def test_three_sites_two_tenants(testbed):
    ov, ctl = start(testbed, CONFIGS / "three-sites-two-tenants.toml", static_neighbours=False)
    by_port = {vm.port_name: vm for vm in ov.vms}
    hv1, hv2, hv3 = ov.hypervisors
    red = [vm for vm in ov.vms if vm.port_name.startswith("red")]
    blue11, blue21 = by_port["blue11"], by_port["blue21"]
    assert len(red) == 6
    # Every red VM reaches every other red VM: same hypervisor or not.
    for src in red:
        for dst in red:
            if src is not dst:
                src.wait_reachable(dst.ip)
                assert src.ping(dst.ip, count=3, interval=0.05) == (3, 3), (src, dst)
    # Red and blue both use 10.0.0.11 and 10.0.0.21; each tenant reaches
    # its own VM and the other tenant's VM sees nothing of it.
    for tenant, src, dst, other in (("blue", blue11, blue21, by_port["red21"]),
                                    ("red", by_port["red11"], by_port["red21"], blue21)):
        mine = testbed.capture(hv2.ns, dst.port_name, f"{tenant}-dst")
        theirs = testbed.capture(hv2.ns, other.port_name, f"{tenant}-other")
        wan = testbed.capture(hv2.ns, hv2.underlay_iface, f"{tenant}-wan")
        with mine, theirs, wan:
            ping_both_ways(src, dst)
        requests = mine.decode(["ip.src"], display_filter="icmp.type == 8 && ip.dst == 10.0.0.21")
        assert len(requests) >= PINGS and set(requests) == {"10.0.0.11"}, (tenant, requests)
        assert theirs.decode(["frame.number"], display_filter="icmp || arp") == [], tenant
        iids = wan.decode(["lisp-data.iid"], display_filter="lisp-data && icmp")
        assert len(iids) >= 4 * PINGS and set(iids) == {"200" if tenant == "blue" else "100"}
    # Blue has no 10.0.0.31 or 10.0.0.12 (red's): even with a neighbour
    # entry forcing the packets into the bridge, nothing crosses.
    blue11.neigh_add("10.0.0.31", router_mac(ov, 0))
    blue11.neigh_add("10.0.0.12", by_port["red12"].mac)
    wan3 = testbed.capture(hv3.ns, hv3.underlay_iface, "wan-hv3")
    red31 = testbed.capture(hv3.ns, "red31", "red31")
    red12 = testbed.capture(hv1.ns, "red12", "red12")
    with wan3, red31, red12:
        assert blue11.ping("10.0.0.31", count=5, interval=0.05, timeout=1)[1] == 0
        assert blue11.ping("10.0.0.12", count=5, interval=0.05, timeout=1)[1] == 0
    assert wan3.decode(["frame.number"], display_filter="lisp-data") == []
    assert red31.decode(["frame.number"], display_filter="icmp || arp") == []
    assert red12.decode(["frame.number"], display_filter="icmp || arp") == []
    # And blue's ARP for red's address was not answered.
    with pytest.raises(AssertionError):
        neighbour(blue11, "10.0.0.22")
    assert blue11.ping("10.0.0.22", count=1, timeout=1)[1] == 0
    assert "FAILED" in blue11.run("ip", "neigh", "show", "10.0.0.22").stdout or \
        "INCOMPLETE" in blue11.run("ip", "neigh", "show", "10.0.0.22").stdout
    assert "Traceback" not in ctl.log()


def test_ipv6_eids_over_ipv4_underlay(testbed):
    ov, ctl = start(testbed, CONFIGS / "ipv6.toml")
    vm1, vm2 = ov.vms
    hv1 = ov.hypervisors[0]
    capture = testbed.capture(hv1.ns, hv1.underlay_iface, "v6-over-v4")
    with capture:
        ping_both_ways(vm1, vm2, vm1.ipv6, vm2.ipv6)
    rows = capture.decode(["ip.src", "ipv6.src", "lisp-data.iid"], display_filter="lisp-data && icmpv6")
    assert len(rows) >= 4 * PINGS
    assert {r.split("\t")[0] for r in rows} == {hv1.rloc, ov.hypervisors[1].rloc}
    assert {r.split("\t")[1] for r in rows} == {vm1.ipv6, vm2.ipv6}
    assert "Traceback" not in ctl.log()


def test_ipv6_underlay(testbed, tmp_path):
    """IPv6 RLOCs (tun_ipv6_dst) carrying IPv4 and IPv6 EIDs."""
    config = tmp_path / "ipv6-underlay.toml"
    config.write_text((CONFIGS / "ipv6.toml").read_text()
                      .replace('"192.168.1.249"', '"fd00:4c::249"').replace('"192.168.1.252"', '"fd00:4c::252"'))
    ov, ctl = start(testbed, config, underlay="fd00:4c::/64")
    vm1, vm2 = ov.vms
    hv1, hv2 = ov.hypervisors
    assert any("set_field:fd00:4c::252->tun_ipv6_dst" in f for f in hv1.dump_flows(table=1))
    capture = testbed.capture(hv1.ns, hv1.underlay_iface, "v6-underlay")
    with capture:
        ping_both_ways(vm1, vm2)
        ping_both_ways(vm1, vm2, vm1.ipv6, vm2.ipv6)
    rows = capture.decode(["ipv6.src", "lisp-data.iid"], display_filter="lisp-data && (icmp || icmpv6)")
    assert len(rows) >= 8 * PINGS
    outer = {r.split("\t")[0].split(",")[0] for r in rows}
    assert outer == {"fd00:4c::249", "fd00:4c::252"}, outer
    assert "Traceback" not in ctl.log()
