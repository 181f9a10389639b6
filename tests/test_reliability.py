"""What the controller survives, each with real OVS.

Every test starts the real `lisp-controller serve` process, breaks
something (flows edited by hand, ovs-vswitchd killed, the store's disk
full, hostile HTTP clients...) and checks what the bridges hold and what
the API says. docs/reliability.rst has the table of results.
"""
from __future__ import annotations

import contextlib
import json
import re
import resource
import socket
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.scenario import ControllerProcess, build, wait_programmed
from lisp_controller.cli.api import ApiClient
from lab.processes import wait_until

from .test_api import Client, _cli

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = 10_000
BLOG = ROOT / "configs" / "blog-two-hypervisors.toml"

# Every flow shape the compiler makes, on two bridges: gateway (dec_ttl,
# ARP answers with register moves), proxy ARP, IPv4 and IPv6 EIDs, an IPv6
# RLOC (tun_ipv6_dst), a negative mapping (NORMAL), an RLOC set (a select
# group over an IPv4 and an IPv6 RLOC), misses to the controller, and both
# tunnel profiles that carry traffic.
ALL_SHAPES = """
[controller]
listen = "172.31.255.1"
port = 6653
miss_action = "send-map-request"
reconcile_interval = {interval}

[[bridge]]
datapath_id = "00008ad828ce7949"
rloc = "192.168.1.249"
iid = 1000
gateway = "10.1.1.1"
proxy_arp = true

  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:b8:27:75"
  eids = ["10.1.1.20", "fd00:1::20"]

[[bridge]]
datapath_id = "00001e2e0e0cf040"
rloc = "192.168.1.252"
iid = 1000
tunnel_profile = "gre-l3"

  [[bridge.endpoint]]
  port = "vnet0"
  mac = "52:54:00:1b:ea:d5"
  eids = ["10.1.2.30", "fd00:1::30"]
  gateway = "10.1.2.1"

[[mapping]]
iid = 1000
eid = "10.9.0.0/16"
rlocs = [{{address = "192.168.50.2", priority = 1, weight = 100}}]

[[mapping]]
iid = 1000
eid = "fd00:9::/48"
rlocs = [{{address = "2001:db8::50", priority = 1, weight = 100}}]

[[mapping]]
iid = 1000
eid = "10.8.0.0/16"
rlocs = []
action = "native-forward"

[[mapping]]
iid = 1000
eid = "10.10.0.0/16"
rlocs = [{{address = "192.168.50.3", priority = 1, weight = 60}},
         {{address = "2001:db8::51", priority = 1, weight = 40}}]
"""


def all_shapes(tmp_path: Path, interval: float = 1) -> Path:
    path = tmp_path / "all-shapes.toml"
    path.write_text(ALL_SHAPES.format(interval=interval))
    return path


def datapaths(api: Client) -> dict[str, dict]:
    status, body = api("GET", "/v1/datapaths")
    assert status == 200, body
    return {d["bridge"]: d for d in body["datapaths"]}


def wait_deep_checks(api: Client, after: float, count: int = 2) -> dict[str, dict]:
    """Until every bridge has had `count` more deep checks (roughly: its
    last check is at least `count` intervals after `after`)."""
    seen: dict[str, set] = {}

    def done():
        for label, d in datapaths(api).items():
            if d["last_verify"]:
                seen.setdefault(label, set()).add(d["last_verify"])
        return len(seen) == 2 and all(len(v) >= count + 1 for v in seen.values())
    wait_until(done, timeout=20, interval=0.2, what="deep checks on every bridge")
    return datapaths(api)


def start(testbed, config: Path, **env):
    ov = build(testbed, config)
    ctl = ControllerProcess(ov, env=env or None).start()
    wait_programmed(ov)
    api = Client(ov)
    api.wait_up()
    return ov, ctl, api


def ours(hv) -> list[str]:
    return sorted(f for f in hv.dump_flows() if "cookie=0x4c" in f)


def test_deep_check_of_an_untouched_bridge_changes_nothing(testbed, tmp_path):
    """The round trip: every flow shape we make, read back from real OVS,
    compares equal to what we sent, so periodic checks send nothing."""
    ov = build(testbed, all_shapes(tmp_path))
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    api = Client(ov)
    api.wait_up()
    before = {hv.name: ours(hv) for hv in ov.hypervisors}
    sent = {k: d["flow_mods_sent"] for k, d in wait_deep_checks(api, time.time(), 1).items()}
    after = wait_deep_checks(api, time.time(), 3)
    for label, d in after.items():
        assert d["flow_mods_sent"] == sent[label] and d["group_mods_sent"] == 1, d  # the first sync's
        assert d["flows_repaired"] == 0 and d["errors"] == [], d
        assert d["flows_installed"] == d["flows_desired"] > 20, d
        assert d["groups_installed"] == d["groups_desired"] == 1, d
    assert {hv.name: ours(hv) for hv in ov.hypervisors} == before
    assert "changed on the switch" not in ctl.log() and "repairing" not in ctl.log(), ctl.log()
    assert "Traceback" not in ctl.log()


