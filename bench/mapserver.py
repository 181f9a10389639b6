"""Benchmark: the Map-Server and Map-Resolver of the real controller process,
against a bare UDP echo on the same path, in the same run.

    .venv/bin/python bench/mapserver.py                   # 100,000 registered EIDs
    .venv/bin/python bench/mapserver.py --eids 2000 --seconds 1   # a quick look

The controller runs Map-Server-only in a namespace of its own (no bridge);
the client runs in the same namespace, over loopback. Measured:

1. Map-Registers per second: one-record Map-Registers asking for a
   Map-Notify, a window of them outstanding, until 100,000 EIDs (--eids)
   are registered;
2. Map-Requests answered per second with those EIDs registered: ECM
   Map-Requests for random registered EIDs, a window outstanding;
3. their latency (p50, p99, max) at a steady 1,000 requests per second,
   the controller's CPU per answer at that rate (every answer then wakes
   it), and its own histogram's share answered within 0.5 and 1 ms of a
   request's arrival during that run;

and 2 and 3 again against a bare UDP echo server (a Python process that
sends each datagram back, nothing else): the floor of any Python service on
this path. Prints a table and the ratios; --json writes the figures.
Needs root (namespaces); sends traffic nowhere but loopback in its namespace.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import random
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.lisp_peer import eid_record  # noqa: E402
from lab.scenario import ControllerProcess, build  # noqa: E402
from lab.processes import wait_until  # noqa: E402
from lab.testbed import Testbed  # noqa: E402
from lisp_controller.cli.api import ApiClient  # noqa: E402
from lisp_controller.lisp import (AuthKey, InstanceIdAddress, MapRegister, MapRequest, MapRequestRecord,  # noqa: E402
                                  encode, sign, wrap_in_ecm)

IID = 7
KEY = AuthKey(1, b"bench-site-key")
SERVER = "172.31.255.1"
CLIENT = "172.31.255.2"
ECHO_PORT = 4343
CONFIG = f"""
[controller]
listen = "{SERVER}"

[lisp]
listen = "{SERVER}"
register_rate = 10000000
request_rate = 10000000

