"""The etcd store's data, as values: changes as row deltas, deltas cut into
chunks that fit an etcd request, deltas composed, and the manifest that
says which segments make up the store (docs/etcd.rst, "Layout").

Pure: store/etcd.py does the I/O. A segment is one delta, written as one or
more chunks; the store's content is its segments composed in manifest
order, the first applied to nothing.

A million mappings are seconds of Python for each step here (rows of the
change, encoding, decoding, composing, mappings of the rows), all on the
controller's hub: given a `Slices` (controller/slices.py), each step lets
the hub go between items (docs/performance.rst, "The etcd store at a
million"); None, it runs in one go.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

from lisp_controller.controller.slices import Slices, sliced
from lisp_controller.model import Endpoint, Mapping, parse_prefix
from lisp_controller.store.base import Delta
from lisp_controller.store.rows import (EndpointRow, MappingRow, endpoint_from_row, endpoint_row, mapping_rows,
                                        mappings_from_rows)

FORMAT = 1


@dataclass
class RowDelta:
    """A change as rows, normalised so that it can be composed: no key is
    both put and deleted (a change deletes first, then puts)."""

    replace_all: bool = False
    puts: dict[tuple, MappingRow] = field(default_factory=dict)  # (iid, eid text) -> row
    deletes: set[tuple] = field(default_factory=set)  # (iid, eid text)
    endpoint_puts: dict[tuple, EndpointRow] = field(default_factory=dict)  # (bridge, port) -> row
    endpoint_deletes: set[tuple] = field(default_factory=set)

    @classmethod
    def of_change(cls, put: Iterable[Mapping] = (), delete: Iterable[tuple] = (), replace_all: bool = False,
                  put_endpoints: Iterable[tuple[str, Endpoint]] = (),
                  delete_endpoints: Iterable[tuple[str, str]] = (), slices: Slices | None = None) -> "RowDelta":
        d = cls(replace_all)
        d.puts = {(row[0], row[1]): row for row in mapping_rows(sliced(put, slices))}
        if not replace_all:  # replace_all deletes everything not put
            puts = d.puts
            d.deletes = {(iid, str(eid)) for iid, eid in sliced(delete, slices) if (iid, str(eid)) not in puts}
        for bridge, ep in put_endpoints:
            d.endpoint_puts[(bridge, ep.port)] = endpoint_row(bridge, ep)
        d.endpoint_deletes = {tuple(k) for k in delete_endpoints} - d.endpoint_puts.keys()
        return d

    def empty(self) -> bool:
        return not (self.replace_all or self.puts or self.deletes or self.endpoint_puts or self.endpoint_deletes)

    def then(self, later: "RowDelta", slices: Slices | None = None) -> "RowDelta":
        """This delta followed by `later`, as one delta (changes self)."""
        if later.replace_all:
            self.replace_all, self.puts, self.deletes = True, {}, set()
        else:
            for key in sliced(later.deletes, slices):
                self.puts.pop(key, None)
            if not self.replace_all:
                for key in sliced(later.puts, slices):
                    self.deletes.discard(key)
                self.deletes |= later.deletes
        if slices is None:
            self.puts.update(later.puts)
        else:
            puts = self.puts
            for key, row in sliced(later.puts.items(), slices):
                puts[key] = row
        for key in later.endpoint_deletes:
            self.endpoint_puts.pop(key, None)
        self.endpoint_deletes -= later.endpoint_puts.keys()
        self.endpoint_deletes |= later.endpoint_deletes
        self.endpoint_puts.update(later.endpoint_puts)
        return self

    def as_base(self) -> "RowDelta":
        """Applied to nothing, deletes mean nothing: a first segment keeps puts only."""
        return RowDelta(False, self.puts, set(), self.endpoint_puts, set())

    def delta(self, slices: Slices | None = None) -> Delta:
        """The model values the controller's state applies."""
        return Delta(put=mappings_from_rows(sliced(self.puts.values(), slices)),
                     delete=[(iid, parse_prefix(eid)) for iid, eid in self.deletes],
                     replace_all=self.replace_all,
                     put_endpoints=[endpoint_from_row(row) for row in self.endpoint_puts.values()],
                     delete_endpoints=sorted(self.endpoint_deletes))


def compose(deltas: Iterable[RowDelta], slices: Slices | None = None) -> RowDelta:
    """Deltas applied in order, as one."""
    out = RowDelta()
    for d in deltas:
        out.then(d, slices)
    return out


