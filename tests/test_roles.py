"""Several controller instances, one master per bridge (docs/etcd.rst,
"Bridge ownership"): real `lisp-controller serve` processes on a real
three-member etcd cluster (lab/cluster.py), real OVS bridges connected to
all of them.

What the switch itself says is the judge: its Controller table names the
connection it holds as master, and its coverage counters count every
change of its flow table (a flow-mod, even one that changes nothing) and
every meter set."""
from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from lab.cluster import FAST_ELECTION, Instance, LocalCluster, switch_changes, switch_master, switch_roles
from lab.scenario import Topology, build, wait_programmed
from lab.nodes import Hypervisor
from lab.processes import wait_until
from lab.testbed import Testbed
from lisp_controller.pipeline.compiler import T_MAPCACHE

ROOT = Path(__file__).resolve().parent.parent
BLOG = ROOT / "configs" / "blog-two-hypervisors.toml"
@contextlib.contextmanager
def three(testbed: Testbed, hooks: tuple[str, ...] = (), **api) -> Iterator[tuple[Topology, LocalCluster]]:
    """The blog's two hypervisors and three instances (lease of 1 s, etcd
    members that grant it; `api`: [api] keys), each bridge connected to
    all three."""
    ov = build(testbed, BLOG)
    with LocalCluster(3, config=BLOG, testbed=testbed, api=api, lease_ttl=1, etcd_args=FAST_ELECTION,
                      controller={"reconcile_interval": 60}, hooks=hooks, stoppable=True) as cluster:
        for hv in ov.hypervisors:
            hv.set_controllers(hv.bridge, [i.target for i in cluster.instances])
        wait_programmed(ov)
        wait_spread(ov, cluster)
        yield ov, cluster
        for inst in cluster.instances:
            assert "Traceback" not in inst.log(), inst.log()[-3000:]


def by_port(cluster: LocalCluster, port: int) -> Instance:
    return next(i for i in cluster.instances if i.of_port == port)


def wait_spread(ov: Topology, cluster: LocalCluster) -> None:
    """Every bridge has one master, the switch and etcd agree, and no
    instance masters two while another masters none."""
    first = cluster.instances[0]

    def spread() -> bool:
        masters = []
        for hv in ov.hypervisors:
            if "disconnected" in switch_roles(hv)[hv.bridge].values():
                return False
            port = switch_master(hv)
            if port is None:
                return False
            masters.append(by_port(cluster, port).name)
        _, body = cluster.api(first, "GET", "/v1/instances")
        if len(body["instances"]) != len(cluster.instances) or \
                any(len(i["connected"]) != len(ov.hypervisors) for i in body["instances"]):
            return False
        counts = {i["instance"]: i["masters"] for i in body["instances"]}
        views = {d["datapath_id"]: d["master"] for d in cluster.api(first, "GET", "/v1/datapaths")[1]["datapaths"]}
        return sorted(views.values()) == sorted(masters) and max(counts.values()) - min(counts.values()) <= 1
    wait_until(spread, timeout=30, interval=0.1, what="one master per bridge, spread over the instances")


