"""End to end: the real controller process, real OVS, VMs in namespaces.

Each test writes a config, builds the topology it describes and starts
`lisp-controller serve` as a user would; nothing types a flow by hand.
"""
from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from lab.scenario import ControllerProcess, build, wait_programmed
from lab.processes import wait_until

ROOT = Path(__file__).resolve().parent.parent
BLOG = ROOT / "configs" / "blog-two-hypervisors.toml"
IID = 1000
PINGS = 10


def blog_config(tmp_path: Path, profile: str) -> Path:
    text = BLOG.read_text().replace('tunnel_profile = "lisp-gpe"', f'tunnel_profile = "{profile}"')
    path = tmp_path / f"blog-{profile}.toml"
    path.write_text(text)
    return path


def assert_datapath(testbed, ov) -> None:
    """The tunnel runs in the datapath (tnl_push out, tnl_pop in), and on
    the DPDK datapath every port is a real DPDK port (af_packet driver)."""
    for hv in ov.hypervisors:
        flows = hv.appctl("dpctl/dump-flows")
        assert "tnl_push(" in flows and "tnl_pop(" in flows, flows
        if testbed.datapath == "dpdk":
            for port in (hv.underlay_iface, *(vm.port_name for vm in hv.vms)):
                assert hv.interface_status(port)["driver_name"] == "net_af_packet", port


@pytest.mark.parametrize("testbed,profile", [("netdev", "lisp-gpe"), ("netdev", "gre-l3"), ("dpdk", "lisp-gpe")],
                         indirect=["testbed"])
def test_blog_vms_ping_through_the_controllers_flows(testbed, tmp_path, profile):
    ov = build(testbed, blog_config(tmp_path, profile))
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    vm1, vm2 = ov.vms
    hv1, hv2 = ov.hypervisors
    vm1.wait_reachable(vm2.ip)
    vm2.wait_reachable(vm1.ip)
    capture = testbed.capture(hv1.ns, hv1.underlay_iface, profile)
    with capture:
        assert vm1.ping(vm2.ip, count=PINGS) == (PINGS, PINGS)
        assert vm2.ping(vm1.ip, count=PINGS) == (PINGS, PINGS)
    if profile == "lisp-gpe":
        rows = capture.decode(["udp.dstport", "lisp-data.iid"], display_filter="lisp-data && icmp")
        assert len(rows) == 4 * PINGS, rows
        assert {r for r in rows} == {f"4341\t{IID}"}
    else:
        rows = capture.decode(["gre.key"], display_filter="gre && icmp")
        assert len(rows) == 4 * PINGS and {int(r, 16) for r in rows} == {IID}
    # The controller found the port numbers by name, on each bridge.
    for hv in ov.hypervisors:
        ports = hv.port_numbers()
        flows = hv.dump_flows()
        assert any(f"in_port={ports['lisp0']},dl_dst=00:00:00:00:00:00" in f for f in flows), flows
        assert any(f"table=5, priority=0 actions=output:{ports['lisp0']}" in f for f in flows), flows
    assert_datapath(testbed, ov)
    assert "Traceback" not in ctl.log()


def test_lisp_profile_flows_checked_by_ofproto_trace(testbed, tmp_path):
    """type=lisp cannot encapsulate in the userspace datapath (docs/datapath.rst
    section 2), so the lisp profile is checked by where OVS would send the
    packet, not by packets."""
    ov = build(testbed, blog_config(tmp_path, "lisp"))
    ControllerProcess(ov).start()
    wait_programmed(ov)
    hv1 = ov.hypervisors[0]
    ports = hv1.port_numbers()
    out = hv1.appctl("ofproto/trace", "br2",
                     f"in_port={ports['vnet0']},ip,dl_src=52:54:00:b8:27:75,dl_dst=52:54:00:1b:ea:d5,"
                     "nw_src=10.1.1.20,nw_dst=10.1.1.30")
    assert "set_field:192.168.1.252->tun_dst" in out
    assert f"output:{ports['lisp0']}" in out
    assert "set_field:0x3e8->tun_id" in out, out
    # And a decapsulated packet (the old kernel vport's 02:00:00:00:00:00)
    # is delivered to VM1 with its MAC.
    out = hv1.appctl("ofproto/trace", "br2",
                     f"in_port={ports['lisp0']},tun_id=0x3e8,tun_src=192.168.1.252,tun_dst=192.168.1.249,"
                     "ip,dl_dst=02:00:00:00:00:00,nw_src=10.1.1.30,nw_dst=10.1.1.20")
    assert "set_field:52:54:00:b8:27:75->eth_dst" in out
    assert f"output:{ports['vnet0']}" in out


