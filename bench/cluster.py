"""Benchmark: one change confirmed on 50 bridges, by three controllers on
etcd against one controller on SQLite, same run, same bridges.

    .venv/bin/python bench/cluster.py                         # 50 bridges, 200 changes
    .venv/bin/python bench/cluster.py --bridges 12 --changes 30   # a quick look

One ovs-vswitchd (userspace datapath) holds the bridges, every one holding
a map-cache of --table mappings. Measured through the REST API, from the
request until the answer (which comes once the bridges confirmed):

1. baseline: one `lisp-controller serve` on SQLite driving every bridge;
2. cluster: three instances on a three-member etcd cluster (lab/cluster.py),
   the bridges spread evenly (bridge i on instance i mod 3 only), every
   change written through instance A: its answer waits for A's bridges and
   for B's and C's (docs/etcd.rst, "A write answers once every
   controller's bridges hold it").

Prints p50 and p99 of each, their ratio, and where the cluster's time goes
(the controller's own stage timings). Needs root; sends traffic nowhere.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import IID, RLOC, config_text, eid, pct  # noqa: E402
from lab.cluster import LocalCluster, api_call, instance_config  # noqa: E402
from lab.etcd import free_ports  # noqa: E402
from lab.serve import ServeProcess  # noqa: E402
from lab.testbed import Testbed, wait_until  # noqa: E402

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
        """Bridge i to the controller targets[i % len(targets)], and only to it."""
        for i in range(self.count):
            self.hv.set_controllers(f"brb{i}", [targets[i % len(targets)]])

    def api(self, port: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
        return api_call(port, method, path, body, self.tb, self.ctl.ns, timeout=600)

    def wait_synced(self, ports: list[int]) -> None:
        """Until bridge i is connected to ports[i % n]'s controller and verified."""
        for i in range(self.count):
            port = ports[i % len(ports)]

            def synced() -> bool:
                d = self.api(port, "GET", f"/v1/datapaths/brb{i}")[1].get("datapath", {})
                return bool(d.get("connected")) and d.get("verified_ms") is not None
            wait_until(synced, timeout=300, interval=0.2, what=f"brb{i} synced")


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
        mine = [r["status"] for r in res.get("bridges", ()) if r["status"] != "not-connected"]
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
        b.wait_synced([api_port])
        return changes(b, api_port, args.changes, b.count, 0)
    finally:
        proc.close()


def run_cluster(b: Bridges, args) -> dict:
    """Three instances on etcd, the bridges spread over them, writes through A."""
    with LocalCluster(3, config=b.config, testbed=b.tb, api={"confirm_timeout": 60.0}) as cluster:
        ports = [i.api_port for i in cluster.instances]
        load_table(b, ports[0], args.table)
        b.connect([i.target for i in cluster.instances])
        b.wait_synced(ports)
        # Every instance has said what it holds: A's answers name B and C.
        wait_until(lambda: len(b.api(ports[0], "PUT", f"/v1/mappings/{IID}/{CHANGED}",
                                     {"rlocs": ["192.168.7.9"]})[1].get("instances", ())) == 2,
                   timeout=30, interval=0.2, what="A's writes answered for B and C")
        return changes(b, ports[0], args.changes, len(range(0, b.count, 3)), 2)


def failover(b: Bridges, args) -> dict | None:
    # ------------------------------------------------------------------
    # FAILOVER TIME DISTRIBUTION OVER 20 KILLS: not measured here yet.
    # OpenFlow roles (store/membership.py, docs/etcd.rst "Bridge
    # ownership") are now in the tree; to do: every bridge connected to all
    # three instances, kill -9 the master of a bridge 20 times (restarting
    # it in between) and measure, from the kill until a new master holds
    # the bridge (its role reply), p50 / p99 / max, plus flow-mods sent to
    # bridges whose flows were right (should be 0).
    # ------------------------------------------------------------------
    return None


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
    args = parser.parse_args(argv)
    with Testbed() as tb:
        b = Bridges(tb, args.bridges)
        print(f"{args.bridges} bridges; baseline: one controller on SQLite", flush=True)
        base = run_sqlite(b, args)
        print(f"  p50 {base['p50_ms']:.1f} ms, p99 {base['p99_ms']:.1f} ms", flush=True)
        print("three controllers on etcd, the bridges spread over them", flush=True)
        three = run_cluster(b, args)
        print(f"  p50 {three['p50_ms']:.1f} ms, p99 {three['p99_ms']:.1f} ms", flush=True)
        kills = failover(b, args)
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
    print("failover time distribution over 20 kills: " + ("not measured yet (see failover())"
                                                          if kills is None else str(kills)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
