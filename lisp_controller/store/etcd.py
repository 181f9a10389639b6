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

The store is one class in four modules, each read in one sitting: this
one holds its state, reads segments and answers the API's questions;
store/etcdwrite.py writes a change (staged chunks, the commit on the head);
store/etcdwatch.py follows the other controllers' changes; store/etcdmerge.py
merges segments and collects the chunks of writers that died.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Callable, ContextManager, Iterator

from lisp_controller.config import EtcdSettings
from lisp_controller.controller.gcpause import BIG, breathe, gc_paused
from lisp_controller.controller.slices import Slices
from lisp_controller.model import Endpoint, Mapping
from lisp_controller.store.applied_board import AppliedBoard
from lisp_controller.store.base import REQUEST_KEEP, Listener, Request, StoreError
from lisp_controller.store.etcdclient import Cluster, Failure, Refused, b64, range_end, unb64
from lisp_controller.store.etcdmerge import Merging
from lisp_controller.store.etcdwatch import Following
from lisp_controller.store.etcdwrite import Writing
from lisp_controller.store.lease import Lease
from lisp_controller.store.segments import Manifest, RowDelta, Segment, compose, decode

LOG = logging.getLogger(__name__)

CHUNK_BYTES = 1_000_000  # a chunk and its request stay under etcd's 1.5 MiB
LEASE_TTL = 10  # seconds staged chunks outlive a writer that died
SYNC_INTERVAL = 2.0  # seconds between checks that the watch keeps up
PAGE = 8  # chunks per read


def _let_the_hub_run() -> None:
    time.sleep(0)  # green: the controller monkey-patches time (lisp_controller/__main__.py)


class EtcdStore(Writing, Merging, Following):
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
        """For a change of any size read from etcd or a big one written:
        each pause lets the collector run while the hub does."""
        return Slices(lambda: breathe(self._pause))

    def _read_segment(self, segment: Segment, revision: int | None, slices: Slices | None = None) -> RowDelta:
        chunks = list(self._range(f"{self._p}seg/{segment.id}/", revision))
        if len(chunks) != segment.chunks:
            raise Refused(f"segment {segment.id} has {len(chunks)} of its {segment.chunks} chunks")
        try:
            with gc_paused(BIG if slices is not None else 0):  # lifted while its slices let the hub go
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

    @property
    def seq(self) -> int:
        """Changes this controller holds (after its write: the write's number)."""
        return self._manifest.seq

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

    def close(self) -> None:
        self._closed.set()
        self._board.close()
        self._restart_watch()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._board.revoke_own_lease()  # the others stop waiting for this controller at once
        self._cluster.close()
