"""The bridge session without os-ken's event loop or a switch: the real
session code, a real State and Metrics, and a fake switch that applies
the plans it is sent to a table of flow-mods (the real switch is in
test_session_ovs.py). Also the garbage collector pause's rules."""
from __future__ import annotations

import gc
import logging
import threading
import time
from types import SimpleNamespace

import pytest

from lisp_controller.controller.toobig import PathMtu
from lisp_controller.pipeline.compiler import compile_meters
from lisp_controller.api.metrics import Metrics
from lisp_controller.config import parse_config
from lisp_controller.controller import gcpause, slices
from lisp_controller.controller.session import Backoff, BridgeSession
from lisp_controller.controller.state import Change, State
from lisp_controller.model import Mapping
from lisp_controller.openflow import verify
from lisp_controller.openflow.errors import SwitchError
from lisp_controller.openflow.switch import ApplyResult
from lisp_controller.openflow.wire import with_cookie
from lisp_controller.pipeline.compiler import compile_local
from lisp_controller.pipeline.flows import Group, flow_mods, is_our_group

DPID = 0x8AD828CE7949
CONFIG = {
    "controller": {"reconcile_interval": 0},
    "bridge": [{"datapath_id": f"{DPID:016x}", "rloc": "192.168.1.249", "iid": 1000,
                "endpoint": [{"port": "vnet0", "mac": "52:54:00:b8:27:75", "eids": ["10.1.1.20"]},
                             {"port": "vnet1", "mac": "52:54:00:b8:27:76", "eids": ["10.1.1.21"]}]}],
}


class FakeSwitch:
    """Holds flow-mods by cookie, as many as were added; `failures` are
    raised by the next calls of `apply` (after applying, if `late`)."""

    def __init__(self, ports: dict[str, int]):
        self.ports = ports
        self.table: dict[int, list[bytes]] = {}
        self.failures: list[Exception] = []
        self.late = False
        self.closed = False
        self.label = ""
        self.applied = 0
        self.meter_table: dict[int, object] = {}
        self.meter_values: dict[int, object] = {}  # the meters a meter-mod may carry, by ID
        self.group_table: dict[int, object] = {}  # groups by ID (ours and others')
        self.group_mods = 0
        self.entries_taken = 0

    def meters(self) -> dict:
        return dict(self.meter_table)

    def groups(self) -> dict:
        return {gid: g for gid, g in self.group_table.items() if is_our_group(gid)}

    def send_confirmed(self, msg: bytes, what: str) -> None:
        meter_id = int.from_bytes(msg[12:16], "big")  # ofp_meter_mod: header, command, flags, id
        self.meter_table[meter_id] = self.meter_values[meter_id]

    def close(self) -> None:
        self.closed = True

    def port_desc(self):
        return dict(self.ports), "br2"

    def installed_cookies(self) -> dict[int, int]:
        return {c: len(v) for c, v in self.table.items()}

    def flow_entries(self):
        """Made as they are taken, as the real switch splits its dump;
        `entries_taken` counts them."""
        for flows in list(self.table.values()):
            for data in flows:
                self.entries_taken += 1
                yield verify.flow_mod_entry(data)

    def apply(self, plan, max_attempts: int = 64, name_of=None) -> ApplyResult:
        if self.failures and not self.late:
            raise self.failures.pop(0)
        g = plan.groups
        for group in g.add + g.modify:
            self.group_table[group.group_id] = group
        for c in plan.delete:
            self.table.pop(c, None)
        for c, data in plan.add:
            self.table.setdefault(c, []).append(data)
        for gid in g.delete:
            self.group_table.pop(gid)
        self.group_mods += len(g)
        self.applied += 1
        if self.failures:
            raise self.failures.pop(0)
        return ApplyResult(True, len(plan.delete) + len(plan.add), {}, 1, len(g))


