"""The etcd store (docs/etcd.rst) against a real three-member cluster
(lab/etcd.py): the same answers as SQLite, bulks all or nothing even when
the writer is killed, every change reaching every other store, and what
happens when members and quorum go.

The first tests are pure (segments.py) and need no etcd.
"""
from __future__ import annotations

import ipaddress
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.etcd import EtcdCluster
from lab.processes import wait_until
from lisp_controller.config import ConfigError, EtcdSettings, parse_config
from lisp_controller.controller.applied import Applied, Confirmations
from lisp_controller.model import Endpoint, Mapping, Rloc, parse_prefix
from lisp_controller.store import Delta, Request, StoreError, StoreStale
from lisp_controller.store.etcd import EtcdStore
from lisp_controller.store.segments import RowDelta, compose, decode, encode, plan_merge
from lisp_controller.store.sqlite import Store as SqliteStore

from .etcd_writer import bulk

ROOT = Path(__file__).resolve().parent.parent


def mapping(eid: str, *rlocs: str, ttl: int | None = None, action: str = "no-action",
            expires: float | None = None, iid: int = 1000) -> Mapping:
    return Mapping(iid, parse_prefix(eid), tuple(Rloc(ipaddress.ip_address(a), 1 + i, 100 - i)
                                                 for i, a in enumerate(rlocs)), ttl, action, "api", expires)


def endpoint(port: str, *eids: str, gateway: str | None = None) -> Endpoint:
    return Endpoint(port, "52:54:00:00:00:01", 1000, tuple(ipaddress.ip_address(a) for a in eids),
                    ipaddress.ip_address(gateway) if gateway else None)


def changes() -> list[dict]:
    """Every kind of write, in an order where later ones override earlier."""
    many = [mapping(f"10.50.{i // 250}.{i % 250}/32", "192.168.1.250") for i in range(3000)]
    return [
        dict(put=[mapping("10.2.0.0/16", "192.168.50.2"), mapping("fd00:9::/48", "2001:db8::50", "192.168.50.3"),
                  mapping("10.8.0.0/16", action="native-forward"),
                  mapping("10.3.0.0/16", "192.168.50.2", ttl=60, expires=1.7e9)]),
        dict(put_endpoints=[("hv1", endpoint("vnet7", "10.1.1.77", "fd00:1::77", gateway="10.1.1.1")),
                            ("hv2", endpoint("vnet8", "10.1.2.88"))]),
        dict(put=many),
        dict(delete=[(1000, parse_prefix("10.2.0.0/16"))], put=[mapping("10.2.0.0/16", "192.168.50.9")]),
        dict(delete=[m.key for m in many[:1000]], delete_endpoints=[("hv2", "vnet8")]),
        dict(replace_all=True, put=many[2000:] + [mapping("10.9.0.0/16", "192.168.50.4", iid=7)]),
        dict(put=[mapping("10.10.0.0/16", "192.168.50.5")], delete=[(7, parse_prefix("10.9.0.0/16"))]),
    ]


def contents(loaded) -> tuple[list, list]:
    mappings, endpoints = loaded
    return sorted(mappings, key=lambda m: (m.iid, str(m.eid))), sorted(endpoints, key=lambda e: (e[0], e[1].port))


class View:
    """What a controller would hold: the stored changes folded together."""

    def __init__(self, loaded=([], [])):
        self.mappings = {m.key: m for m in loaded[0]}
        self.endpoints = {(label, ep.port): ep for label, ep in loaded[1]}
        self.deltas: list[Delta] = []

    def apply(self, d: Delta) -> None:
        self.deltas.append(d)
        if d.replace_all:
            self.mappings.clear()
        for key in d.delete:
            self.mappings.pop(key, None)
        self.mappings.update((m.key, m) for m in d.put)
        for key in d.delete_endpoints:
            self.endpoints.pop(tuple(key), None)
        self.endpoints.update(((label, ep.port), ep) for label, ep in d.put_endpoints)

    def contents(self):
        return contents((list(self.mappings.values()), [(k[0], v) for k, v in self.endpoints.items()]))


def settings(cluster: EtcdCluster, prefix: str = "/test/", order: list[int] | None = None) -> EtcdSettings:
    urls = cluster.endpoints
    return EtcdSettings(tuple(urls[i] for i in order) if order else tuple(urls), prefix, timeout=3.0)


