"""Benchmark: lisp-controller against ovs-ofctl on the same bridge, same run.

    bash scripts/bench.sh                    # 10k and 100k mappings, 5 runs each
    bash scripts/bench.sh --sizes 1000 --runs 2 --fanout 1,3   # a quick look
    bash scripts/bench.sh --million          # adds 1,000,000 mappings

One ovs-vswitchd (userspace datapath) holds up to 50 bridges; the real
controller process programs them. Measured, with medians over interleaved
runs (controller first in even runs, ovs-ofctl first in odd ones):

1. bulk: N mappings in one REST bulk request until every barrier is back,
   against `ovs-ofctl --bundle add-flows` of the same flows (rendered by our
   own renderer) into the same bridge; plus the controller's stage times;
2. reconnect: the bridge holding those N flows reconnects: flow-mods sent
   and time until the controller has verified it, against
   `ovs-ofctl dump-flows`;
3. fan-out: one mapping change confirmed on 1, 10, 50 bridges (p50, p99);
4. memory: controller RSS per mapping, and the SQLite file size.

Prints a table and writes JSON (bench/results/latest.json unless --json).
Needs root (network namespaces); sends traffic nowhere.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import raw  # noqa: E402
from lisp_controller.pipeline.compiler import mapping_flow  # noqa: E402
from lisp_controller.pipeline.flows import encoded  # noqa: E402
from lisp_controller.cli.api import ApiClient  # noqa: E402
from lisp_controller.config import load_config  # noqa: E402
from lisp_controller.pipeline.flows import render  # noqa: E402
from lisp_controller.model import Mapping  # noqa: E402
from lab.scenario import ControllerProcess, Topology  # noqa: E402
from lab.processes import wait_until  # noqa: E402
from lab.testbed import Testbed  # noqa: E402

IID = 4242
RLOC = "192.168.7.7"


def eid(i: int) -> str:
    return f"{10 + i // 16777216 % 100}.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"


def bulk_body(n: int) -> bytes:
    return json.dumps({"mappings": [{"iid": IID, "eid": eid(i), "rlocs": [RLOC]} for i in range(n)]}).encode()


def baseline_flows(n: int) -> str:
    """The same map-cache flows, as our renderer writes them for ovs-ofctl."""
    lines = []
    for i in range(n):
        m = Mapping.parse({"iid": IID, "eid": eid(i), "rlocs": [RLOC]}, source="api")
        lines.append(render(mapping_flow(m)))
    return "\n".join(lines) + "\n"


def baseline_flow_mods(n: int) -> list[bytes]:
    """The same flows as OFPFC_ADD bytes, for the bare client (raw.py)."""
    return [encoded(mapping_flow(Mapping.parse({"iid": IID, "eid": eid(i), "rlocs": [RLOC]}, source="api")))[1]
            for i in range(n)]


def config_text(ctl_address: str, bridges: int, store_section: str = "") -> str:
    """`store_section`: a [store] (and [cluster]) TOML; none: the SQLite
    store the controller is given with --store."""
    parts = [store_section,
             f'[controller]\nlisten = "{ctl_address}"\nport = 6653\n',
             "[api]\nconfirm_timeout = 600.0\nmax_body_bytes = 1073741824\n"]
    for i in range(bridges):
        rloc = "192.168.1.1" if i == 0 else f"192.168.2.{i}"
        parts.append(f'[[bridge]]\ndatapath_id = "{0xBE00 + i:016x}"\nname = "brb{i}"\n'
                     f'rloc = "{rloc}"\ntunnel_port = "lisp{i}"\n')
    return "\n".join(parts)


class Bench:
    def __init__(self, tb: Testbed, bridges: int, hooks: tuple[str, ...] = (), store_section: str = ""):
        """`hooks`: lab/serve.py's options for the controller (a hub watch);
        `store_section`: the controller's [store] in its config (an etcd
        cluster in the controller's namespace, tb.controller); none: an
        SQLite file in the testbed's temp dir."""
        self.tb = tb
        self.ctl_ns = tb.controller or tb.add_controller()
        segment = tb.add_segment("wan", "192.168.0.0/16")
        self.hv = tb.add_hypervisor("hv1", "192.168.1.1", 16, segment, 0xBE00, bridge="brb0",
                                    tunnel_port="lisp0")
        for i in range(1, bridges):
            self.hv.add_vm_bridge(f"brb{i}", 0xBE00 + i, f"lisp{i}", "lisp-gpe", local_ip=f"192.168.2.{i}")
        path = tb.tmpdir / "bench.toml"
        path.write_text(config_text(self.ctl_ns.address, bridges, store_section))
        self.ov = Topology(tb, path, load_config(path), self.ctl_ns, segment)
        self.ctl = ControllerProcess(self.ov, hooks=hooks, config_path=path if store_section else None).start()
        self.api = ApiClient(around=lambda: tb.netns(self.ctl_ns.ns))
        self.connected = 0
        wait_until(lambda: self._up(), timeout=30, what="API")
        self.rss_fresh_kb = self.rss_kb()  # a fresh controller holding no mapping

    # -- plumbing ------------------------------------------------------------
    def http(self, method: str, path: str, body: bytes | None = None, timeout: float = 900) -> tuple[int, object]:
        """The API's answer (status, JSON or text), through its one client."""
        return self.api(method, path, raw=body, timeout=timeout)

    def _up(self) -> bool:
        try:
            return self.http("GET", "/v1/health", timeout=2)[0] == 200
        except OSError:
            return False

    def ofctl(self, *args: str, stdin: str | None = None) -> float:
        """Seconds an ovs-ofctl command takes, run in the hypervisor."""
        started = time.perf_counter()
        self.hv.run("ovs-ofctl", "-O", "OpenFlow13", *args, input=stdin, timeout=900)
        return time.perf_counter() - started

    def datapath(self, name: str) -> dict:
        return self.http("GET", f"/v1/datapaths/{name}")[1]["datapath"]

    def connect(self, k: int) -> None:
        """Exactly the first k bridges connected and fully synced."""
        for i in range(self.connected, k):
            self.hv.set_controller(f"brb{i}", self.ctl_ns.address)
        self.connected = max(self.connected, k)
        for i in range(k):
            wait_until(lambda: self.datapath(f"brb{i}")["verified_ms"] is not None, timeout=120,
                       what=f"brb{i} synced")

    def flows_in_mapcache(self) -> int:
        return len(self.hv.dump_flows(table=1, bridge="brb0"))

    def metric(self, name: str) -> float:
        text = self.http("GET", "/metrics")[1]
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def restart_controller(self) -> None:
        """A fresh process: it loads the store and re-verifies the bridges."""
        self.ctl.stop()
        self.ctl = ControllerProcess(self.ov, f"controller-{time.monotonic_ns()}").start()
        wait_until(lambda: self._up(), timeout=300, what="API after restart")
        self.connect(self.connected)

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.ctl.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    # -- measurements ----------------------------------------------------------
    def controller_bulk(self, body: bytes, n: int) -> dict:
        started = time.perf_counter()
        status, out = self.http("POST", "/v1/mappings/bulk", body)
        elapsed = time.perf_counter() - started
        if status != 200 or {b["status"] for b in out["bridges"] if b["status"] != "not-connected"} != {"confirmed"}:
            raise RuntimeError(f"bulk failed: {status} {str(out)[:500]}")
        stages = next(b.get("stages_ms", {}) for b in out["bridges"] if b["bridge"] == "brb0")
        return {"seconds": elapsed, "timings_ms": out["timings"], "brb0_stages_ms": stages}

    def clear_controller(self) -> None:
        status, out = self.http("PUT", "/v1/mappings", json.dumps({"mappings": []}).encode())
        assert status == 200, out

    def ofctl_bulk(self, flows_file: Path) -> float:
        return self.ofctl("--bundle", "add-flows", "brb0", str(flows_file))

    def raw_bulk(self, payload: bytes) -> float:
        return raw.send_bundle(self.hv.rundir / "brb0.mgmt", payload)

    def clear_ofctl(self) -> None:
        self.ofctl("del-flows", "brb0", f"table=1,metadata={IID}")

    def reconnect(self) -> dict:
        """Cut brb0's OpenFlow connection (ss -K, as a network blip would);
        OVS reconnects by itself. Not del-controller: OVS flushes a secure
        bridge's flows when its last controller is removed."""
        mods = self.metric("lisp_flow_mods_sent_total")
        old = self.datapath("brb0")["address"]  # ip:port; a new connection has a new port
        host, port = old.rsplit(":", 1)
        self.tb.run(self.ctl_ns.ns, "ss", "-K", "dst", host, "dport", "=", port)
        wait_until(lambda: (lambda d: d["connected"] and d["address"] != old
                            and d["verified_ms"] is not None)(self.datapath("brb0")),
                   timeout=300, what="brb0 reconnected and verified")
        return {"seconds": self.datapath("brb0")["verified_ms"] / 1000,
                "flow_mods": self.metric("lisp_flow_mods_sent_total") - mods}


