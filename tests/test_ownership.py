"""Bridge ownership (docs/etcd.rst, "Bridge ownership"), fast: the pure
plan of claims and handovers run round after round against a model of
etcd's create-if-absent owner keys, and the bridge session's roles against
a fake switch that keeps OpenFlow 1.3's generation ID rules as OVS does.
The same against real etcd, OVS and processes: test_roles.py."""
from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from lisp_controller.api.metrics import Metrics
from lisp_controller.config import ConfigError, parse_config
from lisp_controller.controller.ownership import Snapshot, mastered, plan
from lisp_controller.controller.roles import MASTER, SLAVE
from lisp_controller.controller.session import BridgeSession
from lisp_controller.controller.state import State
from lisp_controller.controller.toobig import PathMtu
from lisp_controller.openflow.errors import SwitchError
from lisp_controller.pipeline.compiler import compile_meters

from .test_session import CONFIG, DPID, FakeSwitch, change, desired, running, stop, until


# -- the plan --------------------------------------------------------------------------------
def settle(connected: dict[str, set[int]], owners: dict[int, str] | None = None,
           rounds: int = 20) -> tuple[dict[int, str], int, list]:
    """Every instance plans in turn against the current owner keys, as
    etcd would take their transactions (a claim only if the key is
    absent, a release only of one's own), until nobody moves. Returns the
    owners, the rounds it took, and every move made."""
    owners = dict(owners or {})
    moves_made = []
    for n in range(1, rounds + 1):
        moved = False
        for me in sorted(connected):
            snap = Snapshot({i: frozenset(d) for i, d in connected.items()}, dict(owners))
            moves = plan(me, snap, connected[me])
            for d in moves.release:
                assert owners.get(d) == me
                del owners[d]
                moves_made.append(("release", me, d))
                moved = True
            for d in moves.claim:
                if d not in owners or owners[d] not in connected:
                    owners[d] = me
                    moves_made.append(("claim", me, d))
                    moved = True
        if not moved:
            return owners, n, moves_made
    raise AssertionError(f"no stable ownership after {rounds} rounds: {moves_made[-10:]}")


@pytest.mark.parametrize("bridges,instances", [(2, 3), (3, 3), (10, 3), (50, 3), (7, 2), (1, 5)])
def test_bridges_spread_evenly_and_each_has_one_master(bridges, instances):
    names = [f"c{k}" for k in range(1, instances + 1)]
    connected = {i: set(range(1, bridges + 1)) for i in names}
    owners, rounds, moves = settle(connected)
    assert set(owners) == set(range(1, bridges + 1))
    counts = mastered(Snapshot({i: frozenset() for i in names}, owners))
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    # Few moves: most bridges are claimed once, none changes hands twice.
    per_bridge = {d: sum(1 for m in moves if m[2] == d) for d in owners}
    assert max(per_bridge.values()) <= 3 and rounds <= 5, (rounds, moves)


def test_an_instance_with_more_than_its_share_hands_over_one_bridge_a_round():
    connected = {i: set(range(1, 7)) for i in ("c1", "c2", "c3")}
    owners, rounds, moves = settle(connected, owners={d: "c1" for d in range(1, 7)})
    counts = mastered(Snapshot({i: frozenset() for i in connected}, owners))
    assert counts == {"c1": 2, "c2": 2, "c3": 2}
    releases = [m for m in moves if m[0] == "release"]
    assert len(releases) == 4 and all(m[1] == "c1" for m in releases)  # no bridge moved twice
    assert len({m[2] for m in releases}) == 4


def test_a_dead_masters_bridges_go_to_the_live_ones_and_a_lost_connection_is_released():
    connected = {"c2": {1, 2, 3, 4}, "c3": {1, 2, 3, 4}}
    owners, _, _ = settle(connected, owners={1: "c1", 2: "c1", 3: "c2", 4: "c3"})  # c1 is dead
    assert set(owners) == {1, 2, 3, 4} and set(owners.values()) == {"c2", "c3"}
    # c2 loses its connection to bridge 3: it releases it; c3 takes it.
    connected["c2"].discard(3)
    owners, _, moves = settle(connected, owners)
    assert owners[3] == "c3" and ("release", "c2", 3) in moves
    # A bridge only one instance sees goes to it, even over its share.
    owners, _, _ = settle({"c2": {1, 2, 3, 4, 5}, "c3": {1}}, owners={})
    assert [d for d, o in owners.items() if o == "c3"] in ([1], [])
    assert all(owners[d] == "c2" for d in (2, 3, 4, 5))


