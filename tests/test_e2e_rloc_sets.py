"""RLOC sets end to end: real OVS, the controller as a process, VMs in namespaces.

The remote site is multihomed: hypervisor hv2 is reachable at two RLOCs
(two underlay addresses), and the config maps its VM's EID to both,
weighted 70/30 (and to a third RLOC of priority 255, never used). A VM on
hv1 opens 1,000 TCP connections (distinct source ports) to it: the
select group's bucket counters on hv1 must split within 5 points of 70/30;
tshark, on hv2's underlay, must see each connection arrive whole at one
RLOC and the same split; the VM must get every byte. A controller restart
and a reconnect must send no group-mod, counted by the switches themselves
(ovs-vswitchd's OpenFlow log). (TCP, not UDP: OVS's select group under
OpenFlow 1.3 leaves UDP ports out of its hash; docs/datapath.rst.)
"""
from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

from lab.scenario import ControllerProcess, build, wait_programmed
from lab.processes import wait_until

from .browser import Browser
from .test_api import Client

FLOWS = 1000
FIRST_PORT, SERVICE_PORT = 20000, 7000
SERVICE = "10.1.1.30"
HV2_RLOC, HV2_SECOND_RLOC = "192.168.1.22", "192.168.1.23"

CONFIG = f"""
[controller]
listen = "172.31.255.1"
port = 6653
miss_action = "drop"
reconcile_interval = 0

[[bridge]]
datapath_id = "0000000000000b01"
rloc = "192.168.1.21"
iid = 1000

  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:00:0b:20"
  eids = ["10.1.1.20"]

[[bridge]]
datapath_id = "0000000000000b02"
rloc = "{HV2_RLOC}"
iid = 1000

  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:00:0b:30"
  eids = ["{SERVICE}"]

# hv2 has two uplinks: 70 % of the connections to its first RLOC, 30 % to
# its second; 192.168.1.99 (priority 255) is never used.
[[mapping]]
iid = 1000
eid = "{SERVICE}/32"
rlocs = [{{address = "{HV2_RLOC}", priority = 1, weight = 70}},
         {{address = "{HV2_SECOND_RLOC}", priority = 1, weight = 30}},
         {{address = "192.168.1.99", priority = 255, weight = 100}}]
"""

# A TCP service in the remote VM: it records how many bytes each client
# port sent, and stops once nobody has connected for 3 seconds.
RECEIVER = """
import json, selectors, socket, sys, time
out = sys.argv[1]
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("%s", %d))
server.listen(1024)
server.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(server, selectors.EVENT_READ)
open(out + ".ready", "w").close()
got, last, deadline = {}, None, time.monotonic() + 180
while time.monotonic() < deadline and not (last and time.monotonic() - last > 3 and len(sel.get_map()) == 1):
    for key, _ in sel.select(0.2):
        if key.fileobj is server:
            conn, (host, port) = server.accept()
            conn.setblocking(False)
            got[port] = 0
            sel.register(conn, selectors.EVENT_READ, port)
        else:
            data = key.fileobj.recv(65536)
            if data:
                got[key.data] += len(data)
            else:
                sel.unregister(key.fileobj)
                key.fileobj.close()
        last = time.monotonic()
with open(out, "w") as f:
    json.dump(got, f)
""" % (SERVICE, SERVICE_PORT)

# One connection per source port, one after the other: connect, send, close.
SENDER = """
import socket, sys
first, n, dst_port = (int(a) for a in sys.argv[1:4])
for port in range(first, first + n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("10.1.1.20", port))
    s.settimeout(5)
    try:
        s.connect(("%s", dst_port))
        s.sendall(b"lisp" * 64)
    except (ConnectionRefusedError, socket.timeout):
        pass  # the warm-up connects where nobody listens
    s.close()
""" % SERVICE
PAYLOAD = 256


def group_stats(hv) -> dict[int, list[int]]:
    """Packets per bucket of each group, as the switch counts them."""
    out = {}
    for line in hv.run("ovs-ofctl", "-O", "OpenFlow13", "dump-group-stats", hv.bridge).stdout.splitlines():
        m = re.search(r"group_id=(\d+)", line)
        if m:
            out[int(m.group(1))] = [int(n) for n in re.findall(r"bucket\d+:packet_count=(\d+)", line)]
    return out


