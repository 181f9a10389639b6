"""Benchmark: one change confirmed on 50 bridges, by three controllers on
etcd against one controller on SQLite, same run, same bridges; then the
failover time over 20 kills of a bridge's master.

    .venv/bin/python bench/cluster.py                         # 50 bridges, 200 changes, 20 kills
    .venv/bin/python bench/cluster.py --bridges 12 --changes 30 --kills 5   # a quick look

One ovs-vswitchd (userspace datapath) holds the bridges, every one holding
a map-cache of --table mappings. Measured through the REST API, from the
request until the answer (which comes once the bridges confirmed):

1. baseline: one `lisp-controller serve` on SQLite driving every bridge;
2. cluster: three instances on a three-member etcd cluster (lab/cluster.py),
   every bridge connected to all three, etcd naming one master per bridge
   (OpenFlow roles, docs/etcd.rst "Bridge ownership"), every change written
   through instance A: its answer waits for the bridges A masters and for
   B's and C's (docs/etcd.rst, "A write answers once every controller's
   bridges hold it").

Prints p50 and p99 of each, their ratio, and where the cluster's time goes
(the controller's own stage timings).

3. failover, on the same cluster: `kill -9` of brb0's master, --kills
   times, the killed instance restarted and the bridges spread evenly
   again before the next kill. Measured from the kill: until a survivor's
   MASTER request for brb0 is accepted by the switch (its log line, which
   it writes on the switch's role reply), until every bridge the killed
   instance mastered has a new master so (about a third of them), and
   until the switch's Controller table and a survivor's /v1/datapaths say
   so. The switch's own count of flow table changes and meter sets
   (``ovs-appctl coverage/show``) over all the kills, restarts and
   hand-overs: 0 when no takeover sent anything to bridges whose flows
   were right.

Needs root; sends traffic nowhere (tests/test_roles.py pings through a
failover).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import re
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import IID, RLOC, config_text, eid, pct  # noqa: E402
from lab.cluster import (FAST_ELECTION, Instance, LocalCluster, api_call, instance_config,  # noqa: E402
                         switch_changes, switch_roles)
from lab.etcd import free_ports  # noqa: E402
from lab.serve import ServeProcess  # noqa: E402
from lab.processes import wait_until  # noqa: E402
from lab.testbed import Testbed  # noqa: E402
from lisp_controller.config import ClusterSettings  # noqa: E402

CHANGED = "10.200.0.0/16"


class Bridges:
    """`count` VM bridges in one ovs-vswitchd, in a testbed whose controller
    namespace runs whichever controllers are measured."""

    def __init__(self, tb: Testbed, count: int):
        self.tb, self.count = tb, count
        self.ctl = tb.add_controller()
        segment = tb.add_segment("wan", "192.168.0.0/16")
        self.hv = tb.add_hypervisor("hv1", "192.168.1.1", 16, segment, 0xBE00, bridge="brb0", tunnel_port="lisp0")
        for i in range(1, count):
            self.hv.add_vm_bridge(f"brb{i}", 0xBE00 + i, f"lisp{i}", "lisp-gpe", local_ip=f"192.168.2.{i}")
        self.config = tb.tmpdir / "bridges.toml"
        self.config.write_text(config_text(self.ctl.address, count))

    def connect(self, targets) -> None:
        """Every bridge to every controller in `targets`."""
        for i in range(self.count):
            self.hv.set_controllers(f"brb{i}", list(targets))

    def api(self, port: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
        return api_call(port, method, path, body, self.tb, self.ctl.ns, timeout=600)

    def wait_synced(self, port: int) -> None:
        """Until every bridge is connected to the controller on `port`, and
        verified if that controller writes to it (a slave never does)."""
        def synced() -> bool:
            views = self.api(port, "GET", "/v1/datapaths")[1]["datapaths"]
            return len([d for d in views if d.get("connected") and (
                d.get("role") == "slave" or d.get("verified_ms") is not None)]) == self.count
        wait_until(synced, timeout=300, interval=0.2, what="every bridge synced")

    def masters(self) -> dict[str, int | None]:
        """The switch's word: the OpenFlow port of each bridge's master."""
        roles = switch_roles(self.hv)
        return {f"brb{i}": next((p for p, r in roles.get(f"brb{i}", {}).items() if r == "master"), None)
                for i in range(self.count)}

    def wait_spread(self, cluster: LocalCluster, timeout: float = 120) -> dict[str, int]:
        """Until every bridge has one master that the switch and etcd agree
        on, every instance is connected to every bridge, and no instance
        masters two more than another; the switch's masters."""
        found: dict[str, int] = {}

        def spread() -> bool:
            masters = self.masters()
            if None in masters.values():
                return False
            body = cluster.api(cluster.instances[0], "GET", "/v1/instances")[1]
            alive = body.get("instances", [])
            if len(alive) != len(cluster.instances) or any(len(i["connected"]) != self.count for i in alive):
                return False
            counts = [i["masters"] for i in alive]
            if sum(counts) != self.count or max(counts) - min(counts) > 1:
                return False
            names = {i.of_port: i.name for i in cluster.instances}
            views = self.api(cluster.instances[0].api_port, "GET", "/v1/datapaths")[1]["datapaths"]
            if {d["name"]: d["master"] for d in views} != {b: names[p] for b, p in masters.items()}:
                return False
            found.update(masters)
            return True
        wait_until(spread, timeout=timeout, interval=0.2, what="one master per bridge, spread evenly")
        return found


