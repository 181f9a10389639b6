"""controller/listing.py and the map-cache's order index: a page of the
map-cache equals the page of a full sort of the filtered mappings, for every
order and filter, while no step between pauses handles more than a chunk."""
from __future__ import annotations

import collections
import random

import pytest

from lisp_controller.controller import listing, slices
from lisp_controller.controller.counters import FlowCounts
from lisp_controller.controller.listing import CHUNK, SORTS, Query, select
from lisp_controller.model import MapCache, Mapping, parse_prefix


def varied(n: int, seed: int = 7) -> list[Mapping]:
    """IPv4 and IPv6, several IIDs, lengths, RLOCs, TTLs, sources, negatives."""
    rnd = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        iid = rnd.choice((7, 1000, 1001, 70000))
        if rnd.random() < 0.2:
            eid = f"fd00:{rnd.randrange(65536):x}:{rnd.randrange(65536):x}::/{rnd.choice((48, 64))}"
        else:
            length = rnd.choice((8, 16, 24, 32))
            address = rnd.getrandbits(32) & (~((1 << (32 - length)) - 1) & 0xFFFFFFFF)
            eid = ".".join(str(address >> s & 255) for s in (24, 16, 8, 0)) + f"/{length}"
        if (iid, eid) in seen:
            continue
        seen.add((iid, eid))
        rlocs = [f"192.168.{rnd.randrange(4)}.{rnd.randrange(1, 250)}" for _ in range(rnd.choice((0, 1, 1, 2)))]
        kw = {"action": "drop"} if not rlocs else {}
        m = Mapping.parse({"iid": iid, "eid": eid, "rlocs": sorted(set(rlocs)), **kw},
                          source=rnd.choice(("api", "config", "map-resolver")))
        if rnd.random() < 0.3:
            m = m._replace(ttl=5, expires=1000.0 + rnd.randrange(100))
        out.append(m)
    return out


def full_sort(ms: list[Mapping], q: Query, counts: dict, cookie_of) -> list[Mapping]:
    """The obvious way: filter, sort all, slice."""
    def ok(m):
        if q.iid is not None and m.iid != q.iid:
            return False
        if q.within is not None and (m.eid.version != q.within.version or not m.eid.subnet_of(q.within)):
            return False
        if q.source is not None and m.source != q.source:
            return False
        if q.eid_text is not None and q.eid_text.lower() not in str(m.eid):
            return False
        if q.rloc_text is not None and not any(q.rloc_text in str(r.address) for r in m.rlocs):
            return False
        return all(w in listing._text(m) for w in q.words)

    base = lambda m: (m.iid, m.eid.version, m.eid.value, m.eid.prefixlen)  # noqa: E731
    value = {
        "prefix": lambda m: (),
        "eid": lambda m: (m.eid.version, m.eid.value, m.eid.prefixlen, m.iid),
        "rlocs": lambda m: (m.rlocs[0].address.version, int(m.rlocs[0].address)) if m.rlocs else (99,),
        "ttl": lambda m: (m.expires if m.expires is not None else float("inf"),),
        "action": lambda m: (m.action,), "source": lambda m: (m.source,),
        "packets": lambda m: (counts.get(cookie_of(m), (-1, -1))[0],),
        "bytes": lambda m: (counts.get(cookie_of(m), (-1, -1))[1],),
    }[q.sort]
    chosen = sorted((m for m in ms if ok(m)), key=lambda m: (value(m), base(m)), reverse=q.descending)
    return chosen[q.offset:q.offset + q.limit], len(chosen)


def test_the_order_index_follows_adds_replacements_and_removals():
    """So do the counts by source (the metrics and the API read them:
    nobody counts a million mappings to know)."""
    cache = MapCache(varied(500))
    ms = list(cache)
    for m in ms[:100]:
        cache.remove(m.iid, m.eid)
    for m in ms[100:150]:
        cache.add(m._replace(ttl=9))  # a replacement is not a second entry
    for m in ms[150:160]:
        cache.add(m._replace(source="registered:site-a"))  # nor one of another source
    assert cache.sources() == dict(collections.Counter(m.source for m in cache))
    assert "registered:site-a" in cache.sources()
    want = sorted(cache, key=lambda m: (m.iid, m.eid))
    assert len(want) == 400
    assert select(cache, Query(limit=1000)).mappings == want
    assert select(cache, Query(limit=1000, descending=True)).mappings == want[::-1]
    assert select(cache, Query(offset=390, limit=50)).mappings == want[390:]
    assert select(cache, Query(offset=390, limit=50, descending=True)).mappings == want[::-1][390:]