# -- pure -------------------------------------------------------------------------------------
def test_segments_compose_like_sqlite_applies_and_chunks_stay_small(tmp_path):
    sqlite = SqliteStore(tmp_path / "s.db")
    deltas = []
    for change in changes():
        sqlite.write(**change)
        deltas.append(RowDelta.of_change(**change))
    for limit in (600, 5000, 1_000_000):
        chunks_of = [encode(d, limit) for d in deltas]
        assert all(len(c) <= limit + 300 for chunks in chunks_of for c in chunks)
        assert len(chunks_of[2]) > (1 if limit < 1_000_000 else 0)
        composed = compose(decode(chunks) for chunks in chunks_of).as_base().delta()
        assert contents((composed.put, composed.put_endpoints)) == contents(sqlite.load())
    # composing any split of the history gives the same result (merges are free to pick)
    left, right = compose(deltas[:3]), compose(deltas[3:])
    whole = compose([left, right]).as_base().delta()
    assert contents((whole.put, whole.put_endpoints)) == contents(sqlite.load())


def test_merge_plan_keeps_few_segments_and_rewrites_little():
    sizes, rewritten, written = [], 0, 0
    for i in range(5000):
        sizes.append(100 if i % 50 else 5000)
        written += sizes[-1]
        start = plan_merge(sizes)
        if start is not None:
            merged = sum(sizes[start:])
            rewritten += merged
            sizes[start:] = [merged]
        assert len(sizes) <= 20
    assert rewritten < 15 * written


def test_store_config_section():
    one_bridge = {"bridge": [{"name": "br0", "rloc": "192.0.2.1"}]}  # a config needs one
    cfg = parse_config({"store": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379", "http://[::1]:2380"],
                                  "prefix": "/site-a/", "timeout": 2, "user": "lisp", "password": "secret"},
                        **one_bridge})
    assert cfg.etcd == EtcdSettings(("http://127.0.0.1:2379", "http://[::1]:2380"), "/site-a/", 2.0,
                                    user="lisp", password="secret")
    assert parse_config(one_bridge).etcd is None
    with pytest.raises(ConfigError) as e:
        parse_config({"store": {"backend": "etcd", "endpoints": ["127.0.0.1:2379", "https://h:1", "ftp://x:2",
                                                                "http://h:2379/v3", "http://u@h:2379"],
                                "prefix": "nope", "path": "/x", "password": "p", "ca": "missing.pem"}})
    text = "\n".join(e.value.problems)
    for expected in ("store.endpoints[0]: must be http://HOST:PORT", "store.endpoints[2]",
                     "store.endpoints[3]: must be just a scheme, host and port",
                     "store.endpoints[4]: must be just a scheme, host and port",
                     "store.prefix: must be a key prefix", "store.path: only for backend", "store.password: needs",
                     "store.ca: missing.pem: no such file"):
        assert expected in text, text
    with pytest.raises(ConfigError) as e:
        parse_config({"store": {"endpoints": ["http://h:1"], "backend": "sqlite"}})
    assert "store.endpoints: only for backend = \"etcd\"" in e.value.problems[0]
    with pytest.raises(ConfigError) as e:
        parse_config({"store": {"backend": "zookeeper"}})
    assert "store.backend: must be sqlite or etcd" in e.value.problems[0]


def test_applied_joins_store_changes_to_the_generations_bridges_confirm():
    applied = Applied()
    assert applied.reached(10) is None
    applied.note(4, 1)  # loaded at change 4, generation 1
    applied.note(5, 2)
    applied.note(5, 3)  # a reload at the same change: nothing new
    applied.note(7, 4)
    assert applied.reached(0) is None  # a bridge still on generation 0
    assert applied.reached(2) == 5  # every bridge has generation 2: changes 4 and 5
    assert applied.reached(3) is None
    assert applied.reached(9) == 7 and applied.reached(9) is None


def test_a_confirmation_wakes_the_commits_and_the_publisher():
    commits, publisher = threading.Event(), threading.Event()
    confirmed = Confirmations(commits, publisher)
    confirmed.set()
    assert commits.is_set() and publisher.is_set()
    confirmed.clear()  # a commit that woke clears its event, not the publisher's
    assert not commits.is_set() and publisher.is_set()
    assert not confirmed.wait(0.01)