def make(ports=None, **config):
    cfg = parse_config({**CONFIG, "controller": {**CONFIG["controller"], **config}})
    state = State(cfg)
    app = SimpleNamespace(config=cfg, state=state, change_lock=threading.Semaphore(1), confirmed=threading.Event(),
                          before_sync=lambda label: None, missing_ports_said={}, flows_ahead=dict,
                          flow_ahead=lambda cookie: False,
                          bridge_for=lambda dpid, name: cfg.overlay.bridges[0], datapaths=lambda: [])
    app.metrics = Metrics(app)
    app.pathmtu = PathMtu(lambda: None)
    switch = FakeSwitch({"vnet0": 1, "vnet1": 2, "lisp0": 3} if ports is None else ports)
    switch.meter_values = compile_meters(cfg.overlay.bridges[0])
    sleeps: list[float] = []
    session = BridgeSession(app, SimpleNamespace(id=DPID, address=("10.0.0.1", 4000)), switch=switch,
                            sleep=sleeps.append)
    return app, switch, session, sleeps


def desired(app, session) -> dict[int, list[bytes]]:
    st = app.state
    local = flow_mods(compile_local(st.bridge(session.status.bridge.label), session.status.ports, st.shared).flows)
    return {c: [data] for c, data in {**st.encoded, **local}.items()}


def change(app, session, eid: str) -> None:
    with app.change_lock:
        app.state.apply(Change(put=[Mapping.parse({"iid": 1000, "eid": eid, "rlocs": ["192.0.2.1"]},
                                                  source="api")]))
    session.mark_dirty()


def running(session) -> threading.Thread:
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    return thread