def test_kill_9_of_a_master_loses_no_ping_and_the_new_master_sends_nothing(testbed):
    """Three instances, two hypervisors, a VM pinging the other every
    10 ms: kill -9 of hv1's master. The switch holds a new master within
    2 s, no ping is lost, and the new master, whose deep check finds the
    flows right, changes nothing on the switch."""
    with three(testbed) as (ov, cluster):
        instances = cluster.instances
        hv1 = ov.hypervisors[0]
        vm1, vm2 = ov.vms
        for hv in ov.hypervisors:  # slaves: what the switch holds, and etcd's word
            roles = switch_roles(hv)[hv.bridge]
            assert sorted(roles.values()) == ["master", "slave", "slave"], roles
        old = by_port(cluster, switch_master(hv1))
        vm1.wait_reachable(vm2.ip)  # the underlay's neighbours resolved: the first ping is not the kill's
        before = switch_changes(hv1)

        pings = []
        pinger = threading.Thread(target=lambda: pings.append(ping_log(vm1, vm2.ip, count=500, interval=0.01)))
        pinger.start()
        time.sleep(1.0)
        killed = time.monotonic()
        old.process.stop(signal.SIGKILL)  # by its PID, as the testbed started it
        # The switch's Controller table: ovs-vswitchd writes it seconds late (docs/etcd.rst).
        wait_until(lambda: switch_master(hv1) not in (None, old.of_port), timeout=15, interval=0.01,
                   what="a new master of hv1's bridge")
        failover = time.monotonic() - killed
        new = by_port(cluster, switch_master(hv1))
        pinger.join(30)
        sent, replies, started = pings[0]
        kill_wall = time.time() - (time.monotonic() - killed)
        mastered = _log_time(new.log(), r"bridge 00008ad828ce7949 \(br2\): instance \w+ is MASTER")
        print(f"\nkill -9 of {old.name}: {new.name} is hv1's master {(mastered - kill_wall) * 1000:.0f} ms later "
              f"(the switch's Controller table says so {failover * 1000:.0f} ms later); "
              f"pings {len(replies)}/{sent}")
        lost = sorted(set(range(1, sent + 1)) - set(replies))
        assert not lost, f"pings lost: {lost} (sent every 10 ms from {started:.3f}; kill at {kill_wall:.3f})"
        assert sent == 500
        assert mastered - kill_wall < 2.0

        label = "00008ad828ce7949"
        new.process.wait_log(f"bridge {label} (br2): all 19 flows already correct, nothing sent (deep check)")
        after = switch_changes(hv1)
        assert after == before, f"the switch's flow table or meters changed at the takeover: {before} -> {after}"
        view = next(d for d in cluster.api(new, "GET", "/v1/datapaths")[1]["datapaths"]
                    if d["datapath_id"] == label)
        assert view["role"] == "master" and view["master"] == new.name and view["flow_mods_sent"] == 0, view
        _, body = cluster.api(new, "GET", "/v1/instances")
        assert sorted(i["instance"] for i in body["instances"]) == sorted(i.name for i in instances if i is not old)
        metrics = cluster.api(new, "GET", "/metrics")[1]["text"]
        assert f'lisp_role_changes_total{{bridge="{label}",role="master"}}' in metrics
        assert 'lisp_etcd_request_seconds_count{request="kv/txn"}' in metrics

        # The status page of any instance names each bridge's master and the instances alive.
        from .browser import Browser

        survivors = sorted(i.name for i in instances if i is not old)
        other = next(i for i in instances if i is not old and i is not new)
        with Browser(testbed, ov.controller_ns.ns) as b:
            def text(selector: str) -> str:  # read in one go: the page re-renders every poll
                return b.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", selector)
            b.driver.get(f"http://127.0.0.1:{other.api_port}/")
            b.wait(lambda d: "2 instances alive" in text("#summary"), what="the instances alive")
            for name in survivors:
                assert text(f'#summary [data-instance="{name}"]'), text("#summary")
            assert "(here)" in text(f'#summary [data-instance="{other.name}"]')
            hv1_card = f'#bridges [data-dpid="{label}"]'
            b.wait(lambda d: f"master\n{new.name}" in text(hv1_card).lower(), what="hv1's master on the page")
            assert "this instance: slave" in text(hv1_card)
            assert b.attr(hv1_card, "data-state") == "up", text(hv1_card)

        # The detector catches even a flow-mod that changes nothing: one
        # of our flows added again, as it is.
        flow = next(f for f in hv1.dump_flows() if "table=4" in f)
        hv1.ofctl("add-flow", hv1.bridge, _as_add(flow))
        assert switch_changes(hv1)["rev_flow_table"] > after["rev_flow_table"]


@pytest.mark.parametrize("write", ["added", "deleted"])
def test_a_master_frozen_past_its_lease_is_refused_by_the_switch(testbed, write):
    """hv1's master stops (SIGSTOP) in the middle of a sync, with its own
    lease check off (lab/serve.py), so that only the switch can stop it.
    Its lease runs out, another instance takes the bridge with a newer
    generation ID, which makes the old master's connection SLAVE; SIGCONT:
    the frozen master writes without asking the switch first (no role
    request per write), the switch refuses the write (OFPBRC_IS_SLAVE),
    and the flows are the new master's. The write is a mapping `added`
    (new flows only: plain flow-mods) or `deleted` (a bundle)."""
    with three(testbed, hooks=("--no-lease-guard",)) as (ov, cluster):
        hv1 = ov.hypervisors[0]
        old = by_port(cluster, switch_master(hv1))
        label = "00008ad828ce7949"
        generation = next(d for d in cluster.api(old, "GET", "/v1/datapaths")[1]["datapaths"]
                          if d["datapath_id"] == label)["generation"]
        mapping = {"iid": 1000, "eid": "10.2.0.0/16", "rlocs": ["192.168.1.252"]}
        if write == "deleted":
            assert cluster.api(old, "POST", "/v1/mappings", mapping)[0] == 201
            wait_until(lambda: any("nw_dst=10.2.0.0/16" in f for f in hv1.dump_flows()), timeout=10,
                       what="the mapping on hv1")

        # A write through the master: it is stored in etcd, then the
        # master's sync of hv1 stops the process (the trigger file).
        old.trigger.write_text("")
        answers = []
        writer = threading.Thread(target=lambda: answers.append(
            cluster.api(old, "POST", "/v1/mappings", mapping) if write == "added"
            else cluster.api(old, "DELETE", "/v1/mappings/1000/10.2.0.0/16")))
        writer.start()
        old.process.wait_log("stopping in the sync of bridge")
        wait_until(lambda: switch_master(hv1) not in (None, old.of_port), timeout=10, interval=0.05,
                   what="another instance takes hv1's bridge")
        new = by_port(cluster, switch_master(hv1))
        # The new master has the change from etcd and puts it on the bridge.
        wait_until(lambda: any("nw_dst=10.2.0.0/16" in f for f in hv1.dump_flows()) == (write == "added"),
                   timeout=10, what="the stored change on hv1, by the new master")
        flows = sorted(_no_stats(hv1.dump_flows()))

        old.process.proc.send_signal(signal.SIGCONT)  # by its PID
        old.process.wait_log("resumed in the sync of bridge")
        old.process.wait_log("OFPBRC_IS_SLAVE (a newer master claimed it)")
        after = old.log().split("resumed in the sync")[-1].splitlines()
        refused = "flow-mods refused" if write == "added" else "bundle open failed"
        assert any(label in line and f"{refused}: OFPET_BAD_REQUEST/OFPBRC_IS_SLAVE" in line for line in after), \
            "\n".join(after)
        writer.join(30)
        time.sleep(1.0)  # room for any late write of the old master
        assert sorted(_no_stats(hv1.dump_flows())) == flows
        assert switch_master(hv1) == new.of_port
        print(f"\n{old.name} (generation {generation}) refused by the switch after {new.name} took over:\n"
              + "\n".join(line for line in old.log().splitlines() if "OFPBRC_IS_SLAVE" in line or "lease" in line))
        # The old instance comes back as an instance without bridges or
        # with new ones: never with the old generation.
        wait_until(lambda: "registered in etcd" in old.log().split("resumed in the sync")[-1], timeout=10,
                   what="the old master registered again")
        wait_spread(ov, cluster)


