"""The etcd store's segments merged, and the chunks of dead writers
collected (store/etcd.py has the layout; docs/etcd.rst).

Every change adds a segment; `plan_merge` (store/segments.py) says when the
newest ones are merged into one, on a thread of the store's own, by the
same kind of staged write and small commit on the head as a change (a
merge leaves ``seq`` alone, so the other controllers know nothing
changed). A writer killed midway leaves chunks no head names: the check
loop (store/etcdwatch.py) removes them every GC_INTERVAL. Mixed into
`EtcdStore`, which holds the state these methods use.
"""
from __future__ import annotations

import logging
import secrets

from lisp_controller.controller.slices import let_go
from lisp_controller.store.base import StoreError
from lisp_controller.store.etcdclient import Failure, Refused, b64, range_end
from lisp_controller.store.segments import Segment, compose, encode, plan_merge

LOG = logging.getLogger("lisp_controller.store.etcd")
MERGE_MAX = 100  # segments merged at once (one op each in the commit)


class Merging:
    """Segments merged; chunks no commit named removed."""

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
