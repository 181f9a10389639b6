"""Benchmark: what the input checks cost a bulk request, against the same
work without them, in one run.

    python bench/validation.py                 # 100,000 mappings, best of 5
    python bench/validation.py -n 1000000 --runs 3

1. JSON: the body of a bulk request decoded with `unique_keys` (a key
   given twice in one object is refused) against plain `json.loads`;
2. RLOCs: N distinct addresses through `parse_rloc_address` (unicast,
   routable) against `parse_address` (any address);
3. mappings: `Mapping.parse` of N mappings whose RLOCs are tables (every
   RLOC checked, none cached) and of N with one shared RLOC string.

Pure Python, no root, no network. Prints milliseconds (best of the runs)
and the ratio checked / unchecked.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lisp_controller.model import Mapping, parse_address, parse_rloc_address, unique_keys  # noqa: E402


def address(i: int) -> str:
    return f"{10 + i // 16777216 % 100}.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def best(runs: int, *works) -> list[float]:
    """Milliseconds of each work's fastest run, the works interleaved run by
    run (the least disturbed by a shared machine), each run starting from a
    collected heap."""
    times: list[list[float]] = [[] for _ in works]
    for _ in range(runs):
        for work, took in zip(works, times):
            gc.collect()
            started = time.perf_counter()
            work()
            took.append(time.perf_counter() - started)
    return [min(took) * 1000 for took in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="mappings (default 100,000)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    n, runs = args.n, args.runs
    tables = [{"iid": 4242, "eid": f"{address(i)}/32", "rlocs": [{"address": address(i + 7), "priority": 1}]}
              for i in range(n)]
    shared = [{"iid": 4242, "eid": f"{address(i)}/32", "rlocs": ["192.168.7.7"]} for i in range(n)]
    body = json.dumps({"mappings": tables}).encode()
    addresses = [address(i + 7) for i in range(n)]

    rows = [
        ("JSON decode of the bulk body", *best(runs, lambda: json.loads(body),
                                               lambda: json.loads(body, object_pairs_hook=unique_keys))),
        ("RLOC addresses", *best(runs, lambda: [parse_address(a, "rloc") for a in addresses],
                                 lambda: [parse_rloc_address(a, "rloc") for a in addresses])),
    ]
    print(f"N = {n:,}, best of {runs} runs (ms)")
    print(f"{'':32} {'unchecked':>10} {'checked':>10} {'ratio':>6}")
    for name, plain, checked in rows:
        print(f"{name:32} {plain:>10.1f} {checked:>10.1f} {checked / plain:>6.2f}")
    for name, raw in (("Mapping.parse, RLOC tables", tables), ("Mapping.parse, one shared RLOC", shared)):
        print(f"{name:32} {'':>10} {best(runs, lambda: [Mapping.parse(m, source='api') for m in raw])[0]:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
