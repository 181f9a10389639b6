"""The xTR role end to end: real OVS, the controller as a process, and a
mapping system it talks LISP to in namespaces of its own on the management
LAN (lab/fakems.py, two instances: Map-Server + Map-Resolver, and a second
Map-Resolver).

hv1 is ours (the controller's config); hv2 is another site's xTR, programmed
by hand with the recipe's static flows: its VMs' EIDs are known only to the
mapping system.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lab.scenario import ControllerProcess, Topology, wait_programmed
from lab.processes import wait_until
from lab.seed import static_flows
from lisp_controller.config import load_config
from tests.test_api import Client

IID = 1000
KEY = "control-plane-test-key"
HV1_RLOC, HV2_RLOC = "192.168.1.249", "192.168.1.252"

CONFIG = f"""
[controller]
listen = "172.31.255.1"

[lisp]
map_servers = [{{address = "172.31.255.150", key_id = 1, key = "{KEY}"}}]
map_resolvers = ["172.31.255.150", "172.31.255.151"]
register_interval = 5

[[bridge]]
datapath_id = "00008ad828ce7949"
rloc = "{HV1_RLOC}"
iid = {IID}

  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:b8:27:75"
  eids = ["10.1.1.20"]
"""


class MappingSystem:
    """One fake Map-Server/Map-Resolver process in its own namespace."""

    def __init__(self, tb, name: str, host: int, mappings: list[str]):
        self.ns, self.address = tb.add_mgmt_host(name, host)
        self.state_path = tb.tmpdir / f"{name}.json"
        self.log = tb.tmpfile(name, ".log")
        args = [sys.executable, "-m", "lab.fakems", "--listen", self.address, "--key", f"1:{KEY}",
                "--state", str(self.state_path)]
        for m in mappings:
            args += ["--mapping", m]
        with open(self.log, "wb") as log:
            self.proc = tb.spawn(self.ns, args, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log,
                                 stderr=subprocess.STDOUT)
        wait_until(lambda: "ready" in self.log.read_text(), timeout=10, what=f"{name} ready")

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {"registered": [], "counts": {}, "requests": 0}

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)


def build_sites(tb, tmp_path: Path, time_scale: float = 1.0):
    config_path = tmp_path / "xtr.toml"
    config_path.write_text(CONFIG)
    config = load_config(config_path)
    ctl_ns = tb.add_controller()
    seg = tb.add_segment("underlay", "192.168.1.0/24")
    hv1 = tb.add_hypervisor("hv1", HV1_RLOC, 24, seg, "00008ad828ce7949", controller=ctl_ns)
    hv2 = tb.add_hypervisor("hv2", HV2_RLOC, 24, seg, "00001e2e0e0cf040")
    vm1 = tb.add_vm(hv1, "vm1", "52:54:00:b8:27:75", "10.1.1.20/24", port_name="vnet0")
    vm2 = tb.add_vm(hv2, "vm2", "52:54:00:1b:ea:d5", "10.1.1.30/24", port_name="vnet0")
    vm3 = tb.add_vm(hv2, "vm3", "52:54:00:1b:ea:d6", "10.1.1.31/24", port_name="vnet1")
    # hv2: the other site's xTR, by hand: its VMs, and 10.1.1.20 behind hv1.
    flows = static_flows(hv2, vm2, vm1, HV1_RLOC, IID)
    ports = hv2.port_numbers()
    flows += [f"table=0,priority=3,in_port={ports['lisp0']},dl_dst=00:00:00:00:00:00,ip,nw_dst={vm3.ip}"
              f" actions=mod_dl_dst:{vm3.mac},output:{ports['vnet1']}",
              f"table=0,priority=1,ip,in_port={ports['vnet1']},vlan_tci=0,nw_dst={vm1.ip}/32"
              f" actions=set_field:{HV1_RLOC}->tun_dst,set_field:{IID}->tun_id,output:{ports['lisp0']}"]
    flows[0] = flows[0].replace("dl_dst=00:00:00:00:00:00", f"dl_dst=00:00:00:00:00:00,ip,nw_dst={vm2.ip}")
    hv2.add_flows(flows)
    for vm in (vm2, vm3):
        vm1.neigh_add(vm.ip, vm.mac)
        vm.neigh_add(vm1.ip, vm1.mac)
    vm1.neigh_add("10.1.1.99", "52:54:00:00:00:99")
    known = [f"{IID}:10.1.1.30/32:{HV2_RLOC}:5", f"{IID}:10.1.1.31/32:{HV2_RLOC}:5"]
    ms1 = MappingSystem(tb, "ms1", 150, known)
    ms2 = MappingSystem(tb, "ms2", 151, known)
    ov = Topology(tb, config_path, config, ctl_ns, seg, hypervisors=[hv1], vms=[vm1])
    ctl = ControllerProcess(ov, hooks=("--time-scale", str(time_scale)) if time_scale != 1 else ()).start()
    wait_programmed(ov)
    api = Client(ov)
    api.wait_up()
    return ov, ctl, api, (vm1, vm2, vm3), (ms1, ms2)


def learned(api: Client, eid: str) -> dict | None:
    status, body = api("GET", f"/v1/mappings?iid={IID}&source=map-resolver")
    assert status == 200, body
    return next((m for m in body["mappings"] if m["eid"] == eid), None)


def test_resolution_registration_expiry_negative_and_failover(testbed, tmp_path):
    ov, ctl, api, (vm1, vm2, vm3), (ms1, ms2) = build_sites(
        testbed, tmp_path, time_scale=30)
    hv1 = ov.hypervisors[0]
    # The miss goes to the controller through the meter.
    misses = [f for f in hv1.dump_flows(table=1) if "priority=0" in f]
    assert len(misses) == 1 and "meter:77" in misses[0] and "CONTROLLER" in misses[0], misses
    assert "meter=77" in hv1.ofctl("dump-meters", "br2")

    # Our EID is registered at the Map-Server, confirmed by Map-Notify.
    wait_until(lambda: f"{IID}:10.1.1.20/32" in ms1.state()["registered"], timeout=10, what="registered at ms1")
    wait_until(lambda: [r["state"] for r in api("GET", "/v1/lisp")[1]["registrations"]] == ["registered"],
               timeout=10, what="registration confirmed")

    # An EID known only to the mapping system: no packet lost, not even the first.
    capture = testbed.capture(ov.controller_ns.ns, ov.controller_ns.bridge, "control")
    with capture:
        assert vm1.ping(vm2.ip, count=10, interval=0.1) == (10, 10)
    m = learned(api, "10.1.1.30/32")
    assert m is not None and m["ttl"] == 5 and [r["address"] for r in m["rlocs"]] == [HV2_RLOC], m
    rows = capture.decode(["lisp.type", "_ws.malformed"], display_filter="udp.port==4342")
    assert rows and not [r for r in rows if r.split("\t")[1:] != [""]], rows

    # Idle, it disappears at its TTL: 5 minutes at 30x are 10 s.
    wait_until(lambda: learned(api, "10.1.1.30/32") is None, timeout=20, what="10.1.1.30 expired")

    # An unknown EID: a negative entry, dropped as its action says.
    assert vm1.ping("10.1.1.99", count=3, interval=0.2, timeout=1)[1] == 0
    m = learned(api, "10.1.1.99/32")
    assert m is not None and m["rlocs"] == [] and m["action"] == "drop" and m["ttl"] == 1, m

    # The first map-resolver dies: the second answers within 2 s.
    ms1.kill()
    started = time.monotonic()
    assert vm1.ping(vm3.ip, count=1, timeout=3) == (1, 1)
    assert time.monotonic() - started < 2.0
    assert ms2.state()["requests"] >= 1
    assert "Traceback" not in ctl.log()


def _miss_meter_packets(hv) -> int:
    """Packets that entered the miss meter (each a packet-in, or dropped by the meter)."""
    text = hv.ofctl("meter-stats", hv.bridge, "meter=77")
    return int(text.split("packet_in_count:")[1].split()[0])


def test_a_learned_flow_the_bridge_refuses_drops_its_packets_and_never_loops(testbed, tmp_path):
    """hv1's map-cache table is full: the learned flow for vm2's EID is
    refused. The first packet, sent right behind the flow, meets no flow
    and comes back through the miss meter once; it and the next packet are
    dropped and counted, never sent round again (docs/control-plane.rst,
    "The first packet")."""
    ov, ctl, api, (vm1, vm2, _), _ = build_sites(testbed, tmp_path)
    hv1 = ov.hypervisors[0]
    full = len(hv1.dump_flows(table=1))  # the miss rule, and nothing learned yet
    hv1.vsctl("--", "--id=@ft", "create", "Flow_Table", f"flow_limit={full}", "overflow_policy=refuse",
              "--", "set", "Bridge", hv1.bridge, "flow_tables:1=@ft")
    before = _miss_meter_packets(hv1)
    resolver = lambda: api("GET", "/v1/lisp")[1]["resolver"]
    assert vm1.ping(vm2.ip, count=1, timeout=1) == (1, 0)
    wait_until(lambda: resolver().get("misses_refused") == 1, timeout=5, what="the first packet dropped")
    assert resolver()["learned_refused"] == 1
    assert vm1.ping(vm2.ip, count=1, timeout=1) == (1, 0)
    wait_until(lambda: resolver().get("misses_refused") == 2, timeout=5, what="the next packet dropped")
    # The first packet's miss and its one return, and the next packet's miss:
    # sent round again, they would have gone through the meter thousands of times.
    assert _miss_meter_packets(hv1) - before == 3
    assert resolver()["requests_sent"] == 1  # resolved once; the packets after it were not asked about
    assert "bridge 00008ad828ce7949 (br2): switch refused the learned flow for [1000]10.1.1.30/32" in ctl.log()
    assert len(hv1.dump_flows(table=1)) == full
    assert "Traceback" not in ctl.log()


def test_endpoints_are_registered_at_once_and_withdrawn_when_deleted(testbed, tmp_path):
    ov, ctl, api, _, (ms1, _) = build_sites(testbed, tmp_path)
    wait_until(lambda: f"{IID}:10.1.1.20/32" in ms1.state()["registered"], timeout=10, what="registered")
    status, body = api("POST", "/v1/endpoints", {"bridge": "00008ad828ce7949", "port": "vnet7",
                                                  "mac": "52:54:00:00:00:07", "iid": IID, "eids": ["10.1.1.77"]})
    assert status == 201, body
    wait_until(lambda: f"{IID}:10.1.1.77/32" in ms1.state()["registered"], timeout=2, what="new EID registered")
    wait_until(lambda: {r["eid"]: r["state"] for r in api("GET", "/v1/lisp")[1]["registrations"]}.get(
        "10.1.1.77/32") == "registered", timeout=5, what="new EID confirmed")
    status, body = api("DELETE", "/v1/endpoints/00008ad828ce7949/vnet7")
    assert status == 200, body
    wait_until(lambda: f"{IID}:10.1.1.77/32" not in ms1.state()["registered"], timeout=2, what="withdrawn")
    wait_until(lambda: [r["eid"] for r in api("GET", "/v1/lisp")[1]["registrations"]] == ["10.1.1.20/32"],
               timeout=5, what="withdrawal confirmed")
    assert f"{IID}:10.1.1.20/32" in ms1.state()["registered"]
    metrics = api("GET", "/metrics")[1]
    assert 'lisp_xtr_registrations{map_server="172.31.255.150",state="registered"} 1' in metrics, metrics

    # The status page shows it, and shows it failing once the Map-Server is gone.
    from tests.browser import Browser
    reg = '#lisp tr[data-eid="10.1.1.20/32"][data-ms="172.31.255.150"]'
    with Browser(testbed, ov.controller_ns.ns) as b:
        b.open()
        b.wait(lambda d: b.attr(reg, "data-state") == "registered", what="registered on the page")
        assert "LISP control plane" in b.text("#lisp-section") and "172.31.255.151" in b.text("#lisp")
        if os.environ.get("LISP_CONTROLLER_SCREENSHOTS"):
            b.screenshot(Path(os.environ["LISP_CONTROLLER_SCREENSHOTS"]) / "status-page-lisp.png")
        ms1.kill()  # the next registration (every 5 s) gets no Map-Notify
        b.wait(lambda d: b.attr(reg, "data-state") == "failing", timeout=20, what="failing on the page")
        assert "no Map-Notify from 172.31.255.150" in b.text(reg)
    metrics = api("GET", "/metrics")[1]
    assert 'lisp_xtr_registrations{map_server="172.31.255.150",state="failing"} 1' in metrics, metrics


def _forged_reply() -> bytes:
    from lisp_controller.lisp import MapReply, encode
    from lab.fakems import static_record
    return encode(MapReply(b"\x13" * 8, (static_record(IID, "10.1.1.0/24", ["192.168.1.66"], ttl=60),)))


def _mutations(seed: int, count: int):
    """Random bytes and single-bit/byte mutations of real messages."""
    from lisp_controller.lisp import MapNotify, MapReply, encode, sign
    from lisp_controller.lisp.auth import AuthKey
    from lab.fakems import static_record
    rng = random.Random(seed)
    record = static_record(IID, "10.1.1.0/24", [HV2_RLOC])
    bases = [encode(MapReply(bytes(8), (record,))), sign(MapNotify(bytes(8), (record,)), AuthKey(1, KEY.encode()))]
    for i in range(count):
        if i % 2:
            yield rng.randbytes(rng.randrange(0, 200))
        else:
            data = bytearray(rng.choice(bases))
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            yield bytes(data)


def mappings(api: Client) -> list[dict]:
    """Every mapping, without the seconds left of its TTL (which run on)."""
    return [{k: v for k, v in m.items() if k != "expires_in"} for m in api("GET", "/v1/mappings")[1]["mappings"]]


def test_hostile_datagrams_change_nothing_and_are_counted(testbed, tmp_path):
    ov, ctl, api, (vm1, vm2, _), (ms1, _) = build_sites(testbed, tmp_path)
    wait_until(lambda: f"{IID}:10.1.1.20/32" in ms1.state()["registered"], timeout=10, what="registered")
    assert vm1.ping(vm2.ip, count=2, interval=0.1) == (2, 2)
    before_mappings = mappings(api)
    before = api("GET", "/v1/lisp")[1]
    sent = 100_000
    deadline = time.monotonic() + 120
    replayed = bytes.fromhex(ms1.state()["last_notify"])  # a real Map-Notify, already answered
    forged = _forged_reply()  # a well-formed Map-Reply for a prefix we asked about, wrong nonce
    with testbed.netns(ms1.ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ms1.address, 0))
        for data in (replayed, forged):
            sock.sendto(data, ("172.31.255.1", 4342))
        sent += 2
        for n, data in enumerate(_mutations(7, sent - 2), 1):
            sock.sendto(data, ("172.31.255.1", 4342))
            if n % 200 == 0:
                time.sleep(0.01)  # paced: a socket buffer overflow would lose them uncounted
            assert time.monotonic() < deadline
        sock.close()

    def counted() -> int:
        """Datagrams dropped (counted by why) since `before`. Accepted
        Map-Notifies are left out: the periodic registration goes on."""
        received = api("GET", "/v1/lisp")[1]["received"]
        return sum(v - before["received"].get(k, 0) for k, v in received.items() if k != "map_notify_accepted")

    def kernel_drops() -> str:
        text = testbed.run(ov.controller_ns.ns, "cat", "/proc/net/udp").stdout
        return [line for line in text.splitlines() if ":10F6 " in line][0].split()[-1]
    wait_until(lambda: counted() >= sent, timeout=60,
               what=f"every datagram counted (kernel drops: {kernel_drops()})")
    after = api("GET", "/v1/lisp")[1]
    assert counted() == sent, (before["received"], after["received"])
    assert after["received"].get("map_reply_accepted") == before["received"].get("map_reply_accepted")
    assert after["received"]["map_notify_unknown_nonce"] >= 1 and after["received"]["map_reply_unknown_nonce"] >= 1
    assert set(after["received"]) <= {"malformed", "map_reply_unknown_nonce", "map_reply_accepted",
                                      "map_notify_unknown_nonce", "map_notify_accepted", "ignored"}, after
    assert mappings(api) == before_mappings
    # A Map-Notify queued behind the flood may come after its retry: the registration
    # may show failing for a moment, and is registered again with the next answer.
    wait_until(lambda: [r["state"] for r in api("GET", "/v1/lisp")[1]["registrations"]] == ["registered"],
               timeout=20, what="registration confirmed after the flood")
    assert ctl.proc.poll() is None and "Traceback" not in ctl.log()
    assert vm1.ping(vm2.ip, count=2, interval=0.1) == (2, 2)


# ------------------------------------------------- a lisp-controller as the mapping system

MAP_SERVER_CONFIG = f"""
[controller]
listen = "{{address}}"

