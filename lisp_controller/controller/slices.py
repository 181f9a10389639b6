"""Long work on the hub, cut into slices that let it go in between.

Every OpenFlow session, API request and timer shares one eventlet hub;
work that does not yield holds all of them (docs/performance.rst, "A free
hub"). A big change, a listing of a million mappings, a bulk request's
parsing go item by item and ask a `Slices` after each item whether their
slice is over: after `most` items, or after `budget` seconds of work,
whichever comes first. The cost of an item varies tenfold with the kind
of work and with the machine's load (a shared machine gives the process
half a core), so a count alone would not bound the time; the count bounds
the work when the clock is not looked at (a test's clock).
"""
from __future__ import annotations

import heapq
import time
from typing import Callable, Iterable, Iterator, TypeVar

from lisp_controller.model.parted import PartedDict

T = TypeVar("T")
MOST = 2000  # items per slice at most
BUDGET = 0.005  # seconds of work per slice at most (give or take CHECK items)
CHECK = 50  # items between looks at the clock (a look costs about 50 ns)
PARTS_AT_ONCE = 16  # parts of a PartedDict let go of per slice at most (64,000 entries of a million)
LIST_PART = 4000  # items of a list let go of in one step (a part of a PartedDict of a million)
RUN = 20_000  # items `sorted_sliced` sorts in one step (about 2 ms of ints)


class Slices:
    """Counts items; `due()` says when to let the hub go, `pause()` does."""

    def __init__(self, pause: Callable[[], None] | None, most: int = MOST, budget: float = BUDGET,
                 clock: Callable[[], float] = time.perf_counter):
        self._pause, self.most, self.budget, self._clock = pause, most, budget, clock
        self.items = 0  # in this slice
        self.pauses = 0
        self._began = clock()

    def due(self) -> bool:
        """Count one item; whether the slice is over."""
        self.items += 1
        items = self.items
        return items >= self.most or (items % CHECK == 0 and self._clock() - self._began >= self.budget)

    def pause(self) -> None:
        """Let the hub go (if a pause was given) and start a new slice."""
        if self._pause is not None:
            self._pause()
        self.pauses += 1
        self.items = 0
        self._began = self._clock()


def ms_since(mark: float) -> float:
    """Milliseconds since `mark` (time.monotonic), as the status shows them."""
    return round((time.monotonic() - mark) * 1000, 1)


def sliced(items: Iterable[T], slices: Slices | None) -> Iterator[T]:
    """`items`, letting the hub go whenever `slices` says a slice is over
    (every item, and whatever work its consumer does with it, counts).
    None: no pauses. The pause comes before the next item is taken, so a
    lazy source (a dump split as it is read) is sliced too."""
    if slices is None:
        yield from items
        return
    due, pause = slices.due, slices.pause
    for item in items:
        yield item
        if due():
            pause()


def let_go(big: PartedDict | dict | list, pause: Callable[[], None] | None,
           clock: Callable[[], float] = time.perf_counter) -> None:
    """Empty `big`, which its caller was the last to hold, a slice at a
    time: dropping the last reference to a million entries frees them in
    one step of the hub (48 ms for a million ints, 117 to 172 ms for the
    plan of a sync of two million; docs/performance.rst, "A free hub").
    A `PartedDict` goes a part at a time, a list `LIST_PART` items at a
    time from its end, a dict an entry at a time; whoever else still held
    it would see it emptied."""
    if isinstance(big, PartedDict):
        for _ in sliced(big.emptying(), Slices(pause, most=PARTS_AT_ONCE, clock=clock)):
            pass
        return
    if isinstance(big, list):
        for _ in sliced(_shortening(big), Slices(pause, most=PARTS_AT_ONCE, clock=clock)):
            pass
        return
    slices = Slices(pause, clock=clock)
    popitem = big.popitem
    while big:
        popitem()
        if slices.due():
            slices.pause()


def _shortening(items: list) -> Iterator[int]:
    """Take `LIST_PART` items off the end of `items` at a time (freed
    there, one step each) until it is empty; yields after each."""
    while items:
        del items[-LIST_PART:]
        yield LIST_PART


def sorted_sliced(items: list[T], slices: Slices | None) -> list[T]:
    """`sorted(items)`, letting the hub go as `sliced` does: runs of RUN
    items sorted on their own, then merged (a million cookies sorted in
    one step held the hub 0.3 to 1 s). None: one sort."""
    if slices is None or len(items) <= RUN:
        return sorted(items)
    runs = []
    for i in range(0, len(items), RUN):
        runs.append(sorted(items[i:i + RUN]))
        slices.pause()  # a run is a slice's worth of work
    return list(sliced(heapq.merge(*runs), slices))
