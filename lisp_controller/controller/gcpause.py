"""Keep Python's cyclic garbage collector out of big batches.

Building or reading 100,000 flows allocates objects that hold no cycles,
and every few hundred allocations the collector walks the young ones; a
full collection walks the whole state (about a million objects at 100k
mappings) and takes half a second. Big batches pause it, and long-lived
state is frozen out of its sight.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator

BIG = 1000


@contextlib.contextmanager
def gc_paused(items: int) -> Iterator[None]:
    """Pause the collector for a batch of `items` (if it is big)."""
    if items < BIG or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def freeze_long_lived() -> None:
    """Move every object alive now to the permanent generation (O(1)): the
    state's mappings and flows live until replaced and have no cycles, so
    the collector need not walk them again; refcounting still frees them."""
    gc.freeze()