def _controller_messages(hv, since: int) -> list[str]:
    """OpenFlow messages ovs-vswitchd received from the controller (not
    from our own ovs-ofctl, which talks over unix#) since byte `since`."""
    text = (hv.rundir / "ovs-vswitchd.log").read_bytes()[since:].decode(errors="replace")
    return [line for line in text.splitlines() if "|vconn|" in line and "|tcp:" in line and "received:" in line]


NEW_WHILE_DOWN = """
[[mapping]]
iid = 1000
eid = "10.5.0.0/16"
rlocs = [{address = "192.168.1.252", priority = 1, weight = 100}]
"""


@pytest.mark.parametrize("testbed,how", [("netdev", "kill-9"), ("netdev", "terminate"), ("dpdk", "kill-9")],
                         indirect=["testbed"])
def test_controller_restart_loses_no_packet_and_sends_no_flow_mod(testbed, tmp_path, how):
    """Under a 10 ms ping, the controller dies and comes back with one
    mapping added to its config while it was down: no packet is lost, and
    the only flow-mod the bridges receive is that mapping's flow (no
    meter-mod either: the meter is right)."""
    ov = build(testbed, blog_config(tmp_path, "lisp-gpe"))
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    vm1, vm2 = ov.vms
    vm1.wait_reachable(vm2.ip)
    vm2.wait_reachable(vm1.ip)
    before = {hv.name: sorted(hv.dump_flows()) for hv in ov.hypervisors}
    offsets = {}
    for hv in ov.hypervisors:
        hv.set_vlog("vconn:file:dbg")
        offsets[hv.name] = (hv.rundir / "ovs-vswitchd.log").stat().st_size

    # Continuous ping at 10 ms through the restart.
    pinger = testbed.spawn(vm1.ns, ["ping", "-n", "-i", "0.01", "-W", "1", vm2.ip],
                           stdout=open(tmp_path / "ping.txt", "wb"), stderr=open(tmp_path / "ping.err", "wb"))
    wait_until(lambda: (tmp_path / "ping.txt").read_text().count("bytes from") >= 20, timeout=10)
    ctl.stop(signal.SIGKILL if how == "kill-9" else signal.SIGTERM)
    with open(ov.config_path, "a") as f:  # the operator edits the config meanwhile
        f.write(NEW_WHILE_DOWN)
    ctl = ControllerProcess(ov, "controller-2").start()
    ctl.wait_log("0 flows removed, 1 added", count=2)
    wait_until(lambda: (tmp_path / "ping.txt").read_text().count("bytes from") >= 200, timeout=20)
    pinger.send_signal(signal.SIGINT)
    pinger.wait(10)
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", (tmp_path / "ping.txt").read_text())
    sent, received = int(summary.group(1)), int(summary.group(2))
    assert sent >= 200 and received == sent, (sent, received)

    for hv in ov.hypervisors:
        now = sorted(hv.dump_flows())
        added = [f for f in now if f not in before[hv.name]]
        assert [f for f in before[hv.name] if f not in now] == []
        assert len(added) == 1 and "nw_dst=10.5.0.0/16 actions=set_field:192.168.1.252->tun_dst" in added[0]
        messages = _controller_messages(hv, offsets[hv.name])
        # The new controller did talk to the switch (handshake, port and
        # flow dumps, barrier)...
        assert any("OFPST_FLOW request" in m for m in messages), messages[:20]
        assert any("OFPT_BARRIER_REQUEST" in m or "OFPST_PORT_DESC" in m for m in messages), messages[:20]
        # ...and sent one flow-mod, in a bundle: the new mapping's.
        changes = [m for m in messages if re.search(r"FLOW_MOD|BUNDLE_ADD|METER_MOD", m)]
        assert len(changes) == 1, changes
        assert any("OFPST_METER_CONFIG request" in m for m in messages), messages[:20]
    if testbed.datapath == "dpdk":
        assert_datapath(testbed, ov)


