"""The benchmark runs end to end on a small N. No timing is asserted; what
it measures about behaviour is (a reconnect sends no flow-mod)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.ovs
def test_benchmark_runs_on_a_small_n(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--sizes", "300", "--runs", "2",
                        "--fanout", "1,2", "--changes", "3", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ofctl bundle s" in r.stdout and "fan-out   2 bridges" in r.stdout
    data = json.loads(out.read_text())
    (bulk,) = data["bulk"]
    assert bulk["n"] == 300 and bulk["runs"] == 2
    assert len(bulk["raw"]["controller"]) == len(bulk["raw"]["ofctl"]) == len(bulk["raw"]["switch_alone"]) == 2
    assert bulk["switch_alone_s"] > 0 and "alone x" in r.stdout
    assert bulk["reconnect_flow_mods"] == 0
    for key in ("read_ms", "check_ms", "store_ms", "state_ms", "brb0_switch_ms"):
        assert key in bulk["stages_ms"], bulk["stages_ms"]
    assert [f["bridges"] for f in data["fanout"]] == [1, 2]
    assert data["machine"]["cpus"] >= 1 and "Open vSwitch" in data["machine"]["ovs"]


def test_idle_clients_benchmark_runs_on_a_small_n():
    """bench/idle_clients.py compares eventlet's server with ours in one
    run; here with few connections, so it is quick. No timing asserted."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "idle_clients.py"), "--idle", "30", "--workers", "10",
                        "--timeout", "0.5"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "eventlet.wsgi.server   one request:" in r.stdout and "x faster" in r.stdout, r.stdout


@pytest.mark.ovs
def test_mapserver_benchmark_runs_on_a_small_n(tmp_path):
    """bench/mapserver.py end to end on 500 EIDs: every register is
    registered and every paced request is answered (no timing asserted)."""
    out = tmp_path / "mapserver.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "mapserver.py"), "--eids", "500", "--seconds", "1",
                        "--rate", "200", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["registered"] == 500 and data["registers_per_s"] > 0
    for name in ("echo", "controller"):
        assert data[name]["answered_per_s"] > 0 and data[name]["latency_n"] == data[name]["latency_sent"] == 200
    assert "Map-Requests, controller" in r.stdout and "controller / echo" in r.stdout
    assert "inside the controller at 200/s, arrival to answer sent" in r.stdout and data["controller"]["handler"]
    assert data["controller"]["paced_cpu_us_per_answer"] > 0 and data["controller"]["max_ms"] > 0
    assert len(data["machine"]["load_average"]) == 2


def test_rloc_sets_benchmark_runs_on_a_small_n():
    """bench/rloc_sets.py times RLOC sets against single RLOCs in one run
    (and checks each kind made the groups it should). No timing asserted."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "rloc_sets.py"), "--mappings", "500", "--runs", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "one set (70/30)" in r.stdout and "100 sets" in r.stdout, r.stdout
