"""One page of the map-cache, filtered and sorted, without holding the hub.

The status page and the CLI list the map-cache a page at a time; at a
million mappings a listing that sorts everything per request held the hub
(every OpenFlow echo and API request) for seconds. So (docs/performance.rst,
"A free hub"):

- in (IID, prefix) order, filtered at most by IID and a covering prefix
  (ranges of the map-cache's order index, model/mapping.py), a page is read
  straight from the index: O(log n + page), no yield needed;
- any other order or filter goes through a snapshot of the map-cache (a
  list made in C, milliseconds for a million) in slices, calling `pause`
  between them: each slice is filtered and its sort values computed, then
  sorted on its own, and only the best offset + limit of each are kept;
  the slices are merged lazily. A slice ends after a few milliseconds of
  work or `CHUNK` mappings (controller/slices.py), so the hub is free
  whatever the size and the filter; a listing shows the map-cache as it
  was when it started.

Pure apart from `pause`: it reads the map-cache and the counters given.
"""
from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass
from typing import Callable

from lisp_controller.controller.counters import Counts
from lisp_controller.controller.slices import Slices, let_go
from lisp_controller.model import MapCache, Mapping, Prefix, order_key

CHUNK = 1000  # mappings between pauses at most
SORTS = ("prefix", "eid", "rlocs", "ttl", "action", "source", "packets", "bytes")
COUNTER_SORTS = ("packets", "bytes")
_LAST_IID = 1 << 32  # above every IID (they have 32 bits)
_NO_RLOC = 1 << 140  # sorts after every address


@dataclass(frozen=True)
class Query:
    """What to list: filters, order and the page. Every filter given must
    match; text filters are substrings, case-insensitive."""

    iid: int | None = None
    within: Prefix | None = None  # the mapping's EID prefix lies inside this one
    source: str | None = None
    eid_text: str | None = None  # a substring of the EID prefix as written (10.2.)
    rloc_text: str | None = None  # a substring of one of its RLOC addresses
    words: tuple[str, ...] = ()  # each in "iid eid rlocs action source", as the page's search box
    sort: str = "prefix"
    descending: bool = False
    offset: int = 0
    limit: int = 100

    @property
    def needs_scan(self) -> bool:
        """Whether the page needs a pass over the map-cache (a filter the
        order index cannot answer, or another order)."""
        return (self.sort != "prefix" or self.source is not None or self.eid_text is not None
                or self.rloc_text is not None or bool(self.words) or (self.within is not None and self.iid is None))


@dataclass(frozen=True)
class Page:
    total: int  # mappings matching the filters
    mappings: list[Mapping]  # the page, in order


def select(cache: MapCache, query: Query, pause: Callable[[], None] = lambda: None,
           cookie_of: Callable[[Mapping], int] | None = None,
           counts: Counts | None = None,
           clock: Callable[[], float] = time.perf_counter) -> Page:
    """The page `query` asks for. `cookie_of` gives a mapping's flow
    cookie and `counts` the counters by cookie ((packets, bytes) from its
    `get`): needed to sort by packets or bytes. `clock` times the slices
    between pauses."""
    if not query.needs_scan:
        low, high = _range(query)
        page = cache.ordered(low, high, query.offset, query.offset + query.limit, query.descending)
        return Page(cache.count_between(low, high), page)
    mappings = cache.snapshot(pause)
    try:
        return _scan(mappings, query, pause, cookie_of, counts or {}, clock)
    finally:  # a million references let go of at once: tens of ms (docs/performance.rst, "Single steps at a million")
        let_go(mappings, pause, clock)


def _range(query: Query) -> tuple[int, int]:
    """The order keys [low, high) the IID and prefix filters allow."""
    if query.iid is None:
        return 0, order_key(_LAST_IID, 4, 0, 0)
    if query.within is None:
        return order_key(query.iid, 4, 0, 0), order_key(query.iid + 1, 4, 0, 0)
    version, value, length = query.within
    last = value | ((1 << (32 if version == 4 else 128) - length) - 1)
    return order_key(query.iid, version, value, length), order_key(query.iid, version, last, 255) + 1