def until(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def stop(session, thread) -> None:
    session.switch.close()
    session.dirty.set()
    thread.join(5)
    assert not thread.is_alive()


def test_backoff_doubles_to_its_limit_and_resets():
    b = Backoff(0.5, 30)
    assert [b.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    b.reset()
    assert b.next() == 0.5


@pytest.mark.parametrize("lisp, paced", [({}, False),
                                         ({"map_resolvers": ["127.0.0.1"], "control_address": "127.0.0.1"}, True)])
def test_bundle_writes_are_paced_only_where_misses_are_resolved(lisp, paced):
    """A resolved miss's learned flow waits behind at most IN_FLIGHT bytes
    of a bulk's bundle when map-resolvers are configured; without them
    nothing waits for a resolution, and the bulk goes out unpaced
    (docs/performance.rst, "Learned flows during a bulk")."""
    app, _, _, _ = make()
    app.config = parse_config({**CONFIG, "lisp": lisp})
    session = BridgeSession(app, SimpleNamespace(id=DPID, address=("10.0.0.1", 4000)))
    assert session.switch.pace_bundles is paced


def test_a_failing_session_starts_over_on_the_same_connection_and_repairs_the_bridge(caplog):
    app, sw, session, sleeps = make()
    sw.failures = [SwitchError(f"bridge {DPID:016x} (br2): no reply to barrier within 30 s"),
                   SwitchError("bundle commit failed and no flow was named"), KeyError("a bug")]
    caplog.set_level(logging.INFO, "lisp_controller")
    thread = running(session)
    until(lambda: sw.table == desired(app, session) and session.status.failing is None, "the first sync")
    st = session.status
    label = session.label
    assert sleeps == [0.5, 1.0, 2.0] and st.session_failures == 3 and thread.is_alive()
    assert st.degraded and st.synced_generation == app.state.generation
    assert app.metrics.registry.get_sample_value("lisp_session_failures_total",
                                                 {"bridge": st.bridge.label}) == 3
    assert "sync failed: no reply to barrier within 30 s; starting over in 0.5 s" in st.errors[0]
    assert "KeyError: 'a bug'" in st.errors[2]
    log = caplog.text
    assert f"bridge {label}: sync failed: no reply to barrier within 30 s; starting over in 0.5 s" in log
    assert "Traceback" in log and log.count("Traceback") == 1  # the bug, where it happened, once
    assert f"bridge {label}: in sync again on the same connection, after 3 failed attempts" in log
    assert log.count(f"bridge {label}: starting over, 3 ports") == 3

    # A change that fails after the switch applied part of it: the session
    # reads the bridge again instead of trusting what it meant to send.
    sw.late = True
    sw.failures = [SwitchError("barrier timed out")]
    sw.table[0x4C000000DEADBEEF] = [with_cookie(sw.table[next(iter(sw.table))][0], 0x4C000000DEADBEEF)]
    change(app, session, "10.9.0.0/16")
    until(lambda: sw.table == desired(app, session) and session.status.failing is None, "the change")
    assert sleeps == [0.5, 1.0, 2.0, 0.5]  # the good sync reset the backoff
    assert st.synced_generation == app.state.generation and thread.is_alive()
    stop(session, thread)


def test_a_failure_before_the_first_sync_is_retried_too():
    app, sw, session, sleeps = make()
    calls = []
    original = sw.port_desc

    def port_desc():
        calls.append(1)
        if len(calls) == 1:
            raise SwitchError("no reply to port description within 30 s")
        return original()
    sw.port_desc = port_desc
    thread = running(session)
    until(lambda: session.status.bridge is not None and sw.table == desired(app, session), "the first sync")
    assert sleeps == [0.5] and len(calls) == 2
    stop(session, thread)


def test_a_deep_check_while_changes_wait_reports_and_repairs_nothing(caplog):
    """The state moved since the last sync: the difference is the sync
    about to be sent, not drift. A real stray is still found."""
    app, sw, session, _ = make()
    assert session._attach()
    session.sync(first=True)
    with app.change_lock:
        app.state.apply(Change(put=[Mapping.parse({"iid": 1000, "eid": e, "rlocs": ["192.0.2.1"]}, source="api")
                                    for e in ("10.7.0.0/16", "10.8.0.0/16")]))
    caplog.set_level(logging.DEBUG, "lisp_controller")
    session.sync(deep=True)
    assert sw.table == desired(app, session)
    assert "repairing" not in caplog.text and session.status.flows_repaired == 0
    caplog.clear()
    stray = next(c for c in sw.table if c not in app.state.encoded)
    sw.table[stray].append(sw.table[stray][0])  # a duplicate nobody of ours made
    sw.table[0x4C00000000ABCDEF] = [with_cookie(sw.table[stray][0], 0x4C00000000ABCDEF)]
    session.sync(deep=True)
    assert sw.table == desired(app, session)
    assert "deep check found 1 duplicate, 1 unwanted and 0 missing" in caplog.text


def test_learned_flows_sent_ahead_of_their_commit_are_kept_by_full_and_deep_syncs(caplog):
    """The xTR sends a learned flow to the bridge before the state holds it
    (lisp/installer.py): until its commit is confirmed it is wanted, not drift.
    A deep check that finds it neither counts it as unwanted nor deletes
    it; a full sync after reading the bridge leaves it too."""
    from lisp_controller.model import prefix_key
    from lisp_controller.pipeline.compiler import mapping_flow_mod
    app, sw, session, _ = make()
    assert session._attach()
    session.sync(first=True)
    learned = Mapping.parse({"iid": 1000, "eid": "10.9.0.0/24", "rlocs": ["192.0.2.9"]}, source="map-resolver")
    cookie, data = mapping_flow_mod(learned, prefix_key(learned.iid, learned.eid))
    sw.table[cookie] = [data]  # sent by the xTR, its commit not confirmed yet
    app.flows_ahead = lambda: {cookie: data}
    caplog.set_level(logging.DEBUG, "lisp_controller")
    session.sync(deep=True)
    assert sw.table.get(cookie) == [data] and "unwanted" not in caplog.text
    assert session.installed.get(cookie) == 1
    session._read_bridge("starting over")
    session.sync(first=True)
    assert sw.table.get(cookie) == [data]
    # Once committed, the state wants it: nothing to send.
    applied = sw.applied
    with app.change_lock:
        app.state.apply(Change(learn=[learned]))
    app.flows_ahead = dict
    session.sync()
    assert sw.applied == applied and sw.table == desired(app, session)


def test_a_learned_flow_the_bridge_confirmed_ahead_of_its_commit_is_not_sent_again():
    """The xTR tells the session which of its learned flows the bridge
    confirmed (note_installed): the sync of their commit sends nothing for
    them. A noted flow that is no longer wanted (a newer answer replaced
    it) is not taken for installed."""
    from lisp_controller.model import prefix_key
    from lisp_controller.pipeline.compiler import mapping_flow_mod
    app, sw, session, _ = make()
    app.flow_ahead = lambda cookie: False
    assert session._attach()
    session.sync(first=True)
    learned = [Mapping.parse({"iid": 1000, "eid": f"10.9.{i}.0/24", "rlocs": ["192.0.2.9"]}, source="map-resolver")
               for i in range(3)]
    flows = [mapping_flow_mod(m, prefix_key(m.iid, m.eid)) for m in learned]
    for cookie, data in flows:
        sw.table[cookie] = [data]  # sent ahead by the xTR, confirmed by the bridge
    session.note_installed([cookie for cookie, _ in flows])
    applied = sw.applied
    with app.change_lock:
        app.state.apply(Change(learn=learned[:2]))  # the third was replaced before its commit
    session.sync()
    assert sw.applied == applied  # nothing to send
    assert {c: session.installed.get(c) for c, _ in flows} == {flows[0][0]: 1, flows[1][0]: 1, flows[2][0]: None}
    assert session.status.flows_installed == sum(session.installed.values())


def _put(app, eids) -> None:
    with app.change_lock:
        app.state.apply(Change(put=[Mapping.parse({"iid": 1000, "eid": e, "rlocs": ["192.0.2.1"]}, source="api")
                                    for e in eids]))


def test_a_deep_check_lets_the_hub_go_at_least_every_slice_of_flows():
    """Splitting the dump, comparing each flow and the diff after it are
    cut into slices (controller/slices.py): with a clock that stands
    still, no more than MOST flows go by between two pauses, in the
    check and in the diff."""
    app, sw, session, _ = make()
    assert session._attach()
    _put(app, [f"10.{i // 256}.{i % 256}.0/24" for i in range(3 * slices.MOST + 100)])
    session.sync(first=True)
    taken_at_pause: list[int] = []
    session.pause = lambda: taken_at_pause.append(sw.entries_taken)
    session.slice_clock = lambda: 0.0
    sw.entries_taken = 0
    session.sync(deep=True)
    flows = sum(len(v) for v in sw.table.values())
    assert sw.entries_taken == flows > 3 * slices.MOST
    during = [n for n in taken_at_pause if n < flows]  # pauses while the dump was being compared
    gaps = [b - a for a, b in zip([0] + during, during + [flows])]
    assert max(gaps) <= slices.MOST and len(during) >= flows // slices.MOST
    # Then the stray/missing counts and the diff: every cookie once more each.
    assert len(taken_at_pause) - len(during) >= 3 * flows // slices.MOST - 1
    assert session.status.flows_repaired == 0 and sw.table == desired(app, session)


def test_a_deep_check_of_50000_flows_never_steps_over_all_of_them_at_once():
    """A C-level step over a whole dict (a copy, a table doubling as it
    fills, freeing it) holds the hub tens of milliseconds at a million
    flows (docs/performance.rst, "A free hub"). The deep check keeps its
    maps in parts (model/parted.py): no block it allocates, the copy of
    the desired flows and the counts it reads included, is more than a
    part of them, and the counts from before are let go of across pauses."""
    import tracemalloc
    from lisp_controller.model.parted import PartedDict
    app, sw, session, _ = make()
    assert session._attach()
    _put(app, [f"10.{i // 256}.{i % 256}.0/24" for i in range(50_000)])
    session.sync(first=True)
    flows = sum(len(v) for v in sw.table.values())
    before = session.installed  # read from the bridge; the deep check replaces it
    assert len(before) == flows > 50_000
    left_at_pauses: list[int] = []
    largest: list[int] = []

    def largest_block() -> int:  # of those the controller's code allocated since tracing began
        return max((t.size for t in tracemalloc.take_snapshot().traces
                    if "lisp_controller" in t.traceback[0].filename), default=0)

    def pause() -> None:
        left_at_pauses.append(len(before))
        if not largest and sw.entries_taken > flows // 2:  # mid-comparison: the copy and half the counts
            largest.append(largest_block())
    session.pause = pause
    session.slice_clock = lambda: 0.0
    tracemalloc.start()
    try:
        session.sync(deep=True)
        largest.append(largest_block())  # the counts, whole, are the bridge's installed flows now
    finally:
        tracemalloc.stop()
    assert isinstance(session.installed, PartedDict) and session.installed == {c: 1 for c in sw.table}
    # A dict of 50,000 entries is a block of over 1 MB; a part, a few kB.
    assert len(largest) == 2 and max(largest) < 64 * 1024, largest
    assert len(before) == 0 and any(0 < n < flows for n in left_at_pauses)  # let go of in pieces
    assert session.status.flows_repaired == 0 and sw.table == desired(app, session)


def test_the_plan_of_a_sync_is_let_go_of_in_slices_once_it_is_recorded(monkeypatch):
    """A bridge back after every mapping moved gets a plan of a million
    deletes and a million adds; dropped at once, it was freed in one step
    of the hub (117 to 172 ms: docs/performance.rst, "Single steps at a
    million"). The session lets go of it a slice at a time once recorded."""
    app, sw, session, _ = make()
    assert session._attach()
    eids = [f"10.{i // 256}.{i % 256}.0/24" for i in range(20_000)]
    _put(app, eids)
    plans, sizes, left_at_pauses = [], [], []
    apply = sw.apply

    def keep(plan, *args, **kwargs):
        plans.append(plan)
        sizes.append((len(plan.delete), len(plan.add)))
        return apply(plan, *args, **kwargs)
    sw.apply = keep
    session.sync(first=True)
    with app.change_lock:  # every mapping to another RLOC: 20,000 deletes and 20,000 adds
        app.state.apply(Change(put=[Mapping.parse({"iid": 1000, "eid": e, "rlocs": ["192.0.2.2"]}, source="api")
                                    for e in eids]))
    session.pause = lambda: left_at_pauses.append(len(plans[-1].delete) + len(plans[-1].add))
    session.slice_clock = lambda: 0.0
    monkeypatch.setattr(slices, "LIST_PART", 500, raising=False)  # 8,000 items a slice: at a million, 64,000
    session.sync()
    assert sw.table == desired(app, session)
    assert len(plans) == 2 and sizes[1] == (20_000, 20_000)
    assert all(len(p.delete) == len(p.add) == 0 for p in plans)  # main: the plans as they were
    assert any(0 < n < 40_000 for n in left_at_pauses)  # let go of in pieces, not whole after a pause


def test_a_change_made_while_a_deep_check_yields_is_not_taken_for_drift(caplog):
    """The deep check compares against the desired flows as they were when
    it began: a change that arrives while it lets the hub go (here: at its
    first pause while comparing, after the copy it compares against) repairs
    nothing and is sent by the next sync."""
    app, sw, session, _ = make()
    assert session._attach()
    _put(app, [f"10.50.{i}.0/24" for i in range(200)])
    session.sync(first=True)
    assert sw.table == desired(app, session)
    before, generation, applied = desired(app, session), app.state.generation, sw.applied
    gone = Mapping.parse({"iid": 1000, "eid": "10.50.7.0/24", "rlocs": ["192.0.2.1"]}, source="api").key
    pauses = []

    def change_midway() -> None:
        if not sw.entries_taken:
            return  # the copy of the desired flows, made under the change lock
        pauses.append(sw.entries_taken)
        if len(pauses) == 1:  # nobody may hold the change lock while the check compares
            assert app.change_lock.acquire(timeout=1), "the deep check holds the change lock while it yields"
            try:
                app.state.apply(Change(put=[Mapping.parse({"iid": 1000, "eid": "10.60.0.0/16",
                                                           "rlocs": ["192.0.2.1"]}, source="api")],
                                       delete=[gone]))
            finally:
                app.change_lock.release()
            session.mark_dirty()
    session.pause = change_midway
    now = [0.0]

    def slow_clock():  # every look finds the slice's time spent: a pause every CHECK items
        now[0] += 0.01
        return now[0]
    session.slice_clock = slow_clock
    caplog.set_level(logging.DEBUG, "lisp_controller")
    session.sync(deep=True)
    assert pauses and pauses[0] < sum(len(v) for v in before.values())  # the change came midway
    assert app.state.generation > generation
    assert "changed on the switch" not in caplog.text and "repairing" not in caplog.text
    assert session.status.flows_repaired == 0 and sw.applied == applied  # nothing sent: in sync with its view
    assert sw.table == before and session.status.synced_generation == generation
    session.sync()  # the change, as the next sync sends it
    assert sw.table == desired(app, session) != before


def test_conditions_are_logged_when_they_start_and_end_and_routine_at_debug(caplog):
    app, sw, session, _ = make(ports={"vnet0": 1, "lisp0": 3}, reconcile_interval=1)
    caplog.set_level(logging.DEBUG, "lisp_controller")
    assert session._attach()
    session.sync(first=True)
    for i in range(3):
        change(app, session, f"10.{20 + i}.0.0/16")
        session.sync()
        session.sync(deep=True)
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    missing = [m for _, m in records if "not on the bridge" in m]
    assert missing == [f"bridge {session.label}: configured ports not on the bridge: vnet1 "
                       "(their flows are left out)"]
    correct = [level for level, m in records if "already correct" in m]
    assert correct == [logging.DEBUG] * 3  # the deep checks: routine
    # A second session (a reconnect) does not say it again; the port's
    # arrival is said once.
    caplog.clear()
    session2 = BridgeSession(app, SimpleNamespace(id=DPID, address=("10.0.0.1", 4001)), switch=sw)
    assert session2._attach()
    session2.sync(first=True)
    sw.ports["vnet1"] = 2
    session2.status.ports["vnet1"] = 2
    session2.sync()
    session2.sync(deep=True)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert f"bridge {session2.label}: all 22 flows already correct, nothing sent" in messages  # once a connection
    assert [m for m in messages if "vnet1" in m] == [
        f"bridge {session2.label}: every configured port is on the bridge now (vnet1 was missing)"]


# -- the collector pause ---------------------------------------------------------

@pytest.fixture
def collector():
    was = gc.isenabled()
    gc.enable()
    yield
    assert gcpause.paused_depth() == 0
    (gc.enable if was else gc.disable)()


def test_pauses_nest(collector):
    with gcpause.gc_paused(5000):
        assert not gc.isenabled()
        with gcpause.gc_paused(5000):
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause did not end the outer one
    assert gc.isenabled()
    with gcpause.gc_paused(10):  # small batches are not paused
        assert gc.isenabled()


def test_a_pause_is_lifted_while_yielding_and_restored_after(collector):
    seen = []
    with gcpause.gc_paused(5000):
        gcpause.breathe(lambda: seen.append((gc.isenabled(), gcpause.paused_depth())))
        assert not gc.isenabled() and gcpause.paused_depth() == 1
    assert seen == [(True, 0)] and gc.isenabled()


def test_a_pause_left_open_by_another_thread_is_said_and_taken_over(collector, caplog):
    entered, release = threading.Event(), threading.Event()

    def holder():
        with gcpause.gc_paused(5000):
            entered.set()
            release.wait(5)
    t = threading.Thread(target=holder)
    t.start()
    entered.wait(5)
    with gcpause.gc_paused(5000):
        assert not gc.isenabled()
    assert "held across a yield" in caplog.text
    release.set()
    t.join(5)
    assert gc.isenabled()


def test_groups_are_added_kept_across_a_new_session_repaired_and_removed(caplog):
    """An RLOC set's group reaches the bridge with the flow that uses it; a
    new session (a restart, a reconnect) sends no group-mod for it; a deep
    check puts back one changed by hand and deletes a stale one of ours,
    never someone else's; when no mapping uses it any more it goes."""
    app, sw, session, _ = make()
    sw.group_table[7] = "someone else's"
    sw.group_table[0x4C000001] = None  # ours (the tag), of a shape we never make: stale
    assert session._attach()
    session.sync(first=True)
    assert sw.groups() == {} and 7 in sw.group_table
    with app.change_lock:
        app.state.apply(Change(put=[Mapping.parse({"iid": 1000, "eid": e, "rlocs": [
            {"address": "192.0.2.1", "weight": 70}, {"address": "192.0.2.2", "weight": 30}]}, source="api")
            for e in ("10.7.0.0/16", "10.8.0.0/16")]))
    session.sync()
    (gid, group), = sw.groups().items()
    assert app.state.shared.groups == {gid: group} and sw.table == desired(app, session)
    st = session.status
    assert (st.groups_desired, st.groups_installed, st.group_mods_sent) == (1, 1, 2)  # the stale one, the set

    again = BridgeSession(app, SimpleNamespace(id=DPID, address=("10.0.0.1", 4001)), switch=sw,
                          sleep=lambda _: None)
    sent = sw.group_mods
    assert again._attach()
    again.sync(first=True)
    assert sw.group_mods == sent and again.status.group_mods_sent == 0
    caplog.set_level(logging.INFO, "lisp_controller")

    sw.group_table[gid] = Group(gid, group.buckets[:1])  # by hand
    again.sync(deep=True)
    assert sw.groups() == {gid: group} and again.status.flows_repaired == 1
    assert "1 groups of ours were changed on the switch" in caplog.text

    with app.change_lock:
        app.state.apply(Change(delete=[m.key for m in app.state.api_mappings()]))
    again.sync()
    assert sw.groups() == {} and sw.group_table == {7: "someone else's"}
    assert sw.table == desired(app, session)