# -- a real cluster ---------------------------------------------------------------------------
def test_each_store_says_what_its_bridges_hold_and_a_writer_waits_for_the_others(etcd_cluster):
    """applied/<instance> on a lease: a writer's wait ends when every other
    store has said it holds the change, names one that did not in time, and
    one that closed (or whose lease ended) is gone and no longer waited for."""
    a, b, c = (EtcdStore(settings(etcd_cluster, "/peers/")) for _ in range(3))
    for s in (a, b, c):
        s.load()
        s.follow(View().apply, threading.Lock())
        s.applied(0)
    wait_until(lambda: len(a.peers()) == 3, timeout=10, what="every store alive for A")
    a.write(put=[mapping("10.1.0.0/16", "192.168.50.1")])
    assert a.seq == 1
    threading.Timer(0.3, b.applied, (1,)).start()
    threading.Timer(0.5, c.applied, (1,)).start()
    started = time.monotonic()
    answer = a.wait_applied(1, 5)
    assert 0.45 < time.monotonic() - started < 2, answer
    assert [x["status"] for x in answer] == ["confirmed", "confirmed"]
    assert {x["instance"] for x in answer} == {b.instance, c.instance}
    # C does not say so in time: named, with what it holds.
    a.write(put=[mapping("10.2.0.0/16", "192.168.50.1")])
    b.applied(2)
    started = time.monotonic()
    answer = {x["instance"]: x for x in a.wait_applied(2, 0.5)}
    assert 0.5 <= time.monotonic() - started < 1.5
    assert answer[b.instance]["status"] == "confirmed"
    assert answer[c.instance] == {"instance": c.instance, "status": "timeout", "applied": 1}
    # C closes: its key goes with its lease, at once; A stops waiting for it.
    threading.Timer(0.3, c.close).start()
    answer = {x["instance"]: x for x in a.wait_applied(2, 5)}
    assert answer[c.instance]["status"] == "gone"
    assert c.instance not in a.peers() and a.wait_applied(2, 5) == [answer[b.instance]]
    for s in (a, b):
        s.close()


def test_round_trips_match_sqlite_through_staging_and_merges(etcd_cluster, tmp_path):
    """Small chunks force every path: staged bulks, inline changes, merges."""
    sqlite = SqliteStore(tmp_path / "s.db")
    store = EtcdStore(settings(etcd_cluster), chunk_bytes=4000)
    assert store.load() == ([], [])
    for change in changes():
        sqlite.write(**change)
        store.write(**change)
        assert contents(EtcdStore(settings(etcd_cluster)).load()) == contents(sqlite.load())
    wait_until(lambda: not store._merging, timeout=20, what="merges done")
    assert len(store._manifest.segments) < len(changes())  # merged at least once
    assert store._manifest.seq == len(changes())
    again = EtcdStore(settings(etcd_cluster, order=[2, 0, 1]))
    assert contents(again.load()) == contents(sqlite.load())
    # a merge only leaves what the head names: no chunk of an older segment stays
    named = {s.id for s in store._manifest.segments}
    keys = [k for k, _ in store._range("/test/seg/", keys_only=True, limit=1000)]
    assert {k.split("/")[3] for k in keys} == named
    for s in (store, again):
        s.close()


def _segment_keys(store: EtcdStore, prefix: str) -> list[str]:
    return [k for k, _ in store._range(prefix + "seg/", keys_only=True, limit=1000)]