def groups(hv) -> list[str]:
    lines = hv.run("ovs-ofctl", "-O", "OpenFlow13", "dump-groups", hv.bridge).stdout.splitlines()
    return sorted(line.strip() for line in lines if "group_id=" in line)


def group_durations(hv) -> dict[int, float]:
    out = {}
    for line in hv.run("ovs-ofctl", "-O", "OpenFlow13", "dump-group-stats", hv.bridge).stdout.splitlines():
        m = re.search(r"group_id=(\d+),duration=([\d.]+)s", line)
        if m:
            out[int(m.group(1))] = float(m.group(2))
    return out


def switch_received(hv, since: int) -> list[str]:
    """OpenFlow messages ovs-vswitchd received from the controller (not
    from our own ovs-ofctl, which talks over unix#) since byte `since`,
    one log entry each (a bundled message spans several lines)."""
    text = (hv.rundir / "ovs-vswitchd.log").read_bytes()[since:].decode(errors="replace")
    entries = re.split(r"\n(?=\d{4}-\d\d-\d\dT)", text)
    return [e for e in entries if "|vconn|" in e and "|tcp:" in e and "received:" in e]


def changes(messages: list[str]) -> list[str]:
    """The messages that change a switch (flow-mods, group-mods, bundled or not)."""
    return [m for m in messages if re.search(r"GROUP_MOD|FLOW_MOD|BUNDLE_ADD", m)]


def change_kinds(messages: list[str]) -> list[str]:
    """"group add", "flow del"...: what each change did, in order."""
    out = []
    for m in changes(messages):
        what = re.search(r"OFPT_(GROUP|FLOW)_MOD \(OF1\.3\) \(xid=\w+\):\s*(ADD|DEL)", m)
        out.append(f"{what.group(1).lower()} {what.group(2).lower()}" if what else m)
    return out


def connect_flows(testbed, vm, first: int, n: int, dst_port: int = SERVICE_PORT) -> None:
    testbed.run(vm.ns, sys.executable, "-c", SENDER, str(first), str(n), str(dst_port), timeout=300)


