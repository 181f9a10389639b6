"""The store on an etcd cluster that several controllers share (docs/etcd.rst).

Layout under the prefix P (store/segments.py has the values):

- ``P head``: the manifest: which segments make up the store, in order,
  and ``seq``, the number of changes so far. Every change and every merge
  rewrites it, in one transaction that compares its revision: that single
  key is what makes a change atomic and orders the changes of all
  controllers.
- ``P seg/<id>/<n>``: chunk n of segment <id>, one delta. Immutable once
  the head names it.
- ``P staging/<id>``: while a big segment is written chunk by chunk, this
  key, tied to a lease the writer keeps alive, says the chunks are wanted.
- ``P requests/<key>``: a write the API was sent with an Idempotency-Key
  (store/base.py, `Request`, as JSON), put by the transaction that commits
  its change, on a lease that ends it after REQUEST_KEEP.
- ``P applied/<instance>``: ``{"seq": N}``, the changes this controller's
  bridges have confirmed, on the instance's one lease (store/lease.py,
  shared with store/membership.py through `share_lease`): the keys that
  exist are the controllers alive. A writer waits on them
  (`wait_applied`, by a watch) until every other controller's bridges hold
  its change; store/applied_board.py keeps and follows them.

A change that fits one request is written with the head in one
transaction. A bigger one (100,000 mappings are about 9 MB; etcd takes
128 operations and 1.5 MiB per request) is first written as chunks nobody
reads, then committed by the same small transaction on the head: until
then no controller sees any of it, and if the writer dies its chunks are
collected once its lease is gone.

Each controller watches the head. A new head with ``seq`` one more than
its own brings the segment named ``last``, read at that revision and
handed to `on_change`; a head with the same ``seq`` is a merge (nothing
changed); anything else, or a watch that etcd compacted away, makes it read
everything again. A write compares the head this controller holds, so it
was checked against every change before it, or it fails with StoreStale.

The client is etcd3gw (etcd's v3 JSON gateway, green under eventlet). Its
watcher ignores the notice of a watch cancelled by compaction, so the watch
stream is read here.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Callable, ContextManager, Iterable, Iterator

from lisp_controller.config import EtcdSettings
from lisp_controller.controller.slices import Slices, let_go
from lisp_controller.model import Endpoint, Mapping
from lisp_controller.store.applied_board import AppliedBoard, cut
from lisp_controller.store.base import REQUEST_KEEP, Listener, Request, StoreError, StoreStale
from lisp_controller.store.etcdclient import (CUT, Cluster, Compacted, Failure, NotCommitted, Refused, Uncertain,
                                              b64, range_end, unb64)
from lisp_controller.store.lease import Lease
from lisp_controller.store.segments import Manifest, RowDelta, Segment, compose, decode, encode, plan_merge

LOG = logging.getLogger(__name__)

CHUNK_BYTES = 1_000_000  # a chunk and its request stay under etcd's 1.5 MiB
LEASE_TTL = 10  # seconds staged chunks outlive a writer that died
SYNC_INTERVAL = 2.0  # seconds between checks that the watch keeps up
GC_INTERVAL = 60.0  # seconds between looks for chunks of dead writers
PAGE = 8  # chunks per read
MERGE_MAX = 100  # segments merged at once (one op each in the commit)


def _let_the_hub_run() -> None:
    time.sleep(0)  # green: the controller monkey-patches time (lisp_controller/__main__.py)


class EtcdStore:
    """The store of several controllers on one etcd cluster (store/base.py)."""

    def __init__(self, settings: EtcdSettings, password: str | None = None, *, chunk_bytes: int = CHUNK_BYTES,
                 lease_ttl: int = LEASE_TTL, sync_interval: float = SYNC_INTERVAL,
                 pause: Callable[[], None] = _let_the_hub_run):
        """`pause`: lets the hub run between slices of a big change's
        Python work (segments.py); a test counts them."""
        self.name = f"etcd {','.join(settings.endpoints)} {settings.prefix}"
        self.read_only: str | None = None
        self.chunk_bytes, self.lease_ttl, self.sync_interval = chunk_bytes, lease_ttl, sync_interval
        self._pause = pause
        self._p = settings.prefix
        self._head_key = self._p + "head"
        self._writer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._settings, self._password = settings, password or settings.password
        self._cluster = Cluster(settings, self._password)
        self._manifest = Manifest()
        self._head_mod = 0  # revision of the head `_manifest` came from (0: none yet)
        self.revision = 0  # this controller holds every change up to this etcd revision
        self._known = 0  # the newest head revision seen anywhere
        self._endpoint_keys: set[tuple] = set()  # endpoints held, for a full reload
        self._listener: Listener | None = None
        self._lock: ContextManager = threading.RLock()  # the caller's lock once following
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stream = None
        self.watching: str | None = None  # the member the watch reads from
        self._merging = False
        self.instance = self._writer
        self._board = AppliedBoard(self._cluster, self._p, settings, self._password, self.instance, self.name,
                                   self._closed)
        try:
            self._cluster.authenticate()
            self._read_head()
        except Failure as e:
            raise StoreError(f"store {self.name}: cannot open: {e}") from None

    def observe_requests(self, observe: Callable[[str, float], None]) -> None:
        """Have `observe(request path, seconds)` called after each request
        etcd answered (the metrics)."""
        self._cluster.observe = observe

    # -- reading -------------------------------------------------------------------
    def _read_head(self, keys_only: bool = False) -> tuple[Manifest, int, int]:
        """(manifest, its revision, the store's revision), by a quorum read."""
        body = {"key": b64(self._head_key), "keys_only": keys_only}
        answer = self._cluster.call("kv/range", body, idempotent=True)
        revision = int(answer["header"]["revision"])
        kvs = answer.get("kvs") or []
        if not kvs:
            return Manifest(), 0, revision
        if keys_only:
            return self._manifest, int(kvs[0]["mod_revision"]), revision
        try:
            manifest = Manifest.decode(unb64(kvs[0].get("value", "")))
        except (ValueError, KeyError, TypeError) as e:
            raise Refused(f"{self._head_key} is not a manifest of this program: {e}") from None
        return manifest, int(kvs[0]["mod_revision"]), revision

    def _range(self, prefix: str, revision: int | None = None, keys_only: bool = False,
               limit: int = PAGE) -> Iterator[tuple[str, bytes]]:
        start, end = prefix, range_end(prefix)
        while True:
            body = {"key": b64(start), "range_end": b64(end), "limit": limit, "keys_only": keys_only}
            if revision:
                body["revision"] = revision
            answer = self._cluster.call("kv/range", body, idempotent=True)
            kvs = answer.get("kvs") or []
            for kv in kvs:
                yield unb64(kv["key"]).decode(), unb64(kv.get("value", ""))
            if not answer.get("more") or not kvs:
                return
            start = unb64(kvs[-1]["key"]).decode() + "\0"

    def _slices(self) -> Slices:
        """For a change of any size read from etcd or a big one written."""
        return Slices(self._pause)

    def _read_segment(self, segment: Segment, revision: int | None, slices: Slices | None = None) -> RowDelta:
        chunks = list(self._range(f"{self._p}seg/{segment.id}/", revision))
        if len(chunks) != segment.chunks:
            raise Refused(f"segment {segment.id} has {len(chunks)} of its {segment.chunks} chunks")
        try:
            return decode((value for _, value in chunks), slices)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise Refused(f"segment {segment.id} is not readable: {e}") from None

    def _read_all(self, slices: Slices | None = None) -> tuple[Manifest, int, int, RowDelta]:
        manifest, head_mod, revision = self._read_head()
        rows = compose((self._read_segment(s, revision, slices) for s in manifest.segments), slices).as_base()
        return manifest, head_mod, revision, rows

    def load(self) -> tuple[list[Mapping], list[tuple[str, Endpoint]]]:
        try:
            manifest, head_mod, revision, rows = self._read_all()
        except Failure as e:
            raise StoreError(f"store {self.name}: cannot read: {e}") from None
        self._adopt(manifest, head_mod, revision)
        self._endpoint_keys = set(rows.endpoint_puts)
        delta = rows.delta()
        return delta.put, delta.put_endpoints

    def _adopt(self, manifest: Manifest, head_mod: int, revision: int) -> None:
        """This controller now holds `manifest` (head revision `head_mod`)
        and every change up to `revision`. Called holding the lock."""
        self._manifest, self._head_mod = manifest, head_mod
        self.revision = max(self.revision, revision)
        self._known = max(self._known, head_mod)

    # -- writing -------------------------------------------------------------------
    def write(self, put: Iterable[Mapping] = (), delete: Iterable[tuple] = (), replace_all: bool = False,
              put_endpoints: Iterable[tuple[str, Endpoint]] = (),
              delete_endpoints: Iterable[tuple[str, str]] = (), request: Request | None = None,
              big: bool = False) -> None:
        """(store/base.py) The HTTP client yields to the hub while etcd
        works; a `big` change's rows and chunks are made in slices."""
        slices = self._slices() if big else None
        delta = RowDelta.of_change(put, delete, replace_all, put_endpoints, delete_endpoints, slices)
        if delta.empty():
            return
        chunks = encode(delta, self.chunk_bytes, slices)
        segment = Segment(secrets.token_hex(8), len(chunks), sum(map(len, chunks)))
        try:
            extra = [] if request is None else [self._request_put(request)]
            if len(chunks) == 1:
                self._commit_change(segment, chunks[0], None, extra)
            else:
                with self._staged(segment, chunks) as marker:
                    self._commit_change(segment, None, marker, extra)
        except Failure as e:
            raise StoreError(f"store {self.name}: cannot write: {e}") from None
        self._endpoint_keys -= delta.endpoint_deletes
        self._endpoint_keys |= delta.endpoint_puts.keys()
        self._maybe_merge()
        if slices is not None:  # a million rows freed at the return would hold the hub 100 ms
            let_go(delta.puts, self._pause)

    @contextlib.contextmanager
    def _staged(self, segment: Segment, chunks: list[bytes]) -> Iterator[str]:
        """Write `chunks` where nobody reads them, under a live marker; on
        failure remove them (or leave them to the collector)."""
        # (a grant repeated after a lost answer leaves a lease that just expires)
        lease = self._cluster.call("lease/grant", {"TTL": self.lease_ttl, "ID": 0}, idempotent=True)["ID"]
        marker = f"{self._p}staging/{segment.id}"
        done = False
        try:
            self._cluster.call("kv/put", {"key": b64(marker), "value": b64(self._writer), "lease": lease},
                               idempotent=True)
            renewed = time.monotonic()
            for n, chunk in enumerate(chunks):
                self._put_chunk(f"{self._p}seg/{segment.id}/{n:06d}", chunk)
                if time.monotonic() - renewed > self.lease_ttl / 3:
                    answer = self._cluster.call("lease/keepalive", {"ID": lease}, idempotent=True)
                    if int(answer.get("result", {}).get("TTL", 0)) <= 0:
                        raise Refused(f"the lease of the staged chunks ran out after chunk {n + 1}")
                    renewed = time.monotonic()
            LOG.debug("store %s: staged %d chunks of segment %s", self.name, len(chunks), segment.id)
            yield marker
            done = True
        finally:
            with contextlib.suppress(Failure):
                if not done:
                    self._cluster.call("kv/deleterange", {"key": b64(f"{self._p}seg/{segment.id}/"),
                                       "range_end": b64(range_end(f"{self._p}seg/{segment.id}/"))},
                                       idempotent=True)
                self._cluster.call("kv/lease/revoke", {"ID": lease}, idempotent=True)

    def _put_chunk(self, key: str, chunk: bytes) -> None:
        self._cluster.call("kv/put", {"key": b64(key), "value": b64(chunk)}, idempotent=True)

    def _txn(self, compare: list, success: list, failure: list) -> dict:
        return self._cluster.call("kv/txn", {"compare": compare, "success": success, "failure": failure},
                                  idempotent=False)

    def _head_compare(self, head_mod: int) -> dict:
        return {"key": b64(self._head_key), "target": "MOD", "result": "EQUAL", "mod_revision": head_mod}

    def _commit_change(self, segment: Segment, inline: bytes | None, marker: str | None,
                       extra: list | None = None) -> None:
        """The one small transaction that makes a change visible (with
        `extra` operations: a request's record)."""
        fenced = False
        for _ in range(10):
            base, base_mod = self._manifest, self._head_mod
            new = base.changed(segment, self._writer)
            compare = [self._head_compare(base_mod)]
            success = [{"request_put": {"key": b64(self._head_key), "value": b64(new.encode())}}]
            failure = [{"request_range": {"key": b64(self._head_key)}}]
            success += extra or []
            if inline is not None:
                success.append({"request_put": {"key": b64(f"{self._p}seg/{segment.id}/000000"),
                                                "value": b64(inline)}})
            if marker is not None:
                compare.append({"key": b64(marker), "target": "CREATE", "result": "GREATER", "create_revision": 0})
                success.append({"request_delete_range": {"key": b64(marker)}})
                failure.append({"request_range": {"key": b64(marker)}})
            try:
                answer = self._txn(compare, success, failure)
            except Uncertain as e:
                try:
                    answer = self._settle(segment, base, base_mod, e)
                except NotCommitted:
                    if fenced:
                        raise
                    fenced = True  # a leader went away mid-commit: once more, now that it was fenced
                    continue
            if answer.get("succeeded"):
                revision = int(answer["header"]["revision"])
                self._adopt(new, revision, revision)
                return
            head = _ranged(answer, 0)
            if marker is not None and _ranged(answer, 1) is None:
                raise Refused(f"the staged chunks' lease ({self.lease_ttl} s) ran out before the commit")
            now = Manifest.decode(unb64(head["value"])) if head else Manifest()
            now_mod = int(head["mod_revision"]) if head else 0
            if now.seq != base.seq or head is None:
                self._known = max(self._known, now_mod)
                raise StoreStale(f"store {self.name}: another controller committed change {now.seq} "
                                 f"before this one (this controller holds {base.seq})")
            self._adopt(now, now_mod, now_mod)  # a merge only: same changes, other segments
        raise Refused("the head kept changing (merges); try again")

    def _settle(self, segment: Segment, base: Manifest, base_mod: int, error: Failure) -> dict:
        """A commit whose answer was lost: make sure it can no longer
        happen (a fence on the head), or learn that it did."""
        fence = base  # the same value written again: only its revision changes
        try:
            answer = self._txn([self._head_compare(base_mod)],
                               [{"request_put": {"key": b64(self._head_key), "value": b64(fence.encode())}}],
                               [{"request_range": {"key": b64(self._head_key)}}])
        except Failure as e:
            raise Uncertain(f"{error}; then {e}: whether the change was committed is not known; if it was, "
                             "every controller applies it when etcd answers again") from None
        if answer.get("succeeded"):
            revision = int(answer["header"]["revision"])
            self._adopt(fence, revision, revision)
            raise NotCommitted(f"{error} (the change was not committed)")
        head = _ranged(answer, 0)
        now = Manifest.decode(unb64(head["value"])) if head else Manifest()
        if now.seq == base.seq + 1 and now.last == segment.id:
            return {"succeeded": True, "header": {"revision": head["mod_revision"]}}
        self._known = max(self._known, int(head["mod_revision"]) if head else 0)
        raise StoreStale(f"store {self.name}: {error}; other changes were committed meanwhile")

    # -- requests with an Idempotency-Key ---------------------------------------------
    def _request_put(self, request: Request) -> dict:
        """The operation that records `request`, for the commit's transaction."""
        lease = self._cluster.call("lease/grant", {"TTL": int(REQUEST_KEEP), "ID": 0}, idempotent=True)["ID"]
        return {"request_put": {"key": b64(f"{self._p}requests/{request.key}"),
                                "value": b64(json.dumps(request._asdict())), "lease": lease}}

    def request(self, key: str) -> Request | None:
        try:
            answer = self._cluster.call("kv/range", {"key": b64(f"{self._p}requests/{key}")}, idempotent=True)
        except Failure as e:
            raise StoreError(f"store {self.name}: cannot read: {e}") from None
        kvs = answer.get("kvs") or []
        if not kvs:
            return None
        try:
            return Request(**json.loads(unb64(kvs[0].get("value", ""))))
        except (ValueError, TypeError) as e:
            raise StoreError(f"store {self.name}: request {key} is not readable: {e}") from None

    def record_answer(self, key: str, body: str) -> None:
        recorded = self.request(key)
        if recorded is None:
            return
        value = json.dumps(recorded._replace(body=body, answered=True)._asdict())
        try:
            self._cluster.call("kv/put", {"key": b64(f"{self._p}requests/{key}"), "value": b64(value),
                                          "ignore_lease": True}, idempotent=True)
        except Failure as e:
            raise StoreError(f"store {self.name}: cannot write: {e}") from None

    # -- merging -------------------------------------------------------------------
    def _maybe_merge(self) -> None:
        if self._merging or self._closed.is_set() or \
                plan_merge([s.size for s in self._manifest.segments]) is None:
            return
        self._merging = True
        self._spawn(self._merge, "etcd-merge")

    def _merge(self) -> None:
        try:
            self._merge_once()
        except (Failure, StoreError) as e:
            if not self._closed.is_set():
                LOG.warning("store %s: merging segments postponed: %s", self.name, e)
        except Exception:
            if not self._closed.is_set():  # closing cuts the connections under it
                LOG.exception("store %s: merging segments failed", self.name)
        finally:
            self._merging = False

    def _merge_once(self) -> None:
        with self._lock:
            base = self._manifest
        start = plan_merge([s.size for s in base.segments])
        if start is None:
            return
        old = base.segments[start:start + MERGE_MAX]
        slices = self._slices()
        rows = compose((self._read_segment(s, None, slices) for s in old), slices)
        if start == 0:
            rows = rows.as_base()
        chunks = encode(rows, self.chunk_bytes, slices)
        let_go(rows.puts, self._pause)
        segment = Segment(secrets.token_hex(8), len(chunks), sum(map(len, chunks)))
        with self._staged(segment, chunks) as marker:
            for _ in range(20):
                with self._lock:
                    cur, cur_mod = self._manifest, self._head_mod
                if cur.segments[start:start + len(old)] != old:
                    return  # merged by someone else meanwhile
                new = cur.merged(start, len(old), segment)
                success = [{"request_put": {"key": b64(self._head_key), "value": b64(new.encode())}},
                           {"request_delete_range": {"key": b64(marker)}}]
                for s in old:
                    prefix = f"{self._p}seg/{s.id}/"
                    success.append({"request_delete_range": {"key": b64(prefix), "range_end": b64(range_end(prefix))}})
                answer = self._txn([self._head_compare(cur_mod),
                                    {"key": b64(marker), "target": "CREATE", "result": "GREATER",
                                     "create_revision": 0}], success, [])
                if answer.get("succeeded"):
                    revision = int(answer["header"]["revision"])
                    with self._lock:
                        if self._head_mod == cur_mod:
                            self._adopt(new, revision, revision)
                    LOG.info("store %s: merged %d segments (%d bytes) into one of %d bytes", self.name,
                             len(old), sum(s.size for s in old), segment.size)
                    return
                if self._closed.wait(0.05):
                    return
            raise Refused("the head kept changing")

    @property
    def seq(self) -> int:
        """Changes this controller holds (after its write: the write's number)."""
        return self._manifest.seq

    # -- following other controllers ------------------------------------------------
    def follow(self, on_change: Listener, lock: ContextManager) -> None:
        self._listener, self._lock = on_change, lock
        self._spawn(self._watch_loop, "etcd-watch")
        self._spawn(self._check_loop, "etcd-check")
        self._spawn(self._board.publish_loop, "etcd-applied")
        self._spawn(self._board.follow_loop, "etcd-peers")

    def catch_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.revision < self._known:
            if time.monotonic() >= deadline or self._closed.is_set():
                return False
            time.sleep(0.005)
        return True

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _watch_loop(self) -> None:
        delay, complained = 0.1, False
        while not self._closed.is_set():
            try:
                for event in self._cluster.watch(self._head_key, self.revision + 1, self._on_stream):
                    self._on_event(event)
                    delay, complained = 0.1, False
            except Compacted as e:
                self._reload(f"the watch fell behind what etcd keeps ({e})")
                continue
            except CUT as e:
                if not self._closed.is_set() and not complained:
                    LOG.warning("store %s: watch interrupted (%s); resuming after revision %d", self.name,
                                e, self.revision)
                    complained = True
            except Exception:
                if not self._closed.is_set():  # closing cuts the stream under the reader
                    LOG.exception("store %s: watch failed; resuming after revision %d", self.name,
                                  self.revision)
            finally:
                self._stream = self.watching = None
            if self._closed.wait(delay):
                return
            delay = min(2 * delay, 2.0)

    def _on_stream(self, resp, url: str) -> None:
        self._stream, self.watching = resp, url
        LOG.info("store %s: watching from revision %d on %s", self.name, self.revision + 1, url)

    def _on_event(self, event: dict) -> None:
        kv = event["kv"]
        revision = int(kv["mod_revision"])
        if revision <= self.revision:
            return  # this controller's own write, or a merge it made
        if event.get("type") == "DELETE":
            self._reload(f"{self._head_key} was deleted")
            return
        manifest = Manifest.decode(unb64(kv["value"]))
        rows = None
        segment = next((s for s in manifest.segments if s.id == manifest.last), None)
        # This controller's own change (its writer's answer may come after
        # the watch's) is not read back: the write adopts it.
        own = manifest.writer == self._writer
        if manifest.seq == self._manifest.seq + 1 and segment is not None and not own:
            rows = self._read_segment(segment, revision, self._slices())
        with self._lock:
            if revision <= self.revision:
                return
            if manifest.seq == self._manifest.seq:
                self._adopt(manifest, revision, revision)  # a merge: nothing changed
                return
            if own and segment is not None and manifest.seq == self._manifest.seq + 1:
                rows = self._read_segment(segment, revision, self._slices())  # its answer was lost
            if rows is not None and manifest.seq == self._manifest.seq + 1:
                self._deliver(rows, manifest.seq)
                self._adopt(manifest, revision, revision)
                return
        self._reload(f"the head went from change {self._manifest.seq} to {manifest.seq}")

    def _deliver(self, rows: RowDelta, seq: int) -> None:
        self._endpoint_keys -= rows.endpoint_deletes
        self._endpoint_keys |= rows.endpoint_puts.keys()
        LOG.info("store %s: change %d from another controller: %d mappings put, %d deleted%s, "
                 "%d endpoints put, %d deleted", self.name, seq, len(rows.puts), len(rows.deletes),
                 " (replacing all)" if rows.replace_all else "", len(rows.endpoint_puts),
                 len(rows.endpoint_deletes))
        if self._listener is not None:
            delta = rows.delta(self._slices())
            delta.seq = seq
            try:
                self._listener(delta)
            except Exception:
                LOG.exception("store %s: applying change %d failed", self.name, seq)
        let_go(rows.puts, self._pause)  # handed over: nobody reads the rows again

    def _reload(self, why: str) -> None:
        """Read everything and hand it over as one replacing change."""
        LOG.warning("store %s: %s; reading everything again", self.name, why)
        manifest, head_mod, revision, rows = self._read_all(self._slices())
        with self._lock:
            if revision <= self.revision:
                return
            rows.replace_all = True
            rows.endpoint_deletes = self._endpoint_keys - rows.endpoint_puts.keys()
            self._deliver(rows, manifest.seq)
            self._adopt(manifest, head_mod, revision)

    def _check_loop(self) -> None:
        """Every change reaches this controller within a bounded time: a
        watch that falls behind the head (a member that froze, a lost
        connection nobody closed) is restarted; dead writers' chunks go."""
        behind_since = None
        last_gc = time.monotonic()
        while not self._closed.wait(self.sync_interval):
            try:
                _, head_mod, _ = self._read_head(keys_only=True)
                self._known = max(self._known, head_mod)
                if head_mod <= self.revision:
                    behind_since = None
                elif behind_since is None:
                    behind_since = time.monotonic()
                elif time.monotonic() - behind_since >= self.sync_interval:
                    LOG.warning("store %s: the watch on %s is behind the head (revision %d < %d); restarting it",
                                self.name, self.watching, self.revision, head_mod)
                    self._restart_watch()
                    behind_since = None
                if time.monotonic() - last_gc >= GC_INTERVAL:
                    last_gc = time.monotonic()
                    self.collect_garbage()
            except Failure as e:
                LOG.debug("store %s: check postponed: %s", self.name, e)
            except Exception:
                LOG.exception("store %s: check failed", self.name)

    def _restart_watch(self) -> None:
        """Cut the watches' streams (the loops start them again, elsewhere)."""
        cut(self._stream)
        self._board.cut_stream()

    # -- what the controllers' bridges hold (store/applied_board.py) ------------------
    def share_lease(self, lease: Lease, instance: str) -> None:
        """``applied/<instance>`` goes on the instance's own lease: one lease
        per instance. Before `follow`."""
        self.instance = instance
        self._board.share_lease(lease, instance)

    def applied(self, seq: int) -> None:
        self._board.applied(seq)

    def peers(self) -> dict[str, int]:
        """Every controller alive (this one too, once it said so), and the
        change its bridges hold."""
        return self._board.peers()

    def wait_applied(self, seq: int, timeout: float) -> list[dict]:
        return self._board.wait_applied(seq, timeout)

    def collect_garbage(self) -> list[str]:
        """Delete the chunks of segments that no head names and no live
        writer stages (a writer killed midway); returns their ids."""
        manifest, head_mod, _ = self._read_head()
        named = {s.id for s in manifest.segments}
        staging = {key.rsplit("/", 1)[1] for key, _ in self._range(f"{self._p}staging/", keys_only=True, limit=1000)}
        seen = {key[len(self._p) + 4:].split("/", 1)[0]
                for key, _ in self._range(f"{self._p}seg/", keys_only=True, limit=1000)}
        gone = []
        for sid in sorted(seen - named - staging):
            prefix = f"{self._p}seg/{sid}/"
            answer = self._txn([self._head_compare(head_mod),
                                {"key": b64(f"{self._p}staging/{sid}"), "target": "CREATE", "result": "EQUAL",
                                 "create_revision": 0}],
                               [{"request_delete_range": {"key": b64(prefix), "range_end": b64(range_end(prefix))}}],
                               [])
            if not answer.get("succeeded"):
                break  # the head moved: judge again next time
            gone.append(sid)
        if gone:
            LOG.info("store %s: removed the chunks of %d segments no commit named: %s", self.name, len(gone),
                     ", ".join(gone))
        return gone

    def close(self) -> None:
        self._closed.set()
        self._board.close()
        self._restart_watch()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._board.revoke_own_lease()  # the others stop waiting for this controller at once
        self._cluster.close()


def _ranged(answer: dict, index: int) -> dict | None:
    """The key-value of the `index`-th range in a transaction's answer, or None."""
    responses = answer.get("responses") or []
    if index >= len(responses):
        return None
    kvs = responses[index].get("response_range", {}).get("kvs") or []
    return kvs[0] if kvs else None