def _writer(cluster: EtcdCluster, prefix: str, count: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.etcd_writer", ",".join(cluster.endpoints), prefix,
                             str(count), *extra], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _read_until(proc: subprocess.Popen, line: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = proc.stdout.readline()
        if not got:
            raise AssertionError(f"writer ended (exit {proc.wait()}) before {line!r}")
        if got.strip() == line:
            return
    raise AssertionError(f"no {line!r} within {timeout} s")


def test_bulk_of_100000_is_all_or_nothing_when_the_writer_is_killed(etcd_cluster):
    prefix = "/bulk/"
    follower = EtcdStore(settings(etcd_cluster, prefix))
    follower.load()
    seen = View()
    follower.follow(seen.apply, threading.Lock())
    # Killed after 3 of its chunks: they are in etcd, nobody sees them.
    proc = _writer(etcd_cluster, prefix, 100_000, "--stop-after-chunk", "3", "--lease-ttl", "2")
    try:
        _read_until(proc, "staged 3")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(_segment_keys(follower, prefix)) == 3
    assert EtcdStore(settings(etcd_cluster, prefix)).load() == ([], [])
    # Killed at whatever point a timer hits, the commit included: all or nothing.
    rng = random.Random(7)
    for _ in range(4):
        proc = _writer(etcd_cluster, prefix, 100_000)
        _read_until(proc, "writing")
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        count = len(EtcdStore(settings(etcd_cluster, prefix)).load()[0])
        assert count in (0, 100_000)
        if count:
            break
    time.sleep(1)
    assert len(seen.mappings) in (0, 100_000) and len(seen.deltas) <= 1
    # the dead writers' chunks go once their lease is gone
    def collected() -> bool:
        follower.collect_garbage()
        return {k.split("/")[3] for k in _segment_keys(follower, prefix)} <= \
            {s.id for s in follower._manifest.segments}
    wait_until(collected, timeout=30, interval=0.5, what="orphan chunks collected")
    # A writer that finishes: every instance has all of it, in one change.
    proc = _writer(etcd_cluster, prefix, 100_000)
    _read_until(proc, "committed")
    assert proc.wait() == 0
    fresh = EtcdStore(settings(etcd_cluster, prefix))
    assert len(fresh.load()[0]) == 100_000
    wait_until(lambda: len(seen.mappings) == 100_000, timeout=30, what="the follower has the bulk")
    assert contents((list(seen.mappings.values()), [])) == contents(fresh.load())
    for s in (follower, fresh):
        s.close()


def test_every_change_reaches_the_other_store_and_a_compacted_watch_reloads(etcd_cluster):
    a, b = EtcdStore(settings(etcd_cluster, order=[0, 1, 2])), EtcdStore(settings(etcd_cluster, order=[1, 2, 0]),
                                                                          chunk_bytes=4000)
    seen = View(a.load())
    b.load()
    lock = threading.Lock()
    a.follow(seen.apply, lock)
    for change in changes():
        b.write(**change)
    truth = contents(EtcdStore(settings(etcd_cluster)).load())
    wait_until(lambda: seen.contents() == truth, timeout=20, what="A holds what B wrote")
    assert len(seen.deltas) == len(changes())  # one change each, in order, none twice
    assert [d.replace_all for d in seen.deltas] == [bool(c.get("replace_all")) for c in changes()]
    # A write of A's own is not handed back to A.
    with lock:
        a.write(put=[mapping("10.77.0.0/16", "192.168.50.7")])
    time.sleep(0.5)
    assert len(seen.deltas) == len(changes())
    # A third store loads, falls behind what etcd keeps, and catches up by reading everything.
    c = EtcdStore(settings(etcd_cluster))
    late = View(c.load())
    b.follow(View().apply, threading.Lock())
    with pytest.raises(StoreStale):  # B has not seen A's write yet
        b.write(put=[mapping("10.78.0.0/16", "192.168.50.8")])
    assert b.catch_up(10)
    b.write(put=[mapping("10.78.0.0/16", "192.168.50.8")])
    b.write(delete=[(1000, parse_prefix("10.77.0.0/16"))], delete_endpoints=[("hv1", "vnet7")])
    b._cluster.call("kv/compaction", {"revision": b.revision, "physical": True}, idempotent=True)
    c.follow(late.apply, threading.Lock())
    truth = contents(EtcdStore(settings(etcd_cluster)).load())
    wait_until(lambda: late.contents() == truth, timeout=20, what="the late store reloaded")
    assert late.deltas[0].replace_all and late.deltas[0].delete_endpoints == [("hv1", "vnet7")]
    wait_until(lambda: seen.contents() == truth, timeout=20, what="A has B's last two")
    for s in (a, b, c):
        s.close()


def test_a_write_checked_against_an_old_state_is_refused_until_caught_up(etcd_cluster):
    a, b = EtcdStore(settings(etcd_cluster)), EtcdStore(settings(etcd_cluster))
    a.load(), b.load()
    a.write(put=[mapping("10.1.0.0/16", "192.168.50.1")])
    with pytest.raises(StoreStale, match="another controller committed change 1"):
        b.write(put=[mapping("10.2.0.0/16", "192.168.50.2")])
    assert [str(m.eid) for m in EtcdStore(settings(etcd_cluster)).load()[0]] == ["10.1.0.0/16"]
    seen = View()
    b.follow(seen.apply, threading.Lock())
    assert b.catch_up(10) and [str(m.eid) for m in seen.mappings.values()] == ["10.1.0.0/16"]
    b.write(put=[mapping("10.2.0.0/16", "192.168.50.2")])
    assert len(EtcdStore(settings(etcd_cluster)).load()[0]) == 2
    for s in (a, b):
        s.close()


def test_a_request_is_recorded_in_the_transaction_of_its_change(etcd_cluster, tmp_path):
    """Both stores keep an Idempotency-Key's record with its change: there
    after the write, completed by record_answer, and absent when the write
    was refused (etcd: checked against an old state)."""
    record = Request("key-0001", "POST", "/v1/mappings/bulk", "f" * 64, 200, "{}", '{"put":1}', time.time())
    etcd, stale = EtcdStore(settings(etcd_cluster, "/req/")), EtcdStore(settings(etcd_cluster, "/req/"))
    stale.load()  # before etcd's write below: its next write is refused
    for store in (SqliteStore(tmp_path / "s.db"), etcd):
        store.load()
        assert store.request("key-0001") is None
        store.write(put=[mapping("10.1.0.0/16", "192.168.50.1")], request=record)
        assert store.request("key-0001") == record
        store.record_answer("key-0001", '{"put":1,"bridges":[]}')
        assert store.request("key-0001") == record._replace(body='{"put":1,"bridges":[]}', answered=True)
    with pytest.raises(StoreStale):
        stale.write(put=[mapping("10.2.0.0/16", "192.168.50.2")], request=record._replace(key="key-0002"))
    assert etcd.request("key-0002") is None and stale.request("key-0002") is None
    for store in (etcd, stale):
        store.close()


def test_members_and_quorum_lost_and_back(etcd_cluster):
    """One member down: writes go on. Two: StoreError, quickly, nothing
    half applied. Back: writes resume and every acknowledged one is there."""
    store = EtcdStore(settings(etcd_cluster, order=[0, 1, 2]), chunk_bytes=20_000)
    follower = EtcdStore(settings(etcd_cluster, order=[2, 1, 0]))
    seen = View(follower.load())
    store.load()
    follower.follow(seen.apply, threading.Lock())
    acknowledged = []

    def write(eid: str, count: int = 1) -> None:
        ms = [mapping(eid, "192.168.50.1")] + bulk(count - 1, base=len(acknowledged) * 100_000)
        store.write(put=ms)
        acknowledged.extend(m.key for m in ms)

    write("10.1.0.0/16")
    etcd_cluster.kill(0)  # the store's first member
    write("10.2.0.0/16")
    write("10.3.0.0/16", count=5000)  # staged in many chunks
    wait_until(lambda: set(seen.mappings) == set(acknowledged), timeout=20, what="the follower has every write")
    etcd_cluster.kill(1)
    wait_until(lambda: not etcd_cluster.sees_leader(2), timeout=10, what="the last member sees no leader")
    started = time.monotonic()
    with pytest.raises(StoreError, match="no leader") as e:
        write("10.4.0.0/16", count=5000)
    assert time.monotonic() - started < 3, "no leader is known at once, not after a timeout"
    assert "connection refused" in str(e.value)
    with pytest.raises(StoreError):
        write("10.5.0.0/16")
    assert set(seen.mappings) == set(acknowledged)  # nothing half applied, nothing lost from memory
    etcd_cluster.restart(0)
    etcd_cluster.restart(1)
    etcd_cluster.wait_healthy()
    write("10.6.0.0/16")
    write("10.7.0.0/16", count=5000)
    fresh = EtcdStore(settings(etcd_cluster))
    keys = {m.key for m in fresh.load()[0]}
    assert keys == set(acknowledged)
    wait_until(lambda: set(seen.mappings) == keys, timeout=20, what="the follower has every write")
    for s in (store, follower, fresh):
        s.close()


def test_a_frozen_member_does_not_stop_changes_reaching_a_follower(etcd_cluster):
    """The follower's watch reads from a member that stops (SIGSTOP): the
    check notices the head moved on and restarts the watch elsewhere."""
    follower = EtcdStore(settings(etcd_cluster, order=[0, 1, 2]), sync_interval=0.5)
    seen = View(follower.load())
    follower.follow(seen.apply, threading.Lock())
    wait_until(lambda: follower.watching, timeout=10, what="the watch runs")
    frozen = etcd_cluster.endpoints.index(follower.watching)
    writer = EtcdStore(settings(etcd_cluster, order=[i for i in range(3) if i != frozen]))
    writer.load()
    pid = etcd_cluster.members[frozen].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        writer.write(put=[mapping("10.1.0.0/16", "192.168.50.1")])
        wait_until(lambda: len(seen.mappings) == 1, timeout=15, what="the change despite the frozen member")
        print(f"\ndelivered {time.monotonic() - started:.1f} s after the write, past a frozen member")
        assert follower.watching != etcd_cluster.endpoints[frozen]
    finally:
        os.kill(pid, signal.SIGCONT)
    for s in (follower, writer):
        s.close()


@pytest.mark.ovs  # starts (and stops) an etcd member
def test_an_unreachable_cluster_stops_the_open_with_a_reason():
    with EtcdCluster(1) as cluster:
        urls = cluster.endpoints
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open: .*connection refused"):
        EtcdStore(EtcdSettings(tuple(urls), "/x/", timeout=1.0))
    assert time.monotonic() - started < 3


# -- two controllers, real OVS -------------------------------------------------------------------
def _api(ov, port: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
    from tests.test_api import Client
    return Client(ov, port=port)(method, path, body)


def _api_up(ov, port: int) -> None:
    def up():
        try:
            return _api(ov, port, "GET", "/v1/health")[0] == 200
        except OSError:
            return False
    wait_until(up, timeout=30, what=f"API on port {port}")


def test_two_controllers_share_the_map_cache_and_the_bridges_follow(testbed, tmp_path):
    """Controller A programs both bridges; controller B has none. What is
    written through B reaches A's state and A's bridges, and what A writes
    reaches B; a TTL running out on both at once is expired once."""
    from lab.scenario import ControllerProcess, build, wait_programmed

    blog = (ROOT / "configs" / "blog-two-hypervisors.toml").read_text()
    ov = build(testbed, ROOT / "configs" / "blog-two-hypervisors.toml")
    with EtcdCluster(3, ns=ov.controller_ns.ns) as cluster:
        config_a, config_b = tmp_path / "a.toml", tmp_path / "b.toml"
        config_a.write_text(blog + "\n[api]\nport = 8080\n\n" + cluster.store_section())
        config_b.write_text(blog.replace("port = 6653", "port = 6654") + "\n[api]\nport = 8081\n\n"
                            + cluster.store_section())
        fast = ("--time-scale", "60")  # a TTL minute is a second (lab/serve.py)
        a = ControllerProcess(ov, "ctl-a", hooks=fast, config_path=config_a).start()
        b = ControllerProcess(ov, "ctl-b", hooks=fast, config_path=config_b).start()
        wait_programmed(ov)
        _api_up(ov, 8080), _api_up(ov, 8081)
        hv1, hv2 = ov.hypervisors

        def flows_for(hv, text):
            return [f for f in hv.dump_flows() if text in f]

        started = time.monotonic()
        status, body = _api(ov, 8081, "POST", "/v1/mappings",
                            {"iid": 1000, "eid": "10.2.0.0/16", "rlocs": ["192.168.1.252"]})
        assert status == 201 and body["bridges"][0]["status"] == "not-connected", body
        wait_until(lambda: flows_for(hv1, "nw_dst=10.2.0.0/16") and flows_for(hv2, "nw_dst=10.2.0.0/16"),
                   timeout=10, interval=0.05, what="B's mapping on A's bridges")
        print(f"\nB's write on A's bridges {time.monotonic() - started:.2f} s after B's answer")
        assert "192.168.1.252->tun_dst" in flows_for(hv1, "nw_dst=10.2.0.0/16")[0]
        status, body = _api(ov, 8081, "POST", "/v1/mappings/bulk", {"mappings": [
            {"iid": 1000, "eid": f"10.{30 + i // 250}.{i % 250}.0/24", "rlocs": ["192.168.1.249"]}
            for i in range(5000)]})
        assert status == 200, body
        wait_until(lambda: _api(ov, 8080, "GET", "/v1/mappings?source=api&limit=1")[1]["total"] == 5001,
                   timeout=30, what="A has B's bulk")
        wait_until(lambda: flows_for(hv2, "nw_dst=10.49.249.0/24"), timeout=30, what="the bulk's last on hv2")
        # A write through A reaches B.
        assert _api(ov, 8080, "DELETE", "/v1/mappings/1000/10.2.0.0/16")[0] == 200
        wait_until(lambda: _api(ov, 8081, "GET", "/v1/mappings/1000/10.2.0.0/16")[0] == 404, timeout=10,
                   what="B forgets 10.2.0.0/16")
        wait_until(lambda: not flows_for(hv1, "nw_dst=10.2.0.0/16"), timeout=10, what="flow gone")

        # (etcd's members and quorum lost and back, under three controllers: tests/test_cluster.py)
        # A TTL runs out on both controllers at once: one deletes it, both forget it, no error.
        for i in range(5):
            assert _api(ov, 8081, "POST", "/v1/mappings", {"iid": 1000, "eid": f"10.4.{i}.0/24", "ttl": 2,
                                                           "rlocs": ["192.168.1.252"]})[0] == 201
        wait_until(lambda: all(_api(ov, port, "GET", "/v1/mappings?source=api&limit=1")[1]["total"] == 5000
                               for port in (8080, 8081)), timeout=20, what="both expired the TTLs")
        wait_until(lambda: not flows_for(hv1, "nw_dst=10.4."), timeout=10, what="expired flows gone")
        a.stop(), b.stop()
        for ctl in (a, b):
            assert "Traceback" not in ctl.log() and "expiry failed" not in ctl.log(), ctl.log()[-3000:]
        assert "change 1 from another controller" in a.log()


def test_etcd_authentication(etcd_cluster):
    """A cluster with authentication on: the right user and password work
    (writes, loads, the watch); none or a wrong one stop the open."""
    def etcdctl(*args: str, user: str | None = None) -> None:
        subprocess.run(["etcdctl", f"--endpoints={','.join(etcd_cluster.endpoints)}",
                        *([f"--user={user}"] if user else []), *args],
                       check=True, capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    etcdctl("user", "add", "root:root-secret")
    etcdctl("user", "add", "lisp:lisp-secret")
    etcdctl("role", "add", "lisp")
    etcdctl("role", "grant-permission", "lisp", "--prefix=true", "readwrite", "/auth/")
    etcdctl("user", "grant-role", "lisp", "lisp")
    etcdctl("auth", "enable")
    try:
        base = settings(etcd_cluster, "/auth/")
        with pytest.raises(StoreError, match="cannot open"):
            EtcdStore(base)
        with pytest.raises(StoreError, match="authentication failed"):
            EtcdStore(EtcdSettings(base.endpoints, "/auth/", user="lisp"), password="wrong")
        a = EtcdStore(EtcdSettings(base.endpoints, "/auth/", user="lisp"), password="lisp-secret")
        b = EtcdStore(EtcdSettings(base.endpoints, "/auth/", user="lisp", password="lisp-secret"), chunk_bytes=2000)
        seen = View(a.load())
        b.load()
        a.follow(seen.apply, threading.Lock())
        b.write(put=bulk(100))  # staged: lease, marker, chunks, commit
        wait_until(lambda: len(seen.mappings) == 100, timeout=10, what="the change through the watch")
        with pytest.raises(StoreError, match="permission denied"):  # outside its prefix
            EtcdStore(EtcdSettings(base.endpoints, "/other/", user="lisp"), password="lisp-secret")
        for s in (a, b):
            s.close()
    finally:
        etcdctl("auth", "disable", user="root:root-secret")