def test_a_thousand_flows_split_70_30_over_an_rloc_set_and_reconnects_send_no_group_mod(testbed, tmp_path):
    path = tmp_path / "rloc-set.toml"
    path.write_text(CONFIG)
    ov = build(testbed, path)
    hv1, hv2 = ov.hypervisors
    vm1, vm2 = ov.vms
    hv2.add_underlay_address(HV2_SECOND_RLOC)
    # Somebody else's group on hv1, and a stale one in our range: the first
    # must be left alone, the second removed (nothing uses it).
    foreign = "group_id=7,type=select,bucket=weight:1,actions=drop"
    stale = f"group_id={0x4C000001},type=select,bucket=weight:1,actions=set_field:192.0.2.1->tun_dst"
    for spec in (foreign, stale):
        hv1.run("ovs-ofctl", "-O", "OpenFlow13", "add-group", hv1.bridge, spec)
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    api = Client(ov)
    api.wait_up()

    # Every bridge holds the one group of the set (the map-cache is shared).
    for hv in ov.hypervisors:
        wait_until(lambda: len([g for g in groups(hv) if "group_id=7," not in g]) == 1, timeout=10,
                   what=f"the RLOC set's group on {hv.name}")
    (ours,) = [g for g in groups(hv1) if "group_id=7," not in g]
    gid = int(re.search(r"group_id=(\d+)", ours).group(1))
    assert gid >> 24 == 0x4C and gid != 0x4C000001
    assert f"bucket=weight:70,actions=set_field:{HV2_RLOC}->tun_dst,resubmit(,2)" in ours
    assert f"bucket=weight:30,actions=set_field:{HV2_SECOND_RLOC}->tun_dst,resubmit(,2)" in ours
    assert "192.168.1.99" not in ours  # priority 255
    assert any(g.startswith("group_id=7,") for g in groups(hv1)), groups(hv1)  # someone else's: kept
    flows = "\n".join(hv1.dump_flows(table=1))
    assert f"nw_dst={SERVICE} actions=set_field:0x3e8->tun_id,group:{gid}" in flows, flows

    # Warm up: the underlay resolves both RLOCs' next hops (packets to an
    # unresolved one are dropped while OVS resolves it; docs/datapath.rst).
    connect_flows(testbed, vm1, 30000, 100, dst_port=SERVICE_PORT + 1)
    wait_until(lambda: all(r in hv1.appctl("tnl/neigh/show") for r in (HV2_RLOC, HV2_SECOND_RLOC)),
               timeout=10, what="both RLOCs' neighbours resolved")
    wait_until(lambda: (lambda s: s and sum(s) >= 100)(group_stats(hv1).get(gid)), timeout=10,
               what="warm-up counted")
    time.sleep(1.5)  # the revalidators' last pull of the warm-up's counters
    before = group_stats(hv1)[gid]

    # 1,000 TCP connections (source ports 20000-20999) to the service in vm2.
    out = tmp_path / "received.json"
    receiver = testbed.spawn(vm2.ns, [sys.executable, "-c", RECEIVER, str(out)])
    wait_until(lambda: Path(f"{out}.ready").exists(), timeout=10, what="receiver in vm2")
    with testbed.capture(hv2.ns, hv2.underlay_iface, "rloc-set") as capture:
        connect_flows(testbed, vm1, FIRST_PORT, FLOWS)
        receiver.wait(200)
    received = {int(p): n for p, n in json.loads(out.read_text()).items()}

    # The switch's bucket counters split 70/30 within 5 points (OVS maps
    # the weights onto 16 hash values here: 11/16 = 68.75 % expected).
    def counted():
        now = group_stats(hv1)[gid]
        return [a - b for a, b in zip(now, before)]
    forward = capture.decode(["ip.dst", "tcp.srcport"], f"lisp-data && tcp.dstport == {SERVICE_PORT}")
    wait_until(lambda: sum(counted()) >= len(forward), timeout=15, what="bucket counters")
    time.sleep(1.5)
    first, second = counted()
    share = first / (first + second)
    print(f"\nbucket counters: {first} packets to {HV2_RLOC} (weight 70), {second} to {HV2_SECOND_RLOC} "
          f"(weight 30): {100 * share:.1f} % / {100 * (1 - share):.1f} %")
    assert abs(share - 0.70) <= 0.05, share
    # Every connection delivered its bytes; tshark saw each one arrive at
    # one RLOC only, in the numbers the buckets counted.
    assert received == {p: PAYLOAD for p in range(FIRST_PORT, FIRST_PORT + FLOWS)}
    rloc_of: dict[int, set] = {}
    packets_to: dict[str, int] = {}
    for line in forward:
        outer, port = line.split("\t")
        rloc = outer.split(",")[0]
        rloc_of.setdefault(int(port), set()).add(rloc)
        packets_to[rloc] = packets_to.get(rloc, 0) + 1
    assert set(rloc_of) == set(received)
    assert all(len(r) == 1 for r in rloc_of.values()), "a connection was split between the RLOCs"
    assert packets_to == {HV2_RLOC: first, HV2_SECOND_RLOC: second}
    flows_first = sum(1 for r in rloc_of.values() if r == {HV2_RLOC})
    print(f"connections: {flows_first} to {HV2_RLOC}, {FLOWS - flows_first} to {HV2_SECOND_RLOC}")
    assert abs(flows_first / FLOWS - 0.70) <= 0.05

    # The API shows the traffic per RLOC (the group's buckets, summed over bridges).
    def per_rloc():
        c = api("GET", f"/v1/mappings/1000/{SERVICE}/32")[1]["mapping"]["counters"]
        return c and {r["address"]: r["packets"] for r in c["rlocs"]}
    wait_until(lambda: (lambda r: r and r[HV2_RLOC] >= before[0] + first)(per_rloc()), timeout=20,
               what="per-RLOC counters in the API")
    counters = api("GET", f"/v1/mappings/1000/{SERVICE}/32")[1]["mapping"]["counters"]
    assert counters["group"] == {"group_id": gid, "mappings": 1}
    assert [r["address"] for r in counters["rlocs"]] == [HV2_RLOC, HV2_SECOND_RLOC]
    d = {x["bridge"]: x for x in api("GET", "/v1/datapaths")[1]["datapaths"]}
    assert all((x["groups_desired"], x["groups_installed"]) == (1, 1) for x in d.values()), d

    # The status page, in a real browser, shows the same per RLOC.
    with Browser(testbed, ov.controller_ns.ns) as b:
        b.open()
        counts = f'#rows tr[data-key="1000|{SERVICE}/32"] .rloc-count'
        b.wait(lambda _: len(b.css(counts)) == 2, what="the RLOCs' packet counts on the page")
        shown = b.js("return [...document.querySelectorAll(arguments[0])].map(e => +e.dataset.rlocPackets)", counts)
        assert shown[0] >= before[0] + first and shown[1] >= before[1] + second, shown
        assert "1 group installed / 1 desired" in b.text('#bridges [data-dpid="0000000000000b01"]')

    # Restart (kill -9) and then a reconnect (the connection cut): the
    # switches receive no group-mod and no flow-mod; the group is the same
    # one (its age keeps growing: never deleted and added again).
    snapshot = {hv.name: (groups(hv), sorted(hv.dump_flows())) for hv in ov.hypervisors}
    offsets = {}
    for hv in ov.hypervisors:
        hv.set_vlog("vconn:file:dbg")
        offsets[hv.name] = (hv.rundir / "ovs-vswitchd.log").stat().st_size
    age = group_durations(hv1)[gid]
    ctl.stop(signal.SIGKILL)
    ctl = ControllerProcess(ov, "controller-2").start()
    ctl.wait_log("already correct, nothing sent", count=2)
    wait_until(lambda: {x["bridge"]: x for x in api("GET", "/v1/datapaths")[1]["datapaths"]}
               ["0000000000000b01"]["connected"], timeout=10, what="hv1 connected to the new controller")
    host, port = {x["bridge"]: x for x in api("GET", "/v1/datapaths")[1]["datapaths"]}[
        "0000000000000b01"]["address"].rsplit(":", 1)
    testbed.run(ov.controller_ns.ns, "ss", "-K", "dst", host, "dport", "=", port)
    ctl.wait_log("already correct, nothing sent", count=3, timeout=30)
    for hv in ov.hypervisors:
        messages = switch_received(hv, offsets[hv.name])
        assert any("OFPST_GROUP_DESC request" in m for m in messages), messages[:20]  # it did read them
        assert changes(messages) == [], changes(messages)
        assert (groups(hv), sorted(hv.dump_flows())) == snapshot[hv.name]
    assert group_durations(hv1)[gid] > age
    assert ctl.log().count("flows and 1 group of ours installed") == 3  # 2 connects and the reconnect
    metrics = api("GET", "/metrics")[1]
    assert re.search(r"^lisp_group_mods_sent_total 0$", metrics, re.M), metrics

    # A mapping from the API with another set: a second group on every
    # bridge, added in the bundle before the flow that uses it; deleting
    # the mapping deletes the group after the flow.
    offsets = {hv.name: (hv.rundir / "ovs-vswitchd.log").stat().st_size for hv in ov.hypervisors}
    status, body = api("POST", "/v1/mappings", {"iid": 1000, "eid": "10.1.7.0/24", "rlocs": [
        {"address": HV2_RLOC, "weight": 50}, {"address": HV2_SECOND_RLOC, "weight": 50}]})
    assert status == 201 and {b["status"] for b in body["bridges"]} == {"confirmed"}, body
    assert [len(groups(hv)) for hv in ov.hypervisors] == [3, 2]  # hv1 also has group 7
    status, body = api("DELETE", "/v1/mappings/1000/10.1.7.0/24")
    assert status == 200 and {b["status"] for b in body["bridges"]} == {"confirmed"}, body
    for hv in ov.hypervisors:
        assert groups(hv) == snapshot[hv.name][0]
        kinds = change_kinds(switch_received(hv, offsets[hv.name]))
        assert kinds == ["group add", "flow add", "flow del", "group del"], kinds
    assert "Traceback" not in ctl.log()