def test_a_free_bridge_waits_for_its_best_candidate_then_anyone_takes_it():
    snap = Snapshot({"c1": frozenset({1}), "c2": frozenset({1})}, {})
    best, other = ("c1", "c2") if plan("c1", snap, {1}).claim else ("c2", "c1")
    assert plan(best, snap, {1}).claim == (1,)
    assert plan(other, snap, {1}).claim == ()  # the best candidate's to take
    assert plan(other, snap, {1}, overdue={1}).claim == (1,)  # it did not: stuck or blind


def test_cluster_section_of_the_config():
    base = {"bridge": [{"datapath_id": "1", "rloc": "192.168.1.1"}], "api": {"port": 8181},
            "store": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]}}
    config = parse_config(base)
    assert config.cluster.instance.endswith(":8181") and config.cluster.lease_ttl == 1
    assert parse_config({**base, "cluster": {"instance": "ctl-a", "lease_ttl": 3}}).cluster.instance == "ctl-a"
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "cluster": {"instance": "two words", "lease_ttl": 0, "ttl": 3}})
    assert e.value.problems == [
        "<config>: cluster.ttl: unknown key",
        "<config>: cluster.instance: must be 1 to 64 letters, digits and . _ : @ -, got 'two words'",
        "<config>: cluster.lease_ttl: must be between 1 and 60, got 0 (seconds)"]
    with pytest.raises(ConfigError, match="cluster: only with \\[store\\] backend = \"etcd\""):
        parse_config({"bridge": base["bridge"], "cluster": {"instance": "a"}})
    assert parse_config({"bridge": base["bridge"]}).cluster is None


# -- the session's roles, against a fake switch ----------------------------------------------------------
class RoleSwitch(FakeSwitch):
    """A FakeSwitch that keeps OpenFlow 1.3 roles for this one connection
    the way OVS does: a MASTER or SLAVE request whose generation is older
    than the newest seen is refused (OFPRRFC_STALE) and changes nothing;
    `other_master(g)` is another controller claiming MASTER with g, which
    makes this connection SLAVE; a SLAVE's writes are refused."""

    def __init__(self, ports):
        super().__init__(ports)
        self.role, self.election_id = ofp.OFPCR_ROLE_EQUAL, None
        self.requests: list[tuple[int, int]] = []

    def role_request(self, role: int, generation: int = 0):
        self.requests.append((role, generation))
        if role in (ofp.OFPCR_ROLE_MASTER, ofp.OFPCR_ROLE_SLAVE):
            if self.election_id is not None and generation < self.election_id:
                error = SwitchError(f"bridge {self.label}: role request failed: "
                                    "OFPET_ROLE_REQUEST_FAILED/OFPRRFC_STALE")
                error.refusal = SimpleNamespace(type=ofp.OFPET_ROLE_REQUEST_FAILED, code=ofp.OFPRRFC_STALE)
                raise error
            self.election_id = generation
            self.role = role
        return self.role, self.election_id or 0

    def other_master(self, generation: int) -> None:
        self.election_id = generation
        if self.role == ofp.OFPCR_ROLE_MASTER:
            self.role = ofp.OFPCR_ROLE_SLAVE

    def apply(self, plan, max_attempts: int = 64, name_of=None):
        if self.role == ofp.OFPCR_ROLE_SLAVE:
            error = SwitchError(f"bridge {self.label}: bundle open failed: OFPET_BAD_REQUEST/OFPBRC_IS_SLAVE")
            error.refusal = SimpleNamespace(type=ofp.OFPET_BAD_REQUEST, code=ofp.OFPBRC_IS_SLAVE)
            raise error
        return super().apply(plan, max_attempts, name_of)


class FakeMembership:
    me = "c1"
    guard = True

    def __init__(self):
        self.problem = None
        self.refusals: list[tuple[int, int]] = []
        self.owner = None

    def lease_problem(self):
        return self.problem

    def master_of(self, datapath):
        return self.owner

    def connected(self, datapath):
        pass

    def refused(self, datapath, generation):
        self.refusals.append((datapath, generation))


def make_roles():
    cfg = parse_config({**CONFIG, "controller": {"reconcile_interval": 0}})
    state = State(cfg)
    app = SimpleNamespace(config=cfg, state=state, change_lock=threading.Semaphore(1), confirmed=threading.Event(),
                          before_sync=lambda label: None, missing_ports_said={}, membership=FakeMembership(), flows_ahead=dict,
                          flow_ahead=lambda cookie: False,
                          bridge_for=lambda dpid, name: cfg.overlay.bridges[0], datapaths=lambda: [])
    app.metrics = Metrics(app)
    app.pathmtu = PathMtu(lambda: None)
    switch = RoleSwitch({"vnet0": 1, "vnet1": 2, "lisp0": 3})
    switch.meter_values = compile_meters(cfg.overlay.bridges[0])
    session = BridgeSession(app, SimpleNamespace(id=DPID, address=("10.0.0.1", 4000)), switch=switch,
                            sleep=lambda s: None)
    return app, switch, session


