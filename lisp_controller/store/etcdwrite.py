"""The etcd store's writes (store/etcd.py has the layout; docs/etcd.rst).

A change that fits one request is written with the head in one
transaction. A bigger one (100,000 mappings are about 9 MB; etcd takes
128 operations and 1.5 MiB per request) is first written as chunks nobody
reads, then committed by the same small transaction on the head: until
then no controller sees any of it, and if the writer dies its chunks are
collected once its lease is gone.

A write compares the head this controller holds, so it was checked against
every change before it, or it fails with StoreStale. A commit whose answer
was lost is settled by fencing the head (`_settle`). Mixed into `EtcdStore`,
which holds the state these methods use.
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import Iterable, Iterator

from lisp_controller.controller.gcpause import BIG, gc_paused
from lisp_controller.controller.slices import let_go
from lisp_controller.model import Endpoint, Mapping
from lisp_controller.store.base import Request, StoreError, StoreStale
from lisp_controller.store.etcdclient import Failure, NotCommitted, Refused, Uncertain, b64, range_end, unb64
from lisp_controller.store.segments import Manifest, RowDelta, Segment, encode

LOG = logging.getLogger("lisp_controller.store.etcd")


class Writing:
    """A change written to etcd: `write` and the steps of its commit."""

    def write(self, put: Iterable[Mapping] = (), delete: Iterable[tuple] = (), replace_all: bool = False,
              put_endpoints: Iterable[tuple[str, Endpoint]] = (),
              delete_endpoints: Iterable[tuple[str, str]] = (), request: Request | None = None,
              big: bool = False) -> None:
        """(store/base.py) The HTTP client yields to the hub while etcd
        works; a `big` change's rows and chunks are made in slices, the
        collector paused but between them (controller/gcpause.py: a
        collection over a million mappings' objects took 20-40 ms)."""
        slices = self._slices() if big else None
        with gc_paused(BIG if big else 0):  # lifted while its slices let the hub go
            delta = RowDelta.of_change(put, delete, replace_all, put_endpoints, delete_endpoints, slices)
            chunks = [] if delta.empty() else encode(delta, self.chunk_bytes, slices)
        if delta.empty():
            return
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


def _ranged(answer: dict, index: int) -> dict | None:
    """The key-value of the `index`-th range in a transaction's answer, or None."""
    responses = answer.get("responses") or []
    if index >= len(responses):
        return None
    kvs = responses[index].get("response_range", {}).get("kvs") or []
    return kvs[0] if kvs else None
