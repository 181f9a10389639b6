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

The counters of a million flows are a `FlowCounts` (openflow/switch.py):
read as a dict of (packets, bytes), kept so as to cost the hub nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

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
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self._read, self._spawn = read, spawn
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
        try:
            self._snapshot = dataclasses.replace(self._read(), read_at=self._wall())
        except Exception:  # keep serving the old counters; say why they are old
            LOG.exception("reading flow counters failed")
        finally:
            took = self._clock() - started
            self._due = self._clock() + max(self.min_interval, self.cost_factor * took)
            self._running = False


def add_bucket_counts(total: BucketCounts, more: BucketCounts) -> None:
    """Sum one bridge's bucket counts into `total` (a group is on every bridge)."""
    for group_id, buckets in more.items():
        have = total.get(group_id)
        total[group_id] = buckets if have is None or len(have) != len(buckets) else \
            tuple((p + q, b + c) for (p, b), (q, c) in zip(have, buckets))
