"""The dict of a million entries in parts (model/parted.py): it reads and
writes as a dict does for what the controller does with it, and is copied
and let go of a part at a time (docs/performance.rst, "A free hub")."""
from __future__ import annotations

import random

from lisp_controller.controller.slices import PARTS_AT_ONCE, let_go
from lisp_controller.model.parted import PartedDict
from lisp_controller.openflow.flowstats import FlowCounts


def test_it_behaves_as_a_dict_for_the_operations_used():
    rnd = random.Random(7)
    mine, plain = PartedDict(), {}
    keys = [0x4C00000000000000 | rnd.getrandbits(56) for _ in range(3000)] + [0, 1, 256, 512]
    for step in range(20_000):
        key = rnd.choice(keys)
        op = rnd.randrange(6)
        if op < 3:
            mine[key] = plain[key] = step
        elif op == 3:
            assert mine.pop(key, None) == plain.pop(key, None)
        elif op == 4 and key in plain:
            del mine[key], plain[key]
        else:
            assert mine.get(key) == plain.get(key) and mine.get(key, -1) == plain.get(key, -1)
            assert (key in mine) == (key in plain)
    assert len(mine) == len(plain) and mine == plain and plain == mine
    assert sorted(mine) == sorted(plain) and sorted(mine.items()) == sorted(plain.items())
    assert sorted(mine.values()) == sorted(plain.values()) and mine.keys() - {0} == plain.keys() - {0}
    assert all(mine[k] == v for k, v in plain.items())
    assert "a string" not in mine and None not in mine
    assert {**mine} == plain and dict(mine) == plain
    mine.update({5: "x"})
    assert mine.pop(5) == "x" and mine != {**plain, 5: "x"}


def test_its_parts_stay_small_and_it_is_copied_and_emptied_a_part_at_a_time():
    """Each C-level step (a part's copy, its table doubling, its freeing)
    goes over a part: about 1/256 of the entries."""
    rnd = random.Random(3)
    cookies = {0x4C00000000000000 | rnd.getrandbits(56): b"flow" for _ in range(50_000)}
    source = PartedDict(cookies.items())
    assert max(map(len, source.parts)) < 2 * len(cookies) // PartedDict.PARTS
    copy = PartedDict({1: b"local"}.items())
    copied = list(copy.copying(source))
    assert copied == [len(p) for p in source.parts] and copy == {**cookies, 1: b"local"}
    assert all(a is not b for a, b in zip(copy.parts, source.parts))  # a copy, not the same parts
    emptied = list(source.emptying())
    assert len(emptied) == PartedDict.PARTS and sum(emptied) == len(cookies) and len(source) == 0
    assert len(copy) == len(cookies) + 1  # the copy is its own


def test_let_go_empties_a_big_dict_across_pauses():
    """`let_go` lets the hub go between parts of a PartedDict (entries of
    a plain dict); nothing is let go of in one step."""
    for big in (PartedDict((c, 1) for c in range(50_000)), {c: 1 for c in range(50_000)}):
        seen: list[int] = []
        let_go(big, lambda: seen.append(len(big)), clock=lambda: 0.0)
        assert len(big) == 0 and len(seen) >= 15
        assert all(a > b for a, b in zip([50_000] + seen, seen))  # less at every pause
    seen = []
    parted = PartedDict((c, 1) for c in range(50_000))
    let_go(parted, lambda: seen.append(len(parted)), clock=lambda: 0.0)
    assert len(seen) == PartedDict.PARTS // PARTS_AT_ONCE


def test_flow_counts_are_a_parted_dict_of_pairs():
    """One piece serves the counters and the deep check's maps."""
    counts = FlowCounts()
    counts.add(9, 3, 300)
    counts.add(9, 1, 100)
    counts.add(10, 0, 7)
    assert isinstance(counts, PartedDict)
    assert counts[9] == counts.get(9) == (4, 400) and counts.get(11) is None and 10 in counts
    assert dict(counts.items()) == {9: (4, 400), 10: (0, 7)} and sorted(counts.values()) == [(0, 7), (4, 400)]
    assert len(counts) == 2 and sorted(counts) == [9, 10]


def _largest_dicts(root: object) -> list[tuple[int, str]]:
    """(entries, where) of the biggest dicts and sets reachable from `root` through
    attributes, dicts and small lists: a dict of N entries doubles its
    table in one step over all of them as it fills."""
    seen, todo, found = set(), [(root, "")], []
    while todo:
        obj, path = todo.pop()
        if id(obj) in seen or isinstance(obj, (int, str, bytes, float, tuple, type(None))):
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            found.append((len(obj), path))
            todo += [(v, f"{path}[{k!r}]") for k, v in list(obj.items())[:1000]]
        elif isinstance(obj, set):
            found.append((len(obj), path))
        elif isinstance(obj, list):
            todo += [(v, f"{path}[]") for v in list(obj)[:1000]]
        else:
            names = list(getattr(obj, "__dict__", ()))
            names += [n for cls in type(obj).__mro__ for n in getattr(cls, "__slots__", ()) if hasattr(obj, n)]
            todo += [(getattr(obj, n), f"{path}.{n}") for n in names]
    return sorted(found, reverse=True)[:3]


