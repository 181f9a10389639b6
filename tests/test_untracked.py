"""model/untracked.py and its users: with a million mappings, no container
the cyclic collector walks holds one reference per mapping, during a big
change (whose pauses let collections run) or after it (docs/performance.rst,
"A free hub"). A full collection would otherwise look at every mapping
again: 30 to 150 ms at 1,000,000 on the benchmark machine."""
from __future__ import annotations

import gc

from lisp_controller.config import parse_config
from lisp_controller.controller.state import Change, State
from lisp_controller.model import Mapping
from lisp_controller.model.untracked import untrack, untrack_all, untracked_list

CONFIG = parse_config({"bridge": [{"datapath_id": "0000000000000001", "rloc": "192.0.2.1", "iid": 7}]})
N = 5000


def _mappings(n: int, **kw) -> list[Mapping]:
    return [Mapping.parse({"iid": 7, "eid": f"10.{i // 256 % 256}.{i % 256}.0/24", "rlocs": ["192.0.2.9"], **kw},
                          source="api") for i in range(n)]


def _big(at_least: int) -> list:
    return [o for o in gc.get_objects() if type(o) in (dict, list, set, tuple) and len(o) >= at_least]


_BEFORE = {id(o) for o in _big(N // 2)}  # the interpreter's and pytest's own


def walked(at_least: int = N // 2, mine: tuple = ()) -> list[str]:
    """The containers the collector tracks now that hold `at_least`
    references, other than the test's own (`mine`) and those there before."""
    ids = {id(x) for x in mine} | _BEFORE
    return [f"{type(o).__name__} of {len(o)}" for o in _big(at_least) if id(o) not in ids]


def test_a_big_change_leaves_no_container_of_its_mappings_for_the_collector():
    # What earlier tests left is not this test's (a state's encoding fills
    # module caches with an entry per prefix: pipeline/wire.py's `oxm`).
    _BEFORE.update(id(o) for o in _big(N // 2))
    state = State(CONFIG)
    put = _mappings(N, ttl=5)
    seen: list[list[str]] = []
    state.apply(Change(put=put), pause=lambda: seen.append(walked(mine=(put, seen))))
    assert len(seen) >= 2 and seen == [[]] * len(seen)  # while it paused
    assert walked(mine=(put,)) == []  # and after
    snapshot = state.cache.snapshot()
    assert not gc.is_tracked(snapshot) and len(snapshot) == N
    # A small change puts a mapping into the same big dicts: hidden again at its end.
    state.apply(Change(put=[Mapping.parse({"iid": 7, "eid": "10.200.0.0/16", "rlocs": ["192.0.2.9"]},
                                          source="api")]))
    assert walked(mine=(put,)) == []
    # Replacing every API mapping goes over the map-cache the same way.
    keep, seen = put[: N // 2], []
    state.apply(Change(put=keep, replace_api=True), pause=lambda: seen.append(walked(mine=(put, keep, seen))))
    assert len(state.cache) == len(keep)  # the one of the small change is gone too
    assert len(seen) >= 2 and seen == [[]] * len(seen) and walked(mine=(put, keep)) == []


def test_checking_a_big_change_keeps_no_tracked_key_per_mapping():
    """State.check remembers the keys it saw, as numbers in a set the
    collector does not walk: (IID, prefix) tuples hold a tuple subclass,
    which CPython never stops tracking."""
    state = State(CONFIG)
    put = _mappings(N)
    gc.collect()
    before = len(gc.get_objects())
    grew = []

    class Probe(list):
        """Counts the tracked objects when the check is at its end."""
        def __iter__(self):
            for i, m in enumerate(list.__iter__(self)):
                if i == N - 1:
                    grew.append(len(gc.get_objects()) - before)
                yield m
    state.check(Change(put=Probe(put)))
    assert grew and grew[0] < N // 5, grew  # young objects, until the next collection of the youngest


def test_untracked_containers_stay_untracked_only_where_cpython_keeps_them_so():
    """A list or a set stays untracked whatever is put in it; a dict is
    tracked again by CPython when a value that may be tracked goes in,
    which is why the map-cache's dicts are untracked again after each
    change; `untrack_all` leaves alone what is already untracked."""
    m = _mappings(1)[0]
    items, keys, by_key = untracked_list(), set(), {}
    untrack(keys)
    items.append(m)
    keys.add((1, 2))
    assert not gc.is_tracked(items) and not gc.is_tracked(keys)
    by_key[1] = m
    assert gc.is_tracked(by_key)
    untrack(by_key)
    assert not gc.is_tracked(by_key)
    by_key[2] = m
    assert gc.is_tracked(by_key)
    untrack_all((by_key, items))
    assert not gc.is_tracked(by_key) and by_key == {1: m, 2: m} and items == [m]


def test_many_small_changes_leave_nothing_tracked_in_the_history():
    """The history of shared flows keeps thousands of small changes until
    its bound in cookies lets them go: numbers only, none of it tracked
    (a bridge flapping under changes grew three tracked objects a change)."""
    state = State(CONFIG)
    state.apply(Change(put=_mappings(10)))
    gc.collect()
    before = len(gc.get_objects())
    for i in range(200):
        state.apply(Change(put=[Mapping.parse({"iid": 7, "eid": f"10.{100 + i // 100}.{i % 100}.0/24",
                                               "rlocs": ["192.0.2.9"]}, source="api")]))
    history = state.shared.history
    assert len(history) > 200 and not any(gc.is_tracked(x) for e in history for x in (e, e[1], e[2]))
    gc.collect()
    assert len(gc.get_objects()) - before < 200, "a tracked object or more per change"
