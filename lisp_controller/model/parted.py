"""A dict of up to a million entries by int key, kept in parts, so that no
single step over it holds the hub long (docs/performance.rst, "A free
hub").

CPython does some work on a whole dict in one step that nothing can
interrupt: a dict filling up doubles its table now and then, moving every
entry (33 ms at 700,000 entries on the benchmark machine, 67 at
1,400,000, twice that loaded); a copy copies every entry (40 ms at
1,000,000); the last reference going frees every entry (48 ms for a
million ints). A `PartedDict` keeps its entries in `PARTS` dicts by the
key's low bits (our keys are cookies, content hashes, and group IDs: the
parts fill evenly), so each such step touches a part: about 4,000 entries
of a million. What goes over the whole is Python's loop over the parts,
which its owner slices (controller/slices.py): `emptying` lets it go a
part at a time.

It reads and writes as a dict does for the operations the controller uses
(`[]`, `get`, `in`, `len`, `pop`, `del`, iteration, `items`, `values`);
`items` and `values` are iterators over the parts chained in C, not
views (`keys` is a view: set operations work). Its parts hold ints and bytes only where it is used (flow
counts, flow-mods), which the cyclic collector never tracks.
"""
from __future__ import annotations

import itertools
from collections.abc import MutableMapping
from typing import Iterable, Iterator, TypeVar

V = TypeVar("V")
_chain = itertools.chain.from_iterable


class PartedDict(MutableMapping):
    """A dict of int keys in `PARTS` dicts by `key % PARTS`."""

    PARTS = 256
    __slots__ = ("parts",)

    def __init__(self, items: Iterable[tuple[int, V]] = ()) -> None:
        self.parts: list[dict[int, V]] = [{} for _ in range(self.PARTS)]
        parts, size = self.parts, self.PARTS
        for key, value in items:
            parts[key % size][key] = value

    def part(self, key: int) -> dict[int, V]:
        """The part that holds `key`, for loops that inline the lookup."""
        return self.parts[key % self.PARTS]

    def __getitem__(self, key: int) -> V:
        return self.parts[key % self.PARTS][key]

    def get(self, key: int, default: V | None = None) -> V | None:
        return self.parts[key % self.PARTS].get(key, default)

    def __setitem__(self, key: int, value: V) -> None:
        self.parts[key % self.PARTS][key] = value

    def __delitem__(self, key: int) -> None:
        del self.parts[key % self.PARTS][key]

    def pop(self, key: int, *default: V) -> V:
        return self.parts[key % self.PARTS].pop(key, *default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and key in self.parts[key % self.PARTS]

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __bool__(self) -> bool:
        return any(self.parts)  # stops at the first part with an entry, not a sum of 256

    def __iter__(self) -> Iterator[int]:
        return _chain(self.parts)

    def items(self) -> Iterator[tuple[int, V]]:  # type: ignore[override]
        return _chain(map(dict.items, self.parts))

    def values(self) -> Iterator[V]:  # type: ignore[override]
        return _chain(map(dict.values, self.parts))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} entries)"

    def copying(self, other: "PartedDict") -> Iterator[int]:
        """Put `other`'s entries in this one (theirs win), a part at a
        time: each part is one C-level copy of about 4,000 entries of a
        million, and this yields after each the number it copied, so the
        caller can let the hub go between parts (one copy of a million
        held it 40 to 54 ms)."""
        mine = self.parts
        for i, part in enumerate(other.parts):
            if mine[i]:
                mine[i].update(part)
            else:
                mine[i] = part.copy()
            yield len(part)

    def emptying(self) -> Iterator[int]:
        """Let go of every entry, a part at a time: yields after each part
        the number of entries it held, so the caller can let the hub go
        between parts (controller/slices.py `let_go`). Whoever else holds
        this dict sees it emptied."""
        parts = self.parts
        for i in range(len(parts)):
            part, parts[i] = parts[i], {}
            held = len(part)
            del part  # freed here: one part's entries in one step
            yield held


class PrefixParts(PartedDict):
    """A map-cache bucket of a million prefixes of one length by network
    (model/mapping.py `MapCache`): their networks end in as many zero bits
    as the prefix leaves, so they are parted by a prime, `PARTS` = 251,
    which spreads multiples of any power of two evenly."""

    PARTS = 251
    __slots__ = ()
