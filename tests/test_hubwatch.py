"""lab/hubwatch.py, which bench/hub.py --watch uses: a greenthread that
holds the hub is reported with how long and where. In a child process:
the watch wraps eventlet's hub, which no test process may have patched."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, time
from lab.hubwatch import HubWatch
HubWatch(sys.argv[1]).start()
import eventlet

def hold_the_hub():
    eventlet.sleep(0.05)
    started = time.perf_counter()
    while time.perf_counter() - started < 0.15:  # no yield: the hub is held
        pass

server = eventlet.listen(("127.0.0.1", 0))  # something to poll for: the hub waits in its poll
eventlet.spawn(server.accept)
eventlet.spawn(hold_the_hub).wait()
eventlet.sleep(0.05)  # one more round: the held one ends at the next poll
"""


def test_a_greenthread_holding_the_hub_is_reported_with_its_stack(tmp_path):
    out = tmp_path / "watch.jsonl"
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    stalls = [json.loads(line) for line in out.read_text().splitlines() if "stall_ms" in line]
    held = [s for s in stalls if any("hold_the_hub" in stack for _, stack in s["stacks"])]
    assert len(held) == 1, stalls
    assert 140 <= held[0]["stall_ms"] < 5000 and held[0]["samples"] >= 1
    assert 0 < held[0]["cpu_ms"] <= held[0]["stall_ms"]  # busy on a CPU, as far as the machine let it


def test_the_census_names_the_big_containers_a_full_collection_walks():
    """bench/hub.py --census: what made a collection long is named by the
    container that holds the references and what it holds."""
    from lab.hubwatch import census

    held = {i: [i] for i in range(20_000)}  # tracked: lists inside
    seen = census(at_least=20_000)
    assert [20_000, "dict of int -> list"] in seen["containers"], seen["containers"]
    assert seen["tracked"] >= 20_000 and dict(seen["types"])["list"] >= 20_000
    del held