def _scan(mappings: list[Mapping], query: Query, pause: Callable[[], None],
          cookie_of: Callable[[Mapping], int] | None, counts: dict,
          clock: Callable[[], float]) -> Page:
    keep = query.offset + query.limit  # what each slice may contribute to the page
    match = _matcher(query)
    value = _sort_value(query.sort, cookie_of, counts)
    runs: list[list[tuple]] = []
    total = 0
    slices = Slices(pause, most=CHUNK, clock=clock)
    run: list[tuple] = []

    def close(run: list[tuple]) -> None:
        """Keep the slice's best `keep`, sorted."""
        if len(run) > keep:
            run = heapq.nlargest(keep, run, key=_order) if query.descending else \
                heapq.nsmallest(keep, run, key=_order)
        else:
            run.sort(key=_order, reverse=query.descending)
        runs.append(run)

    last = len(mappings) - 1
    for i, m in enumerate(mappings):
        if match(m):
            iid, (version, network, length) = m[0], m[1]
            run.append((value(m), order_key(iid, version, network, length), m))
        if slices.due() or i == last:
            total += len(run)
            close(run)
            run = []
            if i != last:
                slices.pause()
    merged = heapq.merge(*runs, key=_order, reverse=query.descending)
    page = []
    for item in itertools.islice(merged, query.offset, keep):
        if slices.due():
            slices.pause()
        page.append(item)
    return Page(total, [m for _, _, m in page])


def _order(item: tuple) -> tuple:
    """(sort value, order key): unique, so every order is total and a
    descending listing is exactly the ascending one reversed."""
    return item[0], item[1]


def _matcher(query: Query) -> Callable[[Mapping], bool]:
    tests: list[Callable[[Mapping], bool]] = []
    if query.iid is not None:
        iid = query.iid
        tests.append(lambda m: m[0] == iid)
    if query.within is not None:
        within = query.within
        tests.append(lambda m: m[1][0] == within[0] and m[1].subnet_of(within))
    if query.source is not None:
        source = query.source
        tests.append(lambda m: m.source == source)
    if query.eid_text is not None:
        text = query.eid_text.lower()
        tests.append(lambda m: text in str(m[1]))
    if query.rloc_text is not None:
        text = query.rloc_text.lower()
        tests.append(lambda m: any(text in str(r.address) for r in m.rlocs))
    if query.words:
        tests.append(_words_test(tuple(w.lower() for w in query.words)))
    if not tests:
        return lambda m: True
    if len(tests) == 1:
        return tests[0]
    return lambda m: all(t(m) for t in tests)


def _text(m: Mapping) -> str:
    """What the page's search box searches: IID, EID, RLOCs (with priority
    and weight as the page shows them), action and source."""
    return f"{m.iid} {m.eid} {_rlocs_text(m.rlocs)} {m.action} {m.source}".lower()


def _rlocs_text(rlocs: tuple) -> str:
    return " ".join(f"{r.address} p{r.priority} w{r.weight}" for r in rlocs)


def _words_test(words: tuple[str, ...]) -> Callable[[Mapping], bool]:
    """`all(w in _text(m) for w in words)`, for a million mappings: a word
    holds no space, so it is in the text exactly when it is in the EID's
    text or in the rest's; the EID is tried first (what is searched most),
    the rest made only when needed, and the RLOCs' text once per RLOC set
    (a site's mappings share a few tuples; the listing's snapshot keeps
    them alive, so an id stays theirs)."""
    rloc_texts: dict[int, str] = {}

    def test(m: Mapping) -> bool:
        eid, rest = str(m[1]), None
        for w in words:
            if w in eid:
                continue
            if rest is None:
                rlocs = m.rlocs
                text = rloc_texts.get(id(rlocs))
                if text is None:
                    text = rloc_texts[id(rlocs)] = _rlocs_text(rlocs)
                rest = f"{m.iid} {text} {m.action} {m.source}".lower()
            if w not in rest:
                return False
        return True
    return test


def _sort_value(sort: str, cookie_of: Callable[[Mapping], int] | None,
                counts: dict) -> Callable[[Mapping], object]:
    if sort == "prefix":
        return lambda m: 0  # the order key decides
    if sort == "eid":  # the prefix first, then the IID
        return lambda m: (m[1], m[0])
    if sort == "rlocs":  # the first RLOC's address; none last
        return lambda m: (m.rlocs[0].address.version << 128 | int(m.rlocs[0].address)) if m.rlocs else _NO_RLOC
    if sort == "ttl":  # time left; static last
        return lambda m: m.expires if m.expires is not None else float("inf")
    if sort in ("action", "source"):
        field = Mapping._fields.index(sort)
        return lambda m: m[field]
    if sort in COUNTER_SORTS:
        if cookie_of is None:
            raise ValueError(f"sorting by {sort} needs the mappings' cookies")
        column = COUNTER_SORTS.index(sort)
        none = (-1, -1)  # not reported yet: below zero
        return lambda m: counts.get(cookie_of(m), none)[column]
    raise ValueError(f"no such sort: {sort}")

