"""Keep Python's cyclic garbage collector out of big batches.

Building or reading 100,000 flows allocates objects that hold no cycles,
and every few hundred allocations the collector walks the young ones. Big
batches pause it. The state is not frozen out of the collector's sight
after a big change: collecting first, so that no garbage is kept for
good, cost more than the freeze saved (bench/collector.py,
docs/performance.rst).

The collector is one for the whole process, and greenthreads take turns
on it, so a pause follows two rules (docs/performance.rst):

- it nests: an inner pause never ends an outer one (a counter, not a flag);
- it never spans a yield to other greenthreads: it wraps CPU-bound work
  that does not yield, and code that must yield in the middle of a paused
  batch does so through `breathe`, which lets the collector run while
  others do. Another greenthread therefore never finds the collector
  paused by somebody else; `gc_paused` checks this and says so.
"""
from __future__ import annotations

import contextlib
import gc
import logging
from typing import Callable, Iterator

try:  # the greenthread that owns a pause: greenlets under eventlet, else the thread
    from greenlet import getcurrent as _current
except ImportError:  # pragma: no cover - os-ken depends on eventlet, which needs greenlet
    import threading

    _current = threading.current_thread

LOG = logging.getLogger(__name__)
BIG = 1000

_depth = 0  # pauses open now
_resume = False  # the collector was running when the outermost pause began
_owner: object = None  # the greenthread that holds the pauses


@contextlib.contextmanager
def gc_paused(items: int = BIG) -> Iterator[None]:
    """Pause the collector for a batch of `items` (if it is big). The
    batch must not yield to the hub (see the module docstring)."""
    global _depth, _resume, _owner
    if items < BIG:
        yield
        return
    me = _current()
    if _depth and _owner is not me:
        # Somebody yielded inside a pause: a bug, but not one to crash on.
        # The pause is taken over, and ends when this one does.
        LOG.warning("garbage collector pause held across a yield; taking it over")
        _depth, _owner = 0, me
    elif _depth == 0:
        _resume, _owner = gc.isenabled(), me
    gc.disable()
    _depth += 1
    try:
        yield
    finally:
        if _owner is me:  # else taken over by another greenthread, which ends it
            _depth -= 1
            if _depth == 0:
                _owner = None
                if _resume:
                    gc.enable()


def breathe(pause: Callable[[], None]) -> None:
    """Call `pause` (a yield to the hub) with the collector running as it
    would without our pauses, and put them back after."""
    global _depth, _owner
    depth, resume = _depth, _resume
    if depth:
        _depth, _owner = 0, None
        if resume:
            gc.enable()
    try:
        pause()
    finally:
        if depth:
            _restore(depth, resume)


def _restore(depth: int, resume: bool) -> None:
    global _depth, _resume, _owner
    _depth, _resume, _owner = depth, resume, _current()
    gc.disable()


def freeze_at_start() -> None:
    """Once, when the process has started and before it serves: collect,
    then move everything alive out of the collector's sight (gc.freeze).

    What is alive then is the code (modules, classes, functions of
    os-ken, eventlet and ours: about 115,000 objects, 40 ms of every full
    collection on the benchmark machine) and the state loaded from the
    store; it lives as long as the process. Collecting first leaves no
    garbage frozen, and at this point the hub waits for nothing. Frozen
    objects are still freed by reference counting when they go (a mapping
    deleted later is): only a cycle among them would be kept. Nothing is
    frozen after a change (see the module docstring).
    """
    gc.collect()
    gc.freeze()


def paused_depth() -> int:
    """Pauses open now (for tests)."""
    return _depth
