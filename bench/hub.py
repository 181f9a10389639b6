"""Benchmark: is the controller's hub free while it works hard?

    python bench/hub.py                 # 100,000 mappings
    python bench/hub.py --size 1000000  # the figure docs/performance.rst quotes

The controller runs every OpenFlow session, the REST API and its timers on
one eventlet hub: anything that holds the hub makes OpenFlow echo replies
and every API request wait. This measures, in the same run:

- idle: OpenFlow echo round trip (a bare OpenFlow client that completed the
  handshake as a bridge nobody configured, sending ECHO_REQUEST every 10 ms)
  and `GET /v1/health` latency (every 10 ms), with nothing else going on;
- busy: the same two while one bulk request of N mappings is programmed
  into a real bridge and a status page polls every 2 s as the page does
  (its requests: bridges, endpoints, one page of mappings with counters);
- browsing: then, with the N mappings in place, the same two while the
  status page is sorted by packets and searched (`--browse` seconds),
  which the controller answers by going over the whole map-cache.

- flows: then `GET /v1/datapaths/brb0/flows`, every flow the bridge
  should hold (N and a few), once, the same two meanwhile; `--no-flows`
  leaves it out.
- reconnect: then the bridge goes away (its controller target pointed at
  a port nobody listens on: it keeps its flows), every one of the N
  mappings gets another RLOC (a change of N adds and N deletes), and the
  bridge comes back: the same two from its return until it is verified
  and a while after; `--no-reconnect` leaves it out.

- deep check: then, with nothing else asked, the same two while the
  bridge's periodic deep check (every `reconcile_interval`, 60 s by
  default) reads back all N flows, compares them with what their cookies
  name and diffs the result against the desired flows: the phase waits for
  the next check that begins after it starts, and samples until a while
  after that check's comparison ended (its diff comes after it);
  `--no-deep` leaves it out.

`--watch FILE` runs the controller with lab/hubwatch.py: each round of
its hub over 20 ms, with the stacks that held it, and each collection
over 10 ms go to FILE (JSON lines); those over 50 ms are printed per
phase, the longest first.

`--census MS` (with `--watch`) adds, after a full collection over MS,
what the collector walked (lab/hubwatch.py `census`); it holds the hub
itself, so its run's figures are not for comparing.

`--store etcd` runs the controller on the etcd store (docs/etcd.rst)
instead of SQLite: a real cluster of `--etcd-members` members (lab/etcd.py,
etcd's default timings, fsync on) in the controller's namespace, stopped at
the end; the bulk and the change while away are then written to etcd in
chunks, and the controller reads them back from its watch.

`--old-page` polls as the status page did before it paged on the server
(every mapping with counters), to compare in the same run.

Prints p50, p99 and max of each, and the busy/idle ratio. Needs root
(network namespaces); sends traffic nowhere.
"""
from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import RLOC, Bench, bulk_body  # noqa: E402
from lisp_controller.cli.api import ApiClient  # noqa: E402
from lab.etcd import EtcdCluster  # noqa: E402
from lab.processes import wait_until  # noqa: E402
from lab.testbed import Testbed  # noqa: E402

OFPT_HELLO, OFPT_ECHO_REQUEST, OFPT_ECHO_REPLY = 0, 2, 3
OFPT_FEATURES_REQUEST, OFPT_FEATURES_REPLY = 5, 6
STRANGER_DPID = 0xD0D0D0D0  # not in the benchmark's config: left alone by the controller
PAGE = ("/v1/datapaths", "/v1/endpoints", "/v1/lisp")
FIRST_PAGE = "/v1/mappings?counters=true&limit=100&offset=0&sort=prefix&order=asc"
BROWSING = "/v1/mappings?counters=true&limit=100&offset=0&sort=packets&order=desc&q=10.1"
OLD_PAGE = "/v1/mappings?counters=true"
RLOC_AWAY = "192.168.7.8"  # every mapping's RLOC in the change made while brb0 is away


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("controller closed the OpenFlow connection")
        data += chunk
    return data


