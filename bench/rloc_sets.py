"""Benchmark: the map-cache's hot path for RLOC sets, against single RLOCs, in one run.

    python bench/rloc_sets.py                   # 100,000 mappings, 5 runs
    python bench/rloc_sets.py --mappings 20000 --runs 3

A bulk change compiles every mapping into its map-cache flow-mod
(`mapping_flow_mod`, from templates) and the state keeps each flow and,
for an RLOC set, counts the users of its select group (`State.apply`).
Both are timed over the same number of mappings of three kinds, built
beforehand the way the API parses them:

- one RLOC (the baseline: the common case, which must not pay for sets);
- a set of two RLOCs weighted 70/30, the same set for every mapping (one group);
- sets drawn from 100 different pairs (100 groups).

Prints the medians and their ratio to the baseline. Pure Python: no
switch, no namespaces, no root.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lisp_controller.config import parse_config  # noqa: E402
from lisp_controller.controller.state import Change, State  # noqa: E402
from lisp_controller.model import Mapping, prefix_key  # noqa: E402
from lisp_controller.pipeline.compiler import mapping_flow_mod  # noqa: E402

IID = 4242
CONFIG = parse_config({"controller": {}, "bridge": [{"name": "hv1", "rloc": "192.168.1.1", "iid": IID}]}, "bench")


GROUPS = {"one RLOC": 0, "one set (70/30)": 1, "100 sets": 100}  # kind -> groups it makes


def eid(i: int) -> str:
    return f"{10 + i // 16777216 % 100}.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"


def kinds(n: int) -> dict[str, list[Mapping]]:
    def rlocs(i: int, kind: str) -> list:
        if kind == "one RLOC":
            return ["192.168.7.7"]
        pair = 0 if kind == "one set (70/30)" else i % 100
        return [{"address": f"192.168.8.{pair}", "weight": 70}, {"address": f"192.168.9.{pair}", "weight": 30}]
    return {k: [Mapping.parse({"iid": IID, "eid": eid(i), "rlocs": rlocs(i, k)}, source="api") for i in range(n)]
            for k in GROUPS}


def time_encode(mappings: list[Mapping]) -> float:
    keys = [prefix_key(m.iid, m.eid) for m in mappings]
    started = time.perf_counter()
    for m, key in zip(mappings, keys):
        mapping_flow_mod(m, key)
    return time.perf_counter() - started


def time_apply(mappings: list[Mapping], groups: int) -> float:
    state = State(CONFIG)
    started = time.perf_counter()
    state.apply(Change(put=mappings))
    took = time.perf_counter() - started
    assert len(state.shared) == len(mappings) + 1 and len(state.shared.groups) == groups  # + the miss rule
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mappings", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    data = kinds(args.mappings)
    results: dict[str, dict[str, list[float]]] = {k: {"encode": [], "apply": []} for k in data}
    gc.disable()  # as the controller does during a bulk change (gcpause.py)
    try:
        for run in range(args.runs):
            # Interleaved, in a different order each run, so drift (other
            # load, the CPU's clock) spreads over every kind.
            order = list(data)[run % len(data):] + list(data)[:run % len(data)]
            for kind in order:
                results[kind]["encode"].append(time_encode(data[kind]))
                results[kind]["apply"].append(time_apply(data[kind], GROUPS[kind]))
                gc.collect()
    finally:
        gc.enable()
    base = {stage: statistics.median(results["one RLOC"][stage]) for stage in ("encode", "apply")}
    print(f"{args.mappings:,} mappings, median of {args.runs} runs (seconds; x = against one RLOC)")
    print(f"{'':18} | {'encode s':>9} | {'x':>5} | {'apply s':>8} | {'x':>5} | {'us/mapping (apply)':>18}")
    for kind, stages in results.items():
        enc, app = statistics.median(stages["encode"]), statistics.median(stages["apply"])
        print(f"{kind:18} | {enc:9.3f} | {enc / base['encode']:5.2f} | {app:8.3f} | {app / base['apply']:5.2f} | "
              f"{1e6 * app / args.mappings:18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