def test_port_renumbering_is_followed_and_foreign_flows_are_never_touched(testbed, tmp_path):
    ov = build(testbed, blog_config(tmp_path, "lisp-gpe"))
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    vm1, vm2 = ov.vms
    hv1 = ov.hypervisors[0]
    vm1.wait_reachable(vm2.ip)
    old = hv1.port_numbers()["vnet0"]
    assert old != 42
    foreign = "cookie=0x1234,table=7,priority=5,ip,nw_dst=10.9.9.9 actions=drop"
    hv1.add_flows([foreign])
    # The VM's port comes back with a new number, as after a VM restart.
    hv1.vsctl("del-port", "br2", "vnet0", "--", "add-port", "br2", "vnet0",
              "--", "set", "Interface", "vnet0", "ofport_request=42")
    wait_until(lambda: any("in_port=42" in f for f in hv1.dump_flows()), timeout=10,
               what="flows on the new port number")
    flows = hv1.dump_flows()
    assert not any(re.search(rf"in_port={old}[, ]|output:{old}$", f) for f in flows if "cookie=0x4c" in f), flows
    assert any("cookie=0x1234" in f and "table=7" in f for f in flows), flows
    vm1.wait_reachable(vm2.ip)
    assert vm1.ping(vm2.ip, count=PINGS) == (PINGS, PINGS)
    assert "port vnet0 is now 42" in ctl.log()


def test_bridge_not_in_config_is_left_alone(testbed, tmp_path):
    ov = build(testbed, blog_config(tmp_path, "lisp-gpe"))
    stranger = testbed.add_hypervisor("hv9", "192.168.1.99", 16, ov.segment, "00000000000000aa",
                                      controller=ov.controller_ns)
    stranger.add_flows(["cookie=0x4c00000000000001,priority=0 actions=NORMAL"])
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    ctl.wait_log("bridge 00000000000000aa (br2): connected but not in the config")
    assert stranger.dump_flows() == ["cookie=0x4c00000000000001, priority=0 actions=NORMAL"]


def test_rejected_flow_is_named_and_the_rest_is_applied(testbed, tmp_path):
    """A table that refuses to grow (an operator's flow_limit) rejects one
    flow of the bundle: the error names that flow and its bridge, the rest
    of the change is applied, and the other bridge is unaffected."""
    ov = build(testbed, blog_config(tmp_path, "lisp-gpe"))
    hv1, hv2 = ov.hypervisors
    hv1.vsctl("--", "--id=@t", "create", "Flow_Table", "flow_limit=3", "overflow_policy=refuse",
              "--", "set", "Bridge", "br2", "flow_tables:1=@t")
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    ctl.wait_log("1 rejected")
    log = ctl.log()
    rejected = [l for l in log.splitlines() if "switch rejected flow" in l]
    assert len(rejected) == 1, log
    assert "bridge 00008ad828ce7949 (br2)" in rejected[0]
    assert re.search(r"cookie=0x4c[0-9a-f]+,table=1,priority=\d+", rejected[0]), rejected[0]
    assert "OFPFMFC_TABLE_FULL" in rejected[0] or "TABLE_FULL" in rejected[0], rejected[0]
    assert len(hv1.dump_flows(table=1)) == 3
    assert len(hv2.dump_flows(table=1)) == 4
    # Everything outside the full table arrived on hv1 too.
    assert [f for f in hv1.dump_flows() if "table=1" not in f] and \
        len([f for f in hv1.dump_flows() if "table=1," not in f]) == \
        len([f for f in hv2.dump_flows() if "table=1," not in f])