[[site]]
name = "bench"
keys = [{{key_id = 1, key = "bench-site-key"}}]
max_registrations = 10000000
prefixes = [{{iid = {IID}, eid = "10.0.0.0/8", accept_more_specifics = true}}]
"""
ECHO = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" \
       "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)\ns.bind(({host!r}, {port}))\n" \
       "print('ready', flush=True)\nwhile True:\n    d, a = s.recvfrom(65535)\n    s.sendto(d, a)\n"


def eid(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0A000001 + i * 4))   # 10.0.0.1, 10.0.0.5, ...: never adjacent


def registers(n: int) -> list[bytes]:
    """One-record Map-Registers for n host EIDs, asking for proxy replies
    (a different nonce each: the nonce of the Map-Notify says which one it
    answers)."""
    out = []
    for i in range(n):
        record = eid_record(IID, f"{eid(i)}/32", ["192.0.2.1"], ttl=600)
        out.append(sign(MapRegister(i.to_bytes(8, "big"), (record,), use_ttl_for_timeout=True,
                                    want_map_notify=True, proxy_reply=True), KEY))   # we answer for them
    return out


def requests(n: int, eids: int, rng: random.Random) -> list[bytes]:
    """ECM Map-Requests for random registered EIDs, nonce = sequence number."""
    out = []
    itr = ipaddress.IPv4Address(CLIENT)
    for i in range(n):
        target = ipaddress.IPv4Address(eid(rng.randrange(eids)))
        request = MapRequest(i.to_bytes(8, "big"), (MapRequestRecord(InstanceIdAddress(IID, target), 32),), (itr,))
        out.append(encode(wrap_in_ecm(request, itr, target, 4342)))
    return out


def nonce_of(reply: bytes, echo: bool) -> int:
    """The nonce of a Map-Reply/Notify (bytes 4..12), or of the request an
    echo sent back (behind ECM, IP and UDP headers: bytes 36..44)."""
    start = 36 if echo else 4
    return int.from_bytes(reply[start:start + 8], "big")


def windowed(sock: socket.socket, target: tuple, payloads: list[bytes], window: int, seconds: float,
             sent_at: int, answer_at: int, retry: bool = False) -> tuple[int, float]:
    """Send ``payloads`` keeping ``window`` unanswered (answers matched by
    the nonce at byte ``sent_at`` of a payload, ``answer_at`` of an answer);
    answers per second over at most ``seconds``. With ``retry``, payloads
    whose answer did not come within a second are sent again until every
    one is answered (registrations must all land)."""
    sock.setblocking(False)
    pending = {int.from_bytes(p[sent_at:sent_at + 8], "big"): p for p in payloads}
    queue = list(pending)
    outstanding: dict[int, float] = {}
    answered = 0
    started = time.perf_counter()
    deadline = started + seconds
    while pending and time.perf_counter() < deadline:
        now = time.perf_counter()
        while queue and len(outstanding) < window:
            nonce = queue.pop()
            if nonce in pending:
                sock.sendto(pending[nonce], target)
                outstanding[nonce] = now
        if not select.select([sock], [], [], 0.05)[0]:
            stale = [n for n, t in outstanding.items() if now - t > 1.0]
            for n in stale:   # lost: give the window back, and try again if asked to
                del outstanding[n]
                if retry:
                    queue.append(n)
                else:
                    pending.pop(n, None)
            continue
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                break
            nonce = int.from_bytes(data[answer_at:answer_at + 8], "big")
            if outstanding.pop(nonce, None) is not None and pending.pop(nonce, None) is not None:
                answered += 1
    return answered, answered / (time.perf_counter() - started)


def drain(sock: socket.socket, quiet: float = 0.5) -> None:
    """Read and drop answers until none has come for ``quiet`` seconds."""
    sock.setblocking(False)
    while select.select([sock], [], [], quiet)[0]:
        while True:
            try:
                sock.recv(65535)
            except BlockingIOError:
                break


def paced(sock: socket.socket, target: tuple, payloads: list[bytes], rate: float, echo: bool = False) -> list[float]:
    """Send one payload every 1/rate s; the round-trip time of each answer (s)."""
    sock.setblocking(False)
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    interval = 1.0 / rate
    started = time.perf_counter()
    for i, payload in enumerate(payloads):
        due = started + i * interval
        while True:
            now = time.perf_counter()
            timeout = due - now
            ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
            if ready:
                _drain(sock, sent_at, rtts, echo)
            if time.perf_counter() >= due:
                break
        sent_at[nonce_of(payload, True) if echo else i] = time.perf_counter()
        sock.sendto(payload, target)
    end = time.perf_counter() + 1.0
    while len(rtts) < len(payloads) and time.perf_counter() < end:
        if select.select([sock], [], [], 0.1)[0]:
            _drain(sock, sent_at, rtts, echo)
    return rtts


def _drain(sock, sent_at, rtts, echo) -> None:
    now = time.perf_counter()
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return
        start = sent_at.pop(nonce_of(data, echo), None)
        if start is not None:
            rtts.append(now - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (from /proc): divided by the
    requests answered meanwhile, the cost of one answer, which other work on
    the machine inflates far less than it does wall-clock rates."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(pid: int | None, out: Path | None, seconds: float) -> subprocess.Popen | None:
    """py-spy sampling ``pid`` for ``seconds`` into ``out`` (collapsed
    stacks, one line per stack and thread: where the process's time
    goes; without --idle py-spy leaves out what waits in the kernel, but
    not sampling without stopping the process, so the hub's poll shows).
    None when there is nothing to profile."""
    if pid is None or out is None:
        return None
    py_spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy on PATH or in $PY_SPY")
    proc = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "1000", "--duration",
                             str(max(1, round(seconds))), "--format", "raw", "--output", str(out),
                             "--nonblocking", "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)   # let it attach before the requests start
    return proc


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def registered(tb, ns: str) -> int:
    body = ApiClient(timeout=30, around=lambda: tb.netns(ns))("GET", "/v1/sites")[1]
    return body["sites"][0]["registered"]


def handler_buckets(tb, ns: str) -> dict[str, float]:
    """The controller's own lisp_map_request_seconds histogram, cumulative
    counts by bound: from a batch's arrival to its answers sent, inside
    the process (the rest of a round trip is the sockets, the hub and the
    scheduler)."""
    text = ApiClient(timeout=30, around=lambda: tb.netns(ns))("GET", "/metrics")[1]
    buckets = {}
    for line in text.splitlines():
        if line.startswith('lisp_map_request_seconds_bucket{le="'):
            bound = line.split('"')[1]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
    return buckets


def health_rtts(tb, ns: str, seconds: float, interval: float = 0.02) -> list[float]:
    """Round trips of GET /v1/health, one every ``interval`` s for
    ``seconds``: how long the hub takes to get to an API request."""
    client = ApiClient(timeout=30, around=lambda: tb.netns(ns))
    rtts, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        client("GET", "/v1/health")
        rtts.append(time.perf_counter() - started)
        time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    return rtts


def hub_while_answering(tb, ns: str, sock: socket.socket, payloads: list[bytes], rate: float) -> dict:
    """GET /v1/health round trips idle, then while the controller answers
    ``payloads`` at ``rate`` a second (the hub shares the interpreter
    with the listener's thread: docs/performance.rst)."""
    idle = health_rtts(tb, ns, len(payloads) / rate)
    busy: list[float] = []
    poller = threading.Thread(target=lambda: busy.extend(health_rtts(tb, ns, len(payloads) / rate)))
    poller.start()
    rtts = paced(sock, (SERVER, 4342), payloads, rate)
    poller.join()
    drain(sock)
    ms = lambda values, q: round(percentile(values, q) * 1000, 3)   # noqa: E731
    return {"rate": rate, "answered": len(rtts), "sent": len(payloads),
            "health_idle_p50_ms": ms(idle, 0.5), "health_idle_p99_ms": ms(idle, 0.99),
            "health_busy_p50_ms": ms(busy, 0.5), "health_busy_p99_ms": ms(busy, 0.99),
            "health_busy_max_ms": round(max(busy, default=float("nan")) * 1000, 3)}


def within(after: dict[str, float], before: dict[str, float]) -> dict:
    """The share of the requests answered between two readings of the
    histogram within each bound."""
    total = (after.get("+Inf", 0) - before.get("+Inf", 0)) or 1
    return {f"within_{bound}s": round((count - before.get(bound, 0)) / total, 4)
            for bound, count in after.items() if bound != "+Inf"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/mapserver.py")
    parser.add_argument("--eids", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the throughput runs")
    parser.add_argument("--window", type=int, default=64, help="requests outstanding in throughput runs")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second in the latency runs")
    parser.add_argument("--hub-rate", type=float, default=10000.0,
                        help="requests per second while the API's latency is measured (0: leave it out)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, metavar="PREFIX",
                        help="record the controller with py-spy during its throughput and paced runs into "
                             "PREFIX.throughput.txt and PREFIX.paced.txt (py-spy on PATH or in $PY_SPY)")
    args = parser.parse_args(argv)
    rng = random.Random(4342)
    load_at_start = os.getloadavg()[0]   # other work on the machine: the rates move with it
    print(f"building {args.eids} Map-Registers and {int(args.rate * args.seconds)} + 200000 Map-Requests ...",
          flush=True)
    started = time.monotonic()
    regs = registers(args.eids)
    throughput_requests = requests(200_000, args.eids, rng)
    latency_requests = requests(int(args.rate * args.seconds), args.eids, rng)
    print(f"built in {time.monotonic() - started:.0f} s", flush=True)
    results: dict = {"eids": args.eids, "window": args.window, "rate": args.rate}
    with Testbed() as tb:
        path = tb.tmpdir / "mapserver.toml"
        path.write_text(CONFIG)
        ov = build(tb, path)
        ns = ov.controller_ns.ns
        ov.controller_ns.run("ip", "addr", "add", f"{CLIENT}/24", "dev", ov.controller_ns.bridge)
        ctl = ControllerProcess(ov).start()
        ctl.wait_log("LISP control on")
        echo = tb.spawn(ns, [sys.executable, "-c", ECHO.format(host=SERVER, port=ECHO_PORT)],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert echo.stdout.readline().strip() == b"ready"
        with tb.netns(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((CLIENT, 4342))
        try:
            n, per_second = windowed(sock, (SERVER, 4342), regs, args.window, 600, 4, 4, retry=True)
            results["registers_per_s"] = round(per_second)
            wait_until(lambda: registered(tb, ns) >= args.eids, timeout=120, what="every EID registered")
            results["registered"] = registered(tb, ns)
            time.sleep(2)   # let the batched commits land in the map-cache
            for name, target, echo_mode, pid in (("echo", (SERVER, ECHO_PORT), True, echo.pid),
                                                 ("controller", (SERVER, 4342), False, ctl.proc.pid)):
                profiled = pid if name == "controller" and args.profile is not None else None
                profiler = profile(profiled, args.profile and args.profile.with_suffix(".throughput.txt"),
                                   args.seconds)
                cpu = cpu_seconds(pid)
                n, per_second = windowed(sock, target, throughput_requests, args.window, args.seconds,
                                         36, 36 if echo_mode else 4)
                cpu_us = (cpu_seconds(pid) - cpu) / max(n, 1) * 1e6
                if profiler is not None:
                    profiler.wait(timeout=60)
                drain(sock)   # what the throughput run left queued must not delay the paced one
                before = handler_buckets(tb, ns) if name == "controller" else None
                profiler = profile(profiled, args.profile and args.profile.with_suffix(".paced.txt"),
                                   len(latency_requests) / args.rate)
                cpu = cpu_seconds(pid)
                rtts = paced(sock, target, latency_requests, args.rate, echo_mode)
                paced_cpu_us = (cpu_seconds(pid) - cpu) / max(len(rtts), 1) * 1e6
                if profiler is not None:
                    profiler.wait(timeout=60)
                results[name] = {"answered_per_s": round(per_second), "cpu_us_per_answer": round(cpu_us, 1),
                                 "latency_n": len(rtts),
                                 "latency_sent": len(latency_requests),
                                 "p50_ms": round(percentile(rtts, 0.5) * 1000, 3),
                                 "p99_ms": round(percentile(rtts, 0.99) * 1000, 3),
                                 "max_ms": round(max(rtts, default=float("nan")) * 1000, 3),
                                 "paced_cpu_us_per_answer": round(paced_cpu_us, 1)}
                if before is not None:
                    results[name]["handler"] = within(handler_buckets(tb, ns), before)
            if args.hub_rate:
                results["hub"] = hub_while_answering(tb, ns, sock, throughput_requests[:int(args.hub_rate * 3)],
                                                     args.hub_rate)
        finally:
            sock.close()
        results["controller_rss_mb"] = round(int(open(f"/proc/{ctl.proc.pid}/status").read()
                                                 .split("VmRSS:")[1].split()[0]) / 1024, 1)
    c, e = results["controller"], results["echo"]
    results["ratio_answered"] = round(c["answered_per_s"] / e["answered_per_s"], 3)
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "date": datetime.date.today().isoformat(), "load_average": [load_at_start, os.getloadavg()[0]]}
    print(f"Map-Registers (1 record, Map-Notify each): {results['registers_per_s']:>8}/s  "
          f"({results['registered']} EIDs registered)")
    print(f"{'':32}{'answered/s':>12}{'CPU us/answer':>15}   at {args.rate:g}/s:{'p50 ms':>8}{'p99 ms':>9}"
          f"{'max ms':>9}{'CPU us/answer':>15}  answered")
    for name in ("echo", "controller"):
        r = results[name]
        print(f"{'Map-Requests, ' + name:32}{r['answered_per_s']:>12}{r['cpu_us_per_answer']:>15}{'':>12}"
              f"{r['p50_ms']:>8}{r['p99_ms']:>9}{r['max_ms']:>9}{r['paced_cpu_us_per_answer']:>15}  "
              f"{r['latency_n']}/{r['latency_sent']}")
    print(f"controller / echo: {results['ratio_answered']:.2f} of the echo's rate, "
          f"p99 {c['p99_ms'] / e['p99_ms']:.1f} times the echo's; controller RSS {results['controller_rss_mb']} MB; "
          f"load average {results['machine']['load_average'][0]:.2f} at the start, "
          f"{results['machine']['load_average'][1]:.2f} at the end")
    shares = c["handler"]
    print(f"inside the controller at {args.rate:g}/s, arrival to answer sent: " + ", ".join(
        f"{share:.1%} within {key[7:-1]} s" for key, share in shares.items() if key[7:-1] in ("0.0005", "0.001", "0.01")))
    if "hub" in results:
        h = results["hub"]
        print(f"GET /v1/health p50/p99 ms: idle {h['health_idle_p50_ms']}/{h['health_idle_p99_ms']}, while "
              f"answering {h['rate']:g}/s ({h['answered']}/{h['sent']} answered) {h['health_busy_p50_ms']}/"
              f"{h['health_busy_p99_ms']} (max {h['health_busy_max_ms']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