def test_stray_and_hand_modified_flows_are_repaired_and_foreign_flows_kept(testbed, tmp_path):
    ov = build(testbed, all_shapes(tmp_path, interval=2))
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    api = Client(ov)
    api.wait_up()
    hv1 = ov.hypervisors[0]
    want = ours(hv1)
    mapcache = next(f for f in want if "nw_dst=10.9.0.0/16" in f)
    cookie = re.search(r"cookie=(0x[0-9a-f]+)", mapcache).group(1)
    decap = next(f for f in want if "table=3" in f and "nw_dst=10.1.1.20" in f)
    decap_cookie = re.search(r"cookie=(0x[0-9a-f]+)", decap).group(1)
    foreign = ["cookie=0x1234,table=7,priority=5,ip,nw_dst=10.9.9.9 actions=drop",
               "cookie=0x4d00000000000001,table=1,priority=99,ip actions=drop"]
    hv1.add_flows(foreign)
    # Our map-cache flow now tunnels elsewhere (same cookie: invisible to a
    # cookie comparison); our decap flow is gone; a stray copy of our
    # cookie sits on another match; a flow with a made-up cookie of ours.
    hv1.ofctl("mod-flows", "--strict", hv1.bridge,
              f"cookie={cookie}/-1,table=1,priority=116,ip,metadata=0x3e8,nw_dst=10.9.0.0/16 "
              "actions=set_field:192.168.66.6->tun_dst,set_field:0x3e8->tun_id,goto_table:2")
    hv1.ofctl("del-flows", hv1.bridge, f"cookie={decap_cookie}/-1")
    hv1.add_flows([f"cookie={cookie},table=1,priority=300,ip,metadata=0x3e8,nw_dst=10.7.0.0/16 actions=drop",
                   "cookie=0x4c00000000abcdef,table=0,priority=500,ip actions=drop"])
    assert "192.168.66.6" in " ".join(hv1.dump_flows(table=1))
    # Our RLOC set's group reweighted by hand, a stale group in our ID
    # range, and someone else's group.
    groups = lambda: sorted(hv1.run("ovs-ofctl", "-O", "OpenFlow13", "dump-groups", hv1.bridge).stdout.splitlines()[1:])
    (group,) = groups()
    hv1.run("ovs-ofctl", "-O", "OpenFlow13", "mod-group", hv1.bridge, group.strip().replace("weight:60", "weight:1"))
    for spec in (f"group_id={0x4C000001},type=select,bucket=weight:1,actions=set_field:192.0.2.1->tun_dst",
                 "group_id=9,type=select,bucket=weight:2,actions=drop"):
        hv1.run("ovs-ofctl", "-O", "OpenFlow13", "add-group", hv1.bridge, spec)
    wait_until(lambda: ours(hv1) == want, timeout=15, interval=0.2, what="hv1 repaired")
    wait_until(lambda: [g.strip() for g in groups()] == sorted([group.strip(), "group_id=9,type=select,"
                                                                 "bucket=weight:2,actions=drop"]),
               timeout=15, interval=0.2, what="hv1's groups repaired, the foreign one kept")
    flows = hv1.dump_flows()
    for f in foreign:  # other cookies are never touched
        c = f.split(",")[0]
        assert any(line.startswith(c + ",") for line in flows), (f, flows)
    d = datapaths(api)["00008ad828ce7949"]
    assert d["flows_repaired"] >= 1 and d["flows_installed"] == d["flows_desired"]
    log = ctl.log()
    assert "1 flows of ours were changed on the switch" in log, log
    assert "1 groups of ours were changed on the switch" in log, log
    assert "192.168.50.2->tun_dst" in log  # the flow as it should be, named
    assert "Traceback" not in log


def test_vswitchd_crash_bridge_fully_programmed_within_2s_of_reconnecting(testbed, tmp_path):
    """With 10,000 mappings: kill -9 of ovs-vswitchd loses every flow; the controller notices the
    connection drop, and when OVS comes back and reconnects the bridge
    holds all its flows again within 2 s (measured by the controller from
    the connection to the barrier, and by the test from OVS's restart)."""
    ov, ctl, api = start(testbed, BLOG)
    hv1, hv2 = ov.hypervisors
    vm1, vm2 = ov.vms
    bulk = [{"iid": 1000, "eid": f"10.{100 + i // 250}.{i % 250}.0/24", "rlocs": ["192.168.1.252"]}
            for i in range(MAPPINGS)]
    status, body = api("POST", "/v1/mappings/bulk", {"mappings": bulk})
    assert status == 200 and {b["status"] for b in body["bridges"]} == {"confirmed"}, body
    before = ours(hv1)
    assert len(before) > MAPPINGS
    started = time.monotonic()
    hv1.restart_vswitchd()
    up = time.monotonic()
    wait_until(lambda: ours(hv1) == before, timeout=15, interval=0.05, what="hv1 reprogrammed")
    programmed = time.monotonic()

    def reconnected():
        d = datapaths(api)["00008ad828ce7949"]
        again = ctl.log().count("bridge 00008ad828ce7949 (br2): connected from") == 2
        return d if again and d["verified_ms"] is not None else None
    d = wait_until(reconnected, timeout=10, what="the new session's first sync")
    print(f"\nvswitchd kill -9 + restart: daemon back after {up - started:.2f} s, all flows back "
          f"{programmed - started:.2f} s after the kill; controller: connection to barrier "
          f"{d['verified_ms']:.0f} ms")
    assert d["verified_ms"] < 2000, d
    assert d["flows_installed"] == d["flows_desired"] == len(before)
    log = ctl.log()
    assert "bridge 00008ad828ce7949 (br2): disconnected" in log
    assert log.count("bridge 00008ad828ce7949 (br2): connected from") == 2
    vm1.wait_reachable(vm2.ip)
    assert vm1.ping(vm2.ip, count=5, interval=0.05) == (5, 5)
    assert ours(hv2) and "Traceback" not in log


