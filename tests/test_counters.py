"""The counter cache: how often the switches are asked, whatever the polling."""
from lisp_controller.controller.counters import CounterCache, Snapshot, add_bucket_counts


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_reads_in_the_background_at_most_every_interval_scaled_by_cost():
    clock, reads, spawned = Clock(), [], []

    def read():
        reads.append(clock.now)
        clock.now += 1.0  # a read of a big table takes a second
        return Snapshot({7: (len(reads), 10 * len(reads))})

    cache = CounterCache(read, spawned.append, min_interval=2.0, cost_factor=5.0, clock=clock, wall=lambda: 5.0)
    first = cache.get()
    assert first.read_at is None and first.counts == {}  # nobody waits for the switches
    assert cache.get() is first and len(spawned) == 1  # one read in flight, not two
    spawned.pop()()
    assert cache.get().counts == {7: (1, 10)} and cache.get().read_at == 5.0
    clock.now += 4.9  # 5x the read's duration has not passed yet
    cache.get()
    assert spawned == []
    clock.now += 0.2
    cache.get()
    assert len(spawned) == 1


def test_a_failed_read_keeps_the_old_counters():
    clock, spawned = Clock(), []
    results = [Snapshot({1: (3, 300)}, buckets={5: ((1, 10), (2, 20))}), RuntimeError("switch gone")]

    def read():
        r = results.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    cache = CounterCache(read, spawned.append, clock=clock)
    cache.get()
    spawned.pop()()
    clock.now += 10
    cache.get()
    spawned.pop()()
    assert cache.get().counts == {1: (3, 300)} and cache.get().buckets == {5: ((1, 10), (2, 20))}


def test_bucket_counts_of_bridges_add_up():
    total = {}
    add_bucket_counts(total, {9: ((2, 20), (1, 10))})
    add_bucket_counts(total, {9: ((3, 30), (0, 0)), 8: ((1, 1), (1, 1))})
    assert total == {9: ((5, 50), (1, 10)), 8: ((1, 1), (1, 1))}



def test_replaced_counters_are_let_go_of_a_part_at_a_time_unless_someone_still_reads_them():
    """Dropping a million counters at once frees them in one step of the
    hub (48 ms): a refresh empties the ones it replaced part by part,
    letting the hub go between parts, unless a request still holds them
    (a listing sorted by packets reads them across its pauses)."""
    from lisp_controller.openflow.flowstats import FlowCounts
    clock, spawned, parts_made = Clock(), [], []

    def read():
        counts = FlowCounts()
        for cookie in range(20_000):
            counts.add(cookie, 1, 100)
        parts_made.append(counts.parts)  # to look at, without holding the counters
        return Snapshot(counts)

    def left() -> list[int]:
        return [sum(map(len, parts)) for parts in parts_made]
    at_pauses: list[list[int]] = []
    cache = CounterCache(read, spawned.append, clock=clock, pause=lambda: at_pauses.append(left()))
    cache.get()
    spawned.pop()()
    reader = cache.get().counts  # a request reading the first counters
    clock.now += 10
    cache.get()
    spawned.pop()()  # the second replace them
    assert left() == [20_000, 20_000] and at_pauses == [] and len(reader) == 20_000
    del reader
    clock.now += 10
    cache.get()
    spawned.pop()()  # the third replace the second, which nobody holds
    assert left() == [20_000, 0, 20_000] and len(cache.get().counts) == 20_000
    assert any(0 < second < 20_000 for _, second, _ in at_pauses)  # let go of across pauses
