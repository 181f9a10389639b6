import ipaddress
from pathlib import Path

import pytest

from lisp_controller.pipeline.compiler import compile_overlay
from lisp_controller.config import load_config
from lisp_controller.model import Endpoint, Mapping, ModelError, parse_prefix, prefix_key
from lisp_controller.controller.state import Change, State
from lisp_controller.errors import Conflict, NotFound
from lisp_controller.store.sqlite import Store, StoreError

ROOT = Path(__file__).resolve().parent.parent
BLOG = load_config(ROOT / "configs" / "blog-two-hypervisors.toml")


def api(iid, eid, *rlocs, **kw):
    return Mapping.parse({"iid": iid, "eid": eid, "rlocs": list(rlocs), **kw}, source="api")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_shared_flows_stay_equal_to_a_full_compile():
    state = State(BLOG)
    assert state.shared == compile_overlay(BLOG.overlay)
    state.apply(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.1"), api(1000, "10.3.0.0/16", "192.0.2.2")]))
    state.apply(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.9")], delete=[(1000, parse_prefix("10.3.0.0/16"))]))
    from lisp_controller.pipeline.compiler import compile_map_cache
    assert state.shared == compile_map_cache(state.cache, BLOG.overlay.miss_action)
    assert len(state.shared) == 4  # two endpoint host mappings, 10.2/16, the miss rule


def test_ownership_rules():
    state = State(BLOG)
    with pytest.raises(Conflict, match="owned by the endpoint"):
        state.check(Change(put=[api(1000, "10.1.1.20/32", "192.0.2.1")]))
    state.apply(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.1")]))
    with pytest.raises(Conflict, match="already exists"):
        state.check(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.1")], create_only=True))
    state.check(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.7")]))  # replace is fine
    with pytest.raises(NotFound, match="no mapping"):
        state.check(Change(delete=[(1000, parse_prefix("10.9.0.0/16"))]))
    with pytest.raises(ModelError, match="appears twice"):
        state.check(Change(put=[api(1, "10.0.0.0/8"), api(1, "10.0.0.0/8")]))


def test_replace_api_keeps_config_and_endpoint_mappings():
    state = State(BLOG)
    state.apply(Change(put=[api(1000, f"10.2.{i}.0/24", "192.0.2.1") for i in range(5)]))
    state.apply(Change(put=[api(1000, "10.2.3.0/24", "192.0.2.1"), api(1000, "10.7.0.0/16", "192.0.2.2")],
                       replace_api=True))
    assert sorted(str(m.eid) for m in state.api_mappings()) == ["10.2.3.0/24", "10.7.0.0/16"]
    assert {m.source for m in state.cache} == {"api", "endpoint"}


def test_api_endpoint_moves_the_host_mapping_between_bridges():
    state = State(BLOG)
    hv1, hv2 = BLOG.overlay.bridges
    ep = Endpoint("vnet7", "52:54:00:00:00:07", 1000, (ipaddress.ip_address("10.1.1.77"),))
    state.apply(Change(put_endpoints=[(hv2.label, ep)]))
    assert str(state.cache.lookup(1000, "10.1.1.77").rloc_shares()[0][0]) == "192.168.1.252"
    assert [e.port for e in state.bridge(hv2.label).endpoints] == ["vnet0", "vnet7"]
    with pytest.raises(Conflict, match="already mapped"):
        state.check(Change(put_endpoints=[(hv1.label, ep)]))
    state.apply(Change(delete_endpoints=[(hv2.label, "vnet7")]))
    state.apply(Change(put_endpoints=[(hv1.label, ep)]))
    assert str(state.cache.lookup(1000, "10.1.1.77").rloc_shares()[0][0]) == "192.168.1.249"
    with pytest.raises(Conflict, match="owned by the config"):
        state.check(Change(delete_endpoints=[(hv1.label, "vnet0")]))


def test_ttl_expiry_uses_the_injected_clock():
    clock = Clock()
    state = State(BLOG, clock=clock)
    state.apply(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.1", ttl=2), api(1000, "10.3.0.0/16", "192.0.2.1")]))
    assert state.cache.get(1000, parse_prefix("10.2.0.0/16")).expires == 1000.0 + 120
    clock.now += 119
    assert state.expired() == Change()
    clock.now += 2
    assert state.expired() == Change(delete=[(1000, parse_prefix("10.2.0.0/16"))])
    assert state.expired() == Change()  # popped once


def test_expiry_skips_a_mapping_whose_ttl_was_renewed():
    clock = Clock()
    state = State(BLOG, clock=clock)
    state.apply(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.1", ttl=2)]))
    clock.now += 60
    state.apply(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.1", ttl=2)]))  # renewed: expires at 180
    clock.now += 61
    assert state.expired() == Change()
    clock.now += 60
    assert state.expired().delete == [(1000, parse_prefix("10.2.0.0/16"))]


def test_the_expiry_schedule_is_out_of_the_collectors_sight():
    """One entry per mapping with a TTL (every learned one): a tuple
    holding a Prefix would stay tracked for good, and 40,000 of them made
    full collections that hold the hub longer (docs/performance.rst)."""
    import gc
    state = State(BLOG, clock=Clock())
    state.apply(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.1", ttl=2)]))
    (entry,) = state._expiry
    assert not gc.is_tracked(entry)


def learned(iid, eid, *rlocs, source="registered:branch", **kw):
    return Mapping.parse({"iid": iid, "eid": eid, "rlocs": list(rlocs), **kw}, source=source)


def test_learned_mappings_sit_below_config_endpoint_and_api_ones():
    clock = Clock()
    state = State(BLOG, clock=clock)
    key = (1000, parse_prefix("10.9.0.0/16"))
    state.apply(Change(learn=[learned(1000, "10.9.0.0/16", "192.0.2.9", ttl=3)]))
    assert state.owner(key) == "registered:branch"
    assert state.cache.get(*key).expires == 1000.0 + 180
    # The API may put over it (and wins) but may not delete it.
    with pytest.raises(Conflict, match="owned by the registered:branch"):
        state.check(Change(delete=[key]))
    state.check(Change(put=[api(1000, "10.9.0.0/16", "192.0.2.1")], create_only=True))
    state.apply(Change(put=[api(1000, "10.9.0.0/16", "192.0.2.1")]))
    assert state.owner(key) == "api"
    # Refreshed while hidden; back in the map-cache when the API one goes.
    state.apply(Change(learn=[learned(1000, "10.9.0.0/16", "192.0.2.10", ttl=3)]))
    assert state.owner(key) == "api"
    state.apply(Change(delete=[key]))
    m = state.cache.get(*key)
    assert (m.source, str(m.rlocs[0].address)) == ("registered:branch", "192.0.2.10")
    from lisp_controller.pipeline.compiler import compile_map_cache
    assert state.shared == compile_map_cache(state.cache, BLOG.overlay.miss_action)  # flows follow
    # A Map-Reply does not replace a site's registration.
    state.apply(Change(learn=[learned(1000, "10.9.0.0/16", "192.0.2.77", source="map-resolver", ttl=1)]))
    assert state.owner(key) == "registered:branch"
    # Expiry forgets it, and its flow leaves with it.
    cookie = state.mapping_cookie(key)
    clock.now += 181
    change = state.expired()
    assert change == Change(forget=[key])
    state.apply(change)
    assert state.owner(key) is None and cookie not in state.encoded and not state.learned


def test_a_config_host_mapping_hides_a_learned_one():
    state = State(BLOG)
    host = next(m for m in state.cache if m.source == "endpoint")
    state.apply(Change(learn=[learned(host.iid, str(host.eid), "192.0.2.9")]))
    assert state.owner(host.key) == "endpoint"
    state.apply(Change(forget=[host.key]))
    assert state.owner(host.key) == "endpoint" and not state.learned


def test_a_change_of_learned_mappings_only_is_not_stored():
    assert not Change(learn=[learned(1, "10.0.0.0/8", "192.0.2.1")], forget=[(1, parse_prefix("10.1.0.0/16"))]).stored
    assert Change(delete=[(1, parse_prefix("10.1.0.0/16"))]).stored


def test_store_round_trip_and_all_or_nothing(tmp_path):
    store = Store(tmp_path / "s.db")
    m = api(1000, "10.2.0.0/16", {"address": "2001:db8::1", "priority": 3, "weight": 40}, ttl=5)
    m = Mapping(m.iid, m.eid, m.rlocs, m.ttl, m.action, "api", 1234.5)
    ep = Endpoint("vnet3", "52:54:00:00:00:03", 7, (ipaddress.ip_address("10.1.1.3"), ipaddress.ip_address("2001:db8::3")),
                  ipaddress.ip_address("10.1.1.1"))
    store.write(put=[m, api(1, "0.0.0.0/0", action="drop")], put_endpoints=[("hv1", ep)])
    store.close()
    mappings, endpoints = Store(tmp_path / "s.db").load()
    assert sorted(mappings, key=lambda x: x.iid) == [api(1, "0.0.0.0/0", action="drop"), m]
    assert endpoints == [("hv1", ep)]

    # A write that fails half-way leaves nothing of itself behind.
    store = Store(tmp_path / "s.db")

    def exploding():
        yield api(2, "10.0.0.0/8")
        raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        store.write(put=exploding(), delete=[(1, parse_prefix("0.0.0.0/0"))])
    assert len(store.load()[0]) == 2


def test_store_load_shares_what_mappings_have_in_common(tmp_path):
    """A million loaded mappings must not hold a million copies of one
    RLOC set; each keeps its own values all the same."""
    store = Store(tmp_path / "s.db")
    two = [{"address": "192.0.2.1", "priority": 1}, {"address": "2001:db8::1", "priority": 2, "weight": 5}]
    written = ([api(70000, f"10.9.{i}.0/24", "192.0.2.1") for i in range(50)]
               + [api(70000, f"fd00:{i:x}::/32", *two, ttl=3) for i in range(50)]
               + [api(70000, f"10.8.{i}.0/24", action="drop") for i in range(5)])
    store.write(put=written)
    loaded = sorted(store.load()[0], key=lambda m: prefix_key(m.iid, m.eid))
    assert loaded == sorted(written, key=lambda m: prefix_key(m.iid, m.eid))
    assert len({id(m.rlocs) for m in loaded}) == 3  # one-RLOC, two-RLOC and empty sets
    assert len({id(m.iid) for m in loaded}) == 1 and len({id(m.action) for m in loaded}) == 2
    store.write(put=[api(70000, "10.9.0.0/24", "192.0.2.2")], delete=[(70000, parse_prefix("fd00:1::/32"))])
    after = {str(m.eid): m for m in store.load()[0]}
    assert len(after) == 104 and "fd00:1::/32" not in after
    assert [str(r.address) for r in after["10.9.0.0/24"].rlocs] == ["192.0.2.2"]
    assert [str(r.address) for r in after["10.9.1.0/24"].rlocs] == ["192.0.2.1"]


def test_corrupt_store_gives_a_clear_error(tmp_path):
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store(bad)


def test_shared_delta_nets_changes_across_generations():
    from lisp_controller.controller.reconcile import catch_up, reconcile
    state = State(BLOG)
    start = state.generation
    installed = {c: 1 for c in state.shared}
    state.apply(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.1"), api(1000, "10.3.0.0/16", "192.0.2.1")]))
    state.apply(Change(put=[api(1000, "10.2.0.0/16", "192.0.2.9")]))  # replaces one flow
    state.apply(Change(put=[api(1000, "10.3.0.0/16", "192.0.2.1")]))  # the same again: no change
    state.apply(Change(delete=[(1000, parse_prefix("10.3.0.0/16"))],
                       put=[api(1000, "10.4.0.0/16", "192.0.2.1")]))
    added, removed = state.shared_delta(start)
    # Catching up from the start gives exactly what a full diff gives.
    plan = catch_up(installed, added, removed, state.encoded)
    full = reconcile(installed, state.encoded)
    assert set(plan.delete) == set(full.delete) and dict(plan.add) == dict(full.add)
    assert len(plan.add) == 2 and not plan.delete
    assert state.shared_delta(state.generation) == (set(), set())
    # From the middle: only what came after.
    mid_added, mid_removed = state.shared_delta(start + 2)
    assert len(mid_added) == 1 and len(mid_removed) == 1


def test_shared_delta_is_none_when_history_is_gone(monkeypatch):
    import lisp_controller.controller.shared as shared_module
    monkeypatch.setattr(shared_module, "HISTORY_COOKIES", 3)
    state = State(BLOG)
    start = state.generation
    for i in range(4):
        state.apply(Change(put=[api(1000, f"10.{10 + i}.0.0/16", "192.0.2.1")]))
    assert state.shared_delta(start) is None
    assert state.shared_delta(state.generation - 1) is not None


def test_record_leaves_refused_changes_as_the_switch_has_them():
    from lisp_controller.controller.reconcile import Plan, record
    flow = b"flow-mod"
    installed = {1: 1, 2: 1, 3: 2}
    plan = Plan(delete=(1, 2, 3), add=((3, flow), (4, flow), (5, flow)))
    # The switch refused deleting 2 and adding 5.
    assert record(installed, plan, {2, 5}) == -1 - 2 + 1 + 1
    assert installed == {2: 1, 3: 1, 4: 1}


def test_a_streamed_change_lands_as_the_state_says():
    """The flow edits State.apply streams, sent as Stream.step says, leave
    the bridge holding exactly the state's flows, with nothing sent for
    what it had, and a flow added then removed within one change sent in
    that order."""
    from lisp_controller.controller.reconcile import Stream
    state = State(BLOG)
    batches: list = []
    keep = api(1000, "10.2.0.0/16", "192.0.2.1")
    state.apply(Change(put=[keep, api(1000, "10.3.0.0/16", "192.0.2.1"), api(1000, "10.5.0.0/16", "192.0.2.1")]))
    installed = {c: 1 for c in state.encoded}
    sent: list = []
    stream = Stream(installed)
    change = Change(put=[keep,                                      # as it is: nothing to send
                         api(1000, "10.3.0.0/16", "192.0.2.9"),     # moved: delete, then add
                         api(1000, "10.4.0.0/16", "192.0.2.1")],    # new
                    delete=[(1000, parse_prefix("10.5.0.0/16"))])
    state.apply(change, stream=lambda batch: (batches.append(list(batch)), sent.extend(stream.step(batch))))
    assert batches, "nothing was streamed"
    stream.record()
    assert installed == {c: 1 for c in state.encoded}
    deletes = [c for c, data in sent if data is None]
    adds = [c for c, data in sent if data is not None]
    assert len(deletes) == 2 and len(adds) == 2  # 10.5 and old 10.3 out; new 10.3 and 10.4 in
    assert all(state.encoded[c] == data for c, data in sent if data is not None)
    # What the bridge has is not sent again; what it lacks is not deleted.
    assert Stream({5: 1}).step([(5, b"x"), (6, None)]) == []
    assert Stream({5: 2}).step([(5, b"x")]) == [(5, b"x")]  # not exactly one copy: sent, as catch_up does
    # Added then removed within one change: both go out, in order.
    flip = Stream({})
    assert flip.step([(7, b"x"), (7, None)]) == [(7, b"x"), (7, None)]
    flip.record()
    assert flip.installed == {}


def test_shared_history_keeps_no_container_the_collector_walks():
    """A million cookies in a set cost every full collection about 100 ms;
    the history keeps them where the collector does not walk them."""
    import gc
    state = State(BLOG)
    before = state.generation
    state.apply(Change(put=[api(1000, f"10.{i}.0.0/16", "192.0.2.1") for i in range(3)]))
    _, added, removed = state.shared.history[-1]
    assert len(added) == 3
    for cookies in (added, removed):
        assert not any(isinstance(x, int) for x in gc.get_referents(cookies))
    assert len(state.shared_delta(before)[0]) == 3
