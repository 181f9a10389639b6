"""Benchmark: what a flood of packets too big for the tunnel costs the
controller, with the bridge's meter as the controller sets it, against the
same flood with the meter's rate raised out of the way, in the same run.

    python bench/pmtu_flood.py                      # netdev, 3 runs of 8 s each way
    python bench/pmtu_flood.py --datapath dpdk --runs 1 --seconds 5

Two hypervisors of configs/ipv6.toml (VMs at MTU 1500, underlay 1500,
tunnel MTU 1464); one VM sends 1500-byte UDP datagrams with DF set that
ignore the path MTU (`IP_PMTUDISC_PROBE`), as fast as it can. Measured per
run: packets the sender's bridge took into the too-big table (meter
statistics), answers the controller sent (its API), and the controller
process's CPU time (/proc) over the flood. "unlimited" sets the meter to
1,000,000 packets/s with `ovs-ofctl mod-meter` (the config turns the
periodic deep check off, so the controller leaves it so). Prints a table
and the ratios; docs/mtu.rst quotes it. Needs root (network namespaces).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.scenario import ControllerProcess, build, wait_programmed  # noqa: E402
from lab.testbed import Testbed  # noqa: E402
from lisp_controller.cli.api import ApiClient  # noqa: E402
from lisp_controller.pipeline.compiler import METER_TOO_BIG, TOO_BIG_BURST, TOO_BIG_PPS  # noqa: E402

CONFIG = ROOT / "configs" / "ipv6.toml"
UNLIMITED = (1_000_000, 100_000)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def meter_counts(hv) -> tuple[int, int]:
    text = hv.ofctl("meter-stats", hv.bridge, f"meter={METER_TOO_BIG}")
    return (int(re.search(r"packet_in_count:(\d+)", text).group(1)),
            int(re.search(r"0: packet_count:(\d+)", text).group(1)))


def answers(ctl) -> int:
    """The ICMP answers the controller sent, by its own count (metrics)."""
    text = ApiClient(timeout=30, around=lambda: ctl.ov.testbed.netns(ctl.ov.controller_ns.ns))("GET", "/metrics")[1]
    return sum(int(float(v)) for v in re.findall(r'lisp_packets_too_big_total\{[^}]*action="icmp"[^}]*\} (\S+)', text))


def set_meter(hv, rate: int, burst: int) -> None:
    hv.ofctl("mod-meter", hv.bridge,
             f"meter={METER_TOO_BIG},pktps,burst,stats,bands=type=drop,rate={rate},burst_size={burst}")


def run(datapath: str, runs: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Testbed(datapath=datapath) as tb:
        config = Path(tmp) / "flood.toml"
        config.write_text(CONFIG.read_text().replace('miss_action = "drop"',
                                                     'miss_action = "drop"\nreconcile_interval = 0'))
        ov = build(tb, config)
        ctl = ControllerProcess(ov).start()
        wait_programmed(ov)
        vm1, vm2 = ov.vms
        hv1 = ov.hypervisors[0]
        vm1.wait_reachable(vm2.ip)
        time.sleep(1.0)
        before = cpu_seconds(ctl.proc.pid)
        time.sleep(seconds)
        idle = (cpu_seconds(ctl.proc.pid) - before) / seconds
        results: dict[str, list[dict]] = {"metered": [], "unlimited": []}
        for i in range(runs):
            for mode in (("metered", "unlimited") if i % 2 == 0 else ("unlimited", "metered")):
                set_meter(hv1, *((TOO_BIG_PPS, TOO_BIG_BURST) if mode == "metered" else UNLIMITED))
                time.sleep(2.0)  # let a previous flood's backlog drain
                seen0, dropped0 = meter_counts(hv1)
                answered0, cpu0, t0 = answers(ctl), cpu_seconds(ctl.proc.pid), time.monotonic()
                sent = vm1.udp_flood(vm2.ip, 1500, seconds)
                elapsed = time.monotonic() - t0
                cpu = (cpu_seconds(ctl.proc.pid) - cpu0) / elapsed
                time.sleep(1.0)
                seen, dropped = meter_counts(hv1)
                results[mode].append({"sent": sent, "seconds": round(elapsed, 2), "switch": seen - seen0,
                                      "meter_dropped": dropped - dropped0,
                                      "answered": answers(ctl) - answered0, "cpu": round(cpu, 4)})
        return {"datapath": datapath, "idle_cpu": round(idle, 4), **results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datapath", default="netdev", choices=("netdev", "dpdk"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    result = run(args.datapath, args.runs, args.seconds)
    print(f"\nflood of 1500-byte packets with DF, tunnel MTU 1464, {args.datapath} datapath, "
          f"{args.runs} runs of {args.seconds:g} s (medians); controller idle: {result['idle_cpu']:.1%} of a core")
    print(f"{'meter':<28} {'offered/s':>10} {'switch/s':>10} {'answered/s':>11} {'controller CPU':>15}")
    med = {}
    for mode in ("metered", "unlimited"):
        rows = result[mode]
        m = {k: statistics.median(r[k] / (r["seconds"] if k != "cpu" else 1) for r in rows)
             for k in ("sent", "switch", "answered", "cpu")}
        med[mode] = m
        label = f"{TOO_BIG_PPS}/s, burst {TOO_BIG_BURST} (ours)" if mode == "metered" else \
            f"{UNLIMITED[0]:,}/s (out of the way)"
        print(f"{label:<28} {m['sent']:>10,.0f} {m['switch']:>10,.0f} {m['answered']:>11,.0f} {m['cpu']:>14.1%}")
    ratio = med["unlimited"]["cpu"] / med["metered"]["cpu"] if med["metered"]["cpu"] else float("inf")
    print(f"controller CPU without the limit / with it: {ratio:.1f}x; "
          f"answers: {med['unlimited']['answered'] / max(med['metered']['answered'], 1):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