# -- chunks -------------------------------------------------------------------------
def encode(delta: RowDelta, limit: int, slices: Slices | None = None) -> list[bytes]:
    """The delta as JSON chunks of at most about `limit` bytes each, so each
    fits one etcd request (docs/etcd.rst). Chunk 0 carries replace_all.
    RLOC sets are written once per chunk and referred to by index."""
    chunks: list[bytes] = []
    current: dict = {}
    size = 0

    def start() -> None:
        nonlocal current, size
        current = {"v": FORMAT, "rlocs": [], "put": [], "delete": [], "put_endpoints": [],
                   "delete_endpoints": []}
        if not chunks:
            current["replace_all"] = delta.replace_all
        current_rlocs.clear()
        size = 100

    def flush() -> None:
        chunks.append(json.dumps(current, separators=(",", ":")).encode())
        start()

    def add(kind: str, item: list, cost: int) -> None:
        nonlocal size
        if size + cost > limit and size > 100:
            flush()
        current[kind].append(item)
        size += cost

    current_rlocs: dict[str, int] = {}
    start()
    for iid, eid, rlocs, ttl, action, expires in sliced(delta.puts.values(), slices):
        cost = 40 + len(eid) + len(action)
        index = current_rlocs.get(rlocs)
        if size + cost + (len(rlocs) + 3 if index is None else 0) > limit and size > 100:
            flush()
            index = None
        if index is None:
            index = current_rlocs[rlocs] = len(current["rlocs"])
            current["rlocs"].append(rlocs)
            size += len(rlocs) + 3
        current["put"].append([iid, eid, index, ttl, action, expires])
        size += cost
    for iid, eid in sliced(delta.deletes, slices):
        add("delete", [iid, eid], 16 + len(eid))
    for row in delta.endpoint_puts.values():
        add("put_endpoints", list(row), 40 + sum(len(str(v)) for v in row))
    for bridge, port in delta.endpoint_deletes:
        add("delete_endpoints", [bridge, port], 8 + len(bridge) + len(port))
    if size > 100 or not chunks:
        flush()
    return chunks


def decode(chunks: Iterable[bytes], slices: Slices | None = None) -> RowDelta:
    """A delta from its chunks, in order. Raises ValueError if they are not ours."""
    d = RowDelta()
    for i, raw in enumerate(chunks):
        c = json.loads(raw)
        if not isinstance(c, dict) or c.get("v") != FORMAT:
            raise ValueError(f"chunk {i} is not a format-{FORMAT} chunk")
        if i == 0:
            d.replace_all = bool(c.get("replace_all"))
        rlocs = c["rlocs"]
        puts = d.puts
        for iid, eid, index, ttl, action, expires in sliced(c["put"], slices):
            puts[(iid, eid)] = (iid, eid, rlocs[index], ttl, action, expires)
        d.deletes.update((iid, eid) for iid, eid in sliced(c["delete"], slices))
        for row in c["put_endpoints"]:
            d.endpoint_puts[(row[0], row[1])] = tuple(row)
        d.endpoint_deletes.update((b, p) for b, p in c["delete_endpoints"])
    return d


# -- the manifest -----------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    id: str
    chunks: int
    size: int  # bytes: what merging decides by


@dataclass(frozen=True)
class Manifest:
    """The value of the head key. `seq` counts changes (a merge leaves it
    alone, so a controller can tell a change from a merge); `last` is the
    segment the last change added and `writer` who wrote it."""

    seq: int = 0
    segments: tuple[Segment, ...] = ()
    last: str | None = None
    writer: str | None = None

    def encode(self) -> bytes:
        return json.dumps({"v": FORMAT, "seq": self.seq, "segments": [[s.id, s.chunks, s.size] for s in self.segments],
                           "last": self.last, "writer": self.writer}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Manifest":
        d = json.loads(raw)
        if not isinstance(d, dict) or d.get("v") != FORMAT:
            raise ValueError(f"the head is not a format-{FORMAT} manifest")
        return cls(int(d["seq"]), tuple(Segment(str(i), int(n), int(s)) for i, n, s in d["segments"]),
                   d.get("last"), d.get("writer"))

    def changed(self, segment: Segment, writer: str) -> "Manifest":
        """After a change that wrote `segment`."""
        return Manifest(self.seq + 1, self.segments + (segment,), segment.id, writer)

    def merged(self, start: int, count: int, segment: Segment) -> "Manifest":
        """After segments [start, start+count) were merged into `segment`:
        the same changes, so `seq`, `last` and `writer` stay."""
        return Manifest(self.seq, self.segments[:start] + (segment,) + self.segments[start + count:],
                        self.last, self.writer)


def plan_merge(sizes: list[int], keep: int = 4) -> int | None:
    """Where the segments from index i on should be merged into one, or None.

    Size-tiered, like a binary counter: the newest segments merge while
    the one before them is less than twice their size, so there are about
    log2(total / smallest) segments and a byte is rewritten about that many
    times. Fewer than `keep` segments are left alone: merging is not free."""
    if len(sizes) < keep:
        return None
    i, total = len(sizes) - 1, sizes[-1]
    while i > 0 and sizes[i - 1] < 2 * total:
        i -= 1
        total += sizes[i]
    return i if i < len(sizes) - 1 else None
