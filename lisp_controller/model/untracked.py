"""Keep the map-cache's mappings, and the containers of a million of them,
out of the cyclic collector's sight.

Python frees an object when its last reference goes (reference counting);
the cyclic collector only exists for garbage that references itself. Its
full collections walk every object it tracks, holding the hub meanwhile:
with a million mappings, two tracked objects each (the `Mapping` and its
`Prefix`), one full collection took about 450 ms on the benchmark machine,
230 ms with them untracked (docs/performance.rst, "A free hub").

A `Mapping` and its `Prefix` are tuples of numbers, strings and shared
RLOC tuples: they can never be part of a reference cycle, so the
collector has nothing to find in them. CPython itself stops tracking a
plain tuple of such values; it does not for tuple subclasses, so the
map-cache does it when it takes a mapping in, and `Mapping.parse` as it
makes one (model/mapping.py): the 100,000 mappings of a bulk request are
not walked by the collections that run while it is checked and applied,
nor count towards the next full one. Unlike
`gc.freeze()`, this keeps no garbage: an untracked mapping is freed as
soon as nothing holds it, as before; and whatever it references stays
tracked, so cycles elsewhere are still found.

An untracked object costs a collection nothing, but a tracked container
holding it still makes the collection look at it: a dict or a list of a
million mappings cost every full collection 30 to 150 ms (bench/hub.py
--census). Such containers (the map-cache's buckets, a snapshot of it,
the mappings of a request, sets of keys made of numbers) can never be
part of a cycle either, as nothing in them can reference the container,
so they are untracked too (`untrack_all`, `untracked_list`). CPython never tracks a list
or a set again once untracked; it tracks a dict again as soon as it puts
in it a value that may be tracked (a `Mapping` is one, being a tuple
subclass), so the owners of such dicts untrack them again when a change
pauses or ends (`MapCache.untrack`, controller/state.py). Whatever is put
in such a container stays a correct program either way: an untracked
container only hides its references, it never frees anything.
"""
from __future__ import annotations

import gc
import sys
from typing import Iterable

if sys.implementation.name == "cpython":
    import ctypes

    _untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    _untrack.argtypes = (ctypes.py_object,)
    _untrack.restype = None
else:  # pragma: no cover - other interpreters collect differently
    def _untrack(value: object) -> None:
        pass


def untrack(value: object) -> None:
    """Stop the collector tracking `value`: a tuple, or a container, that
    cannot be part of a reference cycle (it holds nothing that could
    reference it back). Calling it twice is harmless."""
    _untrack(value)


def untrack_all(containers: Iterable[object]) -> None:
    """`untrack` each of `containers` the collector tracks now (a dict
    that was put a mapping in since it was last untracked)."""
    is_tracked = gc.is_tracked
    for c in containers:
        if is_tracked(c):
            _untrack(c)


def untracked_list() -> list:
    """A new list the collector never walks (see the module docstring:
    for mappings and other values that cannot reference it)."""
    out: list = []
    _untrack(out)
    return out
