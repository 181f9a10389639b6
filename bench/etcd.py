"""Benchmark: the etcd store against the SQLite store, same run, same data.

    .venv/bin/python bench/etcd.py                      # 200 writes, bulk of 100,000
    .venv/bin/python bench/etcd.py --writes 50 --bulk 20000   # a quick look

SQLite is a file in a temp dir (WAL, synchronous=FULL); etcd is a real
three-member cluster on 127.0.0.1 (lab/etcd.py, fsync on). Measured through
the stores' own `write` and `load`, as the controller calls them:

1. write latency: one mapping per write, p50 and p99;
2. bulk: one write of N mappings (etcd: staged in chunks, then one commit);
3. load: reading the N + writes mappings back (a controller's start);
4. delivery (etcd only): a write until a second store that follows the
   cluster has been handed it, p50 and p99.

Prints a table with etcd / SQLite ratios. Sends traffic to loopback only.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.etcd import EtcdCluster  # noqa: E402
from lisp_controller.config import EtcdSettings  # noqa: E402
from lisp_controller.model import Mapping  # noqa: E402
from lisp_controller.store.etcd import EtcdStore  # noqa: E402
from lisp_controller.store.sqlite import Store as SqliteStore  # noqa: E402


def mappings(count: int, base: int) -> list[Mapping]:
    """What a bulk request parses into: host routes sharing one RLOC set."""
    return [Mapping.parse({"iid": 1000, "eid": f"{ipaddress.IPv4Address(0x0A000000 + base + i)}/32",
                           "rlocs": ["192.168.1.252"]}, source="api") for i in range(count)]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure(store, writes: int, bulk: int, delivered=None) -> dict:
    singles = [mappings(1, 0x100000 + i) for i in range(writes)]
    latencies, deliveries = [], []
    for one in singles:
        started = time.perf_counter()
        store.write(put=one)
        latencies.append(time.perf_counter() - started)
        if delivered is not None:
            deliveries.append(delivered(one[0].key, started))
    big = mappings(bulk, 0)
    started = time.perf_counter()
    store.write(put=big)
    bulk_s = time.perf_counter() - started
    started = time.perf_counter()
    loaded = len(store.load()[0])
    load_s = time.perf_counter() - started
    assert loaded == bulk + writes, loaded
    out = {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "bulk": bulk_s, "load": load_s}
    if deliveries:
        out["delivery_p50"], out["delivery_p99"] = percentile(deliveries, 50), percentile(deliveries, 99)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/etcd.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=200, help="single-mapping writes (default 200)")
    parser.add_argument("--bulk", type=int, default=100_000, help="mappings in the bulk write (default 100000)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        sqlite = SqliteStore(Path(tmp) / "store.db")
        sqlite.load()
        base = measure(sqlite, args.writes, args.bulk)
        sqlite.close()

    with EtcdCluster(3) as cluster:
        settings = EtcdSettings(tuple(cluster.endpoints), "/bench/")
        store, follower = EtcdStore(settings), EtcdStore(settings)
        store.load()
        follower.load()
        seen: dict[tuple, float] = {}
        arrived = threading.Condition()

        def on_change(delta) -> None:
            now = time.perf_counter()
            with arrived:
                for m in delta.put:
                    seen[m.key] = now
                arrived.notify_all()
        follower.follow(on_change, threading.Lock())

        def delivered(key, started: float) -> float:
            with arrived:
                arrived.wait_for(lambda: key in seen, timeout=10)
            return seen[key] - started
        etcd = measure(store, args.writes, args.bulk, delivered)
        store.close()
        follower.close()

    print(f"\nstore benchmark: {args.writes} single-mapping writes, one bulk of {args.bulk:,} mappings\n")
    print(f"{'':24}{'SQLite':>12}{'etcd (3)':>12}{'etcd/SQLite':>14}")
    for key, label in (("p50", "write p50 (ms)"), ("p99", "write p99 (ms)"), ("bulk", "bulk (s)"),
                       ("load", "load (s)")):
        scale = 1000 if key in ("p50", "p99") else 1
        print(f"{label:24}{base[key] * scale:12.2f}{etcd[key] * scale:12.2f}{etcd[key] / base[key]:13.1f}x")
    print(f"{'delivery p50 (ms)':24}{'-':>12}{etcd['delivery_p50'] * 1000:12.2f}")
    print(f"{'delivery p99 (ms)':24}{'-':>12}{etcd['delivery_p99'] * 1000:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
