"""Benchmark: a map-cache miss resolved through the mapping system, against
the round trip to the map-resolver alone, in the same run.

    python bench/resolve.py                      # 1,000 EIDs, 10,000 for the rate, 100k bulk
    python bench/resolve.py --eids 200 --burst 2000 --bulk 10000   # a quick look

Real OVS (userspace datapath), the controller as a process, and a mapping
system (lab/fakems.py) in a namespace of its own on the management LAN:

1. miss to first packet delivered: a VM behind our bridge sends one UDP
   datagram to each of N distinct EIDs that only the mapping system knows,
   one at a time; the time from the send to its arrival at the remote VM
   (both measured by this process, one clock) is the cost of the miss:
   packet-in, Map-Request, Map-Reply, flows confirmed by barrier,
   packet-out, tunnel. p50 and p99;
2. the floor: an ECM Map-Request from the controller's namespace to the
   same map-resolver and its Map-Reply back, N times: what no resolution can
   beat. p50 and p99, and the difference;
3. resolutions per second: M more EIDs missed at a steady rate while a
   REST bulk request programs 100,000 unrelated mappings; resolved EIDs per
   second from the first send to the last arrival, and how many made it;
   and those resolved while the bulk ran and misses were still being
   offered (30,000 at 2,500 a second last 12 s, longer than the bulk here);
   the controller's CPU time per resolution without the bulk, and the CPU
   time of the controller and of hv1's OVS in each phase (/proc).

Targets: p99 within 5 ms of the floor's p99; at least 2,000 resolutions a
second. Prints a table and writes JSON (bench/results/resolve.json unless
--json). Needs root; sends traffic only inside its own namespaces.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.scenario import ControllerProcess, Topology  # noqa: E402
from lab.processes import wait_until  # noqa: E402
from lab.testbed import Testbed  # noqa: E402
from lisp_controller.cli.api import ApiClient  # noqa: E402
from lisp_controller.config import load_config  # noqa: E402
from lisp_controller.lisp import decode  # noqa: E402
from lisp_controller.lisp.resolver import map_request  # noqa: E402
from lisp_controller.lisp.xtr import SO_RCVBUFFORCE  # noqa: E402
from lisp_controller.model import as_prefix  # noqa: E402

IID = 1000
HV1_RLOC, HV2_RLOC = "192.168.1.249", "192.168.1.252"
MS_HOST = 150
LATENCY_FIRST, RATE_FIRST = ipaddress.IPv4Address("10.2.0.0"), ipaddress.IPv4Address("10.3.0.0")
RATE_ALONE_FIRST = ipaddress.IPv4Address("10.3.128.0")  # the same rate without a bulk: the baseline
SINK_PORT = 9999
GATEWAY, GATEWAY_MAC = "10.1.1.1", "02:00:00:00:01:01"

CONFIG = f"""
[controller]
listen = "172.31.255.1"

[api]
confirm_timeout = 600.0
max_body_bytes = 1073741824

[lisp]
map_resolvers = ["172.31.255.{MS_HOST}"]