def test_a_bulk_of_40000_leaves_no_dict_of_them_all_in_the_state_and_lookups_still_answer():
    # The map-cache's bucket of one prefix length and the shared flows'
    # sources, one dict each, doubled their tables in steps of 55 to 95 ms
    # at a million (docs/performance.rst, "Single steps at a million").
    from lisp_controller.config import parse_config
    from lisp_controller.controller.state import Change, State
    from lisp_controller.model import Mapping, parse_prefix
    state = State(parse_config({"bridge": [{"datapath_id": "0000000000000001", "rloc": "192.0.2.1", "iid": 7}]}))
    n = 40_000  # more than model/mapping.py's PARTED_AT
    before = len(state.shared)
    hosts = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}/32" for i in range(n)]
    nets = [f"{11 + i // 65536}.{i // 256 % 256}.{i % 256}.0/24" for i in range(n)]  # networks end in 8 zero bits
    state.apply(Change(put=[Mapping.parse({"iid": 7, "eid": e, "rlocs": ["192.0.2.9"]}, source="api")
                            for e in hosts + nets]))
    largest = _largest_dicts(state)
    assert largest[0][0] < 2 * n // 100, largest  # main: 40,000 in .cache._buckets and .shared._source
    cache = state.cache
    assert len(cache) == 2 * n and cache.lookup(7, "10.0.3.9").eid == parse_prefix("10.0.3.9/32")
    assert cache.lookup(7, "11.0.200.77").eid == parse_prefix("11.0.200.0/24") and cache.lookup(7, "12.9.9.9") is None
    state.apply(Change(delete=[(7, parse_prefix(e)) for e in nets]))  # a bucket emptied goes
    assert len(cache) == n and cache.lookup(7, "11.0.200.77") is None and len(state.shared) == before + n
    assert sorted(m.eid for m in cache.snapshot()) == sorted(map(parse_prefix, hosts))
    # Taken a few parts at a time (a million in one step: 70 to 190 ms);
    # a prefix changed at a pause shows once.
    pauses = []

    def change() -> None:
        if not pauses:
            for e in hosts[:300]:  # in every part: some taken already, some not
                cache.add(Mapping.parse({"iid": 7, "eid": e, "rlocs": ["192.0.2.7"]}, source="api"))
        pauses.append(1)
    eids = [m.eid for m in cache.snapshot(pause=change)]
    assert len(pauses) >= 251 // 16 and sorted(eids) == sorted(map(parse_prefix, hosts))


def test_the_shared_flows_snapshot_is_made_a_few_parts_at_a_time():
    # Made whole, its two lists of a million held the hub 53 to 89 ms.
    from lisp_controller.controller.shared import SharedFlows
    from lisp_controller.pipeline.flows import Flow
    shared = SharedFlows()
    flows = {0x4C00000000000000 | random.Random(3).getrandbits(56) + i: Flow(5, i, (), ())
             for i in range(5000)}
    for cookie, flow in flows.items():
        shared.add(flow, cookie, cookie.to_bytes(8, "big"))
    pauses = []
    cookies, sources = shared.snapshot(pause=lambda: pauses.append(1))
    assert dict(zip(cookies, sources)) == flows and len(cookies) == len(flows)
    assert len(pauses) == PartedDict.PARTS // PARTS_AT_ONCE


def test_a_change_being_made_and_a_bridge_s_stream_of_it_hold_no_dict_or_set_of_it_all(monkeypatch):
    # The cookies a change adds (a set) and a stream's flows per cookie (a
    # dict), filled up to a million during a bulk, doubled their tables in
    # steps of 60 and 78 ms (docs/performance.rst, "Single steps at a million").
    from lisp_controller.config import parse_config
    from lisp_controller.controller.reconcile import Stream
    from lisp_controller.controller.state import Change, State
    from lisp_controller.model import Mapping
    state = State(parse_config({"bridge": [{"datapath_id": "0000000000000001", "rloc": "192.0.2.1", "iid": 7}]}))
    from lisp_controller.model import mapping
    monkeypatch.setattr(mapping, "PARTED_AT", 500, raising=False)  # the map-cache's bucket in parts early
    n, largest = 40_000, []
    state.apply(Change(put=[Mapping.parse({"iid": 7, "eid": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}/32",
                                           "rlocs": ["192.0.2.9"]}, source="api") for i in range(n)]),
                pause=lambda: largest.append(_largest_dicts(state)[0]))
    added, removed = state.shared_delta(state.generation - 1)
    assert len(added) == n and not removed  # the change as a whole went into the history
    assert largest and max(largest)[0] < n // 50, max(largest)  # main: the change's set of 40,000 added
    stream, installed = Stream({}), {}
    stream.installed = installed
    assert len(stream.step([(c, b"flow-mod") for c in range(n)])) == n
    assert _largest_dicts(stream)[0][0] < n // 50, _largest_dicts(stream)  # main: 40,000 in ._now
    stream.record()
    assert installed == {c: 1 for c in range(n)} and len(stream._now) == 0  # let go of as recorded