def load_table(b: Bridges, port: int, table: int) -> None:
    status, out = b.api(port, "POST", "/v1/mappings/bulk", {"mappings": [
        {"iid": IID + 1, "eid": eid(i), "rlocs": [RLOC]} for i in range(table)]})
    assert status == 200, str(out)[:500]


def changes(b: Bridges, port: int, count: int, own: int, instances: int) -> dict:
    """`count` changes of one mapping through the API on `port`; each must
    be confirmed by that controller's `own` bridges and by every other
    controller (`instances` of them)."""
    latencies, stages = [], {}
    for j in range(count):
        # One mapping, through the bulk route: its answer has the stage timings.
        body = {"mappings": [{"iid": IID, "eid": CHANGED, "rlocs": ["192.168.7.8" if j % 2 else "192.168.7.9"]}]}
        started = time.perf_counter()
        status, res = b.api(port, "POST", "/v1/mappings/bulk", body)
        latencies.append((time.perf_counter() - started) * 1000)
        mine = [r["status"] for r in res.get("bridges", ()) if r["status"] not in ("not-connected", "other-master")]
        others = [r["status"] for r in res.get("instances", ())]
        if status not in (200, 201) or mine != ["confirmed"] * own or others != ["confirmed"] * instances:
            raise RuntimeError(f"change {j} not confirmed everywhere: {status} {str(res)[:800]}")
        for k, v in res.get("timings", {}).items():
            stages.setdefault(k, []).append(v)
    return {"p50_ms": statistics.median(latencies), "p99_ms": pct(latencies, 0.99), "max_ms": max(latencies),
            "bridges_of_writer": own,
            "stages_ms": {k: statistics.median(v) for k, v in stages.items()}}


def run_sqlite(b: Bridges, args) -> dict:
    """One controller on SQLite driving every bridge."""
    of_port, api_port = free_ports(2, b.ctl.ns)
    path = b.tb.tmpdir / "sqlite.toml"
    path.write_text(instance_config(b.config.read_text(), b.ctl.address, of_port, api_port,
                                    f'[store]\npath = "{b.tb.tmpdir / "store.db"}"\n'))
    proc = ServeProcess(path, b.tb.tmpdir / "sqlite.log", spawn=functools.partial(b.tb.spawn, b.ctl.ns)).start()
    try:
        wait_until(lambda: _answers(b, api_port), timeout=60, what="the SQLite controller's API")
        load_table(b, api_port, args.table)
        b.connect([(b.ctl.address, of_port)])
        b.wait_synced(api_port)
        return changes(b, api_port, args.changes, b.count, 0)
    finally:
        proc.close()