[lisp]
listen = "{{address}}"
negative_ttl = 1
negative_action = "drop"

[[site]]
name = "lab"
keys = [{{key_id = 1, alg = "sha256", key = "{KEY}"}}]
prefixes = [{{iid = {IID}, eid = "10.1.1.0/24", accept_more_specifics = true}}]
proxy_reply = true
"""


class MapServerProcess:
    """`lisp-controller serve` as Map-Server and Map-Resolver (its [lisp]
    listen and a [[site]]), in a namespace of its own on the management LAN,
    with its API on 127.0.0.1 there."""

    def __init__(self, tb, name: str, host: int, segment):
        from lab.nodes import Controller
        ns, self.address = tb.add_mgmt_host(name, host)
        path = tb.tmpdir / f"{name}.toml"
        path.write_text(MAP_SERVER_CONFIG.replace("{address}", self.address))
        self.ov = Topology(tb, path, load_config(path), Controller(ns, self.address, "", tb), segment)
        self.proc = ControllerProcess(self.ov, log_name=name, store_path=tb.tmpdir / f"{name}.db").start()
        self.api = Client(self.ov)
        self.api.wait_up()

    def registered(self) -> list[str]:
        status, body = self.api("GET", "/v1/sites/lab")
        assert status == 200, body
        return sorted(f"{r['iid']}:{r['eid']}" for r in body["site"]["registrations"])

    def kill(self) -> None:
        self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.proc.wait(5)


def test_a_lisp_controller_is_the_mapping_system(testbed, tmp_path):
    """The same story as above with the real Map-Server and Map-Resolver:
    two more lisp-controller processes. The other site's ETR (hv2, flows by
    hand) registers its EIDs with both as an ETR would (lab/lisp_peer.py)."""
    from lab.lisp_peer import LispPeer, eid_record
    from lisp_controller.lisp.auth import AuthKey

    config_path = tmp_path / "xtr.toml"
    config_path.write_text(CONFIG)
    ctl_ns = testbed.add_controller()
    seg = testbed.add_segment("underlay", "192.168.1.0/24")
    hv1 = testbed.add_hypervisor("hv1", HV1_RLOC, 24, seg, "00008ad828ce7949", controller=ctl_ns)
    hv2 = testbed.add_hypervisor("hv2", HV2_RLOC, 24, seg, "00001e2e0e0cf040")
    vm1 = testbed.add_vm(hv1, "vm1", "52:54:00:b8:27:75", "10.1.1.20/24", port_name="vnet0")
    vm2 = testbed.add_vm(hv2, "vm2", "52:54:00:1b:ea:d5", "10.1.1.30/24", port_name="vnet0")
    vm3 = testbed.add_vm(hv2, "vm3", "52:54:00:1b:ea:d6", "10.1.1.31/24", port_name="vnet1")
    _remote_site_flows(hv2, vm1, vm2, vm3)
    for vm in (vm2, vm3):
        vm1.neigh_add(vm.ip, vm.mac)
        vm.neigh_add(vm1.ip, vm1.mac)
    vm1.neigh_add("10.1.1.99", "52:54:00:00:00:99")
    ms1 = MapServerProcess(testbed, "ms1", 150, seg)
    ms2 = MapServerProcess(testbed, "ms2", 151, seg)
    peers = []
    for ms in (ms1, ms2):
        with testbed.netns(ms.ov.controller_ns.ns):
            peer = LispPeer((ms.address, 4342), AuthKey(1, KEY.encode()))
        peer.keep_registering([eid_record(IID, f"{vm.ip}/32", [HV2_RLOC], ttl=5) for vm in (vm2, vm3)],
                              interval=1.0, proxy_reply=True, use_ttl_for_timeout=False)
        peers.append(peer)
    try:
        ov = Topology(testbed, config_path, load_config(config_path), ctl_ns, seg, hypervisors=[hv1], vms=[vm1])
        ControllerProcess(ov, hooks=("--time-scale", "30")).start()
        wait_programmed(ov)
        api = Client(ov)
        api.wait_up()

        # Our EID registered at the Map-Server, confirmed by its Map-Notify.
        wait_until(lambda: f"{IID}:10.1.1.20/32" in ms1.registered(), timeout=10, what="registered at ms1")
        wait_until(lambda: [r["state"] for r in api("GET", "/v1/lisp")[1]["registrations"]] == ["registered"],
                   timeout=10, what="registration confirmed by ms1's Map-Notify")
        wait_until(lambda: f"{IID}:10.1.1.30/32" in ms2.registered(), timeout=10, what="the other site registered")

        # An EID only the mapping system knows: no packet lost, the first included.
        assert vm1.ping(vm2.ip, count=10, interval=0.1) == (10, 10)
        m = learned(api, "10.1.1.30/32")
        assert m is not None and m["ttl"] == 5 and [r["address"] for r in m["rlocs"]] == [HV2_RLOC], m
        wait_until(lambda: learned(api, "10.1.1.30/32") is None, timeout=20, what="10.1.1.30 expired at its TTL")

        # Inside the site's prefix but registered by nobody: a negative entry, dropped.
        assert vm1.ping("10.1.1.99", count=3, interval=0.2, timeout=1)[1] == 0
        status, body = api("GET", f"/v1/lookup?iid={IID}&eid=10.1.1.99")
        m = body["mapping"]
        assert m["source"] == "map-resolver" and m["rlocs"] == [] and m["action"] == "drop", body

        # An endpoint added is registered at once; deleted, it is withdrawn.
        status, body = api("POST", "/v1/endpoints", {"bridge": "00008ad828ce7949", "port": "vnet7",
                                                      "mac": "52:54:00:00:00:07", "iid": IID, "eids": ["10.1.1.77"]})
        assert status == 201, body
        wait_until(lambda: f"{IID}:10.1.1.77/32" in ms1.registered(), timeout=3, what="new EID registered")
        assert api("DELETE", "/v1/endpoints/00008ad828ce7949/vnet7")[0] == 200
        wait_until(lambda: f"{IID}:10.1.1.77/32" not in ms1.registered(), timeout=3, what="withdrawn")

        # The first map-resolver dies: the second answers within 2 s.
        ms1.kill()
        started = time.monotonic()
        assert vm1.ping(vm3.ip, count=1, timeout=3) == (1, 1)
        assert time.monotonic() - started < 2.0
        assert learned(api, "10.1.1.31/32") is not None
    finally:
        for peer in peers:
            peer.stop()
            peer.close()


def _remote_site_flows(hv2, vm1, vm2, vm3) -> None:
    """hv2 is the other site's xTR, programmed by hand: its two VMs, and
    10.1.1.20 behind hv1."""
    flows = static_flows(hv2, vm2, vm1, HV1_RLOC, IID)
    ports = hv2.port_numbers()
    flows[0] = flows[0].replace("dl_dst=00:00:00:00:00:00", f"dl_dst=00:00:00:00:00:00,ip,nw_dst={vm2.ip}")
    flows += [f"table=0,priority=3,in_port={ports['lisp0']},dl_dst=00:00:00:00:00:00,ip,nw_dst={vm3.ip}"
              f" actions=mod_dl_dst:{vm3.mac},output:{ports['vnet1']}",
              f"table=0,priority=1,ip,in_port={ports['vnet1']},vlan_tci=0,nw_dst={vm1.ip}/32"
              f" actions=set_field:{HV1_RLOC}->tun_dst,set_field:{IID}->tun_id,output:{ports['lisp0']}"]
    hv2.add_flows(flows)
