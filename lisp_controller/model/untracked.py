"""Keep the map-cache's mappings out of the cyclic collector's sight.

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
"""
from __future__ import annotations

import sys

if sys.implementation.name == "cpython":
    import ctypes

    _untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    _untrack.argtypes = (ctypes.py_object,)
    _untrack.restype = None
else:  # pragma: no cover - other interpreters collect differently
    def _untrack(value: object) -> None:
        pass


def untrack(value: tuple) -> None:
    """Stop the collector tracking `value`, a tuple that cannot be part of
    a reference cycle (it holds nothing that could reference it back).
    Calling it twice is harmless."""
    _untrack(value)
