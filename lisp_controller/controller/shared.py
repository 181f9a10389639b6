"""The shared map-cache flows: compiled once, the same bytes for every bridge.

The map-cache table holds no port numbers (docs/datapath.rst, "The
pipeline"), so each mapping compiles to one flow that every bridge holds.
This keeps, by cookie, what each flow is made from and its flow-mod bytes,
and remembers what changed in each generation of the state so a bridge
that confirmed generation g catches up by sending only what changed since,
not by diffing the whole table. During a big change it can also hand the
flows over as they are made (a journal), so bridges take the change while
it is still being made (docs/performance.rst).
"""
from __future__ import annotations

import array
import collections
import collections.abc
import time
from typing import Callable, Iterator

from lisp_controller.controller.slices import PARTS_AT_ONCE, Slices, sliced
from lisp_controller.model import Mapping
from lisp_controller.model.parted import PartedDict
from lisp_controller.model.untracked import untrack, untrack_all, untracked_list
from lisp_controller.pipeline.actions import groups_in
from lisp_controller.pipeline.compiler import mapping_flow, mapping_group
from lisp_controller.pipeline.flows import Flow, Group
from lisp_controller.controller.reconcile import GROUP_GONE, GroupGone

HISTORY_COOKIES = 2_000_000  # shared-flow changes remembered for bridges' delta syncs
HISTORY_SLICE = 100_000  # cookies put into the history's arrays between pauses at most
# (cookie, flow-mod) added, (cookie, None) removed; (group ID, Group) wanted,
# (group ID, GROUP_GONE) no longer (reconcile.Stream reads them).
Journal = list[tuple[int, bytes | Group | GroupGone | None]]


