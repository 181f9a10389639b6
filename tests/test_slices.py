"""controller/slices.py and its users: long work lets the hub go after a
slice of items or of time, whichever comes first."""
from __future__ import annotations

import pytest

from lisp_controller.config import parse_config
from lisp_controller.controller import slices
from lisp_controller.controller.reconcile import reconcile
from lisp_controller.controller.slices import Slices
from lisp_controller.controller.state import Change, State
from lisp_controller.model import Mapping, ModelError

CONFIG = parse_config({"bridge": [{"datapath_id": "0000000000000001", "rloc": "192.0.2.1", "iid": 7}]})


def _mappings(n: int) -> list[Mapping]:
    return [Mapping.parse({"iid": 7, "eid": f"10.{i // 256 % 256}.{i % 256}.0/24", "rlocs": ["192.0.2.9"]},
                          source="api") for i in range(n)]


class FakeHub:
    """A pause that records how many items went by since the last one."""

    def __init__(self):
        self.items_between: list[int] = []
        self.items = 0

    def item(self) -> None:
        self.items += 1

    def pause(self) -> None:
        self.items_between.append(self.items)
        self.items = 0


def test_a_slice_ends_after_most_items_with_a_clock_that_stands_still():
    hub = FakeHub()
    cut = Slices(hub.pause, most=100, clock=lambda: 0.0)
    for _ in range(1000):
        hub.item()
        if cut.due():
            cut.pause()
    assert hub.items_between == [100] * 10


def test_a_slice_ends_when_its_time_is_spent():
    hub = FakeHub()
    now = [0.0]

    def clock():
        now[0] += 0.002  # every look finds 2 ms gone
        return now[0]
    cut = Slices(hub.pause, most=10_000, clock=clock)
    for _ in range(1000):
        hub.item()
        if cut.due():
            cut.pause()
    # Two looks (CHECK items each) reach the budget of 5 ms... give or take one look.
    assert hub.items_between and max(hub.items_between) <= 3 * slices.CHECK


def test_a_big_change_yields_at_least_every_slice_of_mappings():
    """The state step of a big change lets the hub go at least every MOST
    mappings, and sooner when the work is slow; the stream gets each
    slice's flows before the pause."""
    state = State(CONFIG)
    hub = FakeHub()
    streamed: list[int] = []
    state.slice_clock = lambda: 0.0  # the count alone bounds a slice
    put = _mappings(5 * slices.MOST + 7)

    def stream(batch):
        streamed.append(len(batch))
        hub.items += len(batch)
    state.apply(Change(put=put), pause=hub.pause, stream=stream)
    assert hub.items_between == [slices.MOST] * 5  # each slice's flows streamed before its pause
    assert sum(streamed) == len(put) and len(state.cache) == len(put)

    now = [0.0]

    def slow_clock():
        now[0] += 0.01  # each look at the clock finds the slice's time spent
        return now[0]
    state.slice_clock = slow_clock
    hub = FakeHub()
    state.apply(Change(delete=[m.key for m in put]), pause=hub.pause)
    assert len(hub.items_between) >= len(put) // slices.CHECK - 1
    assert len(state.cache) == 0