def _recv_message(sock: socket.socket) -> tuple[int, int, bytes]:
    version, mtype, length, xid = struct.unpack("!BBHI", _recv_exact(sock, 8))
    return mtype, xid, _recv_exact(sock, length - 8)


class Probe(threading.Thread):
    """Samples one latency every `interval` seconds until stopped."""

    def __init__(self, tb: Testbed, ns: str, interval: float = 0.01):
        super().__init__(daemon=True)
        self.tb, self.ns, self.interval = tb, ns, interval
        self.samples: list[float] = []
        self.marks: list[float] = []  # monotonic time of each sample
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.tb.netns(self.ns):
                self.setup()
                while not self.halt.is_set():
                    started = time.perf_counter()
                    self.once()
                    self.samples.append(time.perf_counter() - started)
                    self.marks.append(time.monotonic())
                    self.halt.wait(self.interval)
        except BaseException as e:  # reported by the main thread
            self.error = e

    def setup(self) -> None:
        pass

    def once(self) -> None:
        raise NotImplementedError

    def between(self, start: float, end: float) -> list[float]:
        return [s for s, t in zip(self.samples, self.marks) if start <= t <= end]


class EchoProbe(Probe):
    """A bare OpenFlow 1.3 client: HELLO, FEATURES_REPLY, then echoes."""

    def __init__(self, tb: Testbed, ns: str, address: str, port: int = 6653):
        super().__init__(tb, ns)
        self.address, self.port = address, port
        self.xid = 1000

    def setup(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), timeout=60)
        self.sock.sendall(struct.pack("!BBHI", 4, OFPT_HELLO, 8, 1))
        while True:
            mtype, xid, _ = _recv_message(self.sock)
            if mtype == OFPT_FEATURES_REQUEST:
                body = struct.pack("!QIBB2xII", STRANGER_DPID, 256, 254, 0, 0, 0)
                self.sock.sendall(struct.pack("!BBHI", 4, OFPT_FEATURES_REPLY, 8 + len(body), xid) + body)
                return

    def once(self) -> None:
        self.xid += 1
        self.sock.sendall(struct.pack("!BBHI", 4, OFPT_ECHO_REQUEST, 8, self.xid))
        while True:
            mtype, xid, _ = _recv_message(self.sock)
            if mtype == OFPT_ECHO_REPLY and xid == self.xid:
                return
            if mtype == OFPT_ECHO_REQUEST:  # the controller's own keepalive
                self.sock.sendall(struct.pack("!BBHI", 4, OFPT_ECHO_REPLY, 8, xid))


class HttpProbe(Probe):
    """One GET per sample, each on a new connection (as a monitor does)."""

    def __init__(self, tb: Testbed, ns: str, paths: tuple[str, ...], interval: float):
        super().__init__(tb, ns, interval)
        self.paths = paths

    def setup(self) -> None:
        self.api = ApiClient()  # a new connection per request, as a monitor makes

    def once(self) -> None:
        for path in self.paths:
            self.api("GET", path)


def summary(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "max_ms": 1000 * ordered[-1]}


def line(name: str, idle: dict, busy: dict) -> str:
    ratio = busy["p99_ms"] / idle["p99_ms"] if idle.get("n") and busy.get("n") else float("nan")
    return (f"{name:<14} idle p50 {idle['p50_ms']:8.2f} p99 {idle['p99_ms']:8.2f} max {idle['max_ms']:8.2f} ms"
            f" | busy p50 {busy['p50_ms']:8.2f} p99 {busy['p99_ms']:8.2f} max {busy['max_ms']:8.2f} ms"
            f" | p99 busy/idle {ratio:6.1f}x")