class SharedFlows(collections.abc.Mapping):
    """Shared flows by cookie (a `Mapping` of cookie -> `Flow`), with their
    bytes in `encoded` (a `PartedDict`). A flow is held as what it is made
    from: a `Mapping` (its `Flow` is made again when asked for, which is
    rare: errors, the flows API, proxy ARP) or a `Flow`. Holding a million `Flow` values would
    cost 200 bytes per mapping; the bridges only ever need `encoded`."""

    def __init__(self) -> None:
        # In parts too: filling up to a million during a bulk, one dict
        # doubled its table in one step of 55 to 95 ms.
        self._source: PartedDict = PartedDict()
        # In parts (model/parted.py): a deep check copies it, a part at a
        # time, and it fills up to a million during a bulk without one
        # dict doubling its table in one step.
        self.encoded: PartedDict = PartedDict()
        # (generation, cookies added, cookies removed), oldest first. The
        # cookies are kept in arrays, not sets: a million ints in a set cost
        # the cyclic collector about 100 ms per full collection, an array
        # nothing (docs/performance.rst, "A free hub"), and delta() only
        # goes through them. The sets of the change being made are not
        # tracked by the collector either (they hold ints only).
        self.history: collections.deque[tuple[int, array.array, array.array]] = collections.deque()
        self._history_cookies = 0  # cookies held in `history`, kept as it changes: many small commits
        # The cookies the change being made adds and removes: sets of up
        # to a million, in parts (a set of a million doubled its table in
        # one step of 32 to 60 ms), a cookie's entry None.
        self._added: PartedDict | None = None
        self._removed: PartedDict | None = None
        self._journal: Journal | None = None
        self._stream: Callable[[Journal], None] | None = None
        self.groups: dict[int, Group] = {}  # the groups the flows use, by ID
        self._users: dict[int, int] = {}  # flows using each group
        self._groups_before: dict[int, Group | None] = {}  # streaming: changed groups at the batch's start

    # -- the Mapping view ----------------------------------------------------
    def __getitem__(self, cookie: int) -> Flow:
        source = self._source[cookie]
        return mapping_flow(source) if isinstance(source, Mapping) else source

    def __contains__(self, cookie: object) -> bool:
        return cookie in self._source

    def __iter__(self) -> Iterator[int]:
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)

    def snapshot(self, pause: Callable[[], None] | None = None) -> tuple[list[int], list[Mapping | Flow]]:
        """The cookies, and what each flow is made from, in the same order:
        two lists made in C, a part at a time, `pause` letting the hub go
        every PARTS_AT_ONCE parts (made whole, the two took 53 to 89 ms
        at a million); the caller sees to it that nobody changes the flows
        meanwhile (the change lock). The lists are then the caller's to go
        through while yielding to the hub as the flows change
        (controller/flowlist.py). The collector never walks them."""
        cookies, sources = untracked_list(), untracked_list()
        for i, part in enumerate(self._source.parts, 1):
            cookies.extend(part)
            sources.extend(part.values())
            if pause is not None and i % PARTS_AT_ONCE == 0:
                pause()
        return cookies, sources

    def untrack(self) -> None:
        """Hide the flows by cookie from the collector again (CPython
        tracks the dict again when a mapping is put in it): a million
        mappings cost every full collection tens of milliseconds
        otherwise (model/untracked.py). Flows and mappings cannot
        reference the dict back."""
        untrack_all(self._source.parts)

    # -- one change ------------------------------------------------------------
    def begin(self, track: bool, stream: Callable[[Journal], None] | None = None) -> None:
        """Start a change: `track` records it as a new generation; `stream`
        receives the flows' changes in order at each `flush`."""
        if track:
            self._added, self._removed = PartedDict(), PartedDict()
        self._stream = stream
        self._journal = [] if stream is not None else None

    def flush(self) -> None:
        """Hand what changed since the last flush to the stream, if any:
        groups the batch needs, its flows, then groups no longer used."""
        if self._journal is None or not (self._journal or self._groups_before):
            return
        first, last = [], []
        for group_id, before in self._groups_before.items():
            now = self.groups.get(group_id)
            if now is not None and now != before:
                first.append((group_id, now))
            elif now is None and before is not None:
                last.append((group_id, GROUP_GONE))
        self._groups_before = {}
        self._stream(first + self._journal + last)
        self._journal = []

    def end(self, generation: int | None, pause: Callable[[], None] | None = None,
            clock: Callable[[], float] = time.perf_counter) -> None:
        """Close the change, remembered under `generation` if it was
        tracked. Its cookies go into the history's arrays a slice at a time
        (controller/slices.py, `pause` between them: a million in one step
        held the hub 256 ms); the history gains the change only once it is
        whole, so whoever asks for a delta meanwhile gets the generations
        before."""
        slices = Slices(pause, most=HISTORY_SLICE, clock=clock)
        added, removed = self._added, self._removed
        self._journal = self._stream = None
        self._groups_before = {}
        self._added = self._removed = None
        if generation is not None and added is not None:
            self._remember(generation, _array(added, slices), _array(removed, slices))

    def add(self, source: Mapping | Flow, cookie: int, data: bytes) -> None:
        encoded = self.encoded.part(cookie)  # one call, not two: a million times in a bulk
        sources = self._source.parts[cookie % PartedDict.PARTS]
        other = encoded.get(cookie)
        if other is not None:
            if other != data:
                raise RuntimeError(f"cookie collision {cookie:#x}")
            replaced = _group_of(sources[cookie])
            if replaced is not None:
                self._release(replaced)
        sources[cookie] = source
        encoded[cookie] = data
        group = _group_of(source)
        if group is not None:
            self._use(group)
        if self._journal is not None:
            self._journal.append((cookie, data))
        if self._added is not None:
            removed = self._removed.parts[cookie % PartedDict.PARTS]
            if cookie in removed:
                del removed[cookie]  # removed and put back: no change
            else:
                self._added.parts[cookie % PartedDict.PARTS][cookie] = None

    def renew(self, cookie: int, source: Mapping) -> None:
        """The same flow made from a newer mapping (a new TTL, say)."""
        self._source[cookie] = source

    def drop(self, cookie: int) -> None:
        part = cookie % PartedDict.PARTS  # the same part in each: a million times in a bulk
        group = _group_of(self._source.parts[part].pop(cookie))
        del self.encoded.parts[part][cookie]
        if group is not None:
            self._release(group)
        if self._journal is not None:
            self._journal.append((cookie, None))
        if self._added is not None:
            added = self._added.parts[part]
            if cookie in added:
                del added[cookie]
            else:
                self._removed.parts[part][cookie] = None

    def users(self, group_id: int) -> int:
        """How many flows (mappings) use the group."""
        return self._users.get(group_id, 0)

    def _use(self, group: Group) -> None:
        gid = group.group_id
        n = self._users.get(gid, 0)
        if n == 0:
            self._changing(gid, None)
            self.groups[gid] = group
        self._users[gid] = n + 1

    def _release(self, group: Group) -> None:
        gid = group.group_id
        n = self._users[gid] - 1
        if n:
            self._users[gid] = n
            return
        del self._users[gid]
        self._changing(gid, self.groups.pop(gid))

    def _changing(self, group_id: int, before: Group | None) -> None:
        if self._journal is not None and group_id not in self._groups_before:
            self._groups_before[group_id] = before

    # -- catching up -------------------------------------------------------------
    def delta(self, since: int, current: int, slices: Slices | None = None) -> tuple[set[int], set[int]] | None:
        """Cookies added and removed after generation `since` up to
        `current`, or None if the history no longer reaches back that far.
        `slices` lets the hub go between slices of cookies (a change of a
        million took 0.7 s in one step); nobody may change the history
        meanwhile (the caller holds the change lock)."""
        if since == current:
            return set(), set()
        if not self.history or self.history[0][0] > since + 1:
            return None
        added: set[int] = set()
        removed: set[int] = set()
        untrack(added)  # ints only: nothing for the collector to walk while it yields
        untrack(removed)
        for generation, plus, minus in self.history:
            if generation <= since:
                continue
            for c in sliced(minus, slices):
                if c in added:
                    added.discard(c)
                else:
                    removed.add(c)
            for c in sliced(plus, slices):
                if c in removed:
                    removed.discard(c)
                else:
                    added.add(c)
        return added, removed

    def _remember(self, generation: int, added: array.array, removed: array.array) -> None:
        # Numbers only: the collector has nothing to find in an entry, and
        # thousands of small changes would otherwise keep three tracked
        # objects each until the history lets them go (model/untracked.py).
        entry = (generation, added, removed)
        untrack_all((entry, added, removed))
        self.history.append(entry)
        self._history_cookies += len(added) + len(removed)
        while len(self.history) > 1 and self._history_cookies > HISTORY_COOKIES:
            _, a, r = self.history.popleft()
            self._history_cookies -= len(a) + len(r)


def _array(cookies: PartedDict, slices: Slices | None) -> array.array:
    """`cookies` in an array, letting the hub go between slices; they
    (the caller's alone by then) are let go of a part at a time as they
    go in, so not in one step either (20 ms for a million)."""
    return array.array("Q", sliced(_drain(cookies), slices))


def _drain(items: PartedDict) -> Iterator[int]:
    parts = items.parts
    for i in range(len(parts)):
        part, parts[i] = parts[i], {}
        yield from part


def _group_of(source: Mapping | Flow) -> Group | None:
    """The group a shared flow uses, if any; cheap for the common mapping
    of one RLOC, which never has one."""
    if type(source) is Mapping:
        return mapping_group(source) if len(source.rlocs) > 1 else None
    found = groups_in(source.actions)
    return found[0] if found else None