# -- store faults -------------------------------------------------------------

NO_DAC = ("setpriv", "--inh-caps=-dac_override,-dac_read_search",
          "--bounding-set=-dac_override,-dac_read_search", "--")


def mapping(eid: str, rloc: str = "192.168.1.252") -> dict:
    return {"iid": 1000, "eid": eid, "rlocs": [rloc]}


def test_corrupt_or_unreadable_store_stops_the_start_and_keeps_file_and_flows(testbed, tmp_path):
    """A store that cannot be read stops the controller before it listens
    (exit 3, the file named and what is wrong), every time it is started:
    the file is never rewritten, and the bridges keep the flows the last
    good run left. Put back, it starts and sends nothing."""
    ov, ctl, api = start(testbed, BLOG)
    assert api("POST", "/v1/mappings", mapping("10.5.0.0/16"))[0] == 201
    ctl.stop()
    flows = {hv.name: ours(hv) for hv in ov.hypervisors}
    store = ctl.store_path
    db = sqlite3.connect(store)  # fold the WAL in, so the file alone holds everything
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    good = store.read_bytes()
    assert b"10.5.0.0/16" in good

    def refused(wrapper=(), what=""):
        bad = ControllerProcess(ov, "refused", wrapper=wrapper).start()
        try:
            code = bad.proc.wait(30)
        except subprocess.TimeoutExpired:
            bad.stop()
            raise AssertionError(f"the controller started on a bad store: {bad.log()}") from None
        assert code == 3, bad.log()
        log = bad.log()
        assert f"store {store}: cannot open: {what}" in log, log
        assert "nothing started" in log and "Traceback" not in log
        assert {hv.name: ours(hv) for hv in ov.hypervisors} == flows

    # Unreadable: root without CAP_DAC_OVERRIDE is refused like anyone else.
    store.chmod(0)
    refused(NO_DAC, f"cannot open the file ({store}: permission denied)")
    store.chmod(0o600)
    # Corrupt: the header overwritten; twice, and the file stays as it is.
    corrupt = b"this is not sqlite" + good[18:]
    store.write_bytes(corrupt)
    for _ in range(2):
        refused(what="file is not an SQLite database")
        assert store.read_bytes() == corrupt
    store.write_bytes(good)
    ctl = ControllerProcess(ov, "after").start()
    ctl.wait_log("already correct, nothing sent", count=2)
    status, body = api("GET", "/v1/mappings/1000/10.5.0.0/16")
    assert status == 200 and body["mapping"]["source"] == "api"