def ping_log(vm, dst: str, count: int, interval: float) -> tuple[int, dict[int, float], float]:
    """Ping from `vm`: (sent, {sequence number: time of its reply}, start time)."""
    started = time.time()
    out = vm.testbed.run(vm.ns, "ping", "-D", "-n", "-c", str(count), "-i", str(interval), "-W", "2", dst,
                         check=False, timeout=count * interval + 30).stdout
    replies = {int(m.group(2)): float(m.group(1)) for m in re.finditer(r"^\[([\d.]+)\].*icmp_seq=(\d+)", out, re.M)}
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
    return sent, replies, started


def _log_time(log: str, pattern: str) -> float:
    """The wall time of the first log line matching `pattern`."""
    import datetime

    for line in log.splitlines():
        if re.search(pattern, line):
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no log line matches {pattern!r}")


def _as_add(dumped: str) -> str:
    """A dumped flow as ovs-ofctl add-flow takes it."""
    return re.sub(r"\s*(duration|n_packets|n_bytes|idle_age|hard_age)=[^,\s]+,?", "", dumped).strip().rstrip(",")


def _no_stats(flows: list[str]) -> list[str]:
    return [_as_add(f) for f in flows]


def test_a_bulk_of_100000_through_one_instance_moves_no_bridge(testbed):
    """The instance that masters no bridge takes a bulk of 100,000; the
    two others apply it from etcd, their hubs busy for seconds, with a
    lease of 1 s: their leases are renewed from a native thread
    (store/lease.py), so neither loses a bridge while the bulk lands (no
    role change anywhere, the switch's masters unchanged), and the bulk is
    on both bridges when the answer returns."""
    n = 100_000
    with three(testbed, confirm_timeout=120.0) as (ov, cluster):
        masters = {hv.name: switch_master(hv) for hv in ov.hypervisors}
        writer = next(i for i in cluster.instances if i.of_port not in masters.values())

        def role_changes() -> dict[str, list[str]]:
            """Every instance's role change counters, and its role and generation of each bridge."""
            return {i.name: [line for line in cluster.api(i, "GET", "/metrics")[1]["text"].splitlines()
                             if line.startswith("lisp_role_changes_total{")] +
                    [f"{d['name']} {d['role']} {d['generation']}"
                     for d in cluster.api(i, "GET", "/v1/datapaths")[1]["datapaths"]]
                    for i in cluster.instances}
        before = role_changes()
        flows = {hv.name: mapcache_flows(hv) for hv in ov.hypervisors}
        bulk = {"mappings": [{"iid": 1000, "eid": f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32",
                              "rlocs": ["192.168.1.252"]} for i in range(n)]}
        started = time.monotonic()
        status, body = cluster.api(writer, "POST", "/v1/mappings/bulk", bulk, timeout=600)
        took = time.monotonic() - started
        assert status == 200, str(body)[:2000]
        assert sorted(x["status"] for x in body["bridges"]) == ["other-master", "other-master"], body["bridges"]
        assert [x["status"] for x in body["instances"]] == ["confirmed", "confirmed"], body["instances"]
        assert {hv.name: mapcache_flows(hv) - flows[hv.name] for hv in ov.hypervisors} == {"hv1": n, "hv2": n}
        assert role_changes() == before
        assert {hv.name: switch_master(hv) for hv in ov.hypervisors} == masters
        for i in cluster.instances:
            assert "etcd session lost" not in i.log() and "lease" not in _errors(i.log()), i.name
        print(f"\nbulk of {n} through {writer.name} in {took:.1f} s; no bridge moved")


def mapcache_flows(hv: Hypervisor) -> int:
    out = hv.ofctl("dump-aggregate", hv.bridge, f"table={T_MAPCACHE}")
    return int(re.search(r"flow_count=(\d+)", out).group(1))


def _errors(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if " ERROR " in line or " WARNING " in line)