[[bridge]]
datapath_id = "00008ad828ce7949"
rloc = "{HV1_RLOC}"
iid = {IID}

  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:b8:27:75"
  eids = ["10.1.1.20"]
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Bench:
    def __init__(self, tb: Testbed, tmp: Path, eids: int, burst: int, bulk_burst: int):
        self.tb = tb
        path = tmp / "resolve.toml"
        path.write_text(CONFIG)
        ctl_ns = tb.add_controller()
        seg = tb.add_segment("underlay", "192.168.1.0/24")
        self.hv1 = tb.add_hypervisor("hv1", HV1_RLOC, 24, seg, "00008ad828ce7949", controller=ctl_ns)
        self.hv2 = tb.add_hypervisor("hv2", HV2_RLOC, 24, seg, "00001e2e0e0cf040")
        self.vm1 = tb.add_vm(self.hv1, "vm1", "52:54:00:b8:27:75", "10.1.1.20/24", port_name="vnet0")
        self.vm2 = tb.add_vm(self.hv2, "vm2", "52:54:00:1b:ea:d5", "10.1.1.30/24", port_name="vnet0")
        # vm1 reaches the EIDs through a gateway MAC (table 0 does not look at it);
        # vm2 takes every EID as its own (AnyIP) so one socket receives them all.
        self.vm1.run("ip", "route", "add", "10.0.0.0/8", "via", GATEWAY)
        self.vm1.neigh_add(GATEWAY, GATEWAY_MAC)
        self.vm2.run("ip", "route", "add", "local", "10.2.0.0/15", "dev", "lo")
        ports = self.hv2.port_numbers()
        self.hv2.add_flows([f"table=0,priority=3,in_port={ports['lisp0']},dl_dst=00:00:00:00:00:00"
                            f" actions=mod_dl_dst:{self.vm2.mac},output:{ports['vnet0']}",
                            "table=0,priority=0 actions=NORMAL"])
        self.ms_ns, self.ms_address = tb.add_mgmt_host("ms", MS_HOST)
        log = tb.tmpfile("ms", ".log")
        with open(log, "wb") as out:
            tb.spawn(self.ms_ns, [sys.executable, "-m", "lab.fakems", "--listen", self.ms_address,
                                  "--hosts", f"{IID}:{LATENCY_FIRST}:{eids}:{HV2_RLOC}:60",
                                  "--hosts", f"{IID}:{RATE_FIRST}:{bulk_burst}:{HV2_RLOC}:60",
                                  "--hosts", f"{IID}:{RATE_ALONE_FIRST}:{burst}:{HV2_RLOC}:60"],
                     env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: "ready" in log.read_text(), timeout=30, what="mapping system ready")
        self.ov = Topology(tb, path, load_config(path), ctl_ns, seg, hypervisors=[self.hv1], vms=[self.vm1])
        self.ctl = ControllerProcess(self.ov).start()
        wait_until(lambda: any("table=4" in f for f in self.hv1.dump_flows()), timeout=30, what="hv1 programmed")
        wait_until(self._api_up, timeout=30, what="API up")
        with tb.netns(self.vm1.ns):
            self.send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with tb.netns(self.vm2.ns):
            self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sink.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # bursts after a bulk
            self.sink.bind(("0.0.0.0", SINK_PORT))

    def _api_up(self) -> bool:
        try:
            return self.api("GET", "/v1/health")[0] == 200
        except OSError:
            return False

    def api(self, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
        return ApiClient(timeout=600, around=lambda: self.tb.netns(self.ov.controller_ns.ns))(method, path, raw=body)

    def underlay_drops(self) -> dict:
        """Packets each hypervisor's OVS counted as dropped on its underlay
        port (a burst it could not take in time)."""
        out = {}
        for hv in (self.hv1, self.hv2):
            stats = hv.vsctl("get", "Interface", hv.underlay_iface, "statistics")
            out[hv.name] = {k: int(v) for k, v in (item.split("=") for item in stats.strip("{}").split(", "))
                            if k in ("rx_dropped", "tx_dropped", "rx_errors", "tx_errors")}
        return out

    def sink_drops(self) -> int:
        """Datagrams the receiving VM's kernel dropped (its socket was full)."""
        text = self.tb.run(self.vm2.ns, "cat", "/proc/net/udp").stdout
        port = f":{SINK_PORT:04X} "
        return sum(int(line.split()[-1]) for line in text.splitlines() if port in line.split(None, 2)[1] + " ")

    # -- 1. a miss, to its first packet delivered ------------------------------
    def miss_latency(self, n: int) -> tuple[list[float], list[int]]:
        """Milliseconds per delivered EID, and the EIDs (indexes) whose
        packet never arrived (waited for 3 s each)."""
        out, lost = [], []
        self.sink.settimeout(3)
        for i in range(n):
            dst = str(LATENCY_FIRST + i)
            started = time.perf_counter()
            self.send.sendto(i.to_bytes(4, "big"), (dst, SINK_PORT))
            try:
                while int.from_bytes(self.sink.recv(64)[:4], "big") != i:
                    pass
            except socket.timeout:
                lost.append(i)
                continue
            out.append((time.perf_counter() - started) * 1000)
        return out, lost

    # -- 2. the floor: the map-resolver's round trip alone --------------------------
    def floor(self, n: int) -> list[float]:
        with self.tb.netns(self.ov.controller_ns.ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.ov.config.openflow_host, 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        itr = ipaddress.IPv4Address(self.ov.config.openflow_host)
        out = []
        try:
            for i in range(n):
                nonce = (i + 1).to_bytes(8, "big")
                request = map_request(nonce, IID, as_prefix(LATENCY_FIRST + i), ipaddress.IPv4Address("10.1.1.20"),
                                      itr, port)
                started = time.perf_counter()
                sock.sendto(request, (self.ms_address, 4342))
                while decode(sock.recv(65535)).nonce != nonce:
                    pass
                out.append((time.perf_counter() - started) * 1000)
        finally:
            sock.close()
        return out

    # -- 3. resolutions per second under a bulk request --------------------------------
    def rate(self, first: ipaddress.IPv4Address, count: int, pps: int, bulk: int) -> dict:
        arrived: dict[int, float] = {}
        stop = threading.Event()

        def receive() -> None:
            self.sink.settimeout(0.2)
            while not stop.is_set():
                try:
                    data = self.sink.recv(64)
                except socket.timeout:
                    continue
                i = int.from_bytes(data[:4], "big")
                arrived.setdefault(i, time.perf_counter())

        body = json.dumps({"mappings": [{"iid": 4242, "eid": f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32",
                                         "rlocs": [HV2_RLOC]} for i in range(bulk)]}).encode()
        bulk_times = {}

        def program() -> None:
            bulk_times["start"] = time.perf_counter()
            status, answer = self.api("POST", "/v1/mappings/bulk", body)
            bulk_times["end"] = time.perf_counter()
            bulk_times["status"] = status
            if status == 200:
                bulk_times["stages_ms"] = answer.get("timings")

        receiver = threading.Thread(target=receive)
        receiver.start()
        bulker = threading.Thread(target=program) if bulk else None
        started = last_sent = time.perf_counter()
        try:
            for i in range(count):
                if i == count // 10 and bulker is not None:
                    bulker.start()  # the bulk begins once the misses flow
                due = started + i / pps
                ahead = due - time.perf_counter()
                if ahead > 0.001:  # paced by sleeping: a busy sender would take a core from the switch
                    time.sleep(ahead)
                self.send.sendto((1 << 31 | i).to_bytes(4, "big"), (str(first + i), SINK_PORT))
            last_sent = time.perf_counter()
            if bulker is not None:
                bulker.join()
            wait_until(lambda: len(arrived) >= count, timeout=30, what="every burst EID delivered",
                       interval=0.2) if count else None
        except TimeoutError:
            pass
        finally:
            stop.set()
            receiver.join()
        ours = sorted(t for i, t in arrived.items() if i >> 31)
        missing = sorted(set(range(count)) - {i & 0x7FFFFFFF for i in arrived if i >> 31})
        last = ours[-1] if ours else started
        out = {"sent": count, "delivered": len(ours), "seconds": round(last - started, 3),
               "resolutions_per_s": round(len(ours) / (last - started), 1) if ours else 0.0,
               "longest_gap_s": round(max((b - a for a, b in zip(ours, ours[1:])), default=0.0), 3),
               "send_rate": pps, "bulk": bulk, "lost": missing[:50],
               # when it ran (for the controller's log) and EIDs delivered per
               # half second from the first send: where the pauses are
               "started_at": round(time.time() - (time.perf_counter() - started), 3),
               "delivered_per_half_s": _histogram(ours, started, 0.5)}
        if "end" in bulk_times:
            window = bulk_times["end"] - bulk_times["start"]
            inside = sum(1 for t in ours if bulk_times["start"] <= t <= bulk_times["end"])
            # While misses were being offered: a bulk that outlasts the
            # misses would otherwise count its idle end against the rate.
            offered_end = min(bulk_times["end"], last_sent)
            offered = sum(1 for t in ours if bulk_times["start"] <= t <= offered_end)
            out.update(bulk_status=bulk_times["status"], bulk_s=round(window, 3),
                       bulk_from_s=round(bulk_times["start"] - started, 3),
                       during_bulk_per_s=round(inside / window, 1),
                       during_bulk_offered_s=round(offered_end - bulk_times["start"], 3),
                       during_bulk_offered_per_s=round(offered / max(offered_end - bulk_times["start"], 1e-9), 1),
                       bulk_stages_ms=bulk_times.get("stages_ms"))
        return out


def _histogram(times: list[float], start: float, width: float) -> list[int]:
    """How many of `times` fall in each `width` seconds from `start`."""
    out: list[int] = []
    for t in times:
        i = int((t - start) / width)
        out += [0] * (i + 1 - len(out))
        out[i] += 1
    return out


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "load_average": os.getloadavg(),
            "ovs": subprocess.run(["ovs-vswitchd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eids", type=int, default=1000, help="distinct EIDs for the latency")
    parser.add_argument("--burst", type=int, default=10000, help="EIDs missed for the rate")
    parser.add_argument("--pps", type=int, default=2500, help="misses sent per second for the rate")
    parser.add_argument("--bulk-burst", type=int, default=30000,
                        help="EIDs missed during the bulk: enough to last all of it (at most 32768)")
    parser.add_argument("--bulk", type=int, default=100000, help="mappings programmed meanwhile (0: none)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "resolve.json"))
    args = parser.parse_args(argv)
    if not 0 < args.burst <= 32768 or not 0 < args.bulk_burst <= 32768:
        parser.error("--burst and --bulk-burst take 1 to 32768 EIDs (each has a /17 of its own)")
    with Testbed() as tb:
        b = Bench(tb, tb.tmpdir, args.eids, args.burst, args.bulk_burst)
        floor = b.floor(args.eids)
        miss, lost = b.miss_latency(args.eids)
        pids = {"controller": b.ctl.pid, "hv1_ovs": int(b.hv1.vswitchd_pidfile.read_text())}
        before = {k: cpu_seconds(pid) for k, pid in pids.items()}
        alone = b.rate(RATE_ALONE_FIRST, args.burst, args.pps, 0)
        middle = {k: cpu_seconds(pid) for k, pid in pids.items()}
        rate = b.rate(RATE_FIRST, args.bulk_burst if args.bulk else args.burst, args.pps, args.bulk)
        after = {k: cpu_seconds(pid) for k, pid in pids.items()}
        # CPU time per resolution moves far less than resolutions per second
        # on a machine shared with other work (bench/mapserver.py does the same).
        for phase, start, end in ((alone, before, middle), (rate, middle, after)):
            phase["cpu_s"] = {k: round(end[k] - start[k], 2) for k in pids}
            phase["controller_cpu_us_per_resolution"] = round(
                (end["controller"] - start["controller"]) / max(phase["delivered"], 1) * 1e6)
        log = b.ctl.log()
        if os.environ.get("RESOLVE_KEEP_LOG"):   # for a look at what the controller said
            Path(os.environ["RESOLVE_KEEP_LOG"]).write_text(log)
        control = b.api("GET", "/v1/lisp")[1]
        sink_drops = b.sink_drops()
        underlay = b.underlay_drops()
        meter = b.hv1.ofctl("meter-stats", "br2")
    result = {
        "machine": machine(), "eids": args.eids, "lost": lost,
        "miss_to_delivery_ms": {"p50": round(pct(miss, .5), 3), "p99": round(pct(miss, .99), 3),
                                "mean": round(statistics.mean(miss), 3)},
        "floor_ms": {"p50": round(pct(floor, .5), 3), "p99": round(pct(floor, .99), 3),
                     "mean": round(statistics.mean(floor), 3)},
        "rate_alone": alone, "rate": rate,
        "controller_counts": {"resolver": control.get("resolver"), "received": control.get("received")},
        "sink_socket_drops": sink_drops, "underlay_port_drops": underlay, "miss_meter": meter.strip(),
    }
    m, f = result["miss_to_delivery_ms"], result["floor_ms"]
    result["p99_over_floor_ms"] = round(m["p99"] - f["p99"], 3)
    result["p50_ratio"] = round(m["p50"] / f["p50"], 2)
    print(f"miss -> first packet delivered ({args.eids} distinct EIDs): p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms; "
          f"{len(lost)} lost{' (EIDs ' + ', '.join(map(str, lost[:10])) + ')' if lost else ''}")
    print(f"floor: map-resolver round trip alone:              p50 {f['p50']:.2f} ms, p99 {f['p99']:.2f} ms")
    print(f"p99 over the floor: {result['p99_over_floor_ms']:+.2f} ms (target: within 5 ms); "
          f"p50 ratio {result['p50_ratio']:.2f}x")
    print(f"resolutions alone: {alone['delivered']}/{alone['sent']} EIDs in {alone['seconds']} s = "
          f"{alone['resolutions_per_s']:.0f}/s (misses sent at {args.pps}/s); controller CPU "
          f"{alone['controller_cpu_us_per_resolution']} us per resolution, hv1's OVS {alone['cpu_s']['hv1_ovs']} s")
    if args.bulk:
        print(f"with a {args.bulk}-mapping bulk (HTTP {rate['bulk_status']}, {rate['bulk_s']} s): "
              f"{rate['delivered']}/{rate['sent']} EIDs in {rate['seconds']} s = {rate['resolutions_per_s']:.0f}/s; "
              f"during the bulk {rate['during_bulk_per_s']:.0f}/s, while misses were offered "
              f"({rate['during_bulk_offered_s']} s of it) {rate['during_bulk_offered_per_s']:.0f}/s; "
              f"longest pause {rate['longest_gap_s']} s (target >= 2,000/s)")
    trouble = [line for line in log.splitlines() if " ERROR " in line or " WARNING " in line or "Traceback" in line]
    if trouble:
        print(f"controller log: {len(trouble)} warnings or errors, the first: ", *trouble[:5], sep="\n  ",
              file=sys.stderr)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