def test_read_only_and_full_store_refuse_changes_with_503_and_change_nothing(testbed, tmp_path):
    """The store lives on a 1 MB tmpfs in a mount namespace of its own.
    Read-only at start: the controller serves the stored state to the
    bridges and refuses changes. Full disk while running: changes get 503.
    Every refusal names the problem, and memory, store and bridges stay as
    they were; reads and OpenFlow go on; once the disk is fixed, changes
    are accepted again without a restart, and a kill -9 loses none."""
    ov = build(testbed, BLOG)
    disk = testbed.tmpdir / "disk"
    disk.mkdir()
    holder = testbed.spawn(ov.controller_ns.ns, [
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        f"mount -t tmpfs -o size=1m tmpfs {disk} && touch {disk}/.mounted && exec sleep 900"])
    in_ns = ("nsenter", "-t", str(holder.pid), "-m", "--")

    def sh(*args: str, check: bool = True):
        return testbed.run(ov.controller_ns.ns, *in_ns, *args, check=check)
    wait_until(lambda: sh("test", "-e", f"{disk}/.mounted", check=False).returncode == 0,
               timeout=10, what="tmpfs mounted")
    ctl = ControllerProcess(ov, store_path=disk / "store.db", wrapper=in_ns).start()
    wait_programmed(ov)
    api = Client(ov)
    api.wait_up()
    assert api("POST", "/v1/mappings", mapping("10.5.0.0/16"))[0] == 201
    ctl.stop()

    def refused(problem: str):
        flows = {hv.name: ours(hv) for hv in ov.hypervisors}
        sent = {k: d["flow_mods_sent"] for k, d in datapaths(api).items()}
        total = api("GET", "/v1/mappings")[1]["total"]
        for method, path, body in [
                ("POST", "/v1/mappings", mapping("10.6.0.0/16")),
                ("PUT", "/v1/mappings/1000/10.5.0.0/16", mapping("10.5.0.0/16", "192.168.1.249")),
                ("DELETE", "/v1/mappings/1000/10.5.0.0/16", None),
                ("POST", "/v1/mappings/bulk", {"mappings": [mapping(f"10.{20 + i // 250}.{i % 250}.0/24") for i in range(3000)]})]:
            status, answer = api(method, path, body)
            assert status == 503, (method, path, status, answer)
            assert problem in answer["error"]["message"] and "nothing was changed" in answer["error"]["message"]
        assert api("GET", "/v1/mappings")[1]["total"] == total
        assert api("GET", "/v1/mappings/1000/10.5.0.0/16")[1]["mapping"]["rlocs"][0]["address"] == "192.168.1.252"
        assert {hv.name: ours(hv) for hv in ov.hypervisors} == flows
        assert {k: d["flow_mods_sent"] for k, d in datapaths(api).items()} == sent
        status, health = api("GET", "/v1/health")
        assert status == 503 and health["status"] == "failing" and problem in health["store_error"], health
        assert len(health["problems"]) == 1 and problem in health["problems"][0], health

    def accepted(eid: str):
        status, answer = api("POST", "/v1/mappings", mapping(eid))
        assert status == 201 and {b["status"] for b in answer["bridges"]} == {"confirmed"}, answer
        status, health = api("GET", "/v1/health")
        assert (status, health["status"], health["problems"], health["store_error"]) == (200, "ok", [], None)

    sh("mount", "-o", "remount,ro", str(disk))
    ctl = ControllerProcess(ov, "read-only", store_path=disk / "store.db", wrapper=in_ns).start()
    ctl.wait_log("already correct, nothing sent", count=2)  # the stored mapping included
    api.wait_up()
    refused("read-only")
    assert "serving the stored state read-only" in ctl.log()
    sh("mount", "-o", "remount,rw", str(disk))
    accepted("10.8.0.0/16")
    sh("sh", "-c", f"cat /dev/zero > {disk}/filler", check=False)
    refused("the disk is full")
    sh("rm", f"{disk}/filler")
    accepted("10.9.0.0/16")
    log = ctl.log()
    assert "Traceback" not in log and ctl.proc.poll() is None
    assert "lisp_store_errors_total 8" in api("GET", "/metrics")[1]
    ctl.stop(signal.SIGKILL)
    ctl = ControllerProcess(ov, "after", store_path=disk / "store.db", wrapper=in_ns).start()
    ctl.wait_log("already correct, nothing sent", count=2)
    api.wait_up()
    status, body = api("GET", "/v1/mappings?source=api")
    assert [m["eid"] for m in body["mappings"]] == ["10.5.0.0/16", "10.8.0.0/16", "10.9.0.0/16"]


def test_health_fails_when_no_configured_bridge_is_connected_after_the_grace(testbed, tmp_path):
    """Both bridges are pointed elsewhere: once [api] health_grace has
    passed, /v1/health answers 503 and says why; one bridge back is
    enough for 200."""
    path = tmp_path / "grace.toml"
    path.write_text(BLOG.read_text() + "\n[api]\nhealth_grace = 3\n")
    ov, ctl, api = start(testbed, path)
    status, health = api("GET", "/v1/health")
    assert status == 200 and health["problems"] == [], health
    for hv in ov.hypervisors:  # a port where nothing listens; the flows stay (fail_mode=secure)
        hv.vsctl("set-controller", hv.bridge, "tcp:127.0.0.1:1")
    wait_until(lambda: api("GET", "/v1/health")[0] == 503, timeout=15, interval=0.2, what="health failing")
    health = api("GET", "/v1/health")[1]
    assert health["status"] == "failing" and health["datapaths_connected"] == 0, health
    assert health["problems"] == ["none of the 2 configured bridges is connected (3 s after start)"], health
    r = _cli(ov, "health", check=False)
    assert r.returncode == 1 and "none of the 2 configured bridges is connected" in r.stdout, r.stdout + r.stderr
    hv1 = ov.hypervisors[0]
    hv1.vsctl("--", "--id=@c", "create", "Controller", 'target="tcp:172.31.255.1:6653"', "max_backoff=1000",
              "--", "set", "Bridge", hv1.bridge, "controller=@c")
    wait_until(lambda: api("GET", "/v1/health")[0] == 200, timeout=20, interval=0.2, what="health ok again")
    assert api("GET", "/v1/health")[1]["datapaths_connected"] == 1


# -- hostile API input -------------------------------------------------------------

SCHEMATHESIS = ("-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())")


def test_schemathesis_finds_no_server_error_and_no_schema_violation(testbed, tmp_path):
    """Schemathesis generates requests from the served OpenAPI document
    (valid and invalid ones, every operation) and checks every answer
    against it: no 5xx, every status, content type, header and body as
    documented. The bridges keep working meanwhile."""
    ov, ctl, api = start(testbed, BLOG)
    reports = tmp_path / "schemathesis"
    reports.mkdir()
    result = testbed.run(  # from inside reports/: Schemathesis keeps a cache in its working directory
        ov.controller_ns.ns, "sh", "-c", 'cd "$0" && exec "$@"', str(reports), sys.executable, *SCHEMATHESIS, "run", "http://127.0.0.1:8080/v1/openapi.json",
        # Every check but positive_data_acceptance: some rules are not
        # syntax (host bits in a prefix, an RLOC listed twice, a key twice
        # in one request), so a schema-valid request may get a documented
        # 400 naming the field. One worker: with two, Hypothesis parses
        # lambda sources in two threads and CPython 3.11 can fail that
        # ("AST constructor recursion depth mismatch"), a tool error.
        "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "100", "--seed", "7", "--workers", "1",
        "--generation-database", "none", "--request-timeout", "30", "--report", "junit",
        "--report-dir", str(reports), "--no-color", check=False, timeout=900)
    out = result.stdout + result.stderr
    (tmp_path / "schemathesis.txt").write_text(out)
    print(out[-3000:])
    generated = re.search(r"(\d+) generated", out)
    assert generated and int(generated.group(1)) >= 1000, out[-3000:]
    assert "Traceback" not in ctl.log(), ctl.log()[-5000:]
    assert result.returncode == 0, out[-6000:]
    vm1, vm2 = ov.vms
    vm1.wait_reachable(vm2.ip)