def test_the_check_of_a_big_change_yields_at_least_every_slice_of_mappings():
    """State.check runs on the hub (Python on a native thread makes the
    hub wait for the interpreter lock, controller/offhub.py) and lets it
    go every slice; what it finds wrong is what it always found."""
    state = State(CONFIG)
    state.slice_clock = lambda: 0.0
    put = _mappings(3 * slices.MOST + 7)
    hub = FakeHub()
    state.check(Change(put=put), pause=hub.pause)
    assert len(hub.items_between) == 3
    state.apply(Change(put=put[:10]))
    hub = FakeHub()
    state.check(Change(delete=[m.key for m in put[:10]] * (slices.MOST // 5)), pause=hub.pause)
    assert len(hub.items_between) == 2
    with pytest.raises(ModelError, match="appears twice"):
        state.check(Change(put=put + put[-1:]), pause=hub.pause)


def test_the_history_of_a_big_change_is_made_in_slices_and_whole_before_its_generation(monkeypatch):
    """The end of a change puts its cookies into the history's arrays a
    slice at a time (a million in one step held the hub 256 ms); until
    that is done, neither the history nor the generation says the change
    happened, so a bridge catching up meanwhile gets what was whole. The
    change's sets of cookies are never walked by the collector."""
    import gc

    from lisp_controller.controller import shared as shared_module

    monkeypatch.setattr(shared_module, "HISTORY_SLICE", 1000)
    state = State(CONFIG)
    state.slice_clock = lambda: 0.0  # the counts alone bound the slices
    put = _mappings(3 * slices.MOST)
    before = (state.generation, len(state.shared.history))
    had = set(state.encoded)
    seen, walked = [], []
    big_sets = lambda: {id(o): len(o) for o in gc.get_objects() if type(o) is set and len(o) >= 1000}  # noqa: E731
    others = big_sets()  # not the change's

    def pause():
        seen.append((state.generation, len(state.shared.history)))
        walked.extend(n for i, n in big_sets().items() if i not in others)
    state.apply(Change(put=put), pause=pause)
    assert len(seen) == 3 + len(put) // 1000  # every MOST mappings, then every 1000 cookies
    assert set(seen) == {before}
    assert walked == []
    assert state.generation == before[0] + 1 and len(state.shared.history) == before[1] + 1
    generation, added, removed = state.shared.history[-1]
    assert generation == state.generation and set(added) == state.encoded.keys() - had
    assert len(added) == len(put) and len(removed) == 0
    assert len(state.shared_delta(before[0])[0]) == len(put)


def test_the_diff_of_a_full_sync_yields_at_least_every_slice_of_cookies():
    """reconcile() with slices pauses every MOST cookies, over what the
    bridge holds and over each part of what is desired, and plans the
    same as without."""
    installed = {c: 1 for c in range(0, 3 * slices.MOST)}
    installed[slices.MOST + 5] = 2  # a duplicate: deleted and added again
    shared = {c: b"flow-mod %d" % c for c in range(slices.MOST, 4 * slices.MOST)}
    local = {c: b"local %d" % c for c in range(10 * slices.MOST, 10 * slices.MOST + 7)}
    seen: list[int] = []
    counted = iter(range(1, 10 ** 9))

    class Counting(dict):
        """Counts the cookies the diff takes from it."""

        def items(self):
            for item in super().items():
                hub.items = next(counted)
                yield item
    hub = FakeHub()
    cut = Slices(lambda: seen.append(hub.items), clock=lambda: 0.0)
    plan = reconcile(Counting(installed), Counting(shared), Counting(local), slices=cut)
    assert plan == reconcile(installed, shared, local)
    total = len(installed) + len(shared) + len(local)
    assert seen == list(range(slices.MOST, total + 1, slices.MOST))
    assert set(plan.delete) == set(range(slices.MOST)) | {slices.MOST + 5}
    assert {c for c, _ in plan.add} == set(range(3 * slices.MOST, 4 * slices.MOST)) | set(local) | {slices.MOST + 5}


def test_a_plan_of_many_flows_adds_nothing_the_cyclic_collector_tracks():
    """A plan's pairs as tuples were one tracked object per flow: the
    2,000,000 of a reconnect after a change of a million started full
    collections of 45 to 82 ms each (docs/performance.rst, "Single steps
    at a million"). Its flows are ints and bytes in lists it never walks."""
    import gc
    installed = {c: 1 for c in range(0, 20_000)}
    shared = {c: b"flow-mod %d" % c for c in range(10_000, 30_000)}
    gc.collect()
    gc.disable()  # no collection untracks anything meanwhile
    try:
        before = len(gc.get_objects())
        plan = reconcile(installed, shared, slices=Slices(None))
        tracked = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert len(plan.add) == len(plan.delete) == 10_000 and dict(plan.add) == {c: shared[c] for c in range(20_000, 30_000)}
    assert plan.add[0] == (20_000, shared[20_000])
    assert tracked < 100, tracked  # main: 10,000 tuples more


def test_a_sort_a_catch_up_and_a_history_delta_in_slices_equal_them_in_one_step():
    import array
    import random

    from lisp_controller.controller.reconcile import catch_up, record
    from lisp_controller.controller.shared import SharedFlows
    from lisp_controller.controller.slices import RUN, sorted_sliced

    rng = random.Random(7)
    pauses = []
    slices = Slices(lambda: pauses.append(1), most=500)
    items = [rng.getrandbits(63) for _ in range(3 * RUN + 17)]
    assert sorted_sliced(items, slices) == sorted(items) and len(pauses) >= 10
    shared = SharedFlows()
    first, second, third = ([rng.getrandbits(63) for _ in range(3000)] for _ in range(3))
    shared.history.extend([(1, array.array("Q", first), array.array("Q")),
                           (2, array.array("Q", second), array.array("Q", first[:1000])),
                           (3, array.array("Q", third + first[:10]), array.array("Q", second[:500]))])
    before = len(pauses)
    assert shared.delta(1, 3, slices) == shared.delta(1, 3) and len(pauses) > before
    added, removed = shared.delta(1, 3)
    installed = {c: 1 for c in first + second[:700]}
    desired = {c: b"%d" % c for c in added}
    before = len(pauses)
    plan = catch_up(installed, added, removed, desired, slices)
    assert plan == catch_up(installed, added, removed, desired) and len(pauses) > before
    whole, cut = dict(installed), dict(installed)
    before = len(pauses)
    assert record(cut, plan, {plan.add[0][0]}, slices) == record(whole, plan, {plan.add[0][0]}) and cut == whole
    assert len(pauses) > before