def switch_facing_s(run: dict) -> float:
    """Compiling and encoding the map-cache flows (state), then everything
    until every barrier is back (bridges: diff, bundle, commit, barrier).
    Both are measured inside the controller's commit."""
    return (run["timings_ms"]["state_ms"] + run["timings_ms"]["bridges_ms"]) / 1000


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_size(b: Bench, n: int, runs: int) -> dict:
    flows_file = b.tb.tmpdir / f"flows-{n}.txt"
    flows_file.write_text(baseline_flows(n))
    body = bulk_body(n)
    payload = raw.bundle_bytes(baseline_flow_mods(n))
    base = b.flows_in_mapcache()
    ctl_runs, ofctl_runs, raw_runs, reconnects, dumps = [], [], [], [], []
    for r in range(runs):
        for who in (("ctl", "ofctl", "raw") if r % 2 == 0 else ("raw", "ofctl", "ctl")):
            if who == "raw":
                raw_runs.append(b.raw_bulk(payload))
                got = b.flows_in_mapcache()
                assert got == base + n, f"the bare client's flows: {got - base} of {n}"
                b.clear_ofctl()
            elif who == "ofctl":
                ofctl_runs.append(b.ofctl_bulk(flows_file))
                assert b.flows_in_mapcache() == base + n
                dumps.append(b.ofctl("dump-flows", "brb0"))
                b.clear_ofctl()
            else:
                ctl_runs.append(b.controller_bulk(body, n))
                assert b.flows_in_mapcache() == base + n, "controller's flows missing"
                reconnects.append(b.reconnect())
                b.clear_controller()
        print(f"  n={n} run {r + 1}/{runs}: controller {ctl_runs[-1]['seconds']:.2f} s, "
              f"ovs-ofctl {ofctl_runs[-1]:.2f} s, switch alone {raw_runs[-1]:.2f} s, reconnect {reconnects[-1]['seconds']:.2f} s "
              f"({reconnects[-1]['flow_mods']:.0f} flow-mods)", flush=True)
    # Memory: a fresh controller that loaded N mappings from the store,
    # against a fresh one holding none (a process that already served big
    # requests keeps its peak heap, which says nothing per mapping).
    b.controller_bulk(body, n)
    b.restart_controller()
    rss_empty, rss_full = b.rss_fresh_kb, b.rss_kb()
    store = b.ov.testbed.tmpdir / "store.db"
    store_bytes = sum(p.stat().st_size for p in (store, Path(f"{store}-wal")) if p.exists())
    b.clear_controller()

    ctl_s = [x["seconds"] for x in ctl_runs]
    stage_keys = sorted({k for x in ctl_runs for k in x["timings_ms"]})
    stages = {k: median([x["timings_ms"].get(k, 0.0) for x in ctl_runs]) for k in stage_keys}
    bridge_stage_keys = sorted({k for x in ctl_runs for k in x["brb0_stages_ms"]})
    stages.update({f"brb0_{k}": median([x["brb0_stages_ms"].get(k, 0.0) for x in ctl_runs])
                   for k in bridge_stage_keys})
    switch_facing = [switch_facing_s(x) for x in ctl_runs]
    result = {
        "n": n, "runs": runs,
        "controller_end_to_end_s": median(ctl_s), "controller_switch_facing_s": median(switch_facing),
        "ofctl_bundle_s": median(ofctl_runs),
        "ratio_end_to_end": median(ctl_s) / median(ofctl_runs),
        "ratio_switch_facing": median(switch_facing) / median(ofctl_runs),
        "switch_alone_s": median(raw_runs),
        "ratio_switch_alone": median(raw_runs) / median(ofctl_runs),
        "stages_ms": stages,
        "reconnect_s": median([x["seconds"] for x in reconnects]),
        "reconnect_flow_mods": max(x["flow_mods"] for x in reconnects),
        "ofctl_dump_flows_s": median(dumps),
        "ratio_reconnect": median([x["seconds"] for x in reconnects]) / median(dumps),
        "rss_empty_kb": rss_empty, "rss_full_kb": rss_full,
        "rss_bytes_per_mapping": (rss_full - rss_empty) * 1024 / n,
        "rss_total_bytes_per_mapping": rss_full * 1024 / n,
        "store_bytes": store_bytes,
        "raw": {"controller": ctl_runs, "ofctl": ofctl_runs, "switch_alone": raw_runs, "reconnect": reconnects, "dump": dumps},
    }
    return result