def run_cluster(b: Bridges, args) -> tuple[dict, dict]:
    """Three instances on etcd, every bridge on all three, writes through
    A; then the failovers."""
    fast = args.lease_ttl < 2
    with LocalCluster(3, config=b.config, testbed=b.tb, api={"confirm_timeout": 60.0}, lease_ttl=args.lease_ttl,
                      etcd_args=FAST_ELECTION if fast else ()) as cluster:
        a = cluster.instances[0]
        load_table(b, a.api_port, args.table)
        b.connect([i.target for i in cluster.instances])
        for instance in cluster.instances:
            b.wait_synced(instance.api_port)
        masters = b.wait_spread(cluster)
        own = sum(1 for port in masters.values() if port == a.of_port)
        # Every instance has said what it holds: A's answers name B and C.
        wait_until(lambda: len(b.api(a.api_port, "PUT", f"/v1/mappings/{IID}/{CHANGED}",
                                     {"rlocs": ["192.168.7.9"]})[1].get("instances", ())) == 2,
                   timeout=30, interval=0.2, what="A's writes answered for B and C")
        measured = changes(b, a.api_port, args.changes, own, 2)
        print(f"  p50 {measured['p50_ms']:.1f} ms, p99 {measured['p99_ms']:.1f} ms", flush=True)
        print(f"failover: kill -9 of brb0's master, {args.kills} times (lease_ttl {args.lease_ttl} s)", flush=True)
        return measured, failover(b, cluster, args.kills)


def failover(b: Bridges, cluster: LocalCluster, kills: int) -> dict:
    """`kills` times: kill -9 of brb0's master, the times until the others
    hold its bridges (see the module's docstring), then the killed
    instance restarted and the bridges spread again."""
    by_port = {i.of_port: i for i in cluster.instances}
    before = switch_changes(b.hv)
    rows = []
    for k in range(kills):
        masters = b.wait_spread(cluster)
        victim = by_port[masters["brb0"]]
        orphans = sorted(name for name, port in masters.items() if port == victim.of_port)
        survivors = [i for i in cluster.instances if i is not victim]
        killed_wall, killed = time.time(), time.monotonic()
        victim.process.stop(signal.SIGKILL)  # by its PID
        switch_at = api_at = None
        while switch_at is None or api_at is None:
            now = time.monotonic() - killed
            if now > 30:
                raise RuntimeError(f"kill {k + 1}: {victim.name}'s bridges not taken over within 30 s")
            if switch_at is None:
                seen = b.masters()
                if all(seen[o] not in (None, victim.of_port) for o in orphans):
                    switch_at = now
            if api_at is None:
                views = b.api(survivors[0].api_port, "GET", "/v1/datapaths")[1]["datapaths"]
                said = {d["name"]: d["master"] for d in views}
                if all(said.get(o) not in (None, victim.name) for o in orphans):
                    api_at = now
            time.sleep(0.02)
        accepted = _mastered_after(survivors, killed_wall)
        missing = [o for o in orphans if o not in accepted]
        if missing:
            raise RuntimeError(f"kill {k + 1}: no MASTER logged for {missing}")
        row = {"victim": victim.name, "bridges": len(orphans), "brb0_s": accepted["brb0"] - killed_wall,
               "all_s": max(accepted[o] for o in orphans) - killed_wall, "switch_s": switch_at, "api_s": api_at}
        rows.append(row)
        print(f"  kill {k + 1:2}: {victim.name} ({row['bridges']} bridges): brb0 MASTER after {row['brb0_s']:.2f} s, "
              f"all {row['all_s']:.2f} s; switch table {row['switch_s']:.2f} s, API {row['api_s']:.2f} s", flush=True)
        cluster.restart(victim)
    b.wait_spread(cluster)
    after = switch_changes(b.hv)
    return {"kills": rows, "switch_changes": {k: after[k] - before[k] for k in before}}


