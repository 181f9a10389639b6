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