def run_fanout(b: Bench, counts: list[int], changes: int, table: int) -> list[dict]:
    """`table` mappings are loaded first, so every bridge holds a real
    map-cache when the one change arrives."""
    out = []
    if table:
        status, res = b.http("POST", "/v1/mappings/bulk", json.dumps({"mappings": [
            {"iid": IID + 1, "eid": eid(i), "rlocs": [RLOC]} for i in range(table)]}).encode())
        assert status == 200, res
    for k in counts:
        b.connect(k)
        latencies = []
        for j in range(changes):
            rloc = "192.168.7.8" if j % 2 else "192.168.7.9"
            body = json.dumps({"rlocs": [rloc]}).encode()
            started = time.perf_counter()
            status, res = b.http("PUT", f"/v1/mappings/{IID}/10.200.0.0/16", body)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses = [x["status"] for x in res["bridges"][:k]]
            if status not in (200, 201) or set(statuses) != {"confirmed"}:
                raise RuntimeError(f"fan-out change failed: {status} {res}")
        out.append({"bridges": k, "changes": changes, "table": table, "p50_ms": median(latencies),
                    "p99_ms": pct(latencies, 0.99), "max_ms": max(latencies)})
        print(f"  fan-out to {k} bridges: p50 {out[-1]['p50_ms']:.1f} ms, p99 {out[-1]['p99_ms']:.1f} ms", flush=True)
    b.http("DELETE", f"/v1/mappings/{IID}/10.200.0.0/16")
    b.clear_controller()
    return out


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    ovs = subprocess.run(["ovs-vswitchd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "ovs": ovs,
            "kernel": platform.release()}


def table(results: dict) -> str:
    lines = [f"machine: {results['machine']['cpus']} x {results['machine']['cpu']}, "
             f"{results['machine']['ovs']}, Python {results['machine']['python']}, {results['machine']['date']}", ""]
    lines.append(f"{'N':>9} | {'ctl e2e s':>9} | {'ctl switch s':>12} | {'ofctl bundle s':>14} | "
                 f"{'e2e x':>6} | {'switch x':>8} | {'alone x':>7} | {'reconnect s':>11} | {'mods':>4} | {'dump s':>6} | "
                 f"{'recon x':>7} | {'RSS B/map':>9} | {'store MB':>8}")
    for r in results["bulk"]:
        lines.append(f"{r['n']:>9} | {r['controller_end_to_end_s']:>9.2f} | {r['controller_switch_facing_s']:>12.2f} | "
                     f"{r['ofctl_bundle_s']:>14.2f} | {r['ratio_end_to_end']:>6.2f} | {r['ratio_switch_facing']:>8.2f} | "
                     f"{r['ratio_switch_alone']:>7.2f} | "
                     f"{r['reconnect_s']:>11.2f} | {r['reconnect_flow_mods']:>4.0f} | {r['ofctl_dump_flows_s']:>6.2f} | "
                     f"{r['ratio_reconnect']:>7.2f} | {r['rss_bytes_per_mapping']:>9.0f} | {r['store_bytes'] / 1e6:>8.1f}")
    lines.append("")
    for r in results["bulk"]:
        lines.append(f"stages at N={r['n']} (ms, medians): " +
                     ", ".join(f"{k.removesuffix('_ms')} {v:.0f}" for k, v in r["stages_ms"].items()))
    if results["fanout"]:
        lines.append(f"fan-out with {results['fanout'][0]['table']} mappings on every bridge:")
        base = results["fanout"][0]["p99_ms"]
        for r in results["fanout"]:
            lines.append(f"fan-out {r['bridges']:>3} bridges: p50 {r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms "
                         f"({r['p99_ms'] / base:.1f}x the 1-bridge p99)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--million", action="store_true", help="also 1,000,000 mappings")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fanout", default="1,10,50")
    parser.add_argument("--changes", type=int, default=100, help="mapping changes per fan-out size")
    parser.add_argument("--fanout-table", type=int, default=10000,
                        help="mappings every bridge holds during the fan-out changes")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x] + ([1_000_000] if args.million else [])
    fanout = [int(x) for x in args.fanout.split(",") if x]
    results = {"machine": machine(), "bulk": [], "fanout": []}
    with Testbed() as tb:
        b = Bench(tb, max(fanout + [1]))
        b.connect(1)
        for n in sizes:
            print(f"bulk and reconnect, N={n}", flush=True)
            results["bulk"].append(run_size(b, n, args.runs))
        if fanout:
            print("fan-out", flush=True)
            results["fanout"] = run_fanout(b, fanout, args.changes, args.fanout_table)
    print()
    print(table(results))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
