"""Traffic counters of the map-cache flows and of the buckets of their
select groups (one bucket per RLOC of a set), read from the switches sparingly.

The status page polls every few seconds, maybe from several browsers, but a
flow-stats dump of a big map-cache costs the switch real work (about 0.2 s
for 100,000 flows, most of it in ovs-vswitchd). So counters are cached
and refreshed in the background at most every `min_interval` seconds, and
never more often than `cost_factor` times the duration of the last read:
however large the table, reading it keeps at most a small share of the CPU.
A caller never waits for the switches: it gets the last counters read
(none at first) and the read it started shows on its next call.

The counters of a million flows are a `FlowCounts` (openflow/flowstats.py):
read as a dict of (packets, bytes), kept so as to cost the hub nothing;
those a refresh replaces are let go of a part at a time (dropped at once,
a million ints took one step of 48 ms).
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from lisp_controller.controller.slices import let_go
from lisp_controller.openflow.flowstats import FlowCounts

LOG = logging.getLogger(__name__)

# cookie -> (packets, bytes): a FlowCounts as read from the bridges, or a
# dict (none read yet; tests).
Counts = FlowCounts | dict[int, tuple[int, int]]
BucketCounts = dict[int, tuple[tuple[int, int], ...]]  # group ID -> (packets, bytes) per bucket


@dataclass(frozen=True)
class Snapshot:
    counts: Counts = field(default_factory=dict)
    read_at: float | None = None  # wall time of the read; None: never read
    buckets: BucketCounts = field(default_factory=dict)


class CounterCache:
    def __init__(self, read: Callable[[], Snapshot], spawn: Callable[[Callable[[], None]], object],
                 min_interval: float = 2.0, cost_factor: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 pause: Callable[[], None] | None = None):
        self._read, self._spawn, self._pause = read, spawn, pause
        self.min_interval, self.cost_factor = min_interval, cost_factor
        self._clock, self._wall = clock, wall
        self._snapshot = Snapshot()
        self._due = 0.0
        self._running = False

    def get(self) -> Snapshot:
        """The latest counters; starts a refresh if they are due one."""
        if self._running or self._clock() < self._due:
            return self._snapshot
        self._running = True
        self._spawn(self._refresh)
        return self._snapshot

    def _refresh(self) -> None:
        started = self._clock()
        old = None
        try:
            old, self._snapshot = self._snapshot, dataclasses.replace(self._read(), read_at=self._wall())
        except Exception:  # keep serving the old counters; say why they are old
            LOG.exception("reading flow counters failed")
        finally:
            took = self._clock() - started
            self._due = self._clock() + max(self.min_interval, self.cost_factor * took)
            self._running = False
        if old is not None:
            # Let go of the counters replaced a part at a time if nobody
            # else holds them: a request may still be reading them (a
            # listing sorted by packets yields between slices) and would
            # see them emptied; then they go when it lets go of them.
            # Replaced, nobody can take them anew.
            counts, old = old.counts, None
            if isinstance(counts, FlowCounts) and sys.getrefcount(counts) == 2:  # `counts`, the call's
                let_go(counts, self._pause)


def add_bucket_counts(total: BucketCounts, more: BucketCounts) -> None:
    """Sum one bridge's bucket counts into `total` (a group is on every bridge)."""
    for group_id, buckets in more.items():
        have = total.get(group_id)
        total[group_id] = buckets if have is None or len(have) != len(buckets) else \
            tuple((p + q, b + c) for (p, b), (q, c) in zip(have, buckets))
