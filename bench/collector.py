"""Benchmark: what freezing the state out of the garbage collector's sight
buys after big changes, and what collecting first costs.

    .venv/bin/python bench/collector.py [--mappings 100000] [--changes 4] [--runs 2]

Each run applies `--changes` big changes in a row to a State (each
replaces every API mapping with `--mappings` new ones, as a bulk PUT
does) in a fresh process, once per way of handling the collector after a
change, the ways interleaved:

- none: nothing (the baseline);
- freeze: gc.freeze() alone;
- collect: gc.collect() then gc.freeze(), so no garbage is frozen.

The controller does none: docs/performance.rst has the figures.

Prints, per way (medians over runs): time spent in the collector's own
full collections (gen2) during the changes, the time of the step after
each change (the hub waits that long), cyclic garbage that step found,
and the ratio of collector time to the baseline's. No root needed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAYS = ("none", "freeze", "collect")

CHILD = r"""
import gc, json, sys, time
from lisp_controller.config import parse_config
from lisp_controller.controller.state import Change, State
from lisp_controller.model import Mapping

n, changes, way = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
config = parse_config({"bridge": [{"datapath_id": "0000000000000001", "rloc": "192.0.2.1", "iid": 7}]})
spent, mark = [0.0, 0.0, 0.0], [0.0]

def timed(phase, info):
    if phase == "start":
        mark[0] = time.perf_counter()
    else:
        spent[info["generation"]] += time.perf_counter() - mark[0]

state = State(config)
steps, found = [], []
for r in range(changes):
    put = [Mapping.parse({"iid": 7, "eid": f"{10 + r}.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32",
                          "rlocs": ["192.0.2.9"]}, source="api") for i in range(n)]
    gc.callbacks.append(timed)
    state.apply(Change(put=put, replace_api=True))
    del put
    t = time.perf_counter()
    if way == "collect":
        found.append(gc.collect())
    if way in ("freeze", "collect"):
        gc.freeze()
    steps.append(time.perf_counter() - t)
    gc.callbacks.remove(timed)
print(json.dumps({"gen2_s": spent[2], "young_s": spent[0] + spent[1], "step_ms": [s * 1000 for s in steps],
                  "found": found, "frozen": gc.get_freeze_count()}))
"""


def run(way: str, mappings: int, changes: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(mappings), str(changes), way], check=True,
                         capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/collector.py")
    parser.add_argument("--mappings", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {w: [] for w in WAYS}
    for i in range(args.runs):
        for way in WAYS if i % 2 == 0 else reversed(WAYS):
            results[way].append(run(way, args.mappings, args.changes))
    base = statistics.median(r["gen2_s"] for r in results["none"])
    print(f"{args.changes} changes of {args.mappings} mappings, {args.runs} runs (medians)")
    print(f"{'way':>8} | {'gen2 s':>7} | {'x none':>6} | {'young s':>7} | step after each change (ms) | garbage found")
    for way in WAYS:
        rs = results[way]
        gen2 = statistics.median(r["gen2_s"] for r in rs)
        young = statistics.median(r["young_s"] for r in rs)
        steps = [statistics.median(r["step_ms"][k] for r in rs) for k in range(args.changes)]
        found = sorted({n for r in rs for n in r["found"]})
        print(f"{way:>8} | {gen2:7.2f} | {gen2 / base:6.2f} | {young:7.2f} | "
              f"{', '.join(f'{s:.0f}' for s in steps):>27} | {found if found else '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
