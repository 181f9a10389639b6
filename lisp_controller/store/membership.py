"""This controller instance among those sharing an etcd store: its lease,
the instances alive, and the bridges it masters (docs/etcd.rst, "Bridge
ownership"). The decisions are controller/ownership.py's, pure; this is
their I/O, through the etcd client of store/etcd.py.

Under the store's prefix P:

- ``P cluster/instances/<id>``: one per live instance, on its lease; the
  value names the bridges connected to it (JSON). A killed instance's
  key goes when its lease runs out.
- ``P cluster/owners/<datapath id>``: the bridge's master, on the master's
  lease. Created only if absent (one transaction), so there is one
  master at a time; its create revision is the generation ID the master
  sends in its OpenFlow role request, and etcd's revisions only grow, so
  each new master's generation is greater than every earlier one's.

The lease is store/lease.py's, renewed from a native thread that a busy
hub does not hold up; the store's ``applied/`` key hangs on the same
lease (one lease per instance). Three green loops run here: the
watchdog (every lease_ttl / 4: a lease lost makes this instance give up
its bridges at once, before etcd gives them away, then register again),
the watch on ``P cluster/`` (every change wakes the plan), and the plan
(on a wake-up or every PLAN_INTERVAL).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import Callable

from lisp_controller.config import ClusterSettings, EtcdSettings
from lisp_controller.controller.ownership import Moves, Snapshot, mastered, plan
from lisp_controller.store.base import StoreError
from lisp_controller.store.etcdclient import Cluster, Compacted, Failure, b64, range_end, unb64
from lisp_controller.store.lease import Lease

LOG = logging.getLogger("lisp_controller")
PLAN_INTERVAL = 0.5  # seconds between plans without a change in etcd


class Membership:
    """Registers this instance in etcd, keeps its lease, and tells
    `on_roles` which bridges it masters ({datapath ID: generation ID})
    whenever that changes. `guard` False turns off the check of the
    lease before each write (lab/serve.py only: it shows the switch
    refusing a stale master by itself)."""

    def __init__(self, settings: EtcdSettings, cluster: ClusterSettings, password: str | None = None,
                 guard: bool = True):
        self.me = cluster.instance
        self.ttl = cluster.lease_ttl
        self.guard = guard
        self.patience = max(1.0, float(self.ttl))  # a free bridge's best candidate may take this long
        self._p = f"{settings.prefix}cluster/"
        # Its own connections, with requests that give up well within the
        # lease: a member that froze must not hold the keepalive past it.
        quick = dataclasses.replace(settings, timeout=min(settings.timeout, max(0.2, self.ttl / 3)))
        self._cluster = Cluster(quick, password or settings.password)
        # This instance's one lease (its keys here, and the store's applied/ key).
        self.lease = Lease(settings, self.ttl, password, name=f"instance {self.me}")
        self.on_roles: Callable[[dict[int, int]], None] = lambda held: None
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lease = 0  # the lease this instance registered with (0: none now)
        self.lost: str | None = "not registered yet"  # why this instance holds no lease now
        self._connected: set[int] = set()
        self._published: frozenset[int] | None = None
        self.snapshot = Snapshot({}, {})
        self.generations: dict[int, int] = {}  # every owner key's generation, by datapath
        self.held: dict[int, int] = {}  # the bridges this instance masters: datapath -> generation
        self._free_since: dict[int, float] = {}
        self._refused: set[tuple[int, int]] = set()

    def observe_requests(self, observe: Callable[[str, float], None]) -> None:
        """Have `observe(request path, seconds)` called after each request
        etcd answered (the metrics)."""
        self._cluster.observe = observe
        self.lease.observe_requests(observe)

    # -- what the sessions and the API ask ---------------------------------------------
    def lease_problem(self) -> str | None:
        """Why this instance may not write now (its lease may have run
        out), or None."""
        if self._lease == 0:
            return f"instance {self.me} has no etcd lease ({self.lost})"
        if self.lease.id != self._lease:
            return f"instance {self.me}'s etcd lease was lost ({self.lease.lost})"
        problem = self.lease.problem()
        return f"instance {self.me}: {problem}" if problem else None

    def master_of(self, datapath: int) -> str | None:
        return self.snapshot.owners.get(datapath)

    def instances(self) -> list[dict]:
        """The live instances, with the bridges each masters and has connected."""
        counts = mastered(self.snapshot)
        return [{"instance": i, "self": i == self.me, "masters": counts.get(i, 0),
                 "connected": [f"{d:016x}" for d in sorted(dps)]}
                for i, dps in sorted(self.snapshot.instances.items())]

    def connected(self, datapath: int) -> None:
        with self._lock:
            self._connected.add(datapath)
        self._wake.set()

    def disconnected(self, datapath: int) -> None:
        with self._lock:
            self._connected.discard(datapath)
            if self.held.pop(datapath, None) is not None:
                self._tell()
        self._wake.set()

    def refused(self, datapath: int, generation: int) -> None:
        """The switch (or the lease check) refused this instance as master
        with `generation`: give the bridge up; etcd decides again."""
        with self._lock:
            self._refused.add((datapath, generation))
            if self.held.get(datapath) == generation:
                del self.held[datapath]
                self._tell()
        self._wake.set()

    # -- life cycle -----------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> None:
        """Take a lease and register; StoreError if etcd cannot be reached
        or another live instance has this id (after waiting `timeout`,
        default a lease and a second, for a predecessor's key to go)."""
        deadline = time.monotonic() + (self.ttl + 1.5 if timeout is None else timeout)
        while True:
            try:
                if self._register():
                    break
            except Failure as e:
                raise StoreError(f"instance {self.me}: cannot register in etcd: {e}") from None
            if time.monotonic() >= deadline:
                raise StoreError(f"instance {self.me} is already registered in etcd by a live controller "
                                 f"({self._p}instances/{self.me}): give each controller its own "
                                 "[cluster] instance")
            time.sleep(0.2)
        for target, name in ((self._watchdog_loop, "etcd-lease"), (self._watch_loop, "etcd-members"),
                             (self._plan_loop, "etcd-owners")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        """Stop, and revoke the lease: this instance's bridges go to the
        others at once instead of after the lease's time."""
        self._closed.set()
        self._wake.set()
        self._lease = 0
        try:
            self.lease.revoke()
        except Failure as e:
            LOG.warning("instance %s: lease not revoked (%s); its bridges move when it runs out", self.me, e)
        for thread in self._threads:
            thread.join(timeout=5)
        self.lease.close()
        self._cluster.close()

    def _register(self) -> bool:
        """A new lease and this instance's key on it, if the key is free."""
        lease = self.lease.grant()
        key = b64(f"{self._p}instances/{self.me}")
        with self._lock:
            connected = frozenset(self._connected)
        answer = self._cluster.call("kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": b64(_instance_value(connected)), "lease": lease}}],
            "failure": []}, idempotent=False)
        if not answer.get("succeeded"):
            self.lease.revoke()
            return False
        granted = self.lease.granted
        if granted != self.ttl:
            LOG.warning("instance %s: etcd granted a lease of %d s, not the [cluster] lease_ttl of %d s: "
                        "etcd's minimum is 1.5 election timeouts, rounded up to a second; this instance's "
                        "bridges move about %d s after it dies, not %d s (for %d s, run every etcd member "
                        "with --election-timeout of at most %d ms: docs/etcd.rst, \"Failover time\")",
                        self.me, granted, self.ttl, granted, self.ttl, self.ttl, self.ttl * 2000 // 3)
        self._lease, self.lost = lease, None
        self._published = connected
        LOG.info("instance %s: registered in etcd (lease %x, %d s)", self.me, lease, granted)
        return True

    def _lose(self, why: str) -> None:
        """The lease is gone or cannot be trusted: give up every bridge now."""
        with self._lock:
            if self._lease == 0:
                return
            self._lease, self.lost = 0, why
            held, self.held = self.held, {}
            if held:
                self._tell()
        LOG.error("instance %s: etcd session lost (%s); giving up %d bridges: %s", self.me, why, len(held),
                  ", ".join(f"{d:016x}" for d in sorted(held)) or "none")

    def _tell(self) -> None:
        """Hand `held` to the app (called holding the lock)."""
        try:
            self.on_roles(dict(self.held))
        except Exception:
            LOG.exception("instance %s: applying roles failed", self.me)

    # -- loops ------------------------------------------------------------------------------
    def _watchdog_loop(self) -> None:
        """The lease's keepalives run on their own thread (store/lease.py);
        here, on the hub: a lease it lost makes this instance give up its
        bridges, then register again once etcd answers."""
        interval = max(0.1, self.ttl / 4)
        while not self._closed.wait(interval):
            self.lease.drain()
            if self._lease and self.lease.id != self._lease:
                self._lose(self.lease.lost or "the lease ended")
            elif self._lease and self.lease.problem():
                self._lose(f"no keepalive answered within the lease's {self.ttl} s")
            if self._lease == 0 and not self._closed.is_set():
                try:
                    if self._register():
                        self._wake.set()
                except Failure as e:
                    LOG.debug("instance %s: not registered again yet: %s", self.me, e)

    def _watch_loop(self) -> None:
        revision = 0
        while not self._closed.is_set():
            try:
                for event in self._cluster.watch(self._p, revision + 1 if revision else 0,
                                                 lambda resp, url: None, prefix=True):
                    revision = max(revision, int(event["kv"]["mod_revision"]))
                    self._wake.set()
            except Compacted:
                revision = 0  # watch from now on; the next plan reads everything anyway
            except Exception as e:  # noqa: BLE001 - the plan's own timer goes on meanwhile
                if not self._closed.is_set():
                    LOG.debug("instance %s: watch on %s interrupted: %s", self.me, self._p, e)
            self._wake.set()
            if self._closed.wait(0.2):
                return

    def _plan_loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(PLAN_INTERVAL)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self._round()
            except Failure as e:
                LOG.debug("instance %s: ownership round postponed: %s", self.me, e)
            except Exception:
                LOG.exception("instance %s: ownership round failed", self.me)

    # -- one round ------------------------------------------------------------------------------
    def _read(self) -> tuple[Snapshot, dict[int, int], dict[int, int]]:
        """The instances and owners in etcd: (snapshot, generations, the
        lease of each owner key)."""
        answer = self._cluster.call("kv/range", {"key": b64(self._p), "range_end": b64(range_end(self._p))},
                                    idempotent=True)
        instances, owners, generations, leases = {}, {}, {}, {}
        for kv in answer.get("kvs") or []:
            key = unb64(kv["key"]).decode()[len(self._p):]
            kind, _, name = key.partition("/")
            value = unb64(kv.get("value", ""))
            try:
                if kind == "instances":
                    instances[name] = frozenset(int(d, 16) for d in json.loads(value)["connected"])
                elif kind == "owners":
                    d = int(name, 16)
                    owners[d] = value.decode()
                    generations[d] = int(kv["create_revision"])
                    leases[d] = int(kv.get("lease", 0))
            except (ValueError, KeyError, TypeError):
                LOG.warning("instance %s: %s%s is not a key of this program; ignored", self.me, self._p, key)
        return Snapshot(instances, owners), generations, leases

    def _round(self) -> None:
        snapshot, generations, leases = self._read()
        with self._lock:
            self.snapshot, self.generations = snapshot, generations
            connected = frozenset(self._connected)
            lease = self._lease
        if lease == 0 or self.lease_problem():
            return
        if connected != self._published:
            self._publish(connected, lease)
        now = time.monotonic()
        free = {d for dps in snapshot.instances.values() for d in dps} | connected
        free = {d for d in free if snapshot.owners.get(d) not in snapshot.instances}
        self._free_since = {d: self._free_since.get(d, now) for d in free}
        overdue = {d for d, since in self._free_since.items() if now - since >= self.patience}
        mine = {d: g for d, g in generations.items() if snapshot.owners[d] == self.me and leases[d] == lease}
        # A bridge the switch refused us for is given up, even if etcd still names us.
        refused = {d for d, g in mine.items() if (d, g) in self._refused}
        owners = {d: o for d, o in snapshot.owners.items() if d not in refused}
        moves = plan(self.me, Snapshot(snapshot.instances, owners), connected, overdue)
        moves = Moves(moves.claim, tuple(refused) + moves.release,
                      {**moves.reasons, **{d: "the switch refused this instance as its master" for d in refused}})
        for d in moves.release:
            self._release(d, mine.get(d), lease, moves.reasons.get(d, ""))
            mine.pop(d, None)
        for d in moves.claim:
            generation = self._claim(d, lease)
            if generation is not None:
                LOG.info("instance %s: master of bridge %016x with generation %d (%s)", self.me, d, generation,
                         moves.reasons.get(d, ""))
                mine[d] = generation
        with self._lock:
            if self._lease != lease:
                return  # lost meanwhile: _lose told the app
            self._refused = {(d, g) for d, g in self._refused if mine.get(d) == g}
            held = {d: g for d, g in mine.items() if d in self._connected and (d, g) not in self._refused}
            if held != self.held:
                self.held = held
                self._tell()

    def _publish(self, connected: frozenset[int], lease: int) -> None:
        key = f"{self._p}instances/{self.me}"
        self._cluster.call("kv/put", {"key": b64(key), "value": b64(_instance_value(connected)), "lease": lease},
                           idempotent=True)
        self._published = connected

    def _claim(self, datapath: int, lease: int) -> int | None:
        """Create the bridge's owner key if absent: its revision is the
        generation ID. None if another instance was first."""
        key = b64(f"{self._p}owners/{datapath:016x}")
        answer = self._cluster.call("kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": b64(self.me), "lease": lease}}],
            "failure": []}, idempotent=False)
        return int(answer["header"]["revision"]) if answer.get("succeeded") else None

    def _release(self, datapath: int, generation: int | None, lease: int, why: str) -> None:
        """Give the bridge up: the app is told first (the session goes
        SLAVE and stops writing), then the owner key is deleted if it is
        still this instance's."""
        with self._lock:
            if self.held.pop(datapath, None) is not None:
                self._tell()
        LOG.info("instance %s: gives up bridge %016x (%s)", self.me, datapath, why)
        if generation is None:
            return
        key = b64(f"{self._p}owners/{datapath:016x}")
        self._cluster.call("kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": generation}],
            "success": [{"request_delete_range": {"key": key}}], "failure": []}, idempotent=False)


def _instance_value(connected: frozenset[int]) -> str:
    return json.dumps({"connected": [f"{d:016x}" for d in sorted(connected)]})