def stalls(path: Path, phases: dict[str, tuple[float, float]]) -> dict:
    """lab/hubwatch.py's records by phase (wall-clock spans), printed: the
    longest stalls with their most frequent stack, and slow collections."""
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    out = {}
    for phase, (start, end) in phases.items():
        inside = [r for r in records if start <= r["at"] <= end]
        held = sorted((r for r in inside if r.get("stall_ms", 0) >= 50), key=lambda r: -r["stall_ms"])
        collections = [r for r in inside if "gc" in r]
        out[phase] = {"stalls": len(held), "stall_ms": [r["stall_ms"] for r in held],
                      "gc_ms": [(r["gc"], r["ms"]) for r in collections]}
        print(f"{phase}: {len(held)} stalls over 50 ms; collections over 10 ms: "
              + (", ".join(f"gen{g} {ms:.0f}" for g, ms in out[phase]["gc_ms"][:12]) or "none"))
        for r in held[:6]:
            top = r["stacks"][0] if r["stacks"] else [0, "?"]
            print(f"  {r['stall_ms']:7.1f} ms, {r.get('cpu_ms', float('nan')):.0f} on a CPU "
                  f"({r['samples']} samples; {top[0]} at) {top[1][:400]}")
    return out


def deep_check(bench: Bench, timeout: float) -> tuple[float, float, float]:
    """Wait for brb0's next deep check that begins after now and for its
    diff; (start, end) in monotonic time, and the check's own ms."""
    began, wall = time.monotonic(), time.time()
    seen = bench.datapath("brb0")["last_verify"]
    deadline = began + timeout
    while time.monotonic() < deadline:
        view = bench.datapath("brb0")
        at, ms = view["last_verify"], view["last_verify_ms"]
        if at is not None and at != seen:
            seen = at
            # last_verify (whole seconds) is when the comparison ended
            if calendar.timegm(time.strptime(at, "%Y-%m-%dT%H:%M:%SZ")) + 1 - ms / 1000 >= wall:
                time.sleep(max(2.0, 1.5 * ms / 1000))  # its diff, then a quiet while
                return began, time.monotonic(), ms
        time.sleep(0.2)
    raise RuntimeError(f"no deep check of brb0 within {timeout:.0f} s")


def flows_phase(bench: Bench) -> tuple[float, float, dict]:
    """GET brb0's flows once, by curl (decoding 165 MB here would hold
    this process's interpreter lock, and so its probes, for seconds);
    (start, end) in monotonic time and what came."""
    flows = bench.datapath("brb0")["flows_desired"]
    started = time.monotonic()
    out = bench.tb.run(bench.ctl_ns.ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                       "http://127.0.0.1:8080/v1/datapaths/brb0/flows", timeout=900).stdout.split()
    ended = time.monotonic()
    if out[0] != "200":
        raise RuntimeError(f"flows of brb0: HTTP {out[0]}")
    time.sleep(1.0)  # what the answer left behind (freeing it), then a quiet while
    return started, time.monotonic(), {"seconds": ended - started, "flows": flows, "bytes": int(out[1])}


def reconnect_phase(bench: Bench, body: bytes, wall: dict) -> tuple[float, float, dict]:
    """brb0 away (its target a port nobody listens on: a secure bridge
    keeps its flows), every mapping moved to another RLOC, brb0 back;
    (start, end) of its return in monotonic time. The change's own span
    goes into `wall` as a phase of its own."""
    before = wall[next(reversed(wall))][1]
    old = bench.datapath("brb0")["address"]
    bench.hv.set_controller("brb0", bench.ctl_ns.address, of_port=6654)
    wait_until(lambda: not bench.datapath("brb0")["connected"], timeout=60, what="brb0 away")
    started = time.perf_counter()
    status, out = bench.http("POST", "/v1/mappings/bulk", body.replace(RLOC.encode(), RLOC_AWAY.encode()))
    if status != 200:
        raise RuntimeError(f"bulk while away: {status} {str(out)[:300]}")
    change_s = time.perf_counter() - started
    wall["change while away"] = (before, time.time())
    time.sleep(1.0)
    mods = bench.metric("lisp_flow_mods_sent_total")
    back, back_wall = time.monotonic(), time.time()
    bench.hv.set_controller("brb0", bench.ctl_ns.address)
    wait_until(lambda: (lambda d: d["connected"] and d["address"] != old and d["verified_ms"] is not None)(
        bench.datapath("brb0")), timeout=600, what="brb0 back and verified")
    verified = bench.datapath("brb0")["verified_ms"]
    time.sleep(max(2.0, verified / 2000))  # what the sync left behind, then a quiet while
    wall["reconnect"] = (back_wall, time.time())
    return back, time.monotonic(), {"change_s": change_s, "change_timings_ms": out["timings"],
                                    "verified_ms": verified,
                                    "flow_mods": bench.metric("lisp_flow_mods_sent_total") - mods}


