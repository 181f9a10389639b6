"""Three controllers on one etcd store (docs/etcd.rst), all real: three
`lisp-controller serve` processes and three etcd members (lab/cluster.py),
the lab's two hypervisors on real OVS (lab/scenario.py).

hv1's bridge is connected to instance A only, hv2's to C only, and the
writes go through B, which drives no bridge: whatever is on hv1 and hv2
came through the store. (Which instance drives which bridge when a bridge
is connected to all of them is OpenFlow roles' business, not this file's.)
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

from lab.cluster import Instance, LocalCluster, switch_changes
from lab.scenario import Topology, build, wait_programmed
from lab.nodes import Hypervisor
from lab.processes import wait_until
from lab.testbed import Testbed
from lisp_controller.pipeline.compiler import T_MAPCACHE

ROOT = Path(__file__).resolve().parent.parent
BLOG = ROOT / "configs" / "blog-two-hypervisors.toml"
PREFIX = "/lisp-controller/"  # LocalCluster's default


@contextlib.contextmanager
def three(testbed: Testbed, cluster_options: dict | None = None, **api) -> Iterator[tuple[Topology, LocalCluster]]:
    """hv1 on A, hv2 on C, nothing on B; every instance knows the others
    (a write through B is answered for A and C). `cluster_options` go to
    LocalCluster (lease, etcd flags)."""
    ov = build(testbed, BLOG)
    with LocalCluster(3, config=BLOG, testbed=testbed, api=api, **(cluster_options or {})) as cluster:
        a, b, c = cluster.instances
        hv1, hv2 = ov.hypervisors
        hv1.set_controllers(hv1.bridge, [a.target])
        hv2.set_controllers(hv2.bridge, [c.target])
        wait_programmed(ov)
        wait_until(lambda: len(put(cluster, b, "10.250.0.0/16")[1].get("instances", ())) == 2, timeout=20,
                   interval=0.2, what="B's writes answered for A and C")
        yield ov, cluster
        for instance in cluster.instances:
            assert "Traceback" not in instance.process.log(), instance.process.log()[-3000:]


def put(cluster: LocalCluster, instance: Instance, eid: str, rloc: str = "192.168.1.252") -> tuple[int, dict]:
    return cluster.api(instance, "PUT", f"/v1/mappings/1000/{eid}", {"rlocs": [rloc]})


def has_flow(hv: Hypervisor, eid: str, rloc: str | None = None) -> bool:
    return any(f"nw_dst={eid}" in f and (rloc is None or f"{rloc}->tun_dst" in f)
               for f in hv.dump_flows(table=T_MAPCACHE))


def mapcache_flows(hv: Hypervisor) -> int:
    out = hv.ofctl("dump-aggregate", hv.bridge, f"table={T_MAPCACHE}")
    return int(re.search(r"flow_count=(\d+)", out).group(1))


def role(cluster: LocalCluster, instance: Instance, hv: Hypervisor) -> str | None:
    """`instance`'s OpenFlow role on `hv`'s bridge, as its API says."""
    views = cluster.api(instance, "GET", "/v1/datapaths")[1]["datapaths"]
    return next((d["role"] for d in views if d["name"] == hv.bridge), None)


def statuses(body: dict) -> list[str]:
    return sorted(i["status"] for i in body["instances"])


def test_a_write_through_b_is_on_the_bridges_of_a_and_c_when_b_answers(testbed):
    """At the moment B's answer arrives, the flow is on hv1 (A's) and hv2
    (C's); an instance that does not confirm in time is named in the
    answer, which comes at confirm_timeout; a killed one stops counting
    once its lease is gone. A lease of 2 s (etcd's default timings), so
    that an instance frozen for confirm_timeout (1.5 s) is still alive:
    late, not gone."""
    with three(testbed, {"lease_ttl": 2, "etcd_args": ()}, confirm_timeout=1.5) as (ov, cluster):
        a, b, c = cluster.instances
        hv1, hv2 = ov.hypervisors
        took = []
        for i in range(10):
            eid, rloc = f"10.{20 + i}.0.0/16", f"192.168.1.{200 + i}"
            started = time.monotonic()
            status, body = put(cluster, b, eid, rloc)
            took.append(time.monotonic() - started)
            assert has_flow(hv1, eid, rloc) and has_flow(hv2, eid, rloc), (i, body)
            assert status == 201 and statuses(body) == ["confirmed", "confirmed"], body
            assert {r["status"] for r in body["bridges"]} == {"not-connected"}  # B drives none itself
        # A bigger change, which takes the other instances longer: all of it is there.
        base = {hv.name: mapcache_flows(hv) for hv in ov.hypervisors}
        status, body = cluster.api(b, "POST", "/v1/mappings/bulk", _bulk(70, 3000))
        got = {hv.name: mapcache_flows(hv) - base[hv.name] for hv in ov.hypervisors}
        assert status == 200 and got == {"hv1": 3000, "hv2": 3000}, (got, statuses(body))
        # A change of a mapping and a delete, the same way (through A: hv2 is C's).
        assert cluster.api(a, "PUT", "/v1/mappings/1000/10.20.0.0/16", {"rlocs": ["192.168.1.99"]})[0] == 200
        assert has_flow(hv2, "10.20.0.0/16", "192.168.1.99")
        assert cluster.api(a, "DELETE", "/v1/mappings/1000/10.21.0.0/16")[0] == 200
        assert not has_flow(hv2, "10.21.0.0/16")
        print(f"\nwrites through B confirmed on A's and C's bridges: median {sorted(took)[5] * 1000:.0f} ms")

        # A frozen: the answer comes after confirm_timeout and says so; C has it.
        os.kill(a.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, body = put(cluster, b, "10.40.0.0/16")
            elapsed = time.monotonic() - started
            assert has_flow(hv2, "10.40.0.0/16") and not has_flow(hv1, "10.40.0.0/16")
        finally:
            os.kill(a.pid, signal.SIGCONT)
        assert status == 201 and 1.4 < elapsed < 3, (elapsed, body)
        late = [i for i in body["instances"] if i["status"] != "confirmed"]
        assert len(late) == 1 and late[0]["status"] == "timeout" and late[0]["instance"] == a.name, body
        assert late[0]["applied"] < next(i["applied"] for i in body["instances"] if i["status"] == "confirmed")
        wait_until(lambda: has_flow(hv1, "10.40.0.0/16"), timeout=10, what="A catches up when it runs again")
        assert "not confirmed by every controller's bridges within 1.5 s" in b.process.log()

        # A killed: counted until its lease ends, then no longer waited for.
        a.process.stop(signal.SIGKILL)
        time.sleep(cluster.lease_ttl + 1)
        started = time.monotonic()
        status, body = put(cluster, b, "10.41.0.0/16")
        assert status == 201 and statuses(body) == ["confirmed"] and time.monotonic() - started < 1, body
        assert has_flow(hv2, "10.41.0.0/16")
        # Back: it loads the store, reprograms hv1, and counts again.
        cluster.restart(a)
        wait_until(lambda: has_flow(hv1, "10.41.0.0/16"), timeout=20, what="A back on hv1")
        wait_until(lambda: statuses(put(cluster, b, "10.42.0.0/16")[1]) == ["confirmed", "confirmed"],
                   timeout=10, interval=0.2, what="A counted again")
        assert has_flow(hv1, "10.42.0.0/16")


def _bulk(first: int, count: int) -> dict:
    return {"mappings": [{"iid": 1000, "eid": f"10.{first + i // 65536}.{i // 256 % 256}.{i % 256}/32",
                          "rlocs": ["192.168.1.252"]} for i in range(count)]}


def _etcd_keys(cluster: LocalCluster, under: str) -> list[str]:
    out = cluster.testbed.run(cluster.ns, "etcdctl", f"--endpoints={','.join(cluster.etcd.endpoints)}", "get",
                              "--prefix", "--keys-only", PREFIX + under, env={"ETCDCTL_API": "3", "PATH": os.environ["PATH"]})
    return [line for line in out.stdout.splitlines() if line.strip()]


def _api_total(cluster: LocalCluster, instance: Instance) -> int:
    return cluster.api(instance, "GET", "/v1/mappings?source=api&limit=1")[1]["total"]


def test_a_bulk_of_100000_through_b_lands_whole_on_a_and_c_or_not_at_all(testbed):
    """When B answers a bulk of 100,000, all of it is on A's and C's
    bridges. B killed (kill -9) while staging the next one: none of it
    anywhere. Killed at a random moment: all or nothing, the same on every
    instance and bridge."""
    n = 100_000
    with three(testbed, confirm_timeout=120.0) as (ov, cluster):
        a, b, c = cluster.instances
        hv1, hv2 = ov.hypervisors
        base = {hv.name: mapcache_flows(hv) for hv in ov.hypervisors}
        api_base = _api_total(cluster, b)
        started = time.monotonic()
        status, body = cluster.api(b, "POST", "/v1/mappings/bulk", _bulk(64, n))
        counts = {hv.name: mapcache_flows(hv) - base[hv.name] for hv in ov.hypervisors}
        assert status == 200 and statuses(body) == ["confirmed", "confirmed"], str(body)[:2000]
        assert counts == {"hv1": n, "hv2": n}, counts
        print(f"\nbulk of {n} through B on A's and C's bridges when B answered: "
              f"{time.monotonic() - started:.1f} s")
        total = api_base + n

        def killed_during(second_bulk: dict, when) -> object:
            """POST the bulk to B, kill -9 B when `when()` says so: B's
            answer, or the OSError of a connection that broke."""
            answer: list = []
            sender = threading.Thread(target=lambda: answer.append(_try(cluster.api, b, "POST",
                                                                        "/v1/mappings/bulk", second_bulk)))
            sender.start()
            try:
                when()
            finally:
                b.process.stop(signal.SIGKILL)
                sender.join(60)
            assert answer, "the sender hangs"
            return answer[0]

        # Killed while its chunks are staged: nothing of it, anywhere.
        answer = killed_during(_bulk(96, n), lambda: wait_until(lambda: _etcd_keys(cluster, "staging/"), timeout=60,
                                                       interval=0.02, what="B staging the bulk"))
        assert isinstance(answer, OSError), answer  # no answer: the connection broke
        time.sleep(2)  # what the watches would deliver, they have delivered
        assert _api_total(cluster, a) == _api_total(cluster, c) == total
        assert {hv.name: mapcache_flows(hv) - base[hv.name] for hv in ov.hypervisors} == {"hv1": n, "hv2": n}
        cluster.restart(b)
        assert _api_total(cluster, b) == total

        # Killed at a random moment (the commit included): all or nothing, everywhere alike.
        rng = random.Random(17)
        for attempt in range(3):
            delay = rng.uniform(0.5, 4.0)
            answer = killed_during(_bulk(128 + 32 * attempt, n), lambda: time.sleep(delay))
            cluster.restart(b)
            got = _api_total(cluster, b) - total
            assert got == n if isinstance(answer, tuple) and answer[0] == 200 else got in (0, n), (got, answer)
            total += got
            wait_until(lambda: _api_total(cluster, a) == _api_total(cluster, c) == total, timeout=60,
                       what="A and C hold what the store holds")
            expected = total - api_base
            wait_until(lambda: all(mapcache_flows(hv) - base[hv.name] == expected for hv in ov.hypervisors),
                       timeout=120, interval=0.5, what=f"{expected} flows on both bridges")
            print(f"B killed {delay:.1f} s into a bulk: {'all' if got else 'none'} of it")
        # The staged chunks of the killed writers are collected once their leases end.
        wait_until(lambda: not _etcd_keys(cluster, "staging/"), timeout=30, what="staging keys gone")


def _try(call, *args):
    try:
        return call(*args)
    except OSError as e:
        return e


def test_etcd_members_lost_and_back_under_three_controllers(testbed):
    """One member of three killed: writes through B go on, on A's and C's
    bridges when answered. Two: 503 with the reason from every instance;
    every instance loses its lease and gives up its bridge (SLAVE, and
    /v1/health names the lease); VMs keep pinging, flows and reads
    unchanged. Both back: each bridge has its master again, which sends
    nothing to a bridge whose flows are right (the switch counts no
    change), writes resume and nothing acknowledged is lost."""
    with three(testbed, confirm_timeout=5.0) as (ov, cluster):
        a, b, c = cluster.instances
        hv1, hv2 = ov.hypervisors
        vm1, vm2 = ov.vms
        vm1.wait_reachable(vm2.ip)
        acknowledged = ["10.250.0.0/16"]

        def write(eid: str) -> tuple[int, dict]:
            status, body = put(cluster, b, eid)
            if status in (200, 201):
                acknowledged.append(eid)
            return status, body

        leader = cluster.etcd.leader() or 0
        cluster.etcd.kill(leader)  # the worst one to lose
        for i in range(5):
            status, body = write(f"10.60.{i}.0/24")
            assert status == 201 and statuses(body) == ["confirmed", "confirmed"], body
            assert has_flow(hv1, f"10.60.{i}.0/24") and has_flow(hv2, f"10.60.{i}.0/24")

        other = next(i for i, m in enumerate(cluster.etcd.members) if m.running())
        cluster.etcd.kill(other)
        last = next(i for i, m in enumerate(cluster.etcd.members) if m.running())
        wait_until(lambda: not cluster.etcd.sees_leader(last), timeout=10, what="the last member sees no leader")
        before = {hv.name: sorted(hv.dump_flows()) for hv in ov.hypervisors}
        changes = {hv.name: switch_changes(hv) for hv in ov.hypervisors}
        pings: list = []  # 6 s: past every lease's end
        pinger = threading.Thread(target=lambda: pings.append(vm1.ping(vm2.ip, count=600, interval=0.01)))
        pinger.start()
        try:
            for instance in cluster.instances:
                status, body = put(cluster, instance, "10.61.0.0/16")
                assert status == 503, body
                assert "no leader" in body["error"]["message"] and "nothing was changed" in body["error"]["message"]
                assert _api_total(cluster, instance) == len(acknowledged)
                assert "no leader" in cluster.api(instance, "GET", "/v1/health")[1]["store_error"]
            # No lease can be renewed: each instance gives its bridge up (and nobody can take it).
            for instance, hv in ((a, hv1), (c, hv2)):
                wait_until(lambda: role(cluster, instance, hv) == "slave", timeout=cluster.lease_ttl + 3,
                           interval=0.1, what=f"{instance.name} giving up {hv.name}'s bridge")
            for instance in cluster.instances:
                status, health = cluster.api(instance, "GET", "/v1/health")
                assert status == 503 and "lease" in health["lease_problem"], health
                assert health["lease_problem"] in health["problems"]
        finally:
            pinger.join(60)
        sent, received = pings[0]
        assert sent == received == 600, pings
        assert {hv.name: sorted(hv.dump_flows()) for hv in ov.hypervisors} == before

        cluster.etcd.restart(leader)
        cluster.etcd.restart(other)
        cluster.etcd.wait_healthy()
        # Ownership again: each bridge's master takes it back, checks it, and sends nothing.
        for instance, hv in ((a, hv1), (c, hv2)):
            wait_until(lambda: role(cluster, instance, hv) == "master", timeout=30, interval=0.1,
                       what=f"{instance.name} master of {hv.name}'s bridge again")
        for instance in cluster.instances:
            wait_until(lambda: cluster.api(instance, "GET", "/v1/health")[1]["lease_problem"] is None, timeout=10,
                       what=f"{instance.name} holding a lease again")
        assert {hv.name: switch_changes(hv) for hv in ov.hypervisors} == changes
        assert {hv.name: sorted(hv.dump_flows()) for hv in ov.hypervisors} == before
        status, body = write("10.62.0.0/16")
        assert status == 201 and has_flow(hv1, "10.62.0.0/16") and has_flow(hv2, "10.62.0.0/16"), body
        assert statuses(body) == ["confirmed", "confirmed"], body
        assert cluster.api(b, "GET", "/v1/health")[1]["store_error"] is None
        for instance in cluster.instances:
            stored = {m["eid"] for m in cluster.api(instance, "GET", "/v1/mappings?source=api&limit=1000")[1]["mappings"]}
            assert stored == set(acknowledged), instance.name