def _mastered_after(instances: list[Instance], since: float) -> dict[str, float]:
    """Per bridge, the wall time of the first "is MASTER" line after `since`
    in the logs of `instances` (written on the switch's role reply)."""
    first: dict[str, float] = {}
    for instance in instances:
        for m in re.finditer(r"^(\S+ \S+) INFO .*\((brb\d+)\): instance \w+ is MASTER", instance.log(), re.M):
            at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at >= since and at < first.get(m.group(2), float("inf")):
                first[m.group(2)] = at
    return first


def distribution(values: list[float]) -> str:
    values = sorted(values)
    return (f"min {values[0]:.2f}  p50 {statistics.median(values):.2f}  p90 {pct(values, 0.9):.2f}  "
            f"max {values[-1]:.2f}")


def _answers(b: Bridges, port: int) -> bool:
    try:
        b.api(port, "GET", "/v1/health")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/cluster.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bridges", type=int, default=50)
    parser.add_argument("--changes", type=int, default=200, help="changes measured per setup (default 200)")
    parser.add_argument("--table", type=int, default=1000, help="mappings every bridge holds (default 1000)")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 of brb0's master (default 20; 0: writes only)")
    parser.add_argument("--lease-ttl", type=int, default=ClusterSettings.lease_ttl,
                        help="[cluster] lease_ttl (default 1, the controller's; below 2 the etcd members run "
                             "with a 500 ms election timeout, lab/cluster.py's FAST_ELECTION, else with etcd's "
                             "defaults: docs/etcd.rst, \"Failover time\")")
    args = parser.parse_args(argv)
    with Testbed() as tb:
        b = Bridges(tb, args.bridges)
        print(f"{args.bridges} bridges; baseline: one controller on SQLite", flush=True)
        base = run_sqlite(b, args)
        print(f"  p50 {base['p50_ms']:.1f} ms, p99 {base['p99_ms']:.1f} ms", flush=True)
        print("three controllers on etcd, every bridge on all three, one master each", flush=True)
        three, kills = run_cluster(b, args)
    print(f"\none change confirmed on {args.bridges} bridges ({args.changes} changes, {args.table} mappings "
          "on every bridge; 2 cores, everything on this machine)\n")
    print(f"{'':34}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for label, r in ((f"1 controller, SQLite, {args.bridges} bridges", base),
                     (f"3 controllers, etcd, {three['bridges_of_writer']}+others", three)):
        print(f"{label:34}{r['p50_ms']:10.1f}{r['p99_ms']:10.1f}{r['max_ms']:10.1f}")
    print(f"{'ratio (etcd / SQLite)':34}{three['p50_ms'] / base['p50_ms']:9.1f}x{three['p99_ms'] / base['p99_ms']:9.1f}x")
    for label, r in (("SQLite", base), ("etcd", three)):
        print(f"stages, {label} (ms, medians; instances counts from where bridges starts): " +
              ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in r["stages_ms"].items()))
    rows = kills["kills"]
    if not rows:
        return 0
    print(f"\nfailover over {len(rows)} kills -9 of brb0's master (lease_ttl {args.lease_ttl} s; "
          f"{statistics.mean(r['bridges'] for r in rows):.1f} bridges on the killed instance), seconds from the kill:")
    for key, label in (("brb0_s", "brb0's new MASTER accepted"), ("all_s", "all its bridges' MASTER accepted"),
                       ("switch_s", "the switch's Controller table says so"), ("api_s", "a survivor's API says so")):
        print(f"  {label:40}{distribution([r[key] for r in rows])}")
    print(f"  changes of the switch's flow table and meters over the kills, restarts and hand-overs: "
          f"{kills['switch_changes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