def store_section(tb: Testbed, store: str, members: int, stack: contextlib.ExitStack) -> str:
    """The controller's [store]: "" for SQLite (lab/scenario.py gives it a
    file), else an etcd cluster in the controller's namespace, closed by
    `stack`. One instance: its lease at etcd's default minimum (2 s)."""
    if store == "sqlite":
        return ""
    ctl = tb.add_controller()
    cluster = stack.enter_context(EtcdCluster(members, ns=ctl.ns))
    return cluster.store_section() + '[cluster]\ninstance = "bench"\nlease_ttl = 2\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="mappings in the bulk request")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle sampling first")
    parser.add_argument("--browse", type=float, default=10.0, help="seconds of sorted and searched polling")
    parser.add_argument("--old-page", action="store_true", help="poll every mapping, as the page once did")
    parser.add_argument("--no-deep", action="store_true", help="leave out the deep check phase")
    parser.add_argument("--no-flows", action="store_true", help="leave out the flows phase")
    parser.add_argument("--no-reconnect", action="store_true", help="leave out the reconnect phase")
    parser.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite", help="the controller's store")
    parser.add_argument("--etcd-members", type=int, default=1, help="with --store etcd: the cluster's members")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--watch", type=Path, help="record the hub's stalls and their stacks here")
    parser.add_argument("--census", type=float, metavar="MS",
                        help="with --watch: after a full collection over MS, what it walked (slows the run)")
    args = parser.parse_args(argv)

    with Testbed() as tb, contextlib.ExitStack() as stack:
        if args.watch:
            args.watch.unlink(missing_ok=True)
        hooks = ("--watch-hub", str(args.watch.resolve())) if args.watch else ()
        if args.watch and args.census:
            hooks += ("--watch-census", str(args.census))
        bench = Bench(tb, bridges=1, hooks=hooks,
                      store_section=store_section(tb, args.store, args.etcd_members, stack))
        bench.connect(1)
        ns = bench.ctl_ns.ns
        echo = EchoProbe(tb, ns, bench.ctl_ns.address)
        health = HttpProbe(tb, ns, ("/v1/health",), 0.01)
        page = HttpProbe(tb, ns, PAGE + ((OLD_PAGE,) if args.old_page else (FIRST_PAGE,)), 2.0)
        body = bulk_body(args.size)
        echo.start()
        health.start()
        time.sleep(args.idle)
        idle_end = time.monotonic()
        wall = {"idle": (0.0, time.time())}
        page.start()
        started = time.monotonic()
        result = bench.controller_bulk(body, args.size)
        ended = time.monotonic()
        wall["bulk"] = (wall["idle"][1], time.time())
        page.halt.set()
        page.join(timeout=300)
        browse = HttpProbe(tb, ns, PAGE + ((OLD_PAGE,) if args.old_page else (BROWSING,)), 2.0)
        browse.start()
        browse_start = time.monotonic()
        time.sleep(args.browse)
        browse_end = time.monotonic()
        wall["browsing"] = (wall["bulk"][1], time.time())
        browse.halt.set()
        browse.join(timeout=300)
        last = "browsing"
        flows = None
        if not args.no_flows:
            flows = flows_phase(bench)
            wall["flows"] = (wall[last][1], time.time())
            last = "flows"
        away = None
        if not args.no_reconnect:
            away = reconnect_phase(bench, body, wall)
            last = "reconnect"
        deep = None
        if not args.no_deep:
            deep = deep_check(bench, timeout=300)
            wall["deep check"] = (wall[last][1], time.time())
        for probe in (echo, health, page, browse):
            probe.halt.set()
            probe.join(timeout=300)
            if probe.error is not None:
                raise RuntimeError(f"{type(probe).__name__} failed") from probe.error
        bench.ctl.stop()
    figures = {
        "size": args.size, "store": args.store if args.store == "sqlite" else f"etcd, {args.etcd_members} members",
        "bulk_s": result["seconds"], "bulk_timings_ms": result["timings_ms"],
        "echo": {"idle": summary(echo.between(0, idle_end)), "busy": summary(echo.between(started, ended))},
        "health": {"idle": summary(health.between(0, idle_end)),
                   "busy": summary(health.between(started, ended))},
        "status_page_polls": summary(page.between(started, ended)),
        "browsing": {"echo": summary(echo.between(browse_start, browse_end)),
                     "health": summary(health.between(browse_start, browse_end)),
                     "polls": summary(browse.between(browse_start, browse_end))},
        "deep_check": None if deep is None else {
            "verify_ms": deep[2], "echo": summary(echo.between(deep[0], deep[1])),
            "health": summary(health.between(deep[0], deep[1]))},
        "page": "old: every mapping" if args.old_page else "one page",
        "phases": wall,  # wall-clock spans, to read the watch's records by phase
        "flows": None if flows is None else {
            **flows[2], "echo": summary(echo.between(flows[0], flows[1])),
            "health": summary(health.between(flows[0], flows[1]))},
        "reconnect": None if away is None else {
            **away[2], "echo": summary(echo.between(away[0], away[1])),
            "health": summary(health.between(away[0], away[1]))},
    }
    print(f"bulk of {args.size:,} mappings: {result['seconds']:.2f} s, with the status page polling "
          f"({figures['status_page_polls']['n']} polls, p50 {figures['status_page_polls'].get('p50_ms', 0):.0f} ms)")
    print("  its stages (ms): " + ", ".join(f"{k} {v:,.0f}" for k, v in result["timings_ms"].items()))
    print(line("OpenFlow echo", figures["echo"]["idle"], figures["echo"]["busy"]))
    print(line("GET /v1/health", figures["health"]["idle"], figures["health"]["busy"]))
    b = figures["browsing"]
    print(f"browsing ({'every mapping' if args.old_page else 'sorted by packets, searched'}, "
          f"{b['polls']['n']} polls, p50 {b['polls'].get('p50_ms', 0):.0f} ms):")
    print(line("OpenFlow echo", figures["echo"]["idle"], b["echo"]))
    print(line("GET /v1/health", figures["health"]["idle"], b["health"]))
    if flows is not None:
        f = figures["flows"]
        print(f"flows of brb0 ({f['flows']:,} flows, {f['bytes'] / 1e6:.0f} MB in {f['seconds']:.2f} s):")
        print(line("OpenFlow echo", figures["echo"]["idle"], f["echo"]))
        print(line("GET /v1/health", figures["health"]["idle"], f["health"]))
    if away is not None:
        r = figures["reconnect"]
        print(f"reconnect after a change of {args.size:,} made while away ({r['change_s']:.1f} s): "
              f"back and verified in {r['verified_ms'] / 1000:.1f} s, {r['flow_mods']:,.0f} flow-mods:")
        print(line("OpenFlow echo", figures["echo"]["idle"], r["echo"]))
        print(line("GET /v1/health", figures["health"]["idle"], r["health"]))
    if deep is not None:
        d = figures["deep_check"]
        print(f"deep check (the comparison took {deep[2]:.0f} ms, then the diff):")
        print(line("OpenFlow echo", figures["echo"]["idle"], d["echo"]))
        print(line("GET /v1/health", figures["health"]["idle"], d["health"]))
    if args.watch:
        figures["stalls"] = stalls(args.watch, wall)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