@pytest.mark.parametrize("sort", SORTS)
def test_every_order_and_filter_pages_like_a_full_sort(sort, monkeypatch):
    monkeypatch.setattr(listing, "CHUNK", 97)  # many chunks, and pages that span them
    ms = varied(1500)
    cache = MapCache(ms)
    cookie_of = lambda m: hash((m.iid, m.eid)) & 0xFFFF  # noqa: E731
    counts = {cookie_of(m): (i % 13, i * 7 % 101) for i, m in enumerate(ms) if i % 5}
    flow_counts = FlowCounts()  # as the bridges' counters are kept
    for cookie, (packets, nbytes) in counts.items():
        flow_counts.add(cookie, packets, nbytes)
    queries = [Query(), Query(iid=1000), Query(iid=1000, within=parse_prefix("128.0.0.0/1")),
               Query(within=parse_prefix("10.0.0.0/8")), Query(source="api"), Query(eid_text="fd00:"),
               Query(rloc_text="192.168.2."), Query(words=("1001", "drop")), Query(iid=7, source="config"),
               Query(words=("fd00:", "map-resolver")), Query(words=("192.168.1.", "w100", "7"))]
    for q in queries:
        for descending in (False, True):
            for offset, limit in ((0, 10), (37, 100), (0, 2000), (1490, 100)):
                q2 = Query(**{**q.__dict__, "sort": sort, "descending": descending, "offset": offset,
                              "limit": limit})
                want, total = full_sort(ms, q2, counts, cookie_of)
                got = select(cache, q2, cookie_of=cookie_of, counts=flow_counts)
                assert (got.total, got.mappings) == (total, want), q2


def test_a_scan_pauses_every_chunk_and_reads_the_map_cache_as_it_was():
    cache = MapCache(varied(3 * CHUNK + 10, seed=3))
    before = sorted(cache, key=lambda m: (m.source, m.iid, m.eid))
    handled = []

    def pause():
        handled.append(len(cache))
        cache.remove(before[-1].iid, before[-1].eid) if len(handled) == 1 else None  # changes meanwhile

    page = select(cache, Query(sort="source", limit=len(before)), pause)
    assert len(handled) >= 3  # a pause between chunks: no step went through more than CHUNK
    assert page.mappings == before  # what it was when the listing began


def test_a_scan_lets_go_of_its_snapshot_across_pauses(monkeypatch):
    # A million references dropped at once: tens of ms in one step
    # (docs/performance.rst, "Single steps at a million").
    cache = MapCache(varied(3 * CHUNK + 10, seed=4))
    taken = []
    snapshot = cache.snapshot
    monkeypatch.setattr(cache, "snapshot", lambda pause=None: taken.append(snapshot(pause)) or taken[-1])
    monkeypatch.setattr(slices, "LIST_PART", 10, raising=False)  # 160 a slice
    left = []
    select(cache, Query(sort="source", limit=10), lambda: left.append(len(taken[0])))
    assert taken[0] == [] and any(0 < n < len(cache) for n in left)


def test_a_scan_pauses_when_its_slice_of_time_is_spent():
    """However slow each mapping is (a search on a loaded machine), the
    hub is let go every slices.BUDGET seconds, and the page is the same."""
    ms = varied(3000, seed=5)
    cache = MapCache(ms)
    now = [0.0]
    calls_per_slice = round(slices.BUDGET / 0.001)

    def clock():  # every look at the clock finds 1 ms gone: slices.CHECK mappings take 1 ms
        now[0] += 0.001
        return now[0]
    handled = []
    cookie_of = lambda m: hash(m.key) & 0xFFFF  # noqa: E731
    counts = {cookie_of(m): (i % 13, i) for i, m in enumerate(ms)}
    q = Query(words=("1",), sort="packets", descending=True, limit=50)

    def pause():
        handled.append(now[0])

    page = select(cache, q, pause, cookie_of=cookie_of, counts=counts, clock=clock)
    assert len(handled) >= 3000 // (slices.CHECK * calls_per_slice) - 1
    assert (page.mappings, page.total) == full_sort(ms, q, counts, cookie_of)


def test_the_index_answers_iid_and_prefix_pages_without_a_scan(monkeypatch):
    cache = MapCache(varied(2000, seed=11))
    monkeypatch.setattr(MapCache, "snapshot", lambda self: pytest.fail("scanned"))
    q = Query(iid=1000, within=parse_prefix("0.0.0.0/1"), offset=3, limit=5)
    want = sorted((m for m in cache if m.iid == 1000 and m.eid.version == 4 and m.eid.value < 1 << 31),
                  key=lambda m: m.eid)
    page = select(cache, q)
    assert (page.total, page.mappings) == (len(want), want[3:8])