def test_a_slave_holds_the_bridge_without_writing_and_takes_over_sending_nothing_when_right(caplog):
    caplog.set_level(logging.INFO, logger="lisp_controller")
    app, switch, session = make_roles()
    switch.other_master(5)  # another instance masters it, generation 5
    app.membership.owner = "c2"
    thread = running(session)
    try:
        until(lambda: session.status.role == SLAVE, "SLAVE")
        # Asked the switch's generation first, then SLAVE with it: never moves it on.
        assert switch.requests == [(ofp.OFPCR_ROLE_NOCHANGE, 0), (ofp.OFPCR_ROLE_SLAVE, 5)]
        change(app, session, "10.9.0.0/16")
        assert switch.applied == 0 and switch.table == {}  # a slave never writes
        # The other master put the desired flows there; etcd gives this instance the bridge.
        switch.table = desired(app, session)
        switch.meter_table = dict(switch.meter_values)
        switch.other_master(7)
        session.set_master(9)
        until(lambda: session.status.role == MASTER and session.status.last_verify is not None and session.idle,
                  "takeover")  # idle: the sync that began with the deep check is over
        assert switch.requests[-1] == (ofp.OFPCR_ROLE_MASTER, 9) and switch.election_id == 9
        assert switch.applied == 0  # read, deep check, nothing sent
        assert f"all {len(switch.table)} flows already correct, nothing sent (deep check)" in caplog.text
        assert "meter" not in caplog.text
        change(app, session, "10.10.0.0/16")
        requests = list(switch.requests)
        until(lambda: switch.applied == 1, "the master writes")
        assert switch.requests == requests  # no role request per write: the switch guards its writes
        # etcd gives it to another instance: SLAVE again, no more writes.
        session.set_master(None)
        until(lambda: session.status.role == SLAVE, "SLAVE again")
        change(app, session, "10.11.0.0/16")
        assert switch.applied == 1
        assert session.writes is False
    finally:
        stop(session, thread)


def test_a_stale_master_is_refused_by_the_switch_and_gives_the_bridge_up(caplog):
    app, switch, session = make_roles()
    app.membership.guard = False  # only the switch stops it (as lab/serve.py --no-lease-guard)
    session.set_master(9)
    thread = running(session)
    try:
        until(lambda: session.status.role == MASTER and switch.applied == 1, "master, first sync")
        switch.other_master(12)  # a newer master claimed the bridge meanwhile: this connection is SLAVE
        requests = list(switch.requests)
        change(app, session, "10.9.0.0/16")
        until(lambda: app.membership.refusals == [(DPID, 9)], "refused")
        assert switch.applied == 1 and switch.requests == requests  # its write refused, nothing asked
        assert session.status.role == "deposed" and not session.writes
        assert "OFPBRC_IS_SLAVE (a newer master claimed it)" in caplog.text
        assert any("not master any more" in e for e in session.status.errors)
    finally:
        stop(session, thread)


def test_a_master_whose_lease_may_have_run_out_stops_writing_by_itself(caplog):
    app, switch, session = make_roles()
    session.set_master(9)
    thread = running(session)
    try:
        until(lambda: switch.applied == 1, "first sync")
        app.membership.problem = "instance c1's etcd lease may have run out (0.3 s since it surely lived)"
        requests = len(switch.requests)
        change(app, session, "10.9.0.0/16")
        until(lambda: app.membership.refusals == [(DPID, 9)], "gave up")
        assert switch.applied == 1 and len(switch.requests) == requests  # nothing sent at all
        assert "lease may have run out" in caplog.text
    finally:
        stop(session, thread)


def test_a_master_claim_with_an_older_generation_is_refused_as_stale(caplog):
    """etcd still names this instance with generation 9, but the switch has
    seen a newer master (12): its MASTER request is refused as stale, it
    writes nothing and gives the bridge up."""
    app, switch, session = make_roles()
    app.membership.guard = False  # only the switch stops it
    switch.other_master(12)
    session.set_master(9)
    thread = running(session)
    try:
        until(lambda: app.membership.refusals == [(DPID, 9)], "refused")
        assert switch.requests[-1] == (ofp.OFPCR_ROLE_MASTER, 9) and switch.election_id == 12
        assert switch.applied == 0 and session.status.role == "deposed"
        assert "the switch refused MASTER with generation 9: OFPRRFC_STALE" in caplog.text
    finally:
        stop(session, thread)