HOSTILE_API = """
[api]
max_body_bytes = 1048576
client_timeout = 5
"""
SLOW = 300  # slowloris clients: partial headers, one byte now and then
IDLE = 2000  # connections that send nothing at all
KEPT = 1200  # kept alive after one answer, then silent (more than the 1,000 requests served at once)


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def raw_request(head: bytes, body: bytes = b"", timeout: float = 30) -> tuple[int, bytes]:
    """One request on a fresh connection (inside the caller's namespace)."""
    with socket.create_connection(("127.0.0.1", 8080), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and _complete(data):
                    break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"content-length: *(\d+)", head, re.I)
    return m is not None and len(body) >= int(m.group(1))


def test_oversized_deep_slow_and_many_clients_leave_the_api_and_openflow_working(testbed, tmp_path):
    path = tmp_path / "hostile.toml"
    path.write_text(BLOG.read_text() + HOSTILE_API)
    ov, ctl, api = start(testbed, path)
    vm1, vm2 = ov.vms
    pid = ctl.proc.pid
    baseline = open_fds(pid)
    post = b"POST /v1/mappings/bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with testbed.netns(ov.controller_ns.ns):
        # Oversized: refused from the declared length, before the body is read...
        status, answer = raw_request(post + b"Content-Length: 104857600\r\n\r\n", b"{", timeout=10)
        assert status == 413 and b"exceeds the limit of 1048576 bytes" in answer, answer[:300]
        # ...and a chunked body, counted as it arrives.
        chunk = b"[" + b" " * 65534 + b"\r\n"
        chunked = b"".join(b"%x\r\n" % (len(chunk) - 2) + chunk for _ in range(40)) + b"0\r\n\r\n"
        status, answer = raw_request(post + b"Transfer-Encoding: chunked\r\n\r\n", chunked)
        assert status == 413, answer[:300]
        # Deep nesting: a clear 400, no RecursionError anywhere.
        deep = b"[" * 200_000 + b"]" * 200_000
        status, answer = raw_request(post + b"Content-Length: %d\r\n\r\n" % len(deep), deep[:1048576])
        assert status in (400, 413) and b"Traceback" not in answer, answer[:300]
        deep = b'{"mappings":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        status, answer = raw_request(post + b"Content-Length: %d\r\n\r\n" % len(deep), deep)
        assert status == 400 and b"nested too deeply" in answer, answer[:300]

        # Slow, idle and kept-alive clients, then the API for everyone else.
        slow, idle, kept = [], [], []
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit[1], max(limit[0], 2 * (SLOW + IDLE + KEPT))), limit[1]))
        try:
            for _ in range(SLOW):
                s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                slow.append(s)
            for _ in range(IDLE):
                idle.append(socket.create_connection(("127.0.0.1", 8080), timeout=5))
            for _ in range(KEPT):
                s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                kept.append(s)
            for s in kept:  # each answered, and kept open by both sides
                reply = b""
                while not (b"\r\n\r\n" in reply and _complete(reply)):
                    reply += s.recv(65536)
                assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            with contextlib.suppress(OSError):
                for s in slow:
                    s.sendall(b"X")
            wait_until(lambda: open_fds(pid) >= baseline + SLOW + IDLE + KEPT - 5, timeout=4, interval=0.05,
                       what=f"{SLOW + IDLE + KEPT} clients accepted")
            timings = []
            for _ in range(20):
                mark = time.monotonic()
                assert raw_request(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")[0] == 200
                timings.append(time.monotonic() - mark)
            # The kept-alive ones are still served, each on its connection.
            for s in kept[:50]:
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            fds_with_clients = open_fds(pid)
            for s in slow + idle + kept:
                s.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
    status, body = api("POST", "/v1/mappings", mapping("10.5.0.0/16"))
    assert status == 201 and {b["status"] for b in body["bridges"]} == {"confirmed"}, body
    for hv in ov.hypervisors:
        assert any("nw_dst=10.5.0.0/16" in f for f in ours(hv))
    vm1.wait_reachable(vm2.ip)
    assert vm1.ping(vm2.ip, count=5, interval=0.05) == (5, 5)
    print(f"\n{SLOW} slow + {IDLE} idle + {KEPT} kept-alive clients: health p50 {sorted(timings)[10] * 1000:.1f} ms, "
          f"max {max(timings) * 1000:.1f} ms; controller fds {baseline} -> {fds_with_clients} -> ", end="")
    assert max(timings) < 0.1, timings
    wait_until(lambda: open_fds(pid) <= baseline + 5, timeout=15, what="client sockets released")
    print(open_fds(pid))
    # A client that stalls is let go by the server after [api] client_timeout.
    with testbed.netns(ov.controller_ns.ns):
        before = open_fds(pid)  # not the test's baseline: fds may have closed since
        stalled = [socket.create_connection(("127.0.0.1", 8080), timeout=15) for _ in range(20)]
        try:
            for s in stalled:
                s.sendall(b"GET /v1/health HTTP/1.1\r\n")
            wait_until(lambda: open_fds(pid) >= before + 20, timeout=5, what="stalled clients accepted")
            mark = time.monotonic()
            assert all(s.recv(100) == b"" for s in stalled)  # closed by the server
            assert 4 < time.monotonic() - mark < 10
        finally:
            for s in stalled:
                s.close()
        # One that trickles its headers, a byte a second, is let go after
        # client_timeout too: the headers have that long in all.
        with socket.create_connection(("127.0.0.1", 8080), timeout=1) as trickle:
            trickle.sendall(b"GET /v1/health HTTP/1.1\r\nX-Slow: ")
            mark, closed = time.monotonic(), None
            while closed is None and time.monotonic() - mark < 15:
                try:
                    if trickle.recv(100) == b"":
                        closed = time.monotonic() - mark
                except socket.timeout:
                    trickle.sendall(b"a")
                except OSError:
                    closed = time.monotonic() - mark
            assert closed is not None and 4 < closed < 8, closed
    assert "Traceback" not in ctl.log()


def test_malformed_framing_gets_400_before_the_application_and_no_traceback(testbed, tmp_path):
    """Requests whose length is ambiguous or unreadable (request smuggling
    material): each gets 400 (501 for an unknown coding) with the reason,
    the connection is closed, nothing is created, nothing is logged as a
    crash."""
    ov, ctl, api = start(testbed, BLOG)
    good = json.dumps(mapping("10.5.0.0/16")).encode()
    post = b"POST /v1/mappings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good)
    cases = [
        (b"Transfer-Encoding: chunked\r\n\r\n", b"zz\r\n" + good + b"\r\n0\r\n\r\n", 400, b"malformed chunked body"),
        (b"Transfer-Encoding: chunked\r\n\r\n", b"%x\r\n%sXX0\r\n\r\n" % (len(good), good), 400, b"malformed chunked"),
        (b"Content-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(good), good, 400, b"different Content-Length"),
        (b"Content-Length: 5\r\nContent-Length: %d\r\n\r\n" % len(good), good, 400, b"different Content-Length"),
        (b"Content-Length: +%d\r\n\r\n" % len(good), good, 400, b"is not a number of bytes"),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", chunked, 400, b"together"),
        (b"Transfer-Encoding: gzip, chunked\r\n\r\n", chunked, 501, b"not supported"),
    ]
    with testbed.netns(ov.controller_ns.ns):
        for head, body, status, words in cases:
            got, answer = raw_request(post + head, body)
            assert got == status and words in answer, (head, answer)
            assert b"connection: close" in answer.lower() and b"Traceback" not in answer, answer
    assert api("GET", "/v1/mappings?source=api")[1]["total"] == 0
    assert api("POST", "/v1/mappings", mapping("10.5.0.0/16"))[0] == 201  # and the API goes on
    assert "Traceback" not in ctl.log() and "ERROR" not in ctl.log(), ctl.log()[-3000:]


# -- flapping -----------------------------------------------------------------------

FLAPS = 50
HV1 = "00008ad828ce7949"


def cookies(lines) -> set[str]:
    return {re.search(r"cookie=(0x[0-9a-f]+)", f).group(1) for f in lines if "cookie=0x4c" in f}


def leakable(resources: dict) -> int:
    """Python objects, less the timers cancelled but still waiting in
    eventlet's hub for their deadline (a request's socket timeout: gone
    within a minute), two objects each."""
    return resources["objects"] - 2 * resources["hub_timers"]


def test_bridge_flapping_50_times_under_changes_ends_exact_and_leaks_nothing(testbed, tmp_path):
    """hv1's OpenFlow connection is cut 50 times (ss -K, as a network blip
    would) while mappings are added and deleted, some changes racing the
    reconnect. Both bridges end with exactly the flows they should hold,
    and memory, greenthreads and sockets of the controller are where they
    were after the first flaps."""
    ov, ctl, api = start(testbed, BLOG)
    hv1, hv2 = ov.hypervisors

    targets = ["tcp:172.31.255.1", "tcp:172.31.255.1:6653"]  # one controller, two spellings

    def flap(i: int) -> None:
        """Even flaps: the connection is killed (ss -K). Odd ones: the
        controller record is replaced by one with the other spelling of
        the same target (as an operator's set-controller would). Only
        kills would take minutes: OVS 3.1 backs off 1, 2, 4, 8 s after
        connections that drop soon after connecting, max_backoff or not."""
        old = datapaths(api)[HV1]["address"]
        if i % 2 == 0:
            host, port = old.rsplit(":", 1)
            testbed.run(ov.controller_ns.ns, "ss", "-K", "dst", host, "dport", "=", port)
        else:
            hv1.vsctl("--", "--id=@c", "create", "Controller", f'target="{targets[i // 2 % 2]}"',
                      "max_backoff=1000", "--", "set", "Bridge", hv1.bridge, "controller=@c")
        # A change while hv1 is away (or reconnecting): it must arrive anyway.
        # Three sets of prefixes take turns, so the encoders' bounded caches
        # are warm after the first flaps and growth would be a leak.
        bulk = {"mappings": [mapping(f"10.{50 + i % 3}.{k}.0/24") for k in range(20)]}
        if i >= 2:
            bulk["delete"] = [{"iid": 1000, "eid": f"10.{50 + (i - 2) % 3}.{k}.0/24"} for k in range(20)]
        status, body = api("POST", "/v1/mappings/bulk", bulk)
        assert status == 200, body
        wait_until(lambda: (lambda d: d["connected"] and d["address"] != old and d["verified_ms"] is not None)(
            datapaths(api)[HV1]), timeout=20, interval=0.05, what=f"hv1 back after flap {i + 1}")

    warmup = 20  # the allocator settles; memory is compared over the last 30 flaps
    for i in range(warmup):
        flap(i)
    before = api("GET", "/v1/debug/resources")[1]
    started = time.monotonic()
    for i in range(warmup, FLAPS):
        flap(i)
    elapsed = time.monotonic() - started
    after = api("GET", "/v1/debug/resources")[1]
    for hv in ov.hypervisors:
        label = hv.datapath_id
        want = cookies(api("GET", f"/v1/datapaths/{label}/flows")[1]["flows"])
        wait_until(lambda: cookies(hv.dump_flows()) == want, timeout=10, what=f"{hv.name} exact")
        assert len(hv.dump_flows()) == len(want)  # and no duplicate
    assert api("GET", "/v1/mappings?source=api")[1]["total"] == 2 * 20
    assert ctl.log().count(f"bridge {HV1} (br2): connected from") == FLAPS + 1
    growth = after["resident_bytes"] - before["resident_bytes"]
    print(f"\n{FLAPS} flaps ({elapsed / (FLAPS - warmup):.2f} s each): greenthreads "
          f"{before['greenthreads']} -> {after['greenthreads']}, fds {before['open_fds']} -> "
          f"{after['open_fds']}, objects less hub timers {leakable(before)} -> {leakable(after)}, RSS {before['resident_bytes'] / 1e6:.1f} -> {after['resident_bytes'] / 1e6:.1f} MB")
    assert after["greenthreads"] <= before["greenthreads"] and after["open_fds"] <= before["open_fds"], (before, after)
    assert after["sessions"] == 2
    # A leaked session would be hundreds of objects per flap. Resident
    # memory only catches a gross leak (the allocator keeps freed memory,
    # and settles slowly).
    assert leakable(after) - leakable(before) < 5 * (FLAPS - warmup), (before, after)
    assert growth < 4_000_000, (before, after)
    assert "Traceback" not in ctl.log()


# -- secure transport -----------------------------------------------------------------

def make_cert(d: Path, name: str, ca: str, ip: str | None = None) -> tuple[Path, Path]:
    """An EC key and a certificate for `name` signed by CA `ca` (made first
    with name == ca), with `ip` as subjectAltName for hostname checks."""
    key, cert = d / f"{name}-key.pem", d / f"{name}-cert.pem"
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-subj", f"/CN={name}", "-out", str(d / f"{name}.csr")],
                   check=True, capture_output=True)
    if name == ca:
        sign = ["-signkey", str(key)]
    else:
        sign = ["-CA", str(d / f"{ca}-cert.pem"), "-CAkey", str(d / f"{ca}-key.pem"), "-CAcreateserial"]
    ext = d / f"{name}.ext"
    ext.write_text(("basicConstraints=critical,CA:TRUE\n" if name == ca else "")
                   + (f"subjectAltName=IP:{ip}\n" if ip else ""))
    subprocess.run(["openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), *sign, "-days", "2",
                    "-extfile", str(ext), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


def use_ssl(hv, d: Path, name: str, ca: str) -> None:
    """Point hv's bridge at the controller over ssl:, with its own key and
    certificate and the CA that signed the controller's."""
    hv.vsctl("set-ssl", str(d / f"{name}-key.pem"), str(d / f"{name}-cert.pem"), str(d / f"{ca}-cert.pem"))
    hv.vsctl("--", "--id=@c", "create", "Controller", 'target="ssl:172.31.255.1:6653"', "max_backoff=1000",
             "--", "set", "Bridge", hv.bridge, "controller=@c")


def https_get(ov, path: str, ca: Path) -> tuple[int, dict]:
    return ApiClient("https://127.0.0.1:8080", context=ssl.create_default_context(cafile=str(ca)), timeout=10,
                     around=lambda: ov.testbed.netns(ov.controller_ns.ns))("GET", path)


def test_openflow_over_tls_and_https_api(testbed, tmp_path):
    """A CA made here signs the controller's, the switches' and the API's
    certificates; both bridges connect over ssl: and are programmed, the
    VMs ping; the API answers HTTPS only; a switch whose certificate
    another CA signed is refused, in one log line, and keeps its flows."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_cert(pki, "ca", "ca")
    make_cert(pki, "controller", "ca", "172.31.255.1")
    make_cert(pki, "api", "ca", "127.0.0.1")
    for name in ("hv1", "hv2"):
        make_cert(pki, name, "ca")
    make_cert(pki, "rogue-ca", "rogue-ca")
    make_cert(pki, "rogue", "rogue-ca")
    config = tmp_path / "tls.toml"
    config.write_text(BLOG.read_text().replace('miss_action = "drop"', 'miss_action = "drop"\n'
                      'tls_key = "pki/controller-key.pem"\ntls_cert = "pki/controller-cert.pem"\n'
                      'tls_ca = "pki/ca-cert.pem"') +
                      '\n[api]\ntls_cert = "pki/api-cert.pem"\ntls_key = "pki/api-key.pem"\n')
    ov = build(testbed, config)
    for hv in ov.hypervisors:
        use_ssl(hv, pki, hv.name, "ca")
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    vm1, vm2 = ov.vms
    vm1.wait_reachable(vm2.ip)
    assert vm1.ping(vm2.ip, count=5, interval=0.05) == (5, 5)
    wait_until(lambda: https_get(ov, "/v1/health", pki / "ca-cert.pem")[1].get("datapaths_connected") == 2,
               timeout=10, what="both bridges connected (HTTPS)")
    assert "OpenFlow on 172.31.255.1:6653 (TLS); API on https://127.0.0.1:8080" in ctl.log()
    assert "certificate 'hv1'" in ctl.log() and "certificate 'hv2'" in ctl.log()
    r = _cli(ov, "datapath", "list", "--url", "https://127.0.0.1:8080",
             env={"SSL_CERT_FILE": str(pki / "ca-cert.pem")})  # the CLI over HTTPS, trusting our CA
    assert "00008ad828ce7949" in r.stdout, r.stdout + r.stderr
    with pytest.raises(OSError):  # plain HTTP is not served
        Client(ov)("GET", "/v1/health")
    with pytest.raises(ssl.SSLError):  # nor HTTPS with a certificate we do not trust
        https_get(ov, "/v1/health", pki / "rogue-ca-cert.pem")

    hv2 = ov.hypervisors[1]
    flows = ours(hv2)
    use_ssl(hv2, pki, "rogue", "ca")
    testbed.run(ov.controller_ns.ns, "ss", "-K", "dst", "172.31.255.12")  # reconnect with the new certificate
    ctl.wait_log("OpenFlow TLS handshake from 172.31.255.12")
    status, body = https_get(ov, "/v1/datapaths", pki / "ca-cert.pem")
    assert {d["bridge"]: d["connected"] for d in body["datapaths"]} == {HV1: True, "00001e2e0e0cf040": False}
    assert ours(hv2) == flows  # a secure bridge keeps its flows while refused
    assert "Traceback" not in ctl.log(), ctl.log()[-4000:]


# -- OpenFlow errors -------------------------------------------------------------------

def test_rejected_flows_are_shown_in_the_api_and_on_the_page_and_stop_nothing_else(testbed, tmp_path):
    """hv1's map-cache table refuses to grow (an operator's flow_limit):
    the flows it rejects are named with the bridge in GET /v1/datapaths and
    on the status page, the write says `rejected` for hv1 only, and every
    other flow of hv1 and all of hv2 are applied."""
    from .browser import Browser

    ov = build(testbed, BLOG)
    hv1, hv2 = ov.hypervisors
    hv1.vsctl("--", "--id=@t", "create", "Flow_Table", "flow_limit=4", "overflow_policy=refuse",
              "--", "set", "Bridge", hv1.bridge, "flow_tables:1=@t")
    ctl = ControllerProcess(ov).start()
    wait_programmed(ov)
    api = Client(ov)
    api.wait_up()
    status, body = api("POST", "/v1/mappings/bulk", {"mappings": [mapping(f"10.9.{k}.0/24") for k in range(3)]})
    assert status == 200
    result = {b["bridge"]: b for b in body["bridges"]}
    assert result[HV1]["status"] == "rejected" and result["00001e2e0e0cf040"]["status"] == "confirmed"
    assert len(result[HV1]["errors"]) == 3 and all("TABLE_FULL" in e for e in result[HV1]["errors"])
    d = datapaths(api)
    errors = d[HV1]["errors"]
    assert d[HV1]["degraded"] and not d["00001e2e0e0cf040"]["degraded"]
    assert any(re.search(r"flow rejected: cookie=0x4c[0-9a-f]+,table=1,priority=124,ip,metadata=0x3e8,"
                         r"nw_dst=10\.9\.\d\.0/24 actions=.*OFPFMFC_TABLE_FULL", e) for e in errors), errors
    assert len(hv1.dump_flows(table=1)) == 4 and len(hv2.dump_flows(table=1)) == 4 + 3
    assert len([f for f in hv1.dump_flows() if "table=1," not in f]) == \
        len([f for f in hv2.dump_flows() if "table=1," not in f])
    with Browser(testbed, ov.controller_ns.ns) as b:
        b.open()
        card = f'#bridges [data-dpid="{HV1}"]'
        b.wait(lambda d: b.attr(card, "data-state") == "degraded", what="hv1 shown with errors")
        text = b.text(card)
        assert "openflow errors (3)" in text.lower() and "OFPFMFC_TABLE_FULL" in text and "nw_dst=10.9." in text, text
        assert b.attr('#bridges [data-dpid="00001e2e0e0cf040"]', "data-state") == "up"
    assert "Traceback" not in ctl.log()
