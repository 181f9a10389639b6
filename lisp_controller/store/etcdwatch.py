"""The etcd store following the other controllers' changes
(store/etcd.py has the layout; docs/etcd.rst).

Each controller watches the head. A new head with ``seq`` one more than
its own brings the segment named ``last``, read at that revision and
handed to `on_change`; a head with the same ``seq`` is a merge (nothing
changed); anything else, or a watch that etcd compacted away, makes it read
everything again. A write compares the head this controller holds, so it
was checked against every change before it, or it fails with StoreStale.

The client is etcd3gw (etcd's v3 JSON gateway, green under eventlet). Its
watcher ignores the notice of a watch cancelled by compaction, so the watch
stream is read here.

A check loop restarts a watch that falls behind the head and collects dead
writers' chunks (store/etcdmerge.py). Mixed into `EtcdStore`, which holds
the state these methods use.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, ContextManager

from lisp_controller.controller.gcpause import BIG, gc_paused
from lisp_controller.controller.slices import let_go
from lisp_controller.store.applied_board import cut
from lisp_controller.store.base import Listener
from lisp_controller.store.etcdclient import CUT, Compacted, Failure, unb64
from lisp_controller.store.segments import Manifest, RowDelta

LOG = logging.getLogger("lisp_controller.store.etcd")
GC_INTERVAL = 60.0  # seconds between looks for chunks of dead writers


class Following:
    """The watch on the head, the changes it brings, the check that it keeps up."""

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
            with gc_paused(BIG):  # lifted while its slices let the hub go
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
